"""Spatial and temporal down/up-sampling.

Spatial samplers are the image VAE's, applied per frame: downsample = zero-pad (0, 1, 0, 1) then a 3x3 conv with
stride 2; upsample = nearest 2x then a 3x3 conv. Temporal samplers are VC-VAE's "temporal layers for keyframe
selection and broadcast" (sec. 3.2), which are also its temporal interaction module (eq. 6) when TDC is on:

- :class:`TemporalDownsample`: a ``k_t = 2``, stride 2 conv; initialised with ``W[:, :, k_t - 1] = I`` (eq. 3) it
  selects the last frame of every pair, so frames {0, 1, 2, 3} encode to the latent of frame {3};
- :class:`TemporalUpsample`: a conv from C to 2C channels then depth-to-time; initialised with
  ``W = concat(I, I)`` (eq. 4) it broadcasts each frame to two.

Both use a 2-tap causal kernel whose anchor is the current frame; with TDC it reads
``Y = W_a * X_a + W_p * (X_p - X_a)`` (eq. 6), the previous frame being ``X_p``. The temporal kernels are 3x3 in
space (the paper writes only the temporal shape ``[C, C, k_t]``); inflation puts the identity on the spatial centre.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .cache import FrameCache, is_first_chunk
from .conv import CausalConv3d, FrameConv3d


class SpatialDownsample(nn.Module):
    """Per-frame 2x spatial downsampling (diffusers ``Downsample2D`` with ``padding=0``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv3d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) -> (b c t h/2 w/2)."""
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric pad right/bottom, as the LDM / Flux VAE does


class SpatialUpsample(nn.Module):
    """Per-frame 2x nearest-neighbour upsampling followed by a 3x3 conv (diffusers ``Upsample2D``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = FrameConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) -> (b c t 2h 2w)."""
        return self.conv(F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest"))


class TemporalDownsample(nn.Module):
    """2x temporal downsampling by a ``k_t = 2``, stride 2 conv (VC-VAE eq. 3; eq. 6 with TDC).

    ``causal_first=False`` (in-sequence): pairs (0, 1), (2, 3), ...; ``t`` frames -> ``t / 2``.
    ``causal_first=True`` (separate first frame / causal VAE): the first frame is replicated once in front, so it
    forms a pair with itself and is kept alone; ``1 + 2k`` frames -> ``1 + k``.
    """

    def __init__(self, channels: int, tdc: bool = False, causal_first: bool = False):
        super().__init__()
        self.conv = CausalConv3d(channels, channels, (2, 3, 3), stride_t=2, tdc=tdc, front=1 if causal_first else 0)

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) -> (b c t/2 h w) (in-sequence) or (b c 1+(t-1)/2 h w) (causal first frame)."""
        return self.conv(x, cache)

    @torch.no_grad()
    def init_keyframe_selection(self) -> None:
        """VC-VAE eq. 3: ``W_down[:, :, k_t - 1] = I`` (spatial centre), other taps and the bias zero."""
        w = self.conv.weight
        w.zero_()
        w[:, :, -1, 1, 1] = torch.eye(w.shape[0], dtype=w.dtype)
        self.conv.bias.zero_()


class TemporalUpsample(nn.Module):
    """2x temporal upsampling: causal ``k_t = 2`` conv from C to 2C channels, then depth-to-time (VC-VAE eq. 4).

    ``drop_first=True`` (separate first frame / causal VAE) drops the first output frame of the clip, so the first
    latent frame decodes to one frame: ``1 + k`` frames -> ``1 + 2k``.
    """

    def __init__(self, channels: int, tdc: bool = False, drop_first: bool = False):
        super().__init__()
        self.conv = CausalConv3d(channels, 2 * channels, (2, 3, 3), tdc=tdc)
        self.drop_first = drop_first

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) -> (b c 2t h w), or (b c 2t-1 h w) with ``drop_first``."""
        first = is_first_chunk(cache, self)
        if cache is not None:
            cache.mark_seen(self)
        y = self.conv(x, cache)  # b (2 c) t h w
        y = rearrange(y, "b (r c) t h w -> b c (t r) h w", r=2)  # depth-to-time: channel half r -> frame 2t + r
        return y[:, :, 1:] if self.drop_first and first else y

    @torch.no_grad()
    def init_broadcast(self) -> None:
        """VC-VAE eq. 4: ``W_up = concat(I, I)`` on the current tap (spatial centre), other taps and bias zero."""
        w = self.conv.weight
        w.zero_()
        c = w.shape[1]
        eye = torch.eye(c, dtype=w.dtype)
        w[:, :, -1, 1, 1] = torch.cat([eye, eye], dim=0)
        self.conv.bias.zero_()
