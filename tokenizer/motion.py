"""DeCo-VAE's motion module M (paper sec. 3.2, eqs. 4-5): scale-space flow, its estimators and their pre-training.

Scale-space flow (Agustsson et al., CVPR 2020; paper ref. [2]). A motion field ``m`` has three channels:

- ``m[:, 0]``, ``m[:, 1]``: flow x and flow y in the normalised units of ``grid_sample`` (``align_corners=False``):
  a displacement of 2 spans the whole width (height), so ``flow_px = flow * size / 2``;
- ``m[:, 2]``: scale, in *levels* of the Gaussian scale-space volume: 0 = the sharp frame, ``k`` = level ``k``,
  fractional values interpolate between levels (the volume has ``num_levels + 1`` levels).

The warp ``W(x, m)`` samples the volume trilinearly at (pixel grid + flow, scale) with border padding, in float32.
CompressAI's ``ScaleSpaceFlow`` (the public reference) takes the depth coordinate in grid_sample's normalised units
instead, ``z = (2 s + 1) / (num_levels + 1) - 1`` (:func:`scale_to_grid`); with that conversion the two warps agree
to float rounding, and "zero flow, scale 0" returns the frame itself.

The flow is backward: ``W(x_0, m_t)(p) = x_0(p + flow_t(p))`` predicts frame ``t`` from the keyframe.

Estimators ``M(concat(x_t, x_0)) -> m_t``:

- :class:`MotionEstimator`: a small U-Net, pre-trained self-supervised (:func:`pretrain_motion`: Charbonnier
  photometric warp loss plus first-order edge-aware smoothness), because no pre-trained module is published;
- :class:`HornSchunckFlow`: the training-free baseline, coarse-to-fine Horn-Schunck optical flow with scale 0.
  Written in torch rather than taken from OpenCV (Farneback) so that it runs batched on the VAE's device inside its
  forward pass, with no extra dependency and no per-frame host round trip.

CLI: ``python -m tokenizer.motion pretrain --config configs/tokenizer/motion_pretrain.yaml [key=value ...]``.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .config import ConfigError, load_config, print_config, to_dict
from .data import DataConfig
from .io import load_weights, save_weights

MOTION_KINDS = ("learned", "classical")


@dataclass
class MotionConfig:
    """The motion module: which estimator, its size, and the scale-space volume of the warp."""

    kind: str = "learned"  # learned (U-Net, pre-trained) | classical (Horn-Schunck, scale 0, no parameters)
    channels: list[int] = field(default_factory=lambda: [32, 64, 96, 128])  # U-Net widths, 1/2 -> 1/16 res
    sigma0: float = 1.5  # blur of volume level 1 (scale-space flow paper / CompressAI default)
    num_levels: int = 5  # the volume holds num_levels + 1 levels (level 0 = the frame)
    scale_offset: float = 4.0  # scale = softplus(gain raw - offset): ~0.018 levels at init, gradients flow at once
    scale_gain: float = 10.0
    flow_gain: float = 10.0  # flow in pixels = gain raw, as the scale is gained; ungained, blur won (MotionEstimator)
    hs_alpha: float = 15.0  # Horn-Schunck smoothness weight (intensities on a 0..255 scale)
    hs_iterations: int = 60  # Jacobi iterations per warp
    hs_warps: int = 3  # re-linearisations per pyramid level
    hs_min_size: int = 16  # coarsest pyramid level: shorter side at least this

    def validate(self) -> None:
        if self.kind not in MOTION_KINDS:
            raise ConfigError(f"motion kind must be one of {', '.join(MOTION_KINDS)}, got '{self.kind}'")
        if self.num_levels < 1 or self.sigma0 <= 0:
            raise ConfigError(f"scale-space volume needs num_levels >= 1 and sigma0 > 0, got {self.num_levels}, "
                              f"{self.sigma0}")
        if self.kind == "learned" and len(self.channels) < 2:
            raise ConfigError(f"the motion U-Net needs at least 2 levels of channels, got {self.channels}")


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


# -------------------------------------------------------------------------------------------------- estimators
class ConvAct(nn.Sequential):
    """3x3 conv (optionally strided) + LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1))


class MotionEstimator(nn.Module):
    """M(concat(x_t, x_0)) -> m_t (DeCo-VAE eq. 4): a small U-Net with skip connections.

    Encoder: a stride-2 stem (the field is predicted at half resolution, like most flow networks, at a quarter of
    the cost), then one stride-2 level per further entry of ``channels``; decoder: bilinear 2x upsampling,
    concatenation with the skip, two convs; head: 3x3 conv to (flow x, flow y, raw scale), bilinearly upsampled to
    the input size, its flow read as pixels of the input and converted to normalised units.

    Both head outputs are gained (``flow_gain``, ``scale_gain``). The features reaching the head are small (~0.03 at
    PyTorch's default init): an ungained flow moved too slowly (0.1-0.5 px after 150 Adam steps at lr 2e-3 on
    bikes.mp4 at 32x80, where Horn-Schunck finds ~1.6 px), and the photometric loss was lowered mostly by the gained
    scale, i.e. by blurring the keyframe instead of moving it.
    """

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        ch = list(cfg.channels)
        self.scale_offset, self.scale_gain, self.flow_gain = cfg.scale_offset, cfg.scale_gain, cfg.flow_gain
        self.stem = nn.Sequential(ConvAct(6, ch[0], stride=2), ConvAct(ch[0], ch[0]))
        self.down = nn.ModuleList([nn.Sequential(ConvAct(ch[i - 1], ch[i], stride=2), ConvAct(ch[i], ch[i]))
                                   for i in range(1, len(ch))])
        self.up = nn.ModuleList([nn.Sequential(ConvAct(ch[i] + ch[i - 1], ch[i - 1]), ConvAct(ch[i - 1], ch[i - 1]))
                                 for i in range(len(ch) - 1, 0, -1)])
        self.head = nn.Conv2d(ch[0], 3, 3, 1, 1)
        self.multiple = 2 ** len(ch)
        # zero biases: PyTorch's default U(+-1/sqrt(fan_in)) biases are as large as the activations they add to (~0.03),
        # so at init the features were mostly input-independent offsets (zeroing them draws nothing: same RNG stream)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.zeros_(conv.bias)
        # zero head: zero flow and scale softplus(-offset) ~ 0 at init, so W(x_0, M(x_t, x_0)) starts as x_0
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x_t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
        """x_t, x_0: (b 3 h w) in [-1, 1] -> m_t (b 3 h w): normalised flow x, y and scale in levels (>= 0)."""
        h, w = x_t.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple  # pad to a multiple of the U-Net's stride
        x = F.pad(torch.cat([x_t, x_0], dim=1), (0, pw, 0, ph), mode="replicate")  # b 6 h' w'
        skips = [self.stem(x)]
        for block in self.down:
            skips.append(block(skips[-1]))
        y = skips.pop()
        for block in self.up:
            skip = skips.pop()
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        out = F.interpolate(self.head(y), scale_factor=2, mode="bilinear", align_corners=False)[..., :h, :w]
        # the head speaks (gained) pixels and (gained) levels, so Adam's ~lr-sized steps move both at a useful pace
        flow = flow_px_to_norm(self.flow_gain * out[:, :2])
        scale = F.softplus(self.scale_gain * out[:, 2:] - self.scale_offset)
        return torch.cat([flow, scale], dim=1)


_HS_AVERAGE = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


class HornSchunckFlow(nn.Module):
    """Training-free baseline: coarse-to-fine Horn-Schunck flow from x_0 to x_t, scale 0. No parameters.

    Per pyramid level (coarsest first) and warp: linearise ``x_0(p + u) = x_t(p)`` around the current flow ``u0``
    (``Iw`` = x_0 warped by u0), ``Ix du + Iy dv + (Iw - x_t) = 0``, and run Jacobi iterations of Horn and Schunck
    (1981): ``u = u_avg - Ix (Ix u_avg + Iy v_avg + It) / (alpha^2 + Ix^2 + Iy^2)`` with
    ``It = Iw - x_t - Ix u0 - Iy v0`` (so ``u`` is the total flow and smoothness acts on it).
    """

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        self.alpha, self.iterations, self.warps, self.min_size = cfg.hs_alpha, cfg.hs_iterations, cfg.hs_warps, \
            cfg.hs_min_size

    @staticmethod
    def _warp(img: torch.Tensor, flow_px: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(img, base_grid(*img.shape[-2:], img.device) + rearrange(flow_px_to_norm(flow_px),
                             "b m h w -> b h w m"), mode="bilinear", padding_mode="border", align_corners=False)

    @torch.no_grad()
    def forward(self, x_t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
        """x_t, x_0: (b 3 h w) in [-1, 1] -> m_t (b 3 h w): normalised flow, scale 0."""
        # grey on a 0..255 scale (alpha is tuned for it), lightly pre-smoothed against noise and aliasing
        g_t = gaussian_blur((x_t.float().mean(1, keepdim=True) + 1) * 127.5, 1.0)
        g_0 = gaussian_blur((x_0.float().mean(1, keepdim=True) + 1) * 127.5, 1.0)
        pyramid = [(g_t, g_0)]
        while min(pyramid[-1][0].shape[-2:]) >= 2 * self.min_size:
            a, b = pyramid[-1]
            pyramid.append((F.avg_pool2d(gaussian_blur(a, 1.0), 2), F.avg_pool2d(gaussian_blur(b, 1.0), 2)))
        avg = _HS_AVERAGE.to(g_t)[None, None].expand(2, 1, 3, 3)
        flow = torch.zeros(x_t.shape[0], 2, *pyramid[-1][0].shape[-2:], device=x_t.device)  # b 2 h w, pixels
        for a, b in reversed(pyramid):
            if flow.shape[-2:] != a.shape[-2:]:
                scale = torch.tensor([a.shape[-1] / flow.shape[-1], a.shape[-2] / flow.shape[-2]], device=a.device)
                flow = F.interpolate(flow, size=a.shape[-2:], mode="bilinear", align_corners=False) * \
                    scale.view(1, 2, 1, 1)
            for _ in range(self.warps):
                iw = self._warp(b, flow)
                ix = (iw.roll(-1, -1) - iw.roll(1, -1)) / 2  # central differences
                iy = (iw.roll(-1, -2) - iw.roll(1, -2)) / 2
                ix[..., :, [0, -1]] = 0  # no wrap-around gradient at the borders
                iy[..., [0, -1], :] = 0
                it = iw - a - ix * flow[:, :1] - iy * flow[:, 1:]
                denom = self.alpha ** 2 + ix ** 2 + iy ** 2
                for _ in range(self.iterations):
                    mean = F.conv2d(F.pad(flow, (1, 1, 1, 1), mode="replicate"), avg, groups=2)  # b 2 h w
                    resid = (ix * mean[:, :1] + iy * mean[:, 1:] + it) / denom
                    flow = mean - torch.cat([ix, iy], dim=1) * resid
        zero_scale = torch.zeros_like(flow[:, :1])
        return torch.cat([flow_px_to_norm(flow), zero_scale], dim=1).to(x_t.dtype)


class MotionModule(nn.Module):
    """M and W together: ``estimate(x_t, x_0) -> m_t`` (eq. 4) and ``warp(x_0, m_t) -> x_hat_t^m`` (eq. 5)."""

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.estimator = MotionEstimator(cfg) if cfg.kind == "learned" else HornSchunckFlow(cfg)
        self.warper = ScaleSpaceWarp(cfg.sigma0, cfg.num_levels)

    def estimate(self, frames: torch.Tensor, keyframe: torch.Tensor) -> torch.Tensor:
        """frames (b 3 t h w), keyframe (b 3 h w) -> motion (b 3 t h w); frames (b 3 h w) -> (b 3 h w)."""
        if frames.ndim == 4:
            return self.estimator(frames, keyframe)
        t = frames.shape[2]
        x_t = rearrange(frames, "b c t h w -> (b t) c h w")
        x_0 = rearrange(keyframe.unsqueeze(2).expand(-1, -1, t, -1, -1), "b c t h w -> (b t) c h w")
        return rearrange(self.estimator(x_t, x_0), "(b t) m h w -> b m t h w", t=t)

    def warp(self, keyframe: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        return self.warper(keyframe, motion)

    def forward(self, frames: torch.Tensor, keyframe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """frames (b 3 [t] h w), keyframe (b 3 h w) -> (motion, prediction W(keyframe, motion)), same layouts."""
        m = self.estimate(frames, keyframe)
        return m, self.warp(keyframe, m)

    def load_pretrained(self, path: str | Path) -> str:
        """Load motion weights written by ``python -m tokenizer.motion pretrain``; returns the file's SHA-256."""
        from .io import sha256_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"motion checkpoint {path} not found: pre-train one with `python -m tokenizer.motion pretrain "
                f"--config configs/tokenizer/motion_pretrain.yaml` (no pre-trained DeCo-VAE motion module is "
                f"published), or set motion_ckpt=null to start from a random motion module")
        if self.config.kind != "learned":
            raise ValueError(f"motion kind '{self.config.kind}' has no weights to load from {path}")
        state, record = load_weights(path)
        saved = (record or {}).get("motion")
        if saved is not None:
            saved = {"flow_gain": 1.0, **saved}  # checkpoints written before flow_gain existed had an ungained flow
            for key in ("channels", "sigma0", "num_levels", "scale_offset", "scale_gain", "flow_gain"):
                if key in saved and saved[key] != getattr(self.config, key):
                    raise ValueError(f"{path}: motion module was trained with {key}={saved[key]}, this model has "
                                     f"{key}={getattr(self.config, key)}")
        state = {k.removeprefix("estimator."): v for k, v in state.items()}
        self.estimator.load_state_dict(state, strict=True)
        return sha256_file(path)


def flow_to_rgb(motion: torch.Tensor, max_flow: float | None = None) -> torch.Tensor:
    """Flow as a colour picture: (b 2|3 [t] h w) -> (b 3 [t] h w) in [-1, 1] (the video convention).

    Hue = direction, ``atan2(flow_y, flow_x) / 2 pi`` in image axes (y down; +x is red), saturation =
    magnitude / ``max_flow`` (default: the largest magnitude per sample), value = 1, so zero motion is white. The
    scale channel is ignored.
    """
    flow = flow_norm_to_px(motion[:, :2].float())
    mag = flow.norm(dim=1)  # b [t] h w
    if max_flow is None:
        max_flow = mag.flatten(1).amax(1).clamp_min(1e-6).view(-1, *[1] * (mag.ndim - 1))
    hue = torch.remainder(torch.atan2(flow[:, 1], flow[:, 0]) / (2 * math.pi), 1.0)
    sat = (mag / max_flow).clamp(0, 1)
    return hsv_to_rgb(hue, sat, torch.ones_like(sat)) * 2 - 1


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HSV in [0, 1] (any equal shapes (b ...)) -> RGB (b 3 ...) in [0, 1]."""
    i = torch.floor(h * 6)
    f = h * 6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    table = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]  # per sextant of the hue circle
    out = torch.zeros(3, *h.shape, dtype=h.dtype, device=h.device)
    for k, rgb in enumerate(table):
        sel = i == k
        for c in range(3):
            out[c] = torch.where(sel, rgb[c], out[c])
    return rearrange(out, "c b ... -> b c ...")


# ------------------------------------------------------------------------------------------------- pre-training
@dataclass
class MotionLossConfig:
    charbonnier_eps: float = 1e-3
    smooth_weight: float = 0.02  # first-order smoothness of the flow (in pixels)
    scale_smooth_weight: float = 0.02  # first-order smoothness of the scale (in levels)
    edge_weight: float = 10.0  # edge awareness: weights exp(-edge_weight * |grad x_t|) (x_t in [-1, 1])


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """sqrt(x^2 + eps^2): a differentiable L1."""
    return torch.sqrt(x * x + eps * eps)


def edge_aware_smoothness(field: torch.Tensor, image: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """mean |d field| exp(-edge_weight mean_c |d image|) over the x and y first differences; (b k h w), (b c h w)."""
    loss = 0.0
    for dim in (-1, -2):
        d_field = field.diff(dim=dim).abs()
        weight = torch.exp(-edge_weight * image.diff(dim=dim).abs().mean(1, keepdim=True))
        loss = loss + (d_field * weight).mean()
    return loss


def motion_loss(motion: torch.Tensor, pred: torch.Tensor, x_t: torch.Tensor, cfg: MotionLossConfig) -> dict:
    """Self-supervised loss of M: photometric Charbonnier(W(x_0, m) - x_t) + smoothness of flow and scale."""
    photo = charbonnier(pred - x_t, cfg.charbonnier_eps).mean()
    smooth = edge_aware_smoothness(flow_norm_to_px(motion[:, :2]), x_t, cfg.edge_weight)
    scale_smooth = edge_aware_smoothness(motion[:, 2:], x_t, cfg.edge_weight)
    total = photo + cfg.smooth_weight * smooth + cfg.scale_smooth_weight * scale_smooth
    return {"loss": total, "photometric": photo.detach(), "smooth": smooth.detach(),
            "scale_smooth": scale_smooth.detach()}


def clip_pairs(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x_t, x_0) pair of a batch of clips, keyframe = first frame: (b c t h w) -> two ((b t-1) c h w)."""
    t = video.shape[2]
    x_t = rearrange(video[:, :, 1:], "b c t h w -> (b t) c h w")
    x_0 = rearrange(video[:, :, :1].expand(-1, -1, t - 1, -1, -1), "b c t h w -> (b t) c h w")
    return x_t, x_0


def motion_module_of(model: nn.Module) -> MotionModule:
    """``model`` itself if it is a :class:`MotionModule`, else its ``motion`` attribute (DeCo-VAE)."""
    module = model if isinstance(model, MotionModule) else getattr(model, "motion", None)
    if not isinstance(module, MotionModule):
        raise ValueError(f"{type(model).__name__} has no motion module to pre-train")
    return module


def motion_pretrain_loss(model: nn.Module, video: torch.Tensor,
                         cfg: MotionLossConfig | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The motion stage's objective for a model with a ``motion`` module (DeCo-VAE) or a :class:`MotionModule`:
    every (x_t, x_0) pair of the clips ``video`` (b 3 t h w) -> (loss, {name: detached term})."""
    module = motion_module_of(model)
    x_t, x_0 = clip_pairs(video)  # ((b t-1) c h w) each
    motion, pred = module(x_t, x_0)
    terms = motion_loss(motion, pred, x_t, cfg or MotionLossConfig())
    return terms["loss"], {f"motion/{k}": v.detach() for k, v in terms.items() if k != "loss"}


def pretrain_motion(model: nn.Module, clips: Iterable[torch.Tensor], steps: int, lr: float = 2e-4,
                    loss_cfg: MotionLossConfig | None = None, betas: Sequence[float] = (0.9, 0.999),
                    grad_clip: float = 1.0, log_every: int = 0, log=print) -> list[float]:
    """Pre-train the learned estimator of ``model`` (a :class:`MotionModule` or a DeCo-VAE) for ``steps`` Adam steps
    on ``clips`` (cycled).

    ``clips`` yields videos (b 3 t h w) in [-1, 1]; each step uses every (x_t, x_0) pair of one batch, the
    keyframe being the clip's first frame, as in DeCo-VAE's decoupling. Returns the loss of every step.
    """
    module = motion_module_of(model)
    if not isinstance(module.estimator, MotionEstimator):
        raise ValueError("only the learned motion estimator has parameters to pre-train")
    loss_cfg = loss_cfg or MotionLossConfig()
    opt = torch.optim.Adam(module.estimator.parameters(), lr=lr, betas=tuple(betas))
    module.train()
    history, stream, t0 = [], _cycle(clips), time.time()
    for step in range(1, steps + 1):
        loss, terms = motion_pretrain_loss(module, next(stream), loss_cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(module.estimator.parameters(), grad_clip)
        opt.step()
        history.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == steps):
            log(f"step {step}/{steps} loss {history[-1]:.4f} photometric {float(terms['motion/photometric']):.4f} "
                f"smooth {float(terms['motion/smooth']):.4f} ({time.time() - t0:.1f}s)")
    module.eval()
    return history


def _cycle(clips: Iterable[torch.Tensor]) -> Iterator[torch.Tensor]:
    while True:
        n = 0
        for clip in clips:
            n += 1
            yield clip
        if n == 0:
            raise ValueError("pretrain_motion: no clips")


@torch.no_grad()
def warp_error(module: MotionModule, video: torch.Tensor) -> tuple[float, float]:
    """Mean |W(x_0, M(x_t, x_0)) - x_t| and the zero-motion error mean |x_0 - x_t| over frames t >= 1 of clips."""
    x_t, x_0 = clip_pairs(video)
    _, pred = module(x_t, x_0)
    return float((pred - x_t).abs().mean()), float((x_0 - x_t).abs().mean())


# ------------------------------------------------------------------------------------------------------------ CLI
@dataclass
class MotionTrainConfig:
    steps: int = 2000
    batch_size: int = 4
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    grad_clip: float = 1.0
    seed: int = 0
    num_workers: int = 0
    log_every: int = 50
    out: str = "runs/motion/motion.safetensors"  # the checkpoint DeCo-VAE's motion_ckpt points to


@dataclass
class MotionPretrainConfig:
    motion: MotionConfig = field(default_factory=MotionConfig)
    loss: MotionLossConfig = field(default_factory=MotionLossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: MotionTrainConfig = field(default_factory=MotionTrainConfig)


def run_pretrain(cfg: MotionPretrainConfig) -> Path:
    """Build the data and the module, pre-train, write ``cfg.train.out`` (safetensors + config metadata)."""
    from torch.utils.data import DataLoader

    from .data import build_dataset

    torch.manual_seed(cfg.train.seed)
    dataset = build_dataset(cfg.data)
    loader = DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=False,
                        num_workers=cfg.train.num_workers, generator=torch.Generator().manual_seed(cfg.train.seed))
    module = MotionModule(cfg.motion)
    clips = (batch["video"] for batch in _cycle(loader))
    history = pretrain_motion(module, clips, cfg.train.steps, cfg.train.lr, cfg.loss, cfg.train.betas,
                              cfg.train.grad_clip, cfg.train.log_every)
    out = Path(cfg.train.out)
    save_weights({f"estimator.{k}": v for k, v in module.estimator.state_dict().items()}, out,
                 config={**to_dict(cfg), "final_loss": history[-1] if history else None})
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.motion",
                                     description="DeCo-VAE motion module: self-supervised pre-training.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pre-train the learned motion estimator, write a safetensors checkpoint")
    p.add_argument("--config", required=True, help="YAML, e.g. configs/tokenizer/motion_pretrain.yaml")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved config, then stop")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=100 data.root=/data/ucf101")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(MotionPretrainConfig, args.config, args.overrides)
        cfg.motion.validate()
        if cfg.motion.kind != "learned":
            raise ConfigError("motion.kind must be 'learned' to pre-train (the classical estimator has no weights)")
        if cfg.data.num_frames < 2:
            raise ConfigError("data.num_frames must be >= 2: pairs (x_t, x_0) need a keyframe and another frame")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print_config(cfg)
    if args.dry_run:
        return 0
    out = run_pretrain(cfg)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
