"""Per-frame normalisation, the 3D residual block and per-frame spatial attention.

Names and sizes follow the blocks of the diffusers ``AutoencoderKL`` (``norm1``, ``conv1``, ``norm2``, ``conv2``,
``conv_shortcut``; ``group_norm``, ``to_q``, ``to_k``, ``to_v``, ``to_out.0``), so an image VAE's state dict maps
onto these modules key for key and only the temporal taps of the convs are new.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .cache import FrameCache
from .conv import ConvSpec, FrameConv3d


class FrameGroupNorm(nn.GroupNorm):
    """GroupNorm over (channels in a group, h, w) of each frame separately.

    Statistics never mix frames: a GroupNorm over T would make frame t depend on later frames and would break
    chunked (causal-cache) inference.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b c t h w) -> (b c t h w)."""
        b = x.shape[0]
        y = rearrange(x, "b c t h w -> (b t) c h w")
        y = F.group_norm(y, self.num_groups, self.weight, self.bias, self.eps)
        return rearrange(y, "(b t) c h w -> b c t h w", b=b)


class ResnetBlock3D(nn.Module):
    """norm -> SiLU -> conv -> norm -> SiLU -> conv, plus a (1x1 conv) shortcut: diffusers ``ResnetBlock2D`` in 3D."""

    def __init__(self, in_channels: int, out_channels: int, conv: ConvSpec, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.norm1 = FrameGroupNorm(groups, in_channels, eps=eps)
        self.conv1 = conv.make(in_channels, out_channels)
        self.norm2 = FrameGroupNorm(groups, out_channels, eps=eps)
        self.conv2 = conv.make(out_channels, out_channels)
        # 1x1 projection when the width changes (diffusers: conv_shortcut, LDM: nin_shortcut)
        self.conv_shortcut = FrameConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c_in t h w) -> (b c_out t h w)."""
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        skip = x if self.conv_shortcut is None else self.conv_shortcut(x)
        return skip + h


class FrameAttention(nn.Module):
    """Single-head self-attention over the h*w positions of each frame (the image VAE's mid-block attention)."""

    def __init__(self, channels: int, groups: int = 32, eps: float = 1e-6):
        super().__init__()
        self.group_norm = FrameGroupNorm(groups, channels, eps=eps)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])  # 'to_out.0', as diffusers names it

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c t h w) -> (b c t h w); frames never mix."""
        b, c, t, h, w = x.shape
        tokens = rearrange(self.group_norm(x), "b c t h w -> (b t) 1 (h w) c")
        q, k, v = self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, one head of width c
        out = self.to_out[0](out)
        return x + rearrange(out, "(b t) 1 (h w) c -> b c t h w", b=b, h=h)
