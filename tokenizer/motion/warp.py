"""Scale-space flow and its warp W(x, m) (DeCo-VAE eq. 5; Agustsson et al., CVPR 2020, paper ref. [2]).

A motion field ``m`` has three channels:

- ``m[:, 0]``, ``m[:, 1]``: flow x and flow y in the normalised units of ``grid_sample`` (``align_corners=False``):
  a displacement of 2 spans the whole width (height), so ``flow_px = flow * size / 2``;
- ``m[:, 2]``: scale, in *levels* of the Gaussian scale-space volume: 0 = the sharp frame, ``k`` = level ``k``,
  fractional values interpolate between levels (the volume has ``num_levels + 1`` levels).

The warp samples the volume trilinearly at (pixel grid + flow, scale) with border padding, in float32.
CompressAI's ``ScaleSpaceFlow`` (the public reference) takes the depth coordinate in grid_sample's normalised units
instead, ``z = (2 s + 1) / (num_levels + 1) - 1`` (:func:`scale_to_grid`); with that conversion the two warps agree
to float rounding, and "zero flow, scale 0" returns the frame itself.

The flow is backward: ``W(x_0, m_t)(p) = x_0(p + flow_t(p))`` predicts frame ``t`` from the keyframe.

The blur stays hand-written (a separable Gaussian with replicate padding, ``2 ceil(3 sigma) + 1`` taps): it must
match CompressAI's volume to 1e-6 (``tests/test_motion.py``), and torchvision's ``gaussian_blur`` pads by
reflection, which differs at the borders.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


# ------------------------------------------------------------------------------------------------------ the warp
def gaussian_kernel(sigma: float, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1D Gaussian of 2 ceil(3 sigma) + 1 taps."""
    half = int(math.ceil(3 * sigma))
    x = torch.arange(-half, half + 1, dtype=dtype, device=device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with replicate padding; x: (b c h w) -> (b c h w)."""
    k = gaussian_kernel(sigma, x.dtype, x.device)
    c, r = x.shape[1], k.numel() // 2
    x = F.pad(x, (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # along w
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # along h


def gaussian_volume(x: torch.Tensor, sigma0: float = 1.5, num_levels: int = 5) -> torch.Tensor:
    """Gaussian scale-space volume of ``x``: (b c h w) -> (b c num_levels+1 h w).

    Level 0 is ``x``; level 1 is ``x`` blurred with ``sigma0``; level ``i >= 2`` halves the previous (unupsampled)
    level with a 2x2 mean, blurs it with ``sigma0`` again (so the blur roughly doubles per level) and is brought
    back to full size by ``i - 1`` bilinear 2x upsamplings (the construction of the scale-space flow paper).
    """
    h, w = x.shape[-2:]
    levels = [x]
    y = gaussian_blur(x, sigma0)
    levels.append(y)
    for i in range(1, num_levels):
        y = gaussian_blur(F.avg_pool2d(y, 2), sigma0)
        up = y
        for j in range(i):  # repeated 2x steps; the last one lands exactly on (h, w) for odd sizes too
            size = (h, w) if j == i - 1 else (up.shape[-2] * 2, up.shape[-1] * 2)
            up = F.interpolate(up, size=size, mode="bilinear", align_corners=False)
        levels.append(up)
    return torch.stack(levels, dim=2)  # b c l h w


def scale_to_grid(scale: torch.Tensor, num_levels: int) -> torch.Tensor:
    """Scale in levels -> grid_sample depth coordinate (align_corners=False) of a volume of num_levels+1 levels."""
    return (2 * scale + 1) / (num_levels + 1) - 1


def base_grid(h: int, w: int, device=None) -> torch.Tensor:
    """Normalised pixel-centre coordinates (align_corners=False): (h w 2), last axis (x, y)."""
    ys = (2 * torch.arange(h, device=device, dtype=torch.float32) + 1) / h - 1
    xs = (2 * torch.arange(w, device=device, dtype=torch.float32) + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


class ScaleSpaceWarp(nn.Module):
    """W(x, m): warp a reference frame by scale-space flow (DeCo-VAE eq. 5). No parameters."""

    def __init__(self, sigma0: float = 1.5, num_levels: int = 5):
        super().__init__()
        self.sigma0, self.num_levels = sigma0, num_levels

    def forward(self, ref: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """ref (b c h w), motion (b 3 h w) -> (b c h w); or motion (b 3 t h w) -> (b c t h w), one volume per ref."""
        video = motion.ndim == 5
        if not video:
            motion = motion.unsqueeze(2)  # b 3 1 h w
        b, _, t, h, w = motion.shape
        if ref.shape[0] != b or ref.shape[-2:] != (h, w):
            raise ValueError(f"warp: reference {tuple(ref.shape)} and motion {tuple(motion.shape)} do not match")
        if min(h, w) < 2 ** (self.num_levels - 1):
            raise ValueError(f"warp: frames of {h}x{w} are too small for a {self.num_levels + 1}-level scale-space "
                             f"volume (need at least {2 ** (self.num_levels - 1)} px a side)")
        no_autocast = torch.autocast(ref.device.type, enabled=False) if torch.amp.is_autocast_available(
            ref.device.type) else contextlib.nullcontext()  # (the meta device, used for FLOP counts, has no autocast)
        with no_autocast:  # sampling positions need float32
            volume = gaussian_volume(ref.float(), self.sigma0, self.num_levels)  # b c l h w
            m = rearrange(motion.float(), "b m t h w -> b t h w m")
            xy = base_grid(h, w, ref.device) + m[..., :2]  # b t h w 2
            z = scale_to_grid(m[..., 2:], self.num_levels)  # b t h w 1
            # one grid_sample call: the volume's depth axis is the scale, the grid's depth axis is time
            out = F.grid_sample(volume, torch.cat([xy, z], dim=-1), mode="bilinear", padding_mode="border",
                                align_corners=False)  # b c t h w
        return out if video else out.squeeze(2)


def flow_px_to_norm(flow_px: torch.Tensor) -> torch.Tensor:
    """Flow in pixels (b 2 ... h w) -> normalised grid units."""
    h, w = flow_px.shape[-2:]
    return torch.stack([flow_px[:, 0] * 2 / w, flow_px[:, 1] * 2 / h], dim=1)


def flow_norm_to_px(flow: torch.Tensor) -> torch.Tensor:
    """Normalised flow (b 2 ... h w) -> pixels."""
    h, w = flow.shape[-2:]
    return torch.stack([flow[:, 0] * w / 2, flow[:, 1] * h / 2], dim=1)
