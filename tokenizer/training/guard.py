"""A guard against non-finite losses: skip the step, count, and stop the run after K in a row.

GAN training in bf16 is known to blow up now and then; one bad batch should not end a week-long run, and a run
that keeps producing NaNs should stop with a clear message instead of writing a poisoned checkpoint. A skipped
step changes no weights and no optimiser state; the data stream moves on to the next batch.
"""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch


class NonFiniteLossError(RuntimeError):
    """Raised when the run saw ``max_consecutive`` non-finite steps in a row."""


class NonFiniteGuard:
    """Decide whether a step's losses (and gradient norms) are usable; all processes decide together.

    Args:
        max_consecutive: K; the K-th consecutive bad step raises :class:`NonFiniteLossError`.
        any_rank: reduces a local "bad" flag over processes (``lambda bad: accelerator.reduce(...) > 0``); with one
            process the identity. All processes must skip together or the collective ops of DDP would hang.
        log: where messages go (the run's logger).
    """

    def __init__(self, max_consecutive: int, any_rank: Callable[[bool], bool] | None = None,
                 log: Callable[[str], None] = print):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive must be >= 1, got {max_consecutive}")
        self.max_consecutive = max_consecutive
        self.any_rank = any_rank or (lambda bad: bad)
        self.log = log
        self.streak = 0
        self.total = 0

    @staticmethod
    def bad_values(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
        """The entries of ``values`` that are NaN or infinite."""
        out = {}
        for k, v in values.items():
            x = float(v.detach().float().sum()) if isinstance(v, torch.Tensor) else float(v)
            if not math.isfinite(x):
                out[k] = x
        return out

    def check(self, step: int, values: Mapping[str, torch.Tensor | float], last_good: str | None = None,
              final: bool = True) -> bool:
        """True if the step may proceed; False if it must be skipped (every process gets the same answer).

        A step may be checked in parts (losses before backward, gradient norms after): pass ``final=False`` for
        all but the last part, so that only a wholly good step ends a streak.
        """
        bad = self.bad_values(values)
        if not self.any_rank(bool(bad)):
            if final:
                self.streak = 0
            return True
        self.streak += 1
        self.total += 1
        what = ", ".join(f"{k}={v}" for k, v in bad.items()) or "on another process"
        self.log(f"step {step}: non-finite value ({what}); step skipped "
                 f"({self.streak}/{self.max_consecutive} in a row, {self.total} in all)")
        if self.streak >= self.max_consecutive:
            raise NonFiniteLossError(
                f"stopping: {self.streak} consecutive steps with non-finite losses or gradients (last at step "
                f"{step}: {what}). The last good checkpoint ({last_good or 'none written yet'}) is untouched. "
                "Common causes: a learning rate too high, the GAN loss in bf16/fp16 (try mixed_precision=no or a "
                "later gan_start), corrupt input data.")
        return False

    def state_dict(self) -> dict:
        return {"streak": self.streak, "total": self.total}

    def load_state_dict(self, d: dict) -> None:
        self.streak, self.total = int(d["streak"]), int(d["total"])
