"""Exponential moving average of a model's weights, built on timm's ``ModelEmaV3``.

The average is kept in float32 whatever the model's dtype, so no stochastic rounding (and no private generator
whose state would have to be saved) is involved: the EMA's whole state is its module's state dict, and resuming
from it continues bit-exactly. ``update(model, step)`` uses the constant decay from the second step on; step 1
copies the weights (timm's convention: decay 0 at the first update).
"""
from __future__ import annotations

import torch
from timm.utils.model_ema import ModelEmaV3
from torch import nn


class EMA(nn.Module):
    """theta_ema <- decay * theta_ema + (1 - decay) * theta, over parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.ema = ModelEmaV3(model, decay=decay, dtype=torch.float32, stochastic_rounding=False)
        self.ema.module.requires_grad_(False)

    @property
    def module(self) -> nn.Module:
        """The averaged model (eval mode, no gradients)."""
        return self.ema.module

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Fold ``model``'s current weights in; ``step`` is the 1-based optimisation step just taken."""
        self.ema.update(model, step=step)

    def state_dict(self, *args, **kwargs):  # the averaged weights are the EMA's whole state
        return self.ema.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.ema.module.load_state_dict(state_dict, strict=strict)
