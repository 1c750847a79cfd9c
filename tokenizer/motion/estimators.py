"""Motion estimators M(concat(x_t, x_0)) -> m_t (DeCo-VAE eq. 4) and the motion module (M and W together).

- :class:`CoarseToFineFlow` (``kind="learned"``, the default): a PWC-Net-style estimator. A shared feature pyramid
  of both frames (1/2 .. 1/16 resolution); from the coarsest level to 1/4: warp x_0's features by the current flow,
  a local correlation (cost volume) against x_t's features, a small conv decoder predicts a residual flow update;
  the 1/4-resolution flow is upsampled bilinearly. A scale head reads the finest level. Outputs are bounded:
  flow = ``max_flow tanh(raw / max_flow)`` pixels per component, scale = ``num_levels sigmoid(raw)`` levels, so no
  input can make it diverge. One architecture for every DeCo-VAE preset, so one shipped weights file serves them all.
- :class:`OpenCVFlow` (``kind="classical"``): OpenCV's DIS optical flow (or Farneback), scale 0; training-free.

Flow is carried in pixels of the input frame inside the estimators and handed out in grid_sample's normalised
units (see :mod:`tokenizer.motion.warp`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from ..config import ConfigError
from .warp import ScaleSpaceWarp, base_grid, flow_px_to_norm

MOTION_KINDS = ("learned", "classical")
CLASSICAL_METHODS = ("dis", "farneback")
ARCH = "c2f-v1"  # recorded in weights files: checkpoints of another architecture are refused by name


@dataclass
class MotionConfig:
    """The motion module: which estimator and the scale-space volume of the warp."""

    kind: str = "learned"  # learned (coarse-to-fine network, pre-trained) | classical (OpenCV, scale 0)
    max_flow: float = 32.0  # |flow| bound in pixels of the input (tanh); the pyramid's reach is ~48 px
    classical: str = "dis"  # dis | farneback (kind=classical)
    sigma0: float = 1.5  # blur of volume level 1 (scale-space flow paper / CompressAI default)
    num_levels: int = 5  # the volume holds num_levels + 1 levels (level 0 = the frame)

    def validate(self) -> None:
        if self.kind not in MOTION_KINDS:
            raise ConfigError(f"motion kind must be one of {', '.join(MOTION_KINDS)}, got '{self.kind}'")
        if self.classical not in CLASSICAL_METHODS:
            raise ConfigError(f"classical motion must be one of {', '.join(CLASSICAL_METHODS)}, got "
                              f"'{self.classical}'")
        if self.num_levels < 1 or self.sigma0 <= 0 or self.max_flow <= 0:
            raise ConfigError(f"motion needs num_levels >= 1, sigma0 > 0 and max_flow > 0, got {self.num_levels}, "
                              f"{self.sigma0}, {self.max_flow}")


# ------------------------------------------------------------------------------------------- learned estimator
FEATURES = (16, 32, 64, 96)  # pyramid widths at 1/2, 1/4, 1/8, 1/16 of the input
DECODER = (64, 48, 32)  # flow decoder widths (one decoder per estimation level)
RADIUS = 3  # correlation search radius at every level: +-3 px at 1/16 = +-48 px of the input
FINEST = 1  # index of the finest estimation level (1/4 resolution)


class ConvAct(nn.Sequential):
    """3x3 conv (optionally strided) + LeakyReLU(0.1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, 3, stride, 1), nn.LeakyReLU(0.1))


def correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """Local cost volume of cosine similarities: (b c h w) x2 -> (b (2r+1)^2 h w), channel k = <f1(p), f2(p + d_k)>
    of unit feature vectors (zero outside), d_k = (dx, dy) in row-major order over [-r, r]^2.

    Cosine, not the raw dot product: at initialisation the features are small (~0.01 at 1/16) and a raw product
    (~1e-5) gave the decoders nothing to learn from (EPE did not fall in 400 steps; with cosine it halves in 100).
    """
    h, w = f1.shape[-2:]
    f1, f2 = F.normalize(f1, dim=1), F.pad(F.normalize(f2, dim=1), (radius,) * 4)
    return torch.stack([(f1 * f2[..., dy:dy + h, dx:dx + w]).sum(1) for dy in range(2 * radius + 1)
                        for dx in range(2 * radius + 1)], dim=1)


def warp_px(x: torch.Tensor, flow_px: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """x (b c h w) sampled at p + flow, flow (b 2 h w) in pixels of an image of ``size`` (resolution-free units)."""
    h, w = x.shape[-2:]
    norm = torch.stack([flow_px[:, 0] * 2 / size[1], flow_px[:, 1] * 2 / size[0]], dim=-1)  # b h w 2
    return F.grid_sample(x, base_grid(h, w, x.device) + norm, mode="bilinear", padding_mode="border",
                         align_corners=False)


class FlowDecoder(nn.Sequential):
    """[cost volume | x_t features | current flow] -> residual flow in pixels of this level."""

    def __init__(self, cin: int):
        super().__init__(ConvAct(cin, DECODER[0]), ConvAct(DECODER[0], DECODER[1]), ConvAct(DECODER[1], DECODER[2]),
                         nn.Conv2d(DECODER[2], 2, 3, 1, 1))


class CoarseToFineFlow(nn.Module):
    """M(x_t, x_0) -> (flow x, flow y, scale): feature pyramid, warp, correlation, residual update per level."""

    multiple = 2 ** len(FEATURES)

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        self.max_flow, self.num_levels = cfg.max_flow, cfg.num_levels
        cins = (3,) + FEATURES[:-1]
        self.pyramid = nn.ModuleList([nn.Sequential(ConvAct(a, b, stride=2), ConvAct(b, b))
                                      for a, b in zip(cins, FEATURES)])
        ncorr = (2 * RADIUS + 1) ** 2
        # decoders[i] works at pyramid level i (i = FINEST .. coarsest)
        self.decoders = nn.ModuleList([FlowDecoder(ncorr + c + 2) if i >= FINEST else nn.Identity()
                                       for i, c in enumerate(FEATURES)])
        c = FEATURES[FINEST]
        self.scale_head = nn.Sequential(ConvAct(2 * c + 2, 32), nn.Conv2d(32, 1, 3, 1, 1))
        for m in self.modules():  # He init for LeakyReLU (features keep their scale down the pyramid); zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1)
                nn.init.zeros_(m.bias)
        for dec in self.decoders[FINEST:]:  # zero flow at init
            nn.init.zeros_(dec[-1].weight)
        nn.init.zeros_(self.scale_head[-1].weight)  # scale = num_levels sigmoid(-4) ~ 0.09 levels at init
        nn.init.constant_(self.scale_head[-1].bias, -4.0)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """Per-frame, per-channel standardisation: global brightness / contrast changes do not reach the features."""
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-2)
        return (x - mean) / std

    def bound(self, flow_px: torch.Tensor) -> torch.Tensor:
        return self.max_flow * torch.tanh(flow_px / self.max_flow)

    def forward(self, x_t: torch.Tensor, x_0: torch.Tensor, levels: bool = False):
        """x_t, x_0 (b 3 h w) in [-1, 1] -> m_t (b 3 h w): normalised flow x, y, scale in [0, num_levels].

        ``levels=True`` also returns the bounded flow of every estimation level in input pixels, each upsampled to
        (b 2 h w) (coarsest first): the multi-scale training loss reads them.
        """
        h, w = x_t.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        pad = lambda x: F.pad(self.normalise(x.float()), (0, pw, 0, ph), mode="replicate")  # noqa: E731
        a, b = pad(x_t), pad(x_0)  # one frame at a time through the pyramid: memory of b frames, not 2b
        size = a.shape[-2:]
        feats = []
        for block in self.pyramid:
            a, b = block(a), block(b)
            feats.append((a, b))  # (f_t, f_0) per level
        flow, outs = None, []
        for i in range(len(FEATURES) - 1, FINEST - 1, -1):  # coarse to fine
            f_t, f_0 = feats[i]
            stride = 2 ** (i + 1)
            if flow is None:
                flow = f_t.new_zeros(f_t.shape[0], 2, *f_t.shape[-2:])  # b 2 h_i w_i, input pixels
            else:
                flow = F.interpolate(flow, size=f_t.shape[-2:], mode="bilinear", align_corners=False)
            corr = correlation(f_t, warp_px(f_0, flow, size), RADIUS)
            delta = self.decoders[i](torch.cat([corr, f_t, flow / stride], dim=1)) * stride  # level px -> input px
            flow = self.bound(flow + delta)
            if levels:
                outs.append(F.interpolate(flow, size=size, mode="bilinear", align_corners=False)[..., :h, :w])
        f_t, f_0 = feats[FINEST]
        raw = self.scale_head(torch.cat([f_t, warp_px(f_0, flow, size), flow / 2 ** (FINEST + 1)], dim=1))
        out = F.interpolate(torch.cat([flow, raw], dim=1), size=size, mode="bilinear", align_corners=False)
        out = out[..., :h, :w]
        scale = self.num_levels * torch.sigmoid(out[:, 2:])  # eq. 4's third channel, bounded to [0, num_levels]
        m = torch.cat([flow_px_to_norm(out[:, :2]), scale], dim=1).to(x_t.dtype)
        return (m, outs) if levels else m


# ----------------------------------------------------------------------------------------- classical estimator
def opencv_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Backward flow (h w 2, px) with ``a(p) ~ b(p + flow(p))`` of two grey uint8 frames (h w): OpenCV's DIS or
    Farneback, as the toolkit configures them (the ``classical`` motion module and M's teacher pairs)."""
    import cv2

    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        # down to full resolution, more patch and variational iterations: on held-out known motions this
        # halved the preset's error at 64 px (0.50 -> 0.22 px) for about twice its time
        dis.setFinestScale(0)
        dis.setGradientDescentIterations(25)
        dis.setVariationalRefinementIterations(10)
        return dis.calc(a, b, None)
    return cv2.calcOpticalFlowFarneback(a, b, None, pyr_scale=0.5, levels=4, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.1, flags=0)


class OpenCVFlow(nn.Module):
    """Training-free baseline: OpenCV's DIS (preset medium, refined to full resolution) or Farneback flow from x_0
    to x_t, scale 0.

    Backward flow as the warp wants it: ``calcOpticalFlow(x_t, x_0)`` gives ``x_t(p) ~ x_0(p + flow(p))``. Runs on
    the host (one numpy round trip per pair); no parameters.
    """

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        self.method = cfg.classical

    def _flow(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return opencv_flow(a, b, self.method)

    @torch.no_grad()
    def forward(self, x_t: torch.Tensor, x_0: torch.Tensor) -> torch.Tensor:
        """x_t, x_0 (b 3 h w) in [-1, 1] -> m_t (b 3 h w): normalised flow, scale 0."""
        grey = lambda x: ((x.float().mean(1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).cpu().numpy()  # noqa
        g_t, g_0 = grey(x_t), grey(x_0)  # b h w
        flows = [torch.from_numpy(self._flow(a, b)) for a, b in zip(g_t, g_0)]  # h w 2 each, pixels
        flow = rearrange(torch.stack(flows), "b h w m -> b m h w").to(x_t.device)
        return torch.cat([flow_px_to_norm(flow), torch.zeros_like(flow[:, :1])], dim=1).to(x_t.dtype)


# ----------------------------------------------------------------------------------------------- motion module
def default_weights_path() -> Path:
    """The toolkit's pre-trained motion weights, inside the package (found from the package, not the cwd)."""
    return Path(__file__).resolve().parents[1] / "weights" / "motion.safetensors"


class MotionModule(nn.Module):
    """M and W together: ``estimate(x_t, x_0) -> m_t`` (eq. 4) and ``warp(x_0, m_t) -> x_hat_t^m`` (eq. 5)."""

    def __init__(self, cfg: MotionConfig):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.estimator = CoarseToFineFlow(cfg) if cfg.kind == "learned" else OpenCVFlow(cfg)
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

    def record(self) -> dict:
        """What a weights file must match to load into this module."""
        return {"arch": ARCH, "max_flow": self.config.max_flow, "num_levels": self.config.num_levels}

    def load_pretrained(self, path: str | Path) -> str:
        """Load estimator weights (``estimator.*`` keys, a ``motion`` record in the metadata); returns the SHA-256."""
        from ..io import load_weights, sha256_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"motion checkpoint {path} not found: the toolkit's own is {default_weights_path()} "
                f"(motion_ckpt=default); retrain with `python -m tokenizer.train_vae --config "
                f"configs/tokenizer/motion_pretrain.yaml` and `python -m tokenizer.motion export RUN_DIR OUT`; "
                f"motion_ckpt=null starts from a random motion module")
        if self.config.kind != "learned":
            raise ValueError(f"motion kind '{self.config.kind}' has no weights to load from {path}")
        state, record = load_weights(path)
        saved = (record or {}).get("motion") or {}
        if saved.get("arch") != ARCH:
            raise ValueError(f"{path}: motion weights of architecture '{saved.get('arch', 'unet (before c2f-v1)')}'"
                             f", this model's motion module is '{ARCH}' (older motion checkpoints are refused)")
        for key, value in self.record().items():
            if key in saved and saved[key] != value:
                raise ValueError(f"{path}: motion module was trained with {key}={saved[key]}, this model has "
                                 f"{key}={value}")
        state = {k.removeprefix("estimator."): v for k, v in state.items()}
        self.estimator.load_state_dict(state, strict=True)
        return sha256_file(path)
