"""Temporal Dynamic Difference Convolution (VC-VAE, sec. 3.3): a re-parameterisation of an ordinary 3D kernel.

The module keeps the plain kernel ``W`` (c_out, c_in, k_t, k_h, k_w); its temporal slices are the paper's
``W_a`` (the anchor tap) and ``W_i`` (every other tap). TDC reads each non-anchor tap as acting on a difference
with the anchor frame:

    Y = W_a * X_a + sum_{i != a} W_i * (X_i - X_a)                                   (VC-VAE eqs. 5, 6, 7)
      = (W_a - sum_{i != a} W_i) * X_a + sum_{i != a} W_i * X_i

so it equals a plain convolution with the transformed kernel ``W'`` (``W'_a = W_a - sum_{i != a} W_i``,
``W'_i = W_i``): same parameters, same FLOPs (the kernel transform is O(k_t c_out c_in k_h k_w), negligible).
The anchor is the centre tap in a group causal resblock (eq. 5), the current (last) tap in a causal conv (eq. 7)
and the anchor frame of the 2-tap temporal interaction module (eq. 6).
"""
from __future__ import annotations

import torch


def tdc_kernel(weight: torch.Tensor, anchor: int) -> torch.Tensor:
    """The plain 3D kernel equal to TDC with kernel ``weight`` (c_out c_in k_t k_h k_w) and anchor tap ``anchor``."""
    k_t = weight.shape[2]
    if not 0 <= anchor < k_t:
        raise ValueError(f"TDC anchor tap {anchor} outside a temporal kernel of size {k_t}")
    taps = list(weight.unbind(dim=2))  # k_t slices of (c_out c_in k_h k_w)
    others = [w for i, w in enumerate(taps) if i != anchor]
    if others:  # W'_a = W_a - sum_{i != a} W_i; the other taps are unchanged
        taps[anchor] = taps[anchor] - torch.stack(others).sum(dim=0)
    return torch.stack(taps, dim=2)
