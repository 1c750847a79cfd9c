"""Frechet Video Distance under a written, seeded protocol.

Protocols by name: ``fvd16`` = StyleGAN-V's ``fvd2048_16f`` (real clips at stride 1); ``fvd16_latte`` = the copy of
it Latte evaluated with (real clips every 3rd frame, Latte's training frame interval; Latte used the TorchScript
detector); ``fvd128`` = StyleGAN-V's ``fvd2048_128f``.

Library::

    from pipelines.fvd import compute_fvd, InceptionI3d, frechet_distance
    result = compute_fvd("data/UCF-101", "samples/latte-ucf", protocol="fvd16", detector="i3d_pt",
                         detector_path="i3d_pretrained_400.pt")
    print(result.fvd, result.to_dict()["protocol"])

Command line (``--real``: a data config YAML, a folder of videos / frame folders, or ``samples``)::

    python -m pipelines.fvd --config configs/eval/fvd16.yaml --real configs/data/ucf101.yaml --fake samples/ \
        detector_path=i3d_pretrained_400.pt

The protocol (see README, "Evaluation"):

- real clips: one per video. The videos are walked in the order of a permutation drawn from
  ``numpy.random.default_rng([seed, 0])``; a video shorter than the clip span ``(num_frames - 1) * real_stride + 1``
  (or unreadable) is skipped; each accepted video gets a start offset uniform in ``[0, n - span]`` from
  ``default_rng([seed, 1])``; the walk stops at ``num_real`` clips;
- generated clips: the first ``num_fake`` files / frame folders in natural name order, frames ``0, s, .., (F-1) s``;
- every clip: centre crop to a square, resize to 224 x 224: downscaling with PIL's Lanczos filter on the uint8
  frames (StyleGAN-V's dataset preparation filter: antialiased), upscaling bilinear (``align_corners=False``);
  values in [0, 255] handed to the detector (which maps them to [-1, 1]);
- features: 400-d I3D logits averaged over time; float64 mean and biased covariance (divide by N);
- distance: clean-fid's ``frechet_distance`` (``scipy.linalg.sqrtm``, real part).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from tokenizer.config import ConfigError, load_config, to_yaml
from tokenizer.data.video_io import (FRAME_EXTENSIONS, VIDEO_EXTENSIONS, VideoReadError, read_video_frames,
                                     video_num_frames, write_video)
from tokenizer.io import load_weights, save_weights, write_json

from .i3d import RANDOM_LABEL, DetectorInfo, I3DDetector, InceptionI3d, build_detector  # noqa: F401 (public API)

FEATURE_DIM = 400
CLIP_EXTENSIONS = (*VIDEO_EXTENSIONS, "gif")

SELECTION_RULE = (
    "real: one clip per video; videos walked in the order of numpy.random.default_rng([seed, 0]).permutation(n); "
    "a video shorter than (num_frames - 1) * real_stride + 1 frames, or unreadable, is skipped; start offset "
    "default_rng([seed, 1]).integers(0, n_frames - span + 1) per accepted video; stop at num_real clips. "
    "fake: the first num_fake files / frame folders in natural name order, frames 0, s, .., (num_frames - 1) s.")
PREPROCESSING = ("centre crop to a square; resize to resolution x resolution: PIL Lanczos on uint8 frames when "
                 "downscaling, bilinear (align_corners=False) when upscaling; [0, 255] -> [-1, 1]")


# ------------------------------------------------------------------------------------------------------ protocol

@dataclass(frozen=True)
class FVDProtocol:
    """Every choice that changes an FVD number. ``name`` says which published protocol it is (or was derived from)."""

    name: str = "fvd16"
    num_real: int = 2048
    num_fake: int = 2048
    num_frames: int = 16
    real_stride: int = 1  # StyleGAN-V: 1; Latte's evaluation copy: 3 (its training frame interval)
    fake_stride: int = 1
    resolution: int = 224
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_real", "num_fake", "num_frames", "real_stride", "fake_stride", "resolution"):
            if getattr(self, key) < 1:
                raise ConfigError(f"invalid FVD protocol value '{key}={getattr(self, key)}': must be >= 1")

    @property
    def real_span(self) -> int:
        return (self.num_frames - 1) * self.real_stride + 1

    def with_overrides(self, **changes: Any) -> "FVDProtocol":
        """A copy with some fields changed; the name records every field that differs from the named protocol
        (``fvd16[real_stride=2]``; changed twice: one tag, ``fvd16[num_frames=8,real_stride=2]``). An unknown
        field is a ValueError naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(self) if f.name != "name"]
        unknown = sorted(set(changes) - set(valid))
        if unknown:
            raise ValueError(f"unknown FVD protocol field(s) {', '.join(unknown)}; valid: {', '.join(valid)}")
        changes = {k: v for k, v in changes.items() if v is not None and getattr(self, k) != v}
        if not changes:
            return self
        base = self.name.split("[")[0]
        new = dataclasses.replace(self, **changes)
        ref = PROTOCOLS.get(base)
        if ref is None:  # an ad-hoc protocol: tag this change
            tag = ",".join(f"{k}={v}" for k, v in sorted(changes.items()))
            return dataclasses.replace(new, name=f"{self.name}[{tag}]")
        diffs = {k: getattr(new, k) for k in valid if getattr(new, k) != getattr(ref, k)}
        tag = ",".join(f"{k}={v}" for k, v in sorted(diffs.items()))
        return dataclasses.replace(new, name=f"{base}[{tag}]" if diffs else base)

    def to_dict(self) -> dict:
        return dict(dataclasses.asdict(self), selection=SELECTION_RULE, preprocessing=PREPROCESSING,
                    statistics="float64 mean, biased covariance (divide by N)",
                    distance="clean-fid frechet_distance (scipy.linalg.sqrtm, real part)")


PROTOCOLS = {
    "fvd16": FVDProtocol("fvd16"),  # StyleGAN-V fvd2048_16f: real clips at stride 1
    # Latte's copy of StyleGAN-V's evaluation (realdata_subsample_factor=3 for UCF101 / SkyTimelapse): real clips
    # every 3rd frame, as Latte trains; generated clips at stride 1. Latte ran it with the TorchScript detector.
    "fvd16_latte": FVDProtocol("fvd16_latte", real_stride=3),
    "fvd128": FVDProtocol("fvd128", num_frames=128),  # StyleGAN-V fvd2048_128f
}
# The detector each published protocol was run with (a different one gives a number not comparable to theirs).
PUBLISHED_DETECTOR = {"fvd16": "i3d_torchscript", "fvd16_latte": "i3d_torchscript", "fvd128": "i3d_torchscript"}


fvd16, fvd16_latte, fvd128 = PROTOCOLS["fvd16"], PROTOCOLS["fvd16_latte"], PROTOCOLS["fvd128"]  # by published name


def protocol_for_run(num_frames: int, frame_interval: int) -> FVDProtocol:
    """The protocol a Latte run is evaluated under: real clips at the run's frame interval (so generated clips,
    which move at that interval, are compared with real clips moving the same way). Interval 3 with 16 frames is
    Latte's UCF101 / SkyTimelapse recipe: ``fvd16_latte``; interval 1: ``fvd16``; others: ``fvd16[real_stride=k]``."""
    base = "fvd16_latte" if frame_interval == 3 else "fvd16"
    protocol = PROTOCOLS[base]
    return protocol.with_overrides(real_stride=frame_interval) if frame_interval != protocol.real_stride else protocol


def get_protocol(protocol: str | FVDProtocol, **overrides: Any) -> FVDProtocol:
    if isinstance(protocol, FVDProtocol):
        return protocol.with_overrides(**overrides)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown FVD protocol '{protocol}': choose one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol].with_overrides(**overrides)


# ------------------------------------------------------------------------------------------- clips and reading

@dataclass(frozen=True)
class ClipRef:
    """One clip: frames ``indices`` of a video file, GIF or frame folder."""

    path: str
    indices: tuple[int, ...]


def _natural_key(name: str) -> list:
    """'clip_10.mp4' after 'clip_9.mp4': digit runs compare as numbers."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _has_ext(name: str, extensions: Sequence[str]) -> bool:
    return "." in name and name.rsplit(".", 1)[-1].lower() in extensions


def list_clip_sources(root: str | Path) -> list[Path]:
    """Video files (mp4, avi, ..., gif) and folders that directly hold image frames, below ``root``, natural order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"not a folder of videos: {root}")
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files = [f for f in files if not f.startswith(".")]
        if any(_has_ext(f, FRAME_EXTENSIONS) for f in files) and Path(folder) != root:
            found.append(Path(folder))
            dirs[:] = []  # a frame folder is one video
            continue
        found += [Path(folder) / f for f in files if _has_ext(f, CLIP_EXTENSIONS)]
    return sorted(found, key=lambda p: _natural_key(str(p.relative_to(root))))


def num_frames_of(path: str | Path) -> int:
    path = Path(path)
    if path.suffix.lower() == ".gif":
        from PIL import Image

        with Image.open(path) as im:
            return int(getattr(im, "n_frames", 1))
    return video_num_frames(path)


def read_clip(clip: ClipRef) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames of a clip (GIFs through PIL, everything else through the data module's reader)."""
    if clip.path.lower().endswith(".gif"):
        from PIL import Image, ImageSequence

        with Image.open(clip.path) as im:
            frames = [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)]
        if max(clip.indices) >= len(frames):
            raise VideoReadError(clip.path, f"frame index {max(clip.indices)} out of range ({len(frames)} frames)")
        return torch.from_numpy(np.stack([frames[i] for i in clip.indices]))
    return read_video_frames(clip.path, clip.indices)


def select_real_clips(videos: Sequence[str | Path], protocol: FVDProtocol) -> tuple[list[ClipRef], dict]:
    """One clip per real video under the protocol's seeded rule (``SELECTION_RULE``); returns (clips, what was
    skipped: counts, and the unreadable videos with their reasons)."""
    order = np.random.default_rng([protocol.seed, 0]).permutation(len(videos))
    offsets = np.random.default_rng([protocol.seed, 1])
    span, clips = protocol.real_span, []
    skipped: dict[str, Any] = {"too_short": 0, "unreadable": 0, "unreadable_videos": []}
    for i in order:
        if len(clips) == protocol.num_real:
            break
        try:
            n = num_frames_of(videos[i])
        except (VideoReadError, OSError) as err:
            skipped["unreadable"] += 1
            skipped["unreadable_videos"].append(str(err))  # "<file>: <reason>"
            warnings.warn(f"FVD: skipping unreadable real video {err}", stacklevel=2)
            continue
        if n < span:
            skipped["too_short"] += 1
            continue
        start = int(offsets.integers(0, n - span + 1))
        clips.append(ClipRef(str(videos[i]), tuple(range(start, start + span, protocol.real_stride))))
    return clips, skipped


def fake_clips(sources: Sequence[str | Path], protocol: FVDProtocol) -> list[ClipRef]:
    """Generated clips: the first ``num_fake`` sources in the given order, frames 0, s, .., (F - 1) s."""
    indices = tuple(range(0, protocol.num_frames * protocol.fake_stride, protocol.fake_stride))
    clips = []
    for path in list(sources)[:protocol.num_fake]:
        n = num_frames_of(path)
        if n <= indices[-1]:
            raise VideoReadError(path, f"generated video has {n} frames; the protocol needs frame {indices[-1]} "
                                       f"({protocol.num_frames} frames at stride {protocol.fake_stride})")
        clips.append(ClipRef(str(path), indices))
    return clips


RESIZE_MODES = ("lanczos", "bilinear_aa", "bilinear")


def lanczos_resize(frames: np.ndarray, resolution: int) -> np.ndarray:
    """uint8 (T, S, S, 3) -> uint8 (T, r, r, 3) with PIL's Lanczos filter (a = 3, widened by the scale factor when
    downscaling), as StyleGAN-V's dataset preparation resizes frames."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(f).resize((resolution, resolution), Image.LANCZOS)) for f in frames])


def prepare_clip(frames: torch.Tensor, resolution: int, resize: str = "lanczos") -> torch.Tensor:
    """uint8 (T, H, W, C) -> float32 (3, T, resolution, resolution) with values in [0, 255] (centre crop, resize).

    Downscaling (``resize="lanczos"``, the protocol's): PIL Lanczos on the uint8 frames, the filter StyleGAN-V
    prepares its datasets with (antialiased: no aliasing of 720p sources). Upscaling, and the modes kept for the
    benchmark that measures them: torch bilinear, ``align_corners=False``, antialiased (``bilinear_aa``, the
    triangle filter widened by the scale factor) or point-sampled (``bilinear``, this toolkit's old path).
    """
    if resize not in RESIZE_MODES:
        raise ValueError(f"unknown resize '{resize}': choose one of {', '.join(RESIZE_MODES)}")
    if frames.shape[-1] == 1:
        frames = frames.expand(-1, -1, -1, 3)  # grey -> RGB, as StyleGAN-V repeats the channel
    h, w = frames.shape[1:3]
    s = min(h, w)
    crop = frames[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]  # centre square crop
    if s > resolution and resize == "lanczos" and crop.dtype == torch.uint8:
        small = torch.from_numpy(lanczos_resize(crop.contiguous().numpy(), resolution))  # t r r c uint8
        return rearrange(small, "t h w c -> c t h w").float().contiguous()
    x = rearrange(crop, "t h w c -> t c h w").float()
    if s != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resize != "bilinear" and s > resolution)
    return rearrange(x, "t c h w -> c t h w").contiguous()


def video_tensor_to_uint8(videos: torch.Tensor) -> torch.Tensor:
    """float (b, c, t, h, w) in [-1, 1] -> uint8 (b, t, h, w, c), as a generator's output is saved to a video file."""
    x = ((videos.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return rearrange(x, "b c t h w -> b t h w c").cpu()


class ClipDataset(torch.utils.data.Dataset):
    """Clips from files (``ClipRef``) or an in-memory uint8 tensor (N, T, H, W, C), prepared for the detector."""

    def __init__(self, clips: Sequence[ClipRef] | torch.Tensor, resolution: int):
        self.clips, self.resolution = clips, resolution

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> torch.Tensor:
        clip = self.clips[i]
        frames = clip if isinstance(clip, torch.Tensor) else read_clip(clip)
        return prepare_clip(frames, self.resolution)


# ------------------------------------------------------------------------------------- features and statistics

def dist_info() -> tuple[int, int]:
    """(rank, world size) of the torch.distributed group accelerate (or torchrun) set up; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(local: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Concatenate every rank's rows in rank order (rank r holds ``counts[r]`` rows); identity on one process."""
    rank, world = dist_info()
    if world == 1:
        return local
    size = max(counts)
    padded = local.new_zeros((size, *local.shape[1:]))  # all_gather needs equal shapes
    padded[:local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch.distributed.all_gather(parts, padded)
    return torch.cat([p[:c] for p, c in zip(parts, counts)])


@torch.no_grad()
def extract_features(clips: Sequence[ClipRef] | torch.Tensor, detector: I3DDetector, resolution: int = 224,
                     batch_size: int = 8, device: str | torch.device | None = None, num_workers: int = 0,
                     progress: bool = True, desc: str = "I3D features", split_ranks: bool = True) -> np.ndarray:
    """Detector features of every clip, float64 (N, 400), in clip order, however many processes share the work.

    Rank r of W takes the contiguous block ``[r * ceil(N / W), (r + 1) * ceil(N / W))``; the blocks are gathered
    in rank order, so the result (and any FVD from it) is the one a single process computes. With
    ``split_ranks=False`` every process works on its own clips alone (a caller that already split the data).
    """
    bar_rank = dist_info()[0]
    rank, world = dist_info() if split_ranks else (0, 1)
    device = torch.device(device) if device is not None else default_device()
    n = len(clips)
    per = math.ceil(n / world)
    bounds = [(min(r * per, n), min((r + 1) * per, n)) for r in range(world)]
    lo, hi = bounds[rank]
    dataset = torch.utils.data.Subset(ClipDataset(clips, resolution), range(lo, hi))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    from tqdm import tqdm

    label = f"[{RANDOM_LABEL}] " if detector.info.random_init else ""
    bar = tqdm(loader, desc=f"{label}{desc}", disable=not progress or bar_rank != 0, leave=False,
               total=len(loader), unit="batch")
    parts = [detector(batch.to(device)) for batch in bar]
    local = torch.cat(parts) if parts else torch.zeros(0, FEATURE_DIM, device=device)
    feats = gather_rows(local, [b - a for a, b in bounds]) if world > 1 else local
    return feats.double().cpu().numpy()


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 mean (D,) and biased covariance (D, D) (divide by N, as StyleGAN-V's FeatureStats)."""
    x = np.asarray(features, dtype=np.float64)
    mu = x.mean(axis=0)
    centred = x - mu
    return mu, centred.T @ centred / x.shape[0]


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) in float64, computed by clean-fid (real part of sqrtm)."""
    from cleanfid.fid import frechet_distance as cleanfid_frechet_distance

    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    try:
        return float(cleanfid_frechet_distance(f64(mu1), f64(sigma1), f64(mu2), f64(sigma2)))
    except ValueError as err:  # clean-fid refuses a sqrtm with a large imaginary part
        raise ValueError(f"the Frechet distance is ill-conditioned ({err}): the covariances of {len(mu1)}-d "
                         "features need many more clips than dimensions (FVD16 uses 2048 per side)") from None


# ------------------------------------------------------------------------------------------- real-data sources

@dataclass
class RealSource:
    """The real videos of an FVD: their list and what identifies them for the statistics cache."""

    videos: list[str]
    name: str  # dataset, e.g. "ucf101" or a folder name
    split: str
    identity: dict  # everything that names these videos (kind, root, split, fold, listing digest)
    data_clip: Optional[tuple[int, int]] = None  # (num_frames, frame_interval) a data config asked for, if any

    def clip_note(self, protocol: FVDProtocol) -> str:
        """A warning when the data config's clip shape differs from the protocol's (the protocol wins)."""
        if self.data_clip is None or self.data_clip == (protocol.num_frames, protocol.real_stride):
            return ""
        return (f"the data config's clips ({self.data_clip[0]} frames every {self.data_clip[1]}) are not used: FVD "
                f"takes only its list of videos; real clips follow protocol {protocol.name} ({protocol.num_frames} "
                f"frames every {protocol.real_stride}; protocol fvd16_latte (real stride 3) is Latte's evaluation)")


def _listing_digest(videos: Sequence[str | Path], root: str | Path | None) -> str:
    h = hashlib.sha256()
    for v in videos:
        rel = os.path.relpath(v, root) if root else str(v)
        h.update(rel.encode() + b"\n")
    return h.hexdigest()


def real_source(real: Any, overrides: Sequence[str] = ()) -> RealSource:
    """``real`` = a data config (YAML path or ``DataConfig``), ``"samples"``, a folder, or a list of video paths."""
    from tokenizer.data import DataConfig, load_data_config

    if isinstance(real, (str, Path)) and str(real) == "samples":
        real = load_data_config(None, ["kind=samples", *overrides])
    elif isinstance(real, (str, Path)) and str(real).endswith((".yaml", ".yml")):
        real = load_data_config(real, overrides)
    if isinstance(real, DataConfig):
        from tokenizer.data.layouts import LAYOUTS

        listing = LAYOUTS[real.kind](real)
        videos = [e.path for e in listing.entries][:real.max_videos]
        split = real.split if real.kind in ("ucf101", "sky_timelapse") else "all"
        if real.kind == "ucf101":
            split = f"{split}{real.fold}"
        ident = dict(kind=real.kind, root=listing.root, split=split, num_videos=len(videos),
                     listing_sha256=_listing_digest(videos, listing.root))
        return RealSource(videos, real.kind, split, ident, (real.num_frames, real.frame_interval))
    if isinstance(real, (str, Path)):
        root = Path(real).expanduser().resolve()
        videos = [str(p) for p in list_clip_sources(root)]
        if not videos:
            raise FileNotFoundError(f"no videos (*.{', *.'.join(CLIP_EXTENSIONS)}) or frame folders in {root}")
        ident = dict(kind="folder", root=str(root), split="all", num_videos=len(videos),
                     listing_sha256=_listing_digest(videos, root))
        return RealSource(videos, root.name, "all", ident)
    videos = [str(Path(v).resolve()) for v in real]
    ident = dict(kind="list", root=None, split="all", num_videos=len(videos),
                 listing_sha256=_listing_digest(videos, None))
    return RealSource(videos, "videos", "all", ident)


def _stats_cache_path(cache_dir: str | Path, source: RealSource, protocol: FVDProtocol, det: DetectorInfo,
                      key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    safe = lambda s: "".join(c if c.isalnum() or c in "-_." else "_" for c in s)  # noqa: E731
    base = protocol.name.split("[")[0]
    return Path(cache_dir) / f"{safe(source.name)}-{safe(source.split)}-{base}-{det.name}-{digest}.safetensors"


def _stats_key(source: RealSource, protocol: FVDProtocol, det: DetectorInfo) -> dict:
    real_protocol = {k: getattr(protocol, k) for k in ("num_real", "num_frames", "real_stride", "resolution", "seed")}
    return dict(dataset=source.identity, protocol=real_protocol, selection=SELECTION_RULE,
                preprocessing=PREPROCESSING, detector=dict(name=det.name, sha256=det.sha256, random=det.random_init))


def _broadcast_flag(flag: bool) -> bool:
    """Rank 0 decides (e.g. whether a cache file exists) and every rank follows."""
    rank, world = dist_info()
    if world == 1:
        return flag
    box = [flag]
    torch.distributed.broadcast_object_list(box, src=0)
    return bool(box[0])


# ---------------------------------------------------------------------------------------------------- results

@dataclass
class FVDResult:
    fvd: float
    protocol: FVDProtocol
    detector: DetectorInfo
    num_real: int
    num_fake: int
    real: dict = field(default_factory=dict)
    fake: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return self.num_real >= self.protocol.num_real and self.num_fake >= self.protocol.num_fake

    def line(self) -> str:
        p, d = self.protocol, self.detector
        text = (f"FVD{p.num_frames} = {self.fvd:.4f} | protocol {p.name}: {self.num_real} real clips "
                f"(stride {p.real_stride}) vs {self.num_fake} generated (stride {p.fake_stride}), {p.num_frames} "
                f"frames, {p.resolution} px, seed {p.seed} | detector {d.name}")
        text += f" {d.path}" if d.path else ""
        text += f" sha256 {d.sha256[:12]}" if d.sha256 else ""
        if not self.complete:
            text += (f" | INCOMPLETE: {self.num_real}/{p.num_real} real, {self.num_fake}/{p.num_fake} generated "
                     f"clips, not comparable to published {p.name.split('[')[0]}")
        return f"{d.label} | {text}" if d.label else text

    def to_dict(self) -> dict:
        return dict(fvd=self.fvd, label=self.detector.label, line=self.line(), protocol=self.protocol.to_dict(),
                    detector=self.detector.to_dict(), clips=dict(real=self.num_real, fake=self.num_fake),
                    complete=self.complete, seed=self.protocol.seed, real=self.real, fake=self.fake,
                    seconds=round(self.seconds, 3), world_size=dist_info()[1])

    def save(self, path: str | Path) -> Path:
        write_json(path, self.to_dict())
        return Path(path)


def _clips_arg(x: Any, protocol: FVDProtocol, role: str) -> tuple[Any, dict]:
    """A tensor of videos (b, c, t, h, w) in [-1, 1], a folder, or a list of paths -> clips + a description."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 5 or x.shape[2] != protocol.num_frames:
            raise ValueError(f"{role} videos: expected (b, c, {protocol.num_frames}, h, w) in [-1, 1] for protocol "
                             f"{protocol.name}, got shape {tuple(x.shape)}")
        return video_tensor_to_uint8(x), dict(source="tensor", shape=list(x.shape))
    if isinstance(x, (str, Path)):
        return fake_clips(list_clip_sources(x), protocol), dict(source=str(Path(x).resolve()))
    return fake_clips([Path(p) for p in x], protocol), dict(source="list", count=len(x))


def compute_fvd(real: Any, fake: Any, protocol: str | FVDProtocol = "fvd16",
                detector: str | I3DDetector = "i3d_pt", *, detector_path: str | None = None, batch_size: int = 8,
                num_workers: int = 0, device: str | torch.device | None = None,
                cache_dir: str | Path | None = "outputs/fvd_stats", out: str | Path | None = "outputs/fvd",
                real_overrides: Sequence[str] = (), progress: bool = True, verbose: bool = True) -> FVDResult:
    """FVD between real videos and generated videos under ``protocol``; printed and saved as JSON.

    real: a data config (YAML path / ``DataConfig``), ``"samples"``, a folder, a list of video paths (one clip per
        video by the seeded rule), or a tensor (b, c, t, h, w) in [-1, 1] taken clip for clip (no cache);
    fake: a folder of mp4/gif files or frame folders, a list of paths, or a tensor (b, c, t, h, w) in [-1, 1];
    detector: a name (``i3d_pt``, ``i3d_torchscript``, ``random``) with ``detector_path`` / $VIDTOK_I3D_PATH, or a
        built :class:`I3DDetector`;
    cache_dir: real-data statistics are cached there, keyed by dataset, split, protocol and detector (None: off);
    out: a JSON file or a folder for it (None: not saved). Works on one process, and under accelerate / torchrun
        with several, which give the same number (features are gathered in clip order).
    """
    start = time.time()
    protocol = get_protocol(protocol)
    rank, _ = dist_info()
    device = torch.device(device) if device is not None else default_device()
    det = detector if isinstance(detector, I3DDetector) else build_detector(detector, detector_path, device)
    det = det.to(device)
    label = f"{det.info.label} | " if det.info.label else ""

    def say(msg: str) -> None:  # every line a random detector produces carries its label
        if verbose and rank == 0:
            print(msg if msg.startswith(label) else f"{label}{msg}", flush=True)

    feats = dict(resolution=protocol.resolution, batch_size=batch_size, device=device, num_workers=num_workers,
                 progress=progress)

    # real statistics: from the cache when this dataset/split/protocol/detector was seen before
    if isinstance(real, torch.Tensor):
        real_clips, real_info = _clips_arg(real, protocol, "real")
        mu_r, sigma_r = feature_stats(extract_features(real_clips, det, desc="I3D real", **feats))
        num_real = len(real_clips)
    else:
        source = real if isinstance(real, RealSource) else real_source(real, real_overrides)
        key = _stats_key(source, protocol, det.info)
        path = _stats_cache_path(cache_dir, source, protocol, det.info, key) if cache_dir else None
        real_info = dict(source=source.identity, stats_cache=str(path) if path else None, cache_hit=False)
        if path is not None and _broadcast_flag(path.is_file()):
            tensors, stored = load_weights(path)
            if stored and stored.get("key") == key:
                mu_r, sigma_r = tensors["mu"].numpy(), tensors["sigma"].numpy()
                num_real, real_info["skipped"] = stored["num_clips"], stored["skipped"]
                real_info["cache_hit"] = True
                say(f"real statistics from cache {path}")
        if not real_info["cache_hit"]:
            clips, skipped = select_real_clips(source.videos, protocol)
            if not clips:
                raise ValueError(f"no real video has the {protocol.real_span} frames a clip needs "
                                 f"({protocol.num_frames} frames at stride {protocol.real_stride}): {skipped}")
            mu_r, sigma_r = feature_stats(extract_features(clips, det, desc="I3D real", **feats))
            num_real, real_info["skipped"] = len(clips), skipped
            if path is not None and rank == 0:
                stored = dict(key=key, num_clips=num_real, skipped=skipped,
                              clips=[[c.path, c.indices[0]] for c in clips])
                save_weights({"mu": torch.from_numpy(mu_r), "sigma": torch.from_numpy(sigma_r)}, path, stored)
                say(f"real statistics cached in {path}")

    fake_clip_set, fake_info = _clips_arg(fake, protocol, "generated")
    if len(fake_clip_set) == 0:
        raise ValueError(f"no generated videos found in {fake_info.get('source')}")
    mu_f, sigma_f = feature_stats(extract_features(fake_clip_set, det, desc="I3D generated", **feats))
    fvd = frechet_distance(mu_r, sigma_r, mu_f, sigma_f)
    result = FVDResult(fvd, protocol, det.info, num_real, len(fake_clip_set), real_info, fake_info,
                       time.time() - start)
    say(result.line())
    if out is not None and rank == 0:
        out = Path(out)
        if out.suffix != ".json":  # one file per (generated set, real set, protocol with overrides, detector)
            fake_name = Path(fake_info["source"]).name if isinstance(fake, (str, Path)) else "videos"
            what = dict(real=real_info["source"], protocol=protocol.to_dict(), detector=det.info.sha256)
            digest = hashlib.sha256(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]
            out = out / f"{fake_name}-{protocol.name.split('[')[0]}-{det.info.name}-{digest}.json"
        result.save(out)
        say(f"FVD result saved to {out}")
    return result


# --------------------------------------------------------------------------------------------------------- CLI

@dataclass
class FVDConfig:
    """``configs/eval/*.yaml``: the protocol by name plus optional overrides, the detector, and where things go."""

    protocol: str = "fvd16"
    num_real: Optional[int] = None
    num_fake: Optional[int] = None
    num_frames: Optional[int] = None
    real_stride: Optional[int] = None
    fake_stride: Optional[int] = None
    resolution: Optional[int] = None
    seed: Optional[int] = None
    detector: str = "i3d_pt"  # i3d_pt | i3d_torchscript | i3d_rgb_imagenet | random
    detector_path: Optional[str] = None  # else $VIDTOK_I3D_PATH
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"  # auto: the process's GPU when there is one, else CPU
    stats_cache_dir: Optional[str] = "outputs/fvd_stats"
    out: str = "outputs/fvd"  # a .json file or a folder

    def resolved_protocol(self) -> FVDProtocol:
        fields_ = ("num_real", "num_fake", "num_frames", "real_stride", "fake_stride", "resolution", "seed")
        return get_protocol(self.protocol, **{k: getattr(self, k) for k in fields_})


def write_perturbed_copy(real: Any, out_dir: str | Path, protocol: FVDProtocol, noise: float = 12.0,
                         seed: int = 0) -> list[Path]:
    """Demo data: each real video's protocol clip, with seeded Gaussian pixel noise (std ``noise`` of 255), as mp4."""
    clips, _ = select_real_clips(real_source(real).videos, protocol)
    gen = torch.Generator().manual_seed(seed)
    written = []
    for clip in clips:
        frames = read_clip(clip).float()
        frames = (frames + noise * torch.randn(frames.shape, generator=gen)).clamp(0, 255).round().to(torch.uint8)
        written.append(write_video(Path(out_dir) / f"{Path(clip.path).stem}.mp4", frames, fps=8))
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.fvd", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="configs/eval/*.yaml (default: the built-in fvd16 with detector i3d_pt)")
    parser.add_argument("--real", help="data config YAML, folder of videos / frame folders, or 'samples'")
    parser.add_argument("--fake", help="folder of generated mp4/gif files or frame folders")
    parser.add_argument("--real-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override in the real data config, e.g. --real-set split=test (repeatable)")
    parser.add_argument("--write-perturbed", metavar="DIR",
                        help="demo: write a noise-perturbed copy of the --real clips to DIR, then exit")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the resolved config only")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides of the eval config")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(FVDConfig, args.config, args.overrides)
        protocol = cfg.resolved_protocol()
        if not args.real:
            raise ConfigError("--real is required (data config YAML, folder, or 'samples')")
        if args.write_perturbed:
            paths = write_perturbed_copy(args.real, args.write_perturbed, protocol, seed=protocol.seed)
            print(f"wrote {len(paths)} perturbed clips to {args.write_perturbed}")
            return 0
        if not args.fake or not Path(args.fake).is_dir():
            raise ConfigError(f"--fake must be a folder of generated videos (got {args.fake!r})")
        real_is_path = args.real != "samples" and not args.real.endswith((".yaml", ".yml"))
        if real_is_path and not Path(args.real).is_dir():
            raise ConfigError(f"--real: no such folder or data config: {args.real}")
        real = real_source(args.real, args.real_set)  # lists the videos: a wrong root or split stops here
        from accelerate import PartialState

        # sets up torch.distributed when launched by `accelerate launch` (gloo on CPU: it must be told cpu=True,
        # else it reports one process while the launcher started several)
        state = PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())
        device = state.device if cfg.device == "auto" else torch.device(cfg.device)
        detector = build_detector(cfg.detector, cfg.detector_path, device)  # a missing weights file stops here
    except (ConfigError, FileNotFoundError, ValueError) as err:  # DatasetError is a ValueError
        print(f"error: {err}", file=sys.stderr)
        return 2
    label = f"{detector.info.label} | " if detector.info.label else ""
    if state.is_main_process:
        text = to_yaml(dict(real=args.real, fake=args.fake, real_set=args.real_set, **dataclasses.asdict(cfg),
                            resolved_protocol=protocol.to_dict(), detector_info=detector.info.to_dict()))
        print("\n".join(f"{label}{line}" for line in ["--- resolved FVD config ---", *text.splitlines(), "---"]))
        if real.clip_note(protocol):
            print(f"{label}note: {real.clip_note(protocol)}")
    if args.dry_run:
        return 0
    compute_fvd(real, args.fake, protocol, detector, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                device=device, cache_dir=cfg.stats_cache_dir, out=cfg.out, real_overrides=args.real_set)
    return 0


if __name__ == "__main__":
    sys.exit(main())
