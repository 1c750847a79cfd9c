"""The run directory: everything a training run writes, laid out so that a kill at any moment loses nothing.

::

    runs/NAME/
      config.yaml            the resolved config of the latest start (a changed config on resume is logged)
      train.log              plain-text log, appended across restarts
      latest                 text file: the name of the newest complete checkpoint folder, written atomically
      step-000100/           one complete checkpoint
        ema.safetensors      slim EMA weights, {"name": ..., "config": ...} in the metadata (VideoVAE.load reads it)
        state.pt             full training state: models, EMA, optimisers, schedulers, counters, data position
        rng-rank0.pt ...     RNG states, one file per process
      samples/               reconstruction samples (input | reconstruction ...)
      trackers/<project>/    local tracker files (tensorboard events), through accelerate's trackers

A checkpoint is written into ``.step-000100.partial/``, renamed into place when every process has written its
part, and only then is ``latest`` switched to it; stale ``.partial`` folders are removed at the next start. So
``latest`` always names a complete checkpoint, and a restart with the same command resumes from it.

One job per folder: the main process holds an exclusive ``fcntl.flock`` on ``.lock`` (which records its pid and
host) from the moment it opens the folder until the run ends or the process dies (the kernel drops the lock of a
killed process). A second launch into the same folder is refused (:class:`RunLockedError`, naming the holder)
before it touches anything; the holder, and only it, removes what killed writers left behind: ``.partial``
checkpoint folders and the hidden temporary files of :mod:`tokenizer.io` in the folder and in ``samples/``.

The class knows nothing of models: callers hand it plain state dicts. With several processes, pass the
process index and a barrier (``RunDir.for_accelerator``); the folder must be on a file system all processes share.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import yaml

from ..io import (FolderLockedError, hold_folder, load_torch_file, release_folder, remove_stale_temps, save_weights,
                  torch_save, write_text)


class RunLockedError(FolderLockedError):
    """The run folder is held by another running job."""


LATEST = "latest"
CONFIG = "config.yaml"
LOG = "train.log"
STATE = "state.pt"
EMA = "ema.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def _rng_file(rank: int) -> str:
    return f"rng-rank{rank}.pt"


class RunDir:
    """One training run's folder: config, log, checkpoints with a ``latest`` pointer, samples, tracker files.

    Args:
        root: the run folder (created).
        keep_last: how many complete checkpoints to keep (older ones are deleted after a new one lands);
            ``None`` keeps all.
        rank: this process's index; ``is_main`` defaults to ``rank == 0``.
        barrier: a function every process calls to wait for the others (``accelerator.wait_for_everyone``).
        lock: the main process takes the folder's lock (:class:`RunLockedError` if another job holds it) and
            cleans up after killed writers (what a training job does, see :meth:`for_accelerator`).
    """

    def __init__(self, root: str | Path, keep_last: int | None = 3, rank: int = 0, is_main: bool | None = None,
                 barrier: Callable[[], None] | None = None, lock: bool = False):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None, got {keep_last}")
        self.root = Path(root)
        self.keep_last = keep_last
        self.rank = rank
        self.is_main = rank == 0 if is_main is None else is_main
        self._barrier = barrier or (lambda: None)
        if self.is_main:
            self.root.mkdir(parents=True, exist_ok=True)
            if lock:
                self.lock()  # before anything is removed: another job's .partial is not stale
                remove_stale_temps(self.root)  # config, latest, run record ... temporaries of a killed writer
                remove_stale_temps(self.samples_dir)
            for stale in self.root.glob(".step-*.partial"):  # a checkpoint a kill interrupted
                shutil.rmtree(stale, ignore_errors=True)
        self._barrier()

    # --- one job per folder ---------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder for this process (re-entrant within it); another live holder is a RunLockedError."""
        try:
            hold_folder(self.root, "another train.run_dir")
        except FolderLockedError as err:
            raise RunLockedError(f"run folder {err}") from None

    def unlock(self) -> None:
        release_folder(self.root)

    @classmethod
    def for_accelerator(cls, root: str | Path, accelerator: Any, keep_last: int | None = 3) -> "RunDir":
        return cls(root, keep_last=keep_last, rank=accelerator.process_index,
                   is_main=accelerator.is_main_process, barrier=accelerator.wait_for_everyone, lock=True)

    # --- paths ----------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / CONFIG

    @property
    def log_path(self) -> Path:
        return self.root / LOG

    @property
    def samples_dir(self) -> Path:
        return self.root / "samples"

    @property
    def trackers_dir(self) -> Path:
        return self.root / "trackers"

    @staticmethod
    def checkpoint_name(step: int) -> str:
        return f"step-{step:06d}"

    # --- config ---------------------------------------------------------------------------------------------
    def write_config(self, config: dict) -> list[str]:
        """Write the resolved config; return the dotted keys that differ from the one already there (resume)."""
        changed: list[str] = []
        if self.config_path.is_file():
            old = yaml.safe_load(self.config_path.read_text()) or {}
            changed = sorted(_diff(old, config))
        if self.is_main:
            write_text(self.config_path, yaml.safe_dump(config, sort_keys=False))
        return changed

    # --- checkpoints ----------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoint folders, oldest first."""
        found = []
        for p in self.root.glob("step-*"):
            m = _STEP_DIR.match(p.name)
            if m and p.is_dir() and (p / STATE).is_file():
                found.append((int(m.group(1)), p))
        return sorted(found)

    def latest(self) -> Path | None:
        """The checkpoint ``latest`` names (or, should that file be missing, the newest complete one)."""
        pointer = self.root / LATEST
        if pointer.is_file():
            folder = self.root / pointer.read_text().strip()
            if (folder / STATE).is_file():
                return folder
        found = self.checkpoints()
        return found[-1][1] if found else None

    def save_checkpoint(self, step: int, state: dict, rng: dict | None = None,
                        weights: dict[str, tuple[dict[str, torch.Tensor], dict | None]] | None = None) -> Path:
        """Write one checkpoint; every process calls this (collective when a barrier was given).

        Args:
            step: the optimisation step the state is at (the folder is ``step-{step:06d}``).
            state: the full training state (main process only; other processes may pass ``{}``).
            rng: this process's RNG states (:func:`tokenizer.training.state.capture_rng`).
            weights: extra safetensors files, ``{"ema.safetensors": (state_dict, config_record)}`` (main only).
        """
        name = self.checkpoint_name(step)
        partial = self.root / f".{name}.partial"
        final = self.root / name
        if self.is_main:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        self._barrier()
        if rng is not None:
            torch_save(rng, partial / _rng_file(self.rank))
        if self.is_main:
            for filename, (tensors, record) in (weights or {}).items():
                save_weights(tensors, partial / filename, config=record)
            torch_save(state, partial / STATE)  # written last: its presence marks a complete folder
        self._barrier()
        if self.is_main:
            if final.exists():  # the same step saved again (e.g. a final save right after a periodic one)
                old = self.root / f".{name}.old.partial"
                final.rename(old)
                partial.rename(final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                partial.rename(final)
            write_text(self.root / LATEST, name + "\n")
            self._prune()
        self._barrier()
        return final

    def load_checkpoint(self, folder: str | Path) -> tuple[dict, dict | None]:
        """(full training state, this process's RNG states or None when the folder has none for this rank)."""
        folder = Path(folder)
        state = load_torch_file(folder / STATE)
        rng_path = folder / _rng_file(self.rank)
        rng = load_torch_file(rng_path) if rng_path.is_file() else None
        return state, rng

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        found = self.checkpoints()
        latest = self.latest()
        for _, path in found[:-self.keep_last]:
            if path != latest:
                shutil.rmtree(path, ignore_errors=True)


def _diff(old: Any, new: Any, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two nested dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: set[str] = set()
        for k in set(old) | set(new):
            out |= _diff(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return set() if old == new else {prefix.rstrip(".")}
