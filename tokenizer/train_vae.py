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

import argparse  # noqa: E402

from tokenizer.config import ConfigError, load_config, print_config  # noqa: E402
from tokenizer.training.vae_config import VAETrainConfig, validate  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="configs/tokenizer/*.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate, build model and data, print, exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100 optim.lr=1e-4")
    return p.parse_intermixed_args(argv)  # options and key=value overrides in any order


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(VAETrainConfig, args.config, args.overrides)
        validate(cfg)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from tokenizer.training.guard import NonFiniteLossError
    from tokenizer.training.vae_trainer import VAETrainer

    try:
        trainer = VAETrainer(cfg)
    except (ValueError, FileNotFoundError) as err:  # ConfigError, FrameCountError, missing weights files
        print(f"error: {err}", file=sys.stderr)
        return 2
    if trainer.accelerator.is_main_process:
        print_config(cfg, file=sys.stdout)
    if args.dry_run:
        if trainer.accelerator.is_main_process:
            print(f"model {trainer.model.name}: {sum(p.numel() for p in trainer.model.parameters()):,} parameters, "
                  f"groups {', '.join(trainer.groups)}")
            for i, d in enumerate(trainer.datasets):
                print(f"bucket {i}: {len(d)} clips")
        return 0
    try:
        summary = trainer.fit()
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if trainer.accelerator.is_main_process:
        print(f"done: step {summary['step']} in {summary['run_dir']} ({summary['skipped']} steps skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
