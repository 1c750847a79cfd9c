"""A torch Dataset of fixed-length clips cut from videos, robust to broken files.

Enumeration is fixed at construction: item ``i`` is clip ``i % clips_per_video`` of usable video
``i // clips_per_video`` (videos in the layout's sorted order), so with a non-random offset item ``i`` is always the
same clip. Random decisions (offset, crop, flip) are drawn from ``(seed, epoch, i)``; call :meth:`set_epoch` before
iterating to draw new ones (with ``persistent_workers=True`` workers keep the epoch they started with).

Broken input never stops a job:

1. At construction every video is probed once (opened with decord, frames counted; frame folders counted). A
   missing, empty, unreadable or corrupt file, or one shorter than a clip, is skipped with one warning that names
   the file and the reason; :attr:`skipped` lists them and :meth:`report` summarises. If nothing is usable,
   :class:`DatasetError` names the root and the layout that was expected.
2. A video that passes the probe but fails while its frames are decoded (e.g. truncated after its index) is
   replaced, deterministically, by the next usable video (``v + 1, v + 2, ...``, at most ``read_retries`` times,
   same clip number, same random draws). The item then names the video actually read in ``path`` and the failure in
   ``read_error`` (``"<file>: <reason>"`` lines, empty for a normal item); the failure is also warned once per
   process and appended to :attr:`read_failures` of the process that read it. Consumers that read through
   DataLoader workers pass their batches to :meth:`note_read_errors` so that the main process's :meth:`report` includes them.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from .config import DataConfig
from .layouts import LAYOUTS, DatasetError, Listing, VideoEntry, layout_error
from .sampling import (RNG_CROP, RNG_FLIP, RNG_OFFSET, clip_indices, clip_start, crop_origin, frames_to_clip,
                       item_rng, latte_window, linspace_indices)
from .video_io import VideoReadError, declared_num_frames, read_video_frames, video_num_frames


class SkippedVideoWarning(UserWarning):
    """A video left out of a dataset (named, with the reason)."""


@dataclass(frozen=True)
class UsableVideo:
    path: str
    label: int
    num_frames: int


def probe_video(entry: VideoEntry, span: int, threads: int = 1) -> tuple[int | None, str]:
    """(frame count, '') for a usable video, (None, reason) for one to skip."""
    try:
        n = video_num_frames(entry.path, num_threads=threads)
    except VideoReadError as err:
        return None, err.reason
    except Exception as err:  # anything else a decoder may throw must not stop the job either
        return None, f"cannot open ({type(err).__name__}: {err})"
    if n == 0:
        return None, "no frames"
    declared = None if Path(entry.path).is_dir() else declared_num_frames(entry.path)
    if declared is not None and n < declared[0] - declared[1]:
        return None, f"truncated: {n} frames can be indexed, the container declares {declared[0]:.0f}"
    if n < span:
        return None, f"too short: {n} frames, a clip needs {span}"
    return n, ""


class VideoClipDataset(Dataset):
    """Clips ``{"video": (C, T, H, W) float32 in [-1, 1], "label", "path", "start", "clip", "index", "read_error"}``."""

    def __init__(self, listing: Listing, cfg: DataConfig):
        self.cfg = cfg
        self.root, self.layout = listing.root, listing.layout
        self.class_names = list(listing.class_names)
        self.epoch = 0
        entries = listing.entries[: cfg.max_videos] if cfg.max_videos else listing.entries
        self.num_found = len(entries)
        span = cfg.clip_span
        with ThreadPoolExecutor(max_workers=min(cfg.probe_workers, max(1, len(entries)))) as pool:
            probes = list(pool.map(lambda e: probe_video(e, span, cfg.decode_threads), entries))
        self.videos: list[UsableVideo] = []
        self.skipped: list[tuple[str, str]] = []
        for entry, (n, reason) in zip(entries, probes):
            if n is not None and cfg.time_range is not None:
                lo, hi = cfg.frame_window(n)
                if hi - lo < span:
                    n, reason = None, (f"too short: time_range {list(cfg.time_range)} keeps frames {lo}..{hi - 1} "
                                       f"of {n}, a clip needs {span}")
            if n is None:
                self.skipped.append((entry.path, reason))
                warnings.warn(f"skipping video {entry.path}: {reason}", SkippedVideoWarning, stacklevel=3)
            else:
                self.videos.append(UsableVideo(entry.path, entry.label, n))
        if not self.videos:
            reasons = "\n".join(f"    {p}: {r}" for p, r in self.skipped[:10])
            more = f"\n    ... and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            raise layout_error(cfg, self.root, f"no usable video: all {len(entries)} found were skipped\n"
                                               f"{reasons}{more}")
        self.read_failures: list[tuple[str, str]] = []
        self._failed: dict[int, str] = {}  # video number -> reason, in this process

    # ------------------------------------------------------------------------------------------------ metadata
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.videos) * self.cfg.clips_per_video

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh random offsets / crops / flips (the same for every worker count) for this epoch."""
        self.epoch = int(epoch)

    def clip_frames(self, index: int, video: int | None = None) -> tuple[str, int, list[int]]:
        """(path, start, frame indices) of item ``index`` without decoding; ``video`` overrides the video number."""
        cfg = self.cfg
        v, clip = divmod(index, cfg.clips_per_video)
        info = self.videos[v if video is None else video]
        rng = item_rng(cfg.seed, self.epoch, index, RNG_OFFSET) if cfg.offset == "random" else None
        lo, hi = cfg.frame_window(info.num_frames)  # time_range: the frames this split may use
        n = hi - lo
        if cfg.frame_indices == "linspace":  # Latte's: starts in [0, last], frames spread over the window
            _, last = latte_window(n, cfg.num_frames, cfg.frame_interval)
            start = clip_start(n, n - last, clip, cfg.clips_per_video, cfg.offset, rng)  # span n - last: starts 0..last
            return info.path, lo + start, [lo + i for i in linspace_indices(start, n, cfg.num_frames,
                                                                            cfg.frame_interval)]
        start = lo + clip_start(n, cfg.clip_span, clip, cfg.clips_per_video, cfg.offset, rng)
        return info.path, start, clip_indices(start, cfg.num_frames, cfg.frame_interval)

    # ------------------------------------------------------------------------------------------------- reading
    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        v0, clip = divmod(index, self.cfg.clips_per_video)
        errors = []
        for attempt in range(min(self.cfg.read_retries, len(self.videos) - 1) + 1):
            v = (v0 + attempt) % len(self.videos)
            if v in self._failed:  # known bad in this process: go straight to the next one
                errors.append(f"{self.videos[v].path}: {self._failed[v]}")
                continue
            try:
                item = self._load(index, v, clip)
            except VideoReadError as err:
                self._record_failure(v, err.reason)
                errors.append(f"{self.videos[v].path}: {err.reason}")
                continue
            item["read_error"] = "\n".join(errors)
            return item
        raise RuntimeError(f"item {index}: {len(errors)} videos in a row failed to decode "
                           f"(read_retries={self.cfg.read_retries}): " + "; ".join(errors))

    def read_exact(self, index: int) -> dict:
        """Item ``index`` from its own video, never substituted (for consumers that must not mix videos, such as
        the latent cache): a decode failure is recorded like one seen by ``__getitem__`` and re-raised as
        :class:`VideoReadError`."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        v, clip = divmod(index, self.cfg.clips_per_video)
        if v in self._failed:
            raise VideoReadError(self.videos[v].path, self._failed[v])
        try:
            return self._load(index, v, clip)
        except VideoReadError as err:
            self._record_failure(v, err.reason, substituted=False)
            raise

    def _load(self, index: int, v: int, clip: int) -> dict:
        cfg = self.cfg
        path, start, indices = self.clip_frames(index, video=v)
        frames = read_video_frames(path, indices, num_threads=cfg.decode_threads)  # (t, h, w, c) uint8
        crop_rng = item_rng(cfg.seed, self.epoch, index, RNG_CROP) if cfg.crop == "random" else None
        flip = cfg.hflip and bool(item_rng(cfg.seed, self.epoch, index, RNG_FLIP).random() < 0.5)
        video = frames_to_clip(frames, cfg.resolution, lambda size: crop_origin(size, cfg.resolution, cfg.crop,
                                                                                  crop_rng), flip)
        return {"video": video, "label": self.videos[v].label, "path": path, "start": start, "clip": clip,
                "index": index}

    def _record_failure(self, v: int, reason: str, substituted: bool = True) -> None:
        self._failed[v] = reason
        path = self.videos[v].path
        self.read_failures.append((path, reason))
        then = "its clips are read from the next usable video" if substituted else "its clips are dropped"
        warnings.warn(f"video {path} failed at read time ({reason}); {then}", SkippedVideoWarning, stacklevel=3)

    # ------------------------------------------------------------------------------------------------ reporting
    def note_read_errors(self, batch_or_item: dict) -> None:
        """Fold the ``read_error`` fields of an item or a collated batch into this process's :attr:`read_failures`."""
        errs = batch_or_item.get("read_error", "")
        for text in [errs] if isinstance(errs, str) else list(errs):
            for part in filter(None, text.split("\n")):
                path, _, reason = part.partition(": ")
                if (path, reason) not in self.read_failures:
                    self.read_failures.append((path, reason))

    def report(self) -> str:
        """Human summary: videos found / usable / skipped (with reasons), clips, clip shape, read-time failures."""
        cfg = self.cfg
        lines = [f"dataset {cfg.kind} (split {cfg.split}"
                 + (f", fold {cfg.fold}" if cfg.kind == "ucf101" else "") + f") at {self.root}",
                 f"  videos: {self.num_found} found, {len(self.videos)} usable, {len(self.skipped)} skipped",
                 f"  clips: {len(self)} ({cfg.clips_per_video} per video) of {cfg.num_frames} frames every "
                 f"{cfg.frame_interval}, {cfg.resolution}x{cfg.resolution}, classes: {self.num_classes or 'none'}"]
        if self.skipped:
            lines.append("  skipped at probe:")
            lines += [f"    {p}: {r}" for p, r in self.skipped]
        if self.read_failures:
            lines.append("  failed at read time (clips taken from the next usable video):")
            lines += [f"    {p}: {r}" for p, r in self.read_failures]
        return "\n".join(lines)


def build_dataset(cfg: DataConfig) -> VideoClipDataset:
    """The dataset ``cfg.kind`` describes (layouts: ucf101, sky_timelapse, folder, samples)."""
    return VideoClipDataset(LAYOUTS[cfg.kind](cfg), cfg)


__all__ = ["VideoClipDataset", "build_dataset", "DatasetError", "SkippedVideoWarning", "probe_video"]
