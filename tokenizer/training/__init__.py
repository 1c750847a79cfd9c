"""Reusable training machinery (model-agnostic) and the video-VAE trainer built on it.

The generic pieces, for any training script (``tokenizer/train_vae.py``, ``diffusion/train_latte.py``)::

    from tokenizer.training import (RunDir, EMA, NonFiniteGuard, NonFiniteLossError, ClipStream, BucketedStream,
                                    RunMonitor, capture_rng, restore_rng, seed_everything, derive_seed)

    run = RunDir.for_accelerator(cfg.run_dir, accelerator, keep_last=3)
    run.write_config(config_dict)                   # resolved config.yaml (differences on resume are returned)
    ckpt = run.latest()                             # the newest complete checkpoint folder, or None
    if ckpt is not None:
        state, rng = run.load_checkpoint(ckpt)      # full state (weights_only load) + this rank's RNG states
        ...load_state_dict(...) each part...; restore_rng(rng)
    ...
    run.save_checkpoint(step, state={...}, rng=capture_rng(),
                        weights={"ema.safetensors": (ema.state_dict(), {"name": ..., "config": ...})})

A checkpoint is complete or absent (written to a ``.partial`` folder and renamed), ``latest`` is switched last,
and everything a bit-exact resume needs (weights, EMA, optimisers, schedulers, step, data position, RNG states
of every process) is in it. See each module's docstring for the details.
"""
from .data import BucketedStream, ClipStream, DataPosition, epoch_permutation
from .ema import EMA
from .guard import NonFiniteGuard, NonFiniteLossError
from .monitor import RunMonitor
from .rundir import RunDir
from .samples import flow_to_rgb, motion_panels, side_by_side, write_panels
from .state import capture_rng, derive_seed, restore_rng, seed_everything

__all__ = ["RunDir", "EMA", "NonFiniteGuard", "NonFiniteLossError", "ClipStream", "BucketedStream", "DataPosition",
           "epoch_permutation", "RunMonitor", "capture_rng", "restore_rng", "seed_everything", "derive_seed",
           "flow_to_rgb", "motion_panels", "side_by_side", "write_panels"]
