"""Clip sampling: which frames (temporal offset, exact stride) and which pixels (short-side resize, crop, flip).

All randomness comes from :func:`item_rng` -- a generator seeded by ``(seed, epoch, index, purpose)`` -- never from
global RNG state, so a clip does not depend on the number of DataLoader workers or on the order items are read.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

# independent streams per decision, so that switching e.g. hflip on does not change the random crops
RNG_OFFSET, RNG_CROP, RNG_FLIP = 0, 1, 2


def item_rng(seed: int, epoch: int, index: int, purpose: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index, purpose])


def clip_start(num_video_frames: int, span: int, clip: int, clips_per_video: int, offset: str,
               rng: np.random.Generator | None = None) -> int:
    """First source frame of clip ``clip`` (of ``clips_per_video``) in a video of ``num_video_frames`` frames.

    One clip per video: ``start`` -> 0, ``center`` -> the middle, ``random`` -> uniform over every start that fits.
    Several clips: ``start``/``center`` place them evenly from the first to the last possible start (both ends
    included); ``random`` cuts the possible starts into ``clips_per_video`` equal strata and draws one per stratum.
    """
    last = num_video_frames - span  # the latest start that still fits the whole clip
    if last < 0:
        raise ValueError(f"video of {num_video_frames} frames is shorter than the clip span {span}")
    if clips_per_video == 1:
        if offset == "start":
            return 0
        if offset == "center":
            return last // 2
        return int(rng.integers(0, last + 1))
    if offset in ("start", "center"):
        return round(clip * last / (clips_per_video - 1))
    lo = (clip * (last + 1)) // clips_per_video  # stratum [lo, hi) of the possible starts
    hi = max(((clip + 1) * (last + 1)) // clips_per_video, lo + 1)
    return int(rng.integers(lo, hi))


def clip_indices(start: int, num_frames: int, frame_interval: int) -> list[int]:
    """Exact stride: ``start, start + interval, ...`` (``num_frames`` indices; not a linspace over the video)."""
    return [start + k * frame_interval for k in range(num_frames)]


def latte_window(num_video_frames: int, num_frames: int, frame_interval: int) -> tuple[int, int]:
    """(window, latest start) of Latte's loader: ``TemporalRandomCrop(num_frames * frame_interval)`` draws a start
    in ``[0, max(0, n - window - 1)]`` (one short of the last start that fits) and ends the window at
    ``min(start + window, n)``."""
    window = num_frames * frame_interval
    return window, max(0, num_video_frames - window - 1)


def linspace_indices(start: int, num_video_frames: int, num_frames: int, frame_interval: int) -> list[int]:
    """Latte's frames of the window starting at ``start``: ``np.linspace(start, end - 1, num_frames)`` rounded down
    (16 frames over a window of 48: strides of 3 or 4, first and last frame of the window included)."""
    window, _ = latte_window(num_video_frames, num_frames, frame_interval)
    end = min(start + window, num_video_frames)
    return np.linspace(start, end - 1, num_frames, dtype=int).tolist()


def short_side_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(H, W) after scaling so that the short side is ``resolution`` (aspect kept, long side rounded)."""
    if height <= width:
        return resolution, max(resolution, round(width * resolution / height))
    return max(resolution, round(height * resolution / width)), resolution


def crop_origin(size: tuple[int, int], resolution: int, crop: str, rng: np.random.Generator | None) -> tuple[int, int]:
    """Top-left corner (y, x) of the ``resolution`` square inside a frame of ``size`` (H, W)."""
    h, w = size
    if crop == "center":
        return (h - resolution) // 2, (w - resolution) // 2
    return int(rng.integers(0, h - resolution + 1)), int(rng.integers(0, w - resolution + 1))


def frames_to_clip(frames: torch.Tensor, resolution: int, origin_fn, flip: bool) -> torch.Tensor:
    """``uint8`` frames ``(T, H, W, C)`` -> ``float32`` clip ``(C, T, res, res)`` in ``[-1, 1]``.

    Short-side resize (bilinear with antialiasing, as PIL does; skipped when the short side already is
    ``resolution``), then the crop whose corner ``origin_fn((H', W'))`` returns, then an optional horizontal flip.
    The resize runs on ``uint8`` in channels-last memory, torch's vectorised path (about 10x faster on CPU than
    float32), and rounds to integers as any image library does; only the crop is converted to float.
    """
    x = rearrange(frames, "t h w c -> t c h w")  # a channels-last view, no copy
    size = short_side_size(x.shape[-2], x.shape[-1], resolution)
    if size != tuple(x.shape[-2:]):
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
    y0, x0 = origin_fn(size)
    x = x[..., y0:y0 + resolution, x0:x0 + resolution]  # (t, c, res, res)
    if flip:
        x = x.flip(-1)
    x = rearrange(x, "t c h w -> c t h w")
    out = torch.empty(x.shape, dtype=torch.float32)  # (c, t, res, res), contiguous
    out.copy_(x)  # one pass: uint8 -> float32 and the layout change
    return out.div_(127.5).sub_(1.0)
