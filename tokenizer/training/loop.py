"""What every trainer of the toolkit shares: the fit loop, cross-rank flags, warnings, and the command line.

``VAETrainer`` (tokenizer/training/vae_trainer.py) and ``LatteTrainer`` (diffusion/training.py) subclass
:class:`TrainLoop`; ``tokenizer/train_vae.py`` and ``diffusion/train_latte.py`` are thin calls of
:func:`train_main`. A subclass provides ``setup()`` (fresh start or resume), ``train_step()`` and these attributes:
``cfg.model.name``, ``cfg.train`` (``run_dir``, ``keep_last``, ``max_steps``, ``tracker``, ``progress_bar``),
``accelerator``, ``device``, ``step``, ``guard`` (its ``NonFiniteGuard``) and ``load_state_dict``; ``run`` is set
by :meth:`TrainLoop._run_folder` and ``monitor`` by :meth:`TrainLoop._open_run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from tokenizer.config import ConfigError, load_config, print_config, to_dict

from .monitor import RunMonitor, flat_hparams
from .rundir import RunDir
from .state import capture_rng
from .trackers import tracker_names


class TrainLoop:
    """The loop and the small cross-process helpers of a trainer (see the module docstring for the contract)."""

    def fit(self) -> dict:
        """Train to ``train.max_steps`` (resuming if possible); returns a summary."""
        self.setup()
        t = self.cfg.train
        try:
            while self.step < t.max_steps:
                self.train_step()
            self.finish()
        finally:
            self.monitor.close()
            if tracker_names(t.tracker):
                self.accelerator.end_training()
            self.run.unlock()  # the folder is free for the next job (a killed process frees it as well)
        return {"step": self.step, "run_dir": str(self.run.root), "skipped": self.guard.total}

    def finish(self) -> None:
        """Called once when the loop reaches ``train.max_steps``, before the monitor closes (e.g. a data report)."""

    def _run_folder(self) -> Path | None:
        """Open ``train.run_dir`` (a ``RunDir`` as ``self.run``); returns its latest checkpoint (None: a fresh run).
        Nothing is written before :meth:`_open_run` has accepted the folder."""
        t = self.cfg.train
        self.run = RunDir.for_accelerator(t.run_dir, self.accelerator, keep_last=t.keep_last)
        return self.run.latest()

    def _open_run(self, ckpt: Path | None) -> dict | None:
        """Load the checkpoint ``ckpt`` (None: a fresh run; ``load_state_dict`` refuses another run's), then write
        the resolved config, start the trackers and the monitor, and say which it is; returns this process's saved
        RNG states (None on a fresh run) for the subclass to restore last."""
        cfg, acc, t = self.cfg, self.accelerator, self.cfg.train
        rng = None
        if ckpt is not None:
            state, rng = self.run.load_checkpoint(ckpt)
            self.load_state_dict(state)
            self._last_good = ckpt.name
        changed = self.run.write_config(to_dict(cfg))  # the keys that differ from the last launch's
        if tracker_names(t.tracker):
            acc.init_trackers(t.tracker_project, config=flat_hparams(to_dict(cfg)))
        self.monitor = RunMonitor(self.run.log_path, t.max_steps, self.step, is_main=acc.is_main_process,
                                  accelerator=acc if tracker_names(t.tracker) else None, show_bar=t.progress_bar,
                                  name=f"train {cfg.model.name}")
        if ckpt is not None:
            self.monitor.info(f"resuming from {ckpt} at step {self.step}"
                              + (f"; config changed: {', '.join(changed)}" if changed else ""))
        return rng

    def _write_checkpoint(self, state: dict, weights: dict | None) -> Path:
        """Save ``state`` (the main process's full training state; {} elsewhere) with every process's RNG states
        and the ``weights`` files as checkpoint ``step-<step>``; it becomes the last good one."""
        folder = self.run.save_checkpoint(self.step, state, rng=capture_rng(), weights=weights)
        self._last_good = folder.name
        self.monitor.info(f"step {self.step}: checkpoint {folder}")
        return folder

    def _any_rank(self, bad: bool) -> bool:
        """True on every rank when ``bad`` holds on any rank (a skipped step must be skipped everywhere)."""
        acc = self.accelerator
        if acc.num_processes == 1:
            return bad
        flag = torch.tensor([1.0 if bad else 0.0], device=self.device)
        return bool(acc.reduce(flag, reduction="sum").item() > 0)

    def _warn(self, msg: str) -> None:
        if self.monitor is not None:
            self.monitor.warning(msg)
        elif self.accelerator.is_main_process:
            print(msg, flush=True)


def _line(err: BaseException) -> str:
    """An error as one line: a DataLoader worker's error arrives wrapped with its traceback; its last line says it."""
    text = str(err).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split(": ", 1)[1] if ": " in last else last
    return text


def train_main(argv: Sequence[str] | None, *, doc: str, config_help: str, schema: type,
               validate: Callable[[Any], None], make_trainer: Callable[[Any], TrainLoop],
               describe: Callable[[Any, TrainLoop], str], errors: tuple[type[BaseException], ...] = ()) -> int:
    """The command line of a training script: ``--config FILE [--dry-run] [key=value ...]``.

    Exit codes: 0 done (or dry run), 2 bad config or inputs (``ConfigError``, ``ValueError``,
    ``FileNotFoundError`` and ``errors`` raised while building the trainer or opening its run folder, printed in
    one line; a run folder another job holds), 3 the run stopped on repeated non-finite losses, 4 a write failed
    (disk full, permission: one line naming the file and the free space; the last complete checkpoint is intact,
    so the same command resumes once there is room). ``describe(cfg, trainer)`` is printed by the main process
    after the resolved config, before any step.
    """
    from tokenizer.training.guard import NonFiniteLossError

    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--dry-run", action="store_true", help="validate the config, build the model and the data, "
                                                          "print them and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=100 optim.lr=1e-4")
    args = p.parse_intermixed_args(argv)  # options and key=value overrides in any order
    try:
        cfg = load_config(schema, args.config, args.overrides, validate=validate)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    from tokenizer.io import write_error_line

    resume = "the last complete checkpoint is intact: re-run the same command to resume"
    try:
        trainer = make_trainer(cfg)
    except (ValueError, FileNotFoundError, *errors) as err:  # ConfigError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # the run folder cannot be created or written
        print(f"error: {write_error_line(err, resume)}", file=sys.stderr)
        return 4
    main_process = trainer.accelerator.is_main_process
    if main_process:
        print_config(cfg, file=sys.stdout)
        print(describe(cfg, trainer), flush=True)
    if args.dry_run:
        return 0
    try:
        summary = trainer.fit()
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError, *errors) as err:  # found while opening the run: another model, ...
        print(f"error: {_line(err)}", file=sys.stderr)  # or while reading: a broken cache shard
        return 2
    except OSError as err:  # disk full, permission: nothing complete is lost
        print(f"error: {write_error_line(err, resume)}", file=sys.stderr)
        return 4
    if main_process:
        print(f"done: step {summary['step']} in {summary['run_dir']} ({summary['skipped']} steps skipped)")
    return 0
