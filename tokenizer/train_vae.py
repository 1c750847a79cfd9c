"""Train a video VAE: one script for every model, stage and launch.

    accelerate launch tokenizer/train_vae.py --config configs/tokenizer/deco_phase1.yaml [key=value ...]
    python -m tokenizer.train_vae --config configs/tokenizer/plain_tiny.yaml train.max_steps=50

One CPU process, one GPU, several GPUs or several nodes: the launch decides, the script does not change.
Re-running the same command resumes from the run folder's ``latest`` checkpoint. ``--dry-run`` validates the
config, builds the model and the dataset, prints both, and exits.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file (accelerate launch tokenizer/train_vae.py): Python put this folder first on sys.path, where
    # its modules (io, config, data, ...) would shadow top-level ones; put the repository root there instead.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

from tokenizer.training.loop import train_main  # noqa: E402
from tokenizer.training.vae_config import VAETrainConfig, validate  # noqa: E402


def describe(cfg: VAETrainConfig, trainer) -> str:
    buckets = ", ".join(f"bucket {i}: {len(d)} clips" for i, d in enumerate(trainer.datasets))
    return (f"model {trainer.model.name}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
            f"groups {', '.join(trainer.groups)}; {buckets}")


def make_trainer(cfg: VAETrainConfig):
    from tokenizer.training.vae_trainer import VAETrainer

    return VAETrainer(cfg)


def main(argv: list[str] | None = None) -> int:
    return train_main(argv, doc=__doc__, config_help="configs/tokenizer/*.yaml", schema=VAETrainConfig,
                      validate=validate, make_trainer=make_trainer, describe=describe)


if __name__ == "__main__":
    sys.exit(main())
