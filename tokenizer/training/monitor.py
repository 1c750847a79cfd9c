"""What a run tells its user: a plain log file, a progress bar (loss, it/s, ETA) and tracker scalars.

Only the main process writes; the others get silent instances, so callers never branch on the rank.
Scalars go through accelerate's trackers (``train.tracker``, see ``tokenizer.training.trackers``)
when an accelerator is given, so the same call works with any tracker accelerate supports.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm.auto import tqdm

from ..config import flatten


class RunMonitor:
    """Log file + tqdm bar + tracker scalars for one run.

    Args:
        log_path: the run's plain-text log (appended; main process only).
        total_steps: the run's last step (for the bar's ETA).
        start_step: where this start resumes.
        is_main: only the main process writes anything.
        accelerator: when given, :meth:`scalars` goes to ``accelerator.log`` (trackers must be initialised).
        show_bar: False keeps the bar off (tests, non-interactive jobs still get the log).
    """

    def __init__(self, log_path: str | Path, total_steps: int, start_step: int = 0, is_main: bool = True,
                 accelerator: Any = None, show_bar: bool = True, name: str = "train"):
        self.is_main = is_main
        self.accelerator = accelerator
        self.logger = logging.getLogger(f"vidtok.{name}.{id(self)}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self._handlers: list[logging.Handler] = []
        self.bar = None
        if not is_main:
            self.logger.disabled = True
            return
        fh = logging.FileHandler(log_path, mode="a", encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self._handlers.append(fh)
        self.logger.addHandler(fh)
        self.logger.addHandler(_TqdmHandler())
        self._handlers.append(self.logger.handlers[-1])
        if show_bar:
            # tqdm shows it/s and the ETA itself from total/initial; the loss goes in the postfix
            self.bar = tqdm(total=total_steps, initial=start_step, dynamic_ncols=True, desc=name, file=sys.stderr,
                            smoothing=0.1)
        self._t0 = time.perf_counter()
        self._start = start_step

    def info(self, msg: str) -> None:
        self.logger.info(msg)

    def warning(self, msg: str) -> None:
        self.logger.warning(msg)

    def step(self, step: int, values: Mapping[str, float], n: int = 1) -> None:
        """Advance the bar by ``n`` steps and show ``values`` (e.g. the loss) beside it."""
        if self.bar is not None:
            self.bar.update(n)
            self.bar.set_postfix({k: f"{v:.4g}" for k, v in values.items()}, refresh=False)

    def rate(self, step: int) -> float:
        """Steps per second since this start."""
        dt = time.perf_counter() - self._t0 if self.is_main else 0.0
        return (step - self._start) / dt if dt > 0 else 0.0

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Send scalars to the trackers (every process may call; accelerate logs on the main one)."""
        if self.accelerator is not None:
            self.accelerator.log(dict(values), step=step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        for h in self._handlers:
            self.logger.removeHandler(h)
            h.close()
        self._handlers = []


class _TqdmHandler(logging.Handler):
    """Console messages that do not break the progress bar."""

    def __init__(self):
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def flat_hparams(config: Mapping[str, Any]) -> dict:
    """A nested config as flat {dotted key: scalar} (trackers take scalar hyper-parameters; lists become text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(config).items()}

