"""Train Latte on a latent cache: one script for every dataset, VAE and launch.

    accelerate launch diffusion/train_latte.py --config configs/diffusion/latte_xl2_ucf101.yaml \\
        data.cache_dir=caches/deco-ucf101 train.run_dir=runs/latte-ucf101-deco
    python -m diffusion.train_latte --config configs/diffusion/latte_tiny.yaml data.cache_dir=... train.run_dir=...

One CPU process, one GPU, several GPUs or several nodes: the launch decides (``accelerate launch --multi_gpu``,
``--num_machines``, ``--config_file configs/diffusion/accelerate_fsdp.yaml``), the script does not change.
Re-running the same command resumes from the run folder's ``latest`` checkpoint. Before any work the script checks
the cache (complete, made by the VAE that ``vae.name`` / ``vae.ckpt`` name, latent shape as the model section pins
it) and prints the resolved config; ``--dry-run`` stops there.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (accelerate launch diffusion/train_latte.py): Python put this folder first on sys.path; put the
    # repository root there instead so that `diffusion` and `tokenizer` import as packages.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402

from tokenizer.config import ConfigError, load_config, print_config  # noqa: E402

from diffusion.train_config import LatteTrainConfig, validate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/diffusion/*.yaml")
    p.add_argument("--dry-run", action="store_true", help="check config and cache, build the model, print, exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data.cache_dir=caches/x train.max_steps=10")
    return p.parse_intermixed_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(LatteTrainConfig, args.config, args.overrides)
        validate(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from tokenizer.cache import CacheError
    from tokenizer.training.guard import NonFiniteLossError

    from diffusion.training import LatteTrainer

    try:
        trainer = LatteTrainer(cfg)
    except (ValueError, FileNotFoundError, CacheError, KeyError) as err:  # ConfigError, cache / VAE mismatches
        print(f"error: {err}", file=sys.stderr)
        return 2
    acc = trainer.accelerator
    if acc.is_main_process:
        print_config(cfg, file=sys.stdout)
        r = trainer.record
        print(f"model {r['name']} {r['config']}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters\n"
              f"cache {trainer.spec.cache_dir}: {len(trainer.dataset)} clips, latents {tuple(r['latent_shape'])}, VAE "
              f"'{r['vae']['name']}' ({r['vae']['fingerprint'][:16]}...), {r['num_classes'] or 'no'} classes\n"
              f"effective batch {trainer.effective_batch} = {cfg.train.batch_size} x {acc.num_processes} process(es) "
              f"x {cfg.train.grad_accum} accumulation", flush=True)
    if args.dry_run:
        return 0
    try:
        summary = trainer.fit()
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if acc.is_main_process:
        print(f"done: step {summary['step']} in {summary['run_dir']} ({summary['skipped']} steps skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
