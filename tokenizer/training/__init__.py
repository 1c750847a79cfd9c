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
import importlib

# Names resolve lazily (PEP 562): a script that needs only the run directory does not pay for importing timm,
# the data package or tqdm.
_EXPORTS = {
    "BucketedStream": "data", "ClipStream": "data", "DataPosition": "data", "epoch_permutation": "data",
    "EMA": "ema", "NonFiniteGuard": "guard", "NonFiniteLossError": "guard", "RunMonitor": "monitor",
    "flat_hparams": "monitor",
    "RunDir": "rundir", "motion_panels": "samples", "side_by_side": "samples",
    "write_panels": "samples", "capture_rng": "state", "derive_seed": "state", "restore_rng": "state",
    "seed_everything": "state",
}


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
