"""Train Latte on a latent cache: one script for every dataset, VAE and launch.

    accelerate launch diffusion/train_latte.py --config configs/diffusion/latte_xl2_ucf101.yaml \\
        data.cache_dir=caches/deco-ucf101 train.run_dir=runs/latte-ucf101-deco
    python -m diffusion.train_latte --config configs/diffusion/latte_tiny.yaml data.cache_dir=... train.run_dir=...

One CPU process, one GPU, several GPUs or several nodes: the launch decides (``accelerate launch --multi_gpu``,
``--config_file configs/diffusion/accelerate/multi_gpu.yaml`` or ``multi_node.yaml``), the script does not change;
``train.fsdp=true`` shards the model (FSDP2) instead of replicating it.
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

from tokenizer.training.loop import train_main  # noqa: E402

from diffusion.train_config import LatteTrainConfig, validate  # noqa: E402


def describe(cfg: LatteTrainConfig, trainer) -> str:
    r, t = trainer.record, cfg.train
    return (f"model {r['name']} {r['config']}: {trainer.num_parameters:,} parameters\n"
            f"cache {trainer.spec.cache_dir}: {len(trainer.dataset)} clips, latents {tuple(r['latent_shape'])}, VAE "
            f"'{r['vae']['name']}' ({r['vae']['fingerprint'][:16]}...), {r['num_classes'] or 'no'} classes\n"
            f"effective batch {trainer.effective_batch} = {t.batch_size} x {trainer.accelerator.num_processes} "
            f"process(es) x {t.grad_accum} accumulation")


def make_trainer(cfg: LatteTrainConfig):
    from diffusion.training import LatteTrainer

    return LatteTrainer(cfg)


def main(argv: list[str] | None = None) -> int:
    from tokenizer.cache import CacheError

    return train_main(argv, doc=__doc__, config_help="configs/diffusion/*.yaml", schema=LatteTrainConfig,
                      validate=validate, make_trainer=make_trainer, describe=describe,
                      errors=(CacheError,))  # cache / VAE mismatches


if __name__ == "__main__":
    sys.exit(main())
