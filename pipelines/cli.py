"""``vidtok``: one console command for every stage (installed by ``pip install``; see [project.scripts]).

    vidtok cache --vae plain-tiny --data configs/data/samples_tiny.yaml --out caches/tiny
    vidtok train-vae --config configs/tokenizer/plain_tiny.yaml train.run_dir=runs/vae
    vidtok train-latte --config configs/diffusion/latte_tiny.yaml data.cache_dir=caches/tiny train.run_dir=runs/latte
    vidtok sample --vae plain-tiny --ckpt runs/latte --num-videos 8
    vidtok configs                      # where the bundled configs are, and their names

Each subcommand is the ``main`` of the module that ``python -m`` runs (same options, same exit codes); the old
commands keep working. ``configs/...`` paths are found in the current folder first, then among the bundled ones
(a checkout's ``configs/``, or a wheel's copy), so the commands above work from any folder. Several GPUs:
``accelerate launch -m pipelines.cli train-latte ...``.
"""
from __future__ import annotations

import importlib
import sys
from typing import Sequence

if __package__ in (None, ""):  # run as a script: repo root on path
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# subcommand -> (module whose main(argv) runs it, one line of help)
COMMANDS = {
    "data": ("tokenizer.data.__main__", "inspect a data config: the videos it finds, a decoded clip"),
    "cache": ("tokenizer.cache.__main__", "pixels -> latent shards (a VAE's latent cache)"),
    "train-vae": ("tokenizer.train_vae", "train a video VAE (DeCo-VAE, VC-VAE, plain) from a config"),
    "motion": ("tokenizer.motion.__main__", "export a motion-stage run as DeCo-VAE's motion checkpoint (training "
                                            "itself: train-vae train.stage=motion)"),
    "eval-recon": ("pipelines.eval_recon", "reconstruction metrics of a VAE (PSNR, SSIM, LPIPS, rFVD)"),
    "train-latte": ("diffusion.train_latte", "train Latte on a latent cache"),
    "sample": ("pipelines.sample", "sample videos from a Latte run, optionally score FVD16"),
    "fvd": ("pipelines.fvd", "FVD between real and generated videos under a written protocol"),
    "report": ("pipelines.report", "the VAE-choice report from eval / sample results"),
    "demo": ("pipelines.demo", "the whole pipeline on the bundled sample videos, CPU, minutes"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: vidtok COMMAND [options]   (vidtok COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += [f"  {'configs':<{width}}  list the bundled configs and where they are"]
    return "\n".join(lines)


def list_configs() -> int:
    from pathlib import Path

    from tokenizer.config import config_roots

    roots = config_roots()
    if not roots:
        print("error: no bundled configs found (neither a checkout's configs/ nor an installed copy)",
              file=sys.stderr)
        return 2
    root = Path(roots[0])
    print(f"bundled configs in {root} (pass them as configs/...; a file of that path in the current folder wins):")
    for f in sorted((root / "configs").rglob("*.yaml")):
        print(f"  {f.relative_to(root)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name == "configs":
        return list_configs()
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
