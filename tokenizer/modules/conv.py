"""Temporal 3D convolutions of the toolkit's video VAEs: causal, group causal, and the per-frame spatial conv.

All of them are ``nn.Conv3d`` subclasses (so the state dict holds a plain ``weight``/``bias``, named as in the 2D
image VAE they may be inflated from) with zero spatial padding inside the conv and the temporal padding done by
hand, because the padding is what defines them:

- :class:`CausalConv3d` (WF-VAE, CogVideoX, Open-Sora-Plan; VC-VAE eq. 1): the first frame is replicated
  ``k_t - 1`` times in front, nothing behind, so output ``t`` sees frames ``t - k_t + 1 .. t`` only.
- :class:`GroupCausalConv3d` (IV-VAE; VC-VAE eq. 2): frames are cut into groups; each group is padded in front
  with the last frame(s) of the previous group and behind with zeros (``back_pad='zeros'``, IV-VAE) or copies of
  its own last frame (``back_pad='replicate'``), so inside a group the conv is bidirectional and no group ever sees
  a later group.

Both take ``tdc=True`` to apply the kernel in the anchor + difference form (:mod:`tokenizer.modules.tdc`) and a
``cache`` (:class:`~tokenizer.modules.cache.FrameCache`) for chunked inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .cache import FrameCache
from .tdc import tdc_kernel


# Below this input width a temporal conv runs as k_t per-tap 2D convs over frames folded into the batch: PyTorch's
# CPU conv3d falls back to its slow im2col kernel for small batches, which is several times slower there.
TAPS_MAX_IN_CHANNELS = 16


def temporal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride_t: int = 1,
                  padding_hw: tuple[int, int] = (1, 1)) -> torch.Tensor:
    """``F.conv3d`` with no temporal padding: x (b c_in t h w), weight (c_out c_in k_t k_h k_w) -> (b c_out t' h' w').

    Narrow convs on CPU are computed as ``y_t = sum_i conv2d(x_{t s + i}, W_i)``; the result is the same sum.
    """
    if x.device.type != "cpu" or weight.shape[1] > TAPS_MAX_IN_CHANNELS:
        return F.conv3d(x, weight, bias, stride=(stride_t, 1, 1), padding=(0, *padding_hw))
    b, c, t, h, w = x.shape
    k_t = weight.shape[2]
    t_out = (t - k_t) // stride_t + 1
    frames = rearrange(x, "b c t h w -> b t c h w")
    y = None
    for i in range(k_t):  # tap i sees frames i, i + s, ..., i + s (t_out - 1)
        tap = frames[:, i: i + stride_t * (t_out - 1) + 1: stride_t].reshape(b * t_out, c, h, w)
        y_i = F.conv2d(tap, weight[:, :, i], bias if i == 0 else None, padding=padding_hw)
        y = y_i if y is None else y.add_(y_i)
    return rearrange(y, "(b t) c h w -> b c t h w", b=b)


def _triple(k: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (k, k, k) if isinstance(k, int) else tuple(k)


class _TemporalConv3d(nn.Conv3d):
    """Shared parts: ``k_t x k_h x k_w`` kernel, 'same' spatial zero padding, no temporal padding, optional TDC."""

    anchor: int  # index of the TDC anchor tap, also the tap that receives a 2D kernel at inflation

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 stride_t: int = 1, tdc: bool = False):
        k_t, k_h, k_w = _triple(kernel_size)
        super().__init__(in_channels, out_channels, (k_t, k_h, k_w), stride=(stride_t, 1, 1),
                         padding=(0, k_h // 2, k_w // 2))  # default nn.Conv3d init (kaiming-uniform, a=sqrt 5)
        self.tdc = tdc

    @property
    def k_t(self) -> int:
        return self.kernel_size[0]

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return temporal_conv(x, weight, bias, self.stride[0], self.padding[1:])

    def effective_weight(self) -> torch.Tensor:
        """The plain kernel this module applies: ``W`` itself, or its TDC transform (VC-VAE eqs. 5-7)."""
        return tdc_kernel(self.weight, self.anchor) if self.tdc else self.weight

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tdc={self.tdc}, anchor={self.anchor}"


class CausalConv3d(_TemporalConv3d):
    """Causal 3D conv: ``front`` replicated copies of the first frame in front (default ``k_t - 1``), none behind.

    ``front=0`` gives an unpadded temporal conv (the in-sequence temporal downsampler). With ``stride_t > 1`` the
    cache keeps the unfinished window, so chunk boundaries need not fall on stride windows. The TDC anchor is the
    current (last) tap, VC-VAE eq. 7.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 stride_t: int = 1, tdc: bool = False, front: int | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride_t, tdc)
        self.front = self.k_t - 1 if front is None else front
        self.anchor = self.k_t - 1

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c_in t h w) -> (b c_out t' h w), t' = (front + t - k_t) // stride_t + 1 over the whole clip."""
        history = None if cache is None else cache.get(self)
        if history is None:  # whole clip, or first chunk: replicate the first frame
            history = x[:, :, :1].expand(-1, -1, self.front, -1, -1)
        x = torch.cat([history, x], dim=2)  # b c (front|cached + t) h w
        length, stride = x.shape[2], self.stride[0]
        n_out = max((length - self.k_t) // stride + 1, 0)
        if cache is not None:  # frames the next chunk's first window still needs
            cache.put(self, x[:, :, n_out * stride:])
        if n_out == 0:
            if cache is None:
                raise ValueError(f"{type(self).__name__}: {length} frames (with padding) < temporal kernel {self.k_t}")
            return x.new_zeros(x.shape[0], self.out_channels, 0, *x.shape[3:])  # all frames wait in the cache
        return self._conv_forward(x, self.effective_weight(), self.bias)


class GroupCausalConv3d(_TemporalConv3d):
    """Group causal 3D conv (IV-VAE): groups of ``group_size`` frames, bidirectional inside, causal across groups.

    Group ``g`` is padded in front with the last ``p = k_t // 2`` frames before it (the last frame of the previous
    group for ``k_t = 3``) and behind with ``p`` zero frames (VC-VAE eq. 2). The first group of a clip has no
    predecessor; it is padded with copies of its own first frame, as a causal conv is, so the front difference
    taps of TDC see a static clip as static. ``back_pad='zeros'`` (IV-VAE's choice, the default) pads behind with
    zeros, so at the last frame of every group TDC computes ``W_f * (0 - X_t)`` and a static clip does *not* give
    the same output at group ends as inside a group (unless the future taps are zero, as at inflation);
    ``back_pad='replicate'`` pads with copies of the group's last frame, so a static clip stays static everywhere.
    Groups of one frame are built as :class:`GroupOfOneConv3d` by :class:`ConvSpec`. ``lone_first=True``
    (separate first-frame processing) makes the first frame a group of its own at every level. The TDC anchor is
    the centre tap, VC-VAE eq. 5.
    """

    def __init__(self, in_channels: int, out_channels: int, group_size: int, kernel_size: int | tuple = 3,
                 tdc: bool = False, lone_first: bool = False, back_pad: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, 1, tdc)
        if self.k_t % 2 != 1:
            raise ValueError(f"group causal conv needs an odd temporal kernel, got {self.k_t}")
        if group_size < 1:
            raise ValueError(f"group size must be >= 1, got {group_size}")
        check_back_pad(back_pad)
        self.group_size = group_size
        self.lone_first = lone_first
        self.back_pad = back_pad
        self.pad = self.k_t // 2
        self.anchor = self.k_t // 2

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c_in t h w) -> (b c_out t h w); t must be a whole number of groups (plus the lone first frame)."""
        history = None if cache is None else cache.get(self)
        weight = self.effective_weight()
        outputs = []
        if history is None:  # start of the clip
            history = x[:, :, :1].expand(-1, -1, self.pad, -1, -1)
            if self.lone_first:  # frame 0 is a group of one
                outputs.append(self._groups(x[:, :, :1], history, 1, weight))
                history, x = x[:, :, :1].expand(-1, -1, self.pad, -1, -1), x[:, :, 1:]
        if x.shape[2] % self.group_size:
            raise ValueError(f"group causal conv: {x.shape[2]} frames is not a whole number of groups of "
                             f"{self.group_size}" + (" after the lone first frame" if self.lone_first else ""))
        if x.shape[2]:
            outputs.append(self._groups(x, history, self.group_size, weight))
        if cache is not None:  # the last p frames seen: the next group's front pad
            cache.put(self, x[:, :, -self.pad:] if x.shape[2] >= self.pad else
                      torch.cat([history, x], dim=2)[:, :, -self.pad:])
        if not outputs:  # an empty chunk
            return x.new_zeros(x.shape[0], self.out_channels, 0, *x.shape[3:])
        return torch.cat(outputs, dim=2) if len(outputs) > 1 else outputs[0]

    def _groups(self, x: torch.Tensor, history: torch.Tensor, g: int, weight: torch.Tensor) -> torch.Tensor:
        """Convolve the groups of ``x`` (b c n*g h w); ``history`` (b c p h w) holds the p frames before ``x``."""
        b, _, t, h, w = x.shape
        n, p = t // g, self.pad
        if p == 1:
            # The two causal taps over (x_{t-1}, x_t) for every frame, then the future tap W_2 x_{t+1} only where
            # t + 1 is in the same group (the last frame of a group sees the back pad: zeros, or itself). The same
            # sum as convolving each padded group, without copying the clip into groups, and exactly causal
            # across groups.
            hw = self.padding[1:]
            y = self._conv_forward(torch.cat([history, x], dim=2), weight[:, :, :2], self.bias)  # b c_out t h w
            replicate = self.back_pad == "replicate"
            for r in range(g - 1 + replicate):  # frame r of every group sees frame r + 1 of its group
                nxt = rearrange(x[:, :, min(r + 1, g - 1)::g], "b c n h w -> (b n) c h w")
                future = F.conv2d(nxt, weight[:, :, 2], padding=hw)
                y[:, :, r::g] += rearrange(future, "(b n) c h w -> b c n h w", b=b)
            return y
        seq = torch.cat([history, x], dim=2)  # b c (p + t) h w
        # front pad of group i = the p frames just before it = seq[p + i g - p : p + i g]
        idx = (torch.arange(n, device=x.device) * g)[:, None] + torch.arange(p, device=x.device)[None]  # n p
        front = seq[:, :, idx]  # b c n p h w
        body = rearrange(x, "b c (n g) h w -> b c n g h w", g=g)
        back = (body[:, :, :, -1:].expand(-1, -1, -1, p, -1, -1) if self.back_pad == "replicate" else
                x.new_zeros(b, x.shape[1], n, p, h, w))
        groups = torch.cat([front, body, back], dim=3)  # b c n (p + g + p) h w
        groups = rearrange(groups, "b c n g h w -> (b n) c g h w")
        y = self._conv_forward(groups, weight, self.bias)  # (b n) c_out g h w
        return rearrange(y, "(b n) c g h w -> b c (n g) h w", b=b)


class FrameConv3d(nn.Conv3d):
    """A 2D conv applied to every frame (kernel ``1 x k x k``): the spatial samplers and 1x1 shortcuts."""

    anchor = 0

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None):
        padding = kernel_size // 2 if padding is None else padding
        super().__init__(in_channels, out_channels, (1, kernel_size, kernel_size), stride=(1, stride, stride),
                         padding=(0, padding, padding))

    def forward(self, x: torch.Tensor, cache: FrameCache | None = None) -> torch.Tensor:
        """x: (b c_in t h w) -> (b c_out t h' w'); frames never mix, so there is nothing to cache."""
        return super().forward(x)


@dataclass(frozen=True)
class ConvSpec:
    """Which temporal conv a block builds: ``kind`` 'causal' | 'group_causal', TDC on/off, the group layout."""

    kind: str = "causal"
    tdc: bool = False
    group_size: int = 1
    lone_first: bool = False
    back_pad: str = "zeros"  # group causal only: 'zeros' (IV-VAE) | 'replicate' (the group's last frame)

    def __post_init__(self):
        if self.kind not in ("causal", "group_causal"):
            raise ValueError(f"conv type must be 'causal' or 'group_causal', got '{self.kind}'")
        check_back_pad(self.back_pad)

    def make(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> _TemporalConv3d:
        if self.kind == "causal":
            return CausalConv3d(in_channels, out_channels, kernel_size, tdc=self.tdc)
        if self.group_size == 1 and LEAN_GROUPS_OF_ONE:
            return GroupOfOneConv3d(in_channels, out_channels, kernel_size, tdc=self.tdc, back_pad=self.back_pad)
        return GroupCausalConv3d(in_channels, out_channels, self.group_size, kernel_size, tdc=self.tdc,
                                 lone_first=self.lone_first, back_pad=self.back_pad)


BACK_PADS = ("zeros", "replicate")


def check_back_pad(back_pad: str) -> None:
    if back_pad not in BACK_PADS:
        raise ValueError(f"group-end padding must be one of {', '.join(BACK_PADS)}, got '{back_pad}'")


# ConvSpec.make builds a group causal conv over groups of one frame as the causal conv without its dead future taps
# (:class:`GroupOfOneConv3d`). False rebuilds the layout of checkpoints saved before that change (k_t = 3 there);
# such checkpoints also load directly into the new layout (GroupOfOneConv3d converts them, see ``old_weight``).
LEAN_GROUPS_OF_ONE = True


class GroupOfOneConv3d(CausalConv3d):
    """A group causal conv whose groups hold one frame, computed without the taps that only see the back pad.

    A group of one frame ``t``, padded in front with the ``p = k_t // 2`` frames before it (copies of frame 0 at
    the start of the clip) and behind with ``p`` zero frames (VC-VAE eq. 2), meets the back taps only on zeros:

        y_t = sum_{i < p} W_i x_{t - p + i} + W_p x_t  (+ sum_{i > p} W_i * 0)

    which is a causal conv of ``k_t' = p + 1`` taps (first frame replicated in front, the current frame the
    anchor). With TDC (eq. 5, anchor = centre tap ``p``) the group conv applies ``W_p - sum_{i != p} W_i`` to
    ``x_t``; the causal conv's TDC (eq. 7, anchor = last tap) applies ``V_p - sum_{i < p} V_i``, so the zero taps
    fold into the anchor: ``V_i = W_i`` (i < p), ``V_p = W_p - sum_{i > p} W_i``. With ``back_pad='replicate'``
    the back taps meet copies of ``x_t`` instead: without TDC they add to the anchor (``V_p = W_p + sum_{i > p}
    W_i``), with TDC their differences are zero (``V_p = W_p``). Either way the two paddings give the same family
    of functions for groups of one frame; they differ only in how a group-layout kernel converts. State-dict keys
    are unchanged, the temporal kernel is ``p + 1`` taps long instead of ``2 p + 1``; :meth:`old_weight` converts
    (and checkpoints of the old layout, all saved with zero padding, are converted on load). The 2D kernel of an
    inflated image VAE still goes to the anchor tap.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int, int] = 3,
                 tdc: bool = False, back_pad: str = "zeros"):
        k_t, k_h, k_w = _triple(kernel_size)
        if k_t % 2 != 1:
            raise ValueError(f"group causal conv needs an odd temporal kernel, got {k_t}")
        check_back_pad(back_pad)
        super().__init__(in_channels, out_channels, (k_t // 2 + 1, k_h, k_w), tdc=tdc)
        self.group_kernel_t = k_t
        self.back_pad = back_pad

    def old_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The group causal kernel (c_out c_in 2p+1 k_h k_w) -> this module's kernel (c_out c_in p+1 k_h k_w)."""
        p = self.group_kernel_t // 2
        if weight.shape[2] != 2 * p + 1:
            raise ValueError(f"expected a group causal kernel of {2 * p + 1} taps, got {tuple(weight.shape)}")
        new = weight[:, :, :p + 1].clone()
        if self.back_pad == "zeros" and self.tdc:  # the zero taps fold into the anchor
            new[:, :, p] -= weight[:, :, p + 1:].sum(dim=2)
        elif self.back_pad == "replicate" and not self.tdc:  # the back taps see x_t: they add to the anchor
            new[:, :, p] += weight[:, :, p + 1:].sum(dim=2)
        return new

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        w = state_dict.get(prefix + "weight")
        if w is not None and w.ndim == 5 and w.shape[2] == self.group_kernel_t != self.k_t:
            if self.back_pad != "zeros":  # checkpoints of the old layout predate the switch: they padded with zeros
                raise ValueError(f"{prefix}weight has the old {self.group_kernel_t}-tap layout, saved with zero "
                                 "group-end padding; load it with group_end_pad='zeros'")
            state_dict[prefix + "weight"] = self.old_weight(w)  # a checkpoint of the old (group causal) layout
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

