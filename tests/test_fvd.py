"""FVD: the Frechet distance against an independent oracle, the I3D layout and loading, the seeded protocol,
invariances (batch size, clip order, number of processes), the real-statistics cache, the JSON and the CLI.

Everything runs a randomly initialised I3D on tiny clips (8 frames, 32 px) cut from real videos.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from pipelines import fvd
from pipelines.fvd import (FVDProtocol, InceptionI3d, compute_fvd, extract_features, feature_stats,
                           frechet_distance, get_protocol, select_real_clips)
from pipelines.i3d import (RANDOM_LABEL, RGB_IMAGENET_LABEL, I3DDetector, build_detector, build_random,
                           same_padding)

TINY = dict(num_frames=8, resolution=32)


@pytest.fixture(scope="module")
def detector():
    return build_random()


@pytest.fixture(scope="module")
def tiny_protocol():
    return get_protocol("fvd16", **TINY)


@pytest.fixture(scope="module")
def perturbed(ucf_tree, tmp_path_factory, tiny_protocol):
    """The protocol's clips of the UCF-layout videos, with pixel noise, written as mp4: a 'generated' set."""
    out = tmp_path_factory.mktemp("perturbed")
    fvd.write_perturbed_copy(ucf_tree, out, tiny_protocol, noise=20.0)
    return out


def _oracle_fd(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance by eigen-decomposition: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2))."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    w, v = scipy.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = scipy.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(inner, 0, None)).sum())


def test_frechet_distance_against_scipy_oracle():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 64))
    b = 1.3 * rng.normal(size=(500, 64)) @ rng.normal(scale=0.3, size=(64, 64)) + 0.2
    mu_a, sigma_a = feature_stats(a)
    np.testing.assert_allclose(sigma_a, np.cov(a, rowvar=False, bias=True), rtol=1e-12, atol=1e-12)
    fd = frechet_distance(mu_a, sigma_a, *feature_stats(b))
    assert fd == pytest.approx(_oracle_fd(a, b), rel=1e-8)
    assert abs(frechet_distance(mu_a, sigma_a, mu_a, sigma_a)) < 1e-8 * np.trace(sigma_a)


def test_same_padding_is_tf_same():
    """TF 'SAME': output ceil(n / s), total pad max((out - 1) s + k - n, 0), the odd pixel at the back."""
    for n in range(1, 30):
        for k in range(1, 8):
            for s in range(1, 4):
                front, back = same_padding(n, k, s)
                out = -(-n // s)
                assert front + back == max((out - 1) * s + k - n, 0)
                assert back - front in (0, 1)
                assert (n + front + back - k) // s + 1 == out


def test_i3d_checkpoint_names_strict_load_and_features(tmp_path, detector, monkeypatch):
    assert isinstance(detector.net, InceptionI3d)
    state = detector.net.state_dict()
    for name, shape in {"Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7), "Conv3d_2b_1x1.bn.running_var": (64,),
                        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3), "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
                        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3), "Mixed_5c.b3b.bn.bias": (128,),
                        "logits.conv3d.weight": (400, 1024, 1, 1, 1), "logits.conv3d.bias": (400,)}.items():
        assert tuple(state[name].shape) == shape, name
    assert not any(k.endswith("conv3d.bias") for k in state if not k.startswith("logits"))
    assert all(m.eps == 1e-3 for m in detector.net.modules() if isinstance(m, torch.nn.BatchNorm3d))
    # a checkpoint as the public files store it: a plain state dict without the num_batches_tracked counters
    file = tmp_path / "i3d_pretrained_400.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, file)
    loaded = build_detector("i3d_pt", file)
    assert loaded.info.sha256 == hashlib.sha256(file.read_bytes()).hexdigest() and not loaded.info.random_init
    clips = torch.rand(3, 3, 8, 32, 32) * 255
    feats = loaded(clips)
    assert feats.shape == (3, 400)
    torch.testing.assert_close(feats, detector(clips))
    monkeypatch.setenv("VIDTOK_I3D_PATH", str(file))  # the environment variable stands in for detector_path
    assert build_detector("i3d_pt").info.path == str(file.resolve())
    bad = tmp_path / "bad.pt"
    torch.save({k: v for k, v in state.items() if k != "Mixed_4c.b2b.bn.weight"}, bad)
    with pytest.raises(RuntimeError, match="Mixed_4c.b2b.bn.weight"):
        build_detector("i3d_pt", bad)
    # rgb_imagenet.pt holds other weights than the TF-Hub I3D: its own detector name, labelled in every result
    other = tmp_path / "rgb_imagenet.pt"
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, other)
    with pytest.raises(ValueError, match="use detector 'i3d_rgb_imagenet'"):
        build_detector("i3d_pt", other)
    imagenet = build_detector("i3d_rgb_imagenet", other)
    assert imagenet.info.label == RGB_IMAGENET_LABEL and "not comparable to published FVD" in RGB_IMAGENET_LABEL
    videos = torch.rand(4, 3, 8, 32, 32) * 2 - 1
    result = compute_fvd(videos, videos.flip(-1), get_protocol("fvd16", **TINY, num_real=4, num_fake=4), imagenet,
                         cache_dir=None, out=None, progress=False, verbose=False)
    assert result.line().startswith(RGB_IMAGENET_LABEL) and result.to_dict()["label"] == RGB_IMAGENET_LABEL


def test_i3d_layout_is_the_public_checkpoints_name_for_name():
    """Every (name, shape) of the public PyTorch I3D checkpoints (tests/data/i3d_pt_layout.txt, listed from the
    reference implementation), and nothing else: such a file loads with strict=True."""
    lines = (Path(__file__).parent / "data" / "i3d_pt_layout.txt").read_text().splitlines()
    public = {name: shape for name, shape in (line.split() for line in lines if not line.startswith("#"))}
    ours = {k: "x".join(map(str, v.shape)) or "scalar" for k, v in InceptionI3d(400).state_dict().items()}
    assert len(public) == 344 and ours == public


def test_features_are_the_logits_averaged_over_time(detector):
    """17 frames leave two time steps after I3D's temporal strides: the feature is their mean (not one of them)."""
    clips = torch.rand(2, 3, 17, 32, 32, generator=torch.Generator().manual_seed(0)) * 255
    logits = detector.net(clips / 127.5 - 1)  # (b, 400, t')
    assert logits.shape[:2] == (2, 400) and logits.shape[2] == 2
    torch.testing.assert_close(detector(clips), logits.mean(2))
    assert not torch.allclose(logits[:, :, 0], logits[:, :, 1])


class _RangeProbe(torch.nn.Module):
    """Stands in for InceptionI3d and reports the range of what it is fed."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.stack([x.amin(), x.amax()]), torch.zeros(398)]).expand(x.shape[0], 400)


def test_pytorch_i3d_is_fed_minus_one_to_one(detector):
    det = I3DDetector(_RangeProbe(), detector.info)
    clip = torch.zeros(1, 3, 8, 32, 32)
    clip[..., 16:] = 255
    assert det(clip)[0, :2].tolist() == [-1.0, 1.0]


def test_missing_detector_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("VIDTOK_I3D_PATH", raising=False)
    with pytest.raises(FileNotFoundError) as err:
        build_detector("i3d_pt")
    assert "i3d_pretrained_400.pt" in str(err.value) and "VIDTOK_I3D_PATH" in str(err.value)
    with pytest.raises(FileNotFoundError, match="i3d_torchscript.pt"):
        build_detector("i3d_torchscript", tmp_path / "nope.pt")
    monkeypatch.setenv("VIDTOK_I3D_PATH", str(tmp_path / "moved.pt"))
    with pytest.raises(FileNotFoundError, match="moved.pt"):
        build_detector("i3d_pt")


class _StyleGANVProbe(torch.nn.Module):
    """Stands in for i3d_torchscript.pt and reports how it was called: input range, size and the three flags."""

    def forward(self, x: torch.Tensor, rescale: bool = False, resize: bool = False,
                return_features: bool = False) -> torch.Tensor:
        probe = torch.stack([x.amin(), x.amax(), torch.tensor(float(x.shape[3])), torch.tensor(float(rescale)),
                             torch.tensor(float(resize)), torch.tensor(float(return_features))])
        return torch.cat([probe, torch.zeros(394)]).expand(x.shape[0], 400)


def test_torchscript_detector_is_called_as_stylegan_v(tmp_path):
    file = tmp_path / "i3d_torchscript.pt"
    torch.jit.script(_StyleGANVProbe()).save(str(file))
    det = build_detector("i3d_torchscript", file)
    clip = torch.zeros(1, 8, 40, 50, 3, dtype=torch.uint8)  # (n, t, h, w, c): centre crop = columns 5..44
    clip[:, :, :, 25:] = 255  # black left half, white right half: the resized crop still spans 0..255
    feats = extract_features(clip, det, resolution=32, device="cpu", progress=False)
    lo, hi, size, rescale, resize, ret = feats[0, :6]
    assert (lo, hi, size) == (0.0, 255.0, 32.0) and rescale == resize == ret == 1.0
    border = torch.zeros(1, 8, 40, 50, 3, dtype=torch.uint8)
    border[:, :, :, :5] = border[:, :, :, 45:] = 255  # only outside the centre crop: the detector never sees it
    assert extract_features(border, det, resolution=32, device="cpu", progress=False)[0, :2].tolist() == [0.0, 0.0]


def test_real_clip_selection_is_seeded_one_per_video(ucf_tree, tmp_path):
    videos = [str(p) for p in fvd.list_clip_sources(ucf_tree)]
    assert len(videos) == 9
    protocol = FVDProtocol("t", num_real=5, num_frames=8, real_stride=3, seed=7)
    clips, skipped = select_real_clips(videos, protocol)
    again, _ = select_real_clips(videos, protocol)
    other, _ = select_real_clips(videos, protocol.with_overrides(seed=8))
    assert clips == again and clips != other and skipped == {"too_short": 0, "unreadable": 0, "unreadable_videos": []}
    assert len({c.path for c in clips}) == 5
    for c in clips:
        assert np.all(np.diff(c.indices) == 3) and len(c.indices) == 8 and 0 <= c.indices[0] <= 36 - 22
    # videos too short for the span are skipped, not clipped
    long_clips, skipped = select_real_clips(videos, protocol.with_overrides(num_frames=13))  # span 37 > 36
    assert long_clips == [] and skipped["too_short"] == 9
    # an unreadable video is skipped, counted and named with its reason
    broken = tmp_path / "broken.avi"
    broken.write_text("not a video\n" * 20)
    with pytest.warns(UserWarning, match="broken.avi"):
        clips, skipped = select_real_clips([str(broken), *videos], protocol)
    assert len(clips) == 5 and skipped["unreadable"] == 1
    assert skipped["unreadable_videos"][0].startswith(f"{broken}: cannot open")


def test_fvd_batch_size_clip_order_cache_and_seed(ucf_tree, perturbed, detector, tiny_protocol, tmp_path, monkeypatch):
    kw = dict(protocol=tiny_protocol, detector=detector, device="cpu", progress=False, verbose=False)
    fakes = fvd.list_clip_sources(perturbed)
    first = compute_fvd(ucf_tree, fakes, batch_size=4, cache_dir=tmp_path, out=tmp_path / "r.json", **kw)
    assert first.real["cache_hit"] is False and first.num_real == first.num_fake == 9
    assert first.fvd > 1.0  # noise of std 20 / 255 is visible even to a random I3D

    def no_selection(*args, **kwargs):
        raise AssertionError("a cache hit must not select or read real clips")

    monkeypatch.setattr(fvd, "select_real_clips", no_selection)
    reordered = compute_fvd(ucf_tree, fakes[::-1], batch_size=1, cache_dir=tmp_path, out=None, **kw)
    assert reordered.real["cache_hit"] is True
    assert reordered.fvd == pytest.approx(first.fvd, rel=1e-5)
    monkeypatch.undo()
    uncached = compute_fvd(ucf_tree, fakes, batch_size=4, cache_dir=None, out=None, **kw)
    assert uncached.fvd == first.fvd  # same seed, same clips, same batches: the same number, bit for bit
    # the JSON says what the number means
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["fvd"] == first.fvd and saved["label"] == RANDOM_LABEL and saved["complete"] is False
    assert saved["clips"] == {"real": 9, "fake": 9} and saved["seed"] == 0
    for key in ("name", "num_real", "num_fake", "num_frames", "real_stride", "fake_stride", "resolution", "seed",
                "selection"):
        assert key in saved["protocol"]
    assert saved["protocol"]["name"] == "fvd16[num_frames=8,resolution=32]"
    assert saved["detector"]["name"] == "random" and len(saved["detector"]["sha256"]) == 64


def test_each_invariance_alone_and_what_keys_the_cache_and_the_result_file(ucf_tree, perturbed, detector,
                                                                           tiny_protocol, tmp_path):
    kw = dict(protocol=tiny_protocol, device="cpu", progress=False, verbose=False)
    fakes = fvd.list_clip_sources(perturbed)
    base = compute_fvd(ucf_tree, fakes, detector=detector, batch_size=4, cache_dir=None, out=tmp_path / "res", **kw)
    # batch size, on the real and the generated side at once (no cache), then the order of the generated clips
    one = compute_fvd(ucf_tree, fakes, detector=detector, batch_size=1, cache_dir=None, out=None, **kw)
    assert one.fvd == pytest.approx(base.fvd, rel=1e-5)
    flipped = compute_fvd(ucf_tree, fakes[::-1], detector=detector, batch_size=4, cache_dir=None, out=None, **kw)
    assert flipped.fvd == pytest.approx(base.fvd, rel=1e-5)
    # a cache hit gives the number of the run that filled it, bit for bit; another detector does not hit it
    stats = tmp_path / "stats"
    filled = compute_fvd(ucf_tree, fakes, detector=detector, batch_size=4, cache_dir=stats, out=None, **kw)
    hit = compute_fvd(ucf_tree, fakes, detector=detector, batch_size=4, cache_dir=stats, out=None, **kw)
    assert not filled.real["cache_hit"] and hit.real["cache_hit"] and hit.fvd == filled.fvd == base.fvd
    other = compute_fvd(ucf_tree, fakes, detector=build_random(seed=1), cache_dir=stats, out=None, **kw)
    assert not other.real["cache_hit"] and len(list(stats.glob("*.safetensors"))) == 2
    # another protocol (an override) writes its own result file beside the first
    compute_fvd(ucf_tree, fakes, detector=detector, cache_dir=None, out=tmp_path / "res",
                **{**kw, "protocol": tiny_protocol.with_overrides(real_stride=2)})
    names = sorted(json.loads(p.read_text())["protocol"]["name"] for p in (tmp_path / "res").glob("*.json"))
    assert names == ["fvd16[num_frames=8,real_stride=2,resolution=32]", "fvd16[num_frames=8,resolution=32]"]


def test_fvd_published_protocols():
    p = get_protocol("fvd16").to_dict()
    assert (p["num_real"], p["num_fake"], p["num_frames"], p["real_stride"], p["fake_stride"], p["resolution"]) == \
        (2048, 2048, 16, 1, 1, 224)
    assert fvd.fvd128.num_frames == 128 and fvd.fvd128.num_real == 2048
    latte = fvd.load_config(fvd.FVDConfig, Path(__file__).parents[1] / "configs/eval/fvd16_latte.yaml")
    assert latte.resolved_protocol() == fvd.fvd16_latte and fvd.fvd16_latte.real_stride == 3
    assert latte.detector == "i3d_torchscript" == fvd.PUBLISHED_DETECTOR["fvd16_latte"]
    # a run's protocol: real clips at its frame interval (Latte's UCF101 recipe: every 3rd frame -> fvd16_latte)
    assert fvd.protocol_for_run(16, 3) == fvd.fvd16_latte and fvd.protocol_for_run(16, 1) == fvd.fvd16
    assert fvd.protocol_for_run(16, 2).name == "fvd16[real_stride=2]"
    # overrides of an overridden protocol: one tag naming every field that differs from the published protocol
    assert get_protocol(fvd.protocol_for_run(16, 2), num_frames=8).name == "fvd16[num_frames=8,real_stride=2]"
    assert get_protocol(fvd.fvd16_latte, num_frames=8).name == "fvd16_latte[num_frames=8]"
    assert fvd.fvd16.with_overrides(real_stride=3).with_overrides(real_stride=1) == fvd.fvd16
    with pytest.raises(ValueError, match="unknown FVD protocol field.*num_framez; valid: num_real"):
        get_protocol("fvd16", num_framez=8)


def test_fvd_of_identical_sets_is_zero(ucf_tree, detector, tiny_protocol):
    kw = dict(protocol=tiny_protocol, detector=detector, device="cpu", progress=False, verbose=False, out=None)
    clips, _ = select_real_clips(fvd.real_source(ucf_tree).videos, tiny_protocol)
    videos = torch.stack([fvd.prepare_clip(fvd.read_clip(c), 32) for c in clips]) / 127.5 - 1  # b c t h w
    same = compute_fvd(videos, videos, **kw)
    _, sigma = feature_stats(extract_features(fvd.video_tensor_to_uint8(videos), detector, 32, device="cpu",
                                              progress=False))
    assert abs(same.fvd) < 1e-5 * np.trace(sigma)  # zero up to sqrtm round-off


def _distributed_worker(rank: int, init_file: str, out_dir: str, videos: torch.Tensor, det) -> None:
    torch.set_num_threads(1)  # as in DataLoader workers: a forked child runs no OpenMP pool
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        feats = extract_features(fvd.video_tensor_to_uint8(videos), det, resolution=32, device="cpu", progress=False)
        np.save(Path(out_dir) / f"feats{rank}.npy", feats)
    finally:
        torch.distributed.destroy_process_group()


def test_two_processes_give_the_single_process_number(tmp_path, detector):
    """gloo on CPU, 5 clips over 2 ranks (3 + 2): every rank gets all features in clip order, the FVD is unchanged.

    The ranks are forked (they inherit the imported modules and the detector, as DataLoader workers do).
    """
    videos = torch.rand(5, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    torch.multiprocessing.start_processes(_distributed_worker, args=(str(tmp_path / "init"), str(tmp_path), videos,
                                                                     detector), nprocs=2, start_method="fork")
    single = extract_features(fvd.video_tensor_to_uint8(videos), detector, resolution=32, device="cpu",
                              progress=False)
    for rank in range(2):
        gathered = np.load(tmp_path / f"feats{rank}.npy")
        # float32 convolutions in 1 vs 2 threads agree to round-off, relative to the feature scale
        np.testing.assert_allclose(gathered, single, rtol=0, atol=1e-5 * np.abs(single).max())
        two = frechet_distance(*feature_stats(gathered[:3]), *feature_stats(gathered[3:]))
        assert two == pytest.approx(frechet_distance(*feature_stats(single[:3]), *feature_stats(single[3:])),
                                    rel=1e-5)


def test_cli_random_detector_labels_every_line(ucf_tree, perturbed, tmp_path, capsys):
    out = tmp_path / "cli.json"
    rc = fvd.main(["--real", str(ucf_tree), "--fake", str(perturbed), "detector=random", "num_frames=8",
                   "resolution=32", "num_workers=0", f"out={out}", f"stats_cache_dir={tmp_path / 'cache'}"])
    assert rc == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed and all(line.startswith(RANDOM_LABEL) for line in printed)
    result = json.loads(out.read_text())
    assert result["label"] == RANDOM_LABEL and result["fvd"] > 0 and result["clips"] == {"real": 9, "fake": 9}


def test_cli_fails_early_without_weights_or_videos(ucf_tree, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("VIDTOK_I3D_PATH", raising=False)
    rc = fvd.main(["--real", str(ucf_tree), "--fake", str(tmp_path), "detector=i3d_pt"])
    assert rc == 2 and "i3d_pretrained_400.pt" in capsys.readouterr().err
    rc = fvd.main(["--real", str(tmp_path), "--fake", str(tmp_path), "detector=random"])
    assert rc == 2 and "no videos" in capsys.readouterr().err


def test_real_split_from_a_data_config_keys_the_cache(ucf_tree, tiny_data_cfg, detector, tiny_protocol, tmp_path):
    train = fvd.real_source(tiny_data_cfg("ucf101", ucf_tree, split="train", fold=1))
    test = fvd.real_source(tiny_data_cfg("ucf101", ucf_tree, split="test", fold=1))
    assert (len(train.videos), len(test.videos)) == (6, 3) and not set(train.videos) & set(test.videos)
    assert (train.split, test.split) == ("train1", "test1")
    keys = [fvd._stats_key(s, tiny_protocol, detector.info) for s in (train, test)]
    paths = {fvd._stats_cache_path(tmp_path, s, tiny_protocol, detector.info, k) for s, k in zip((train, test), keys)}
    assert len(paths) == 2 and all("ucf101-t" in p.name for p in paths)
    stride3 = fvd._stats_key(test, tiny_protocol.with_overrides(real_stride=3), detector.info)
    assert stride3 != keys[1]  # the protocol is part of the key too


def test_generated_folder_of_mp4_gif_and_frame_folders(tmp_path, tiny_protocol):
    from PIL import Image

    from tokenizer.data import read_video_frames, sample_videos_dir, write_video

    frames = read_video_frames(sample_videos_dir() / "carphone_pristine.mp4", range(10))[:, :64, :64]  # t h w c
    write_video(tmp_path / "b.mp4", frames, fps=8)
    write_video(tmp_path / "a.gif", frames, fps=8)
    (tmp_path / "c").mkdir()
    for i, f in enumerate(frames):
        Image.fromarray(f.numpy()).save(tmp_path / "c" / f"{i}.png")
    sources = fvd.list_clip_sources(tmp_path)
    assert [p.name for p in sources] == ["a.gif", "b.mp4", "c"]
    clips = fvd.fake_clips(sources, tiny_protocol)
    assert all(c.indices == tuple(range(8)) for c in clips)
    for clip in clips:
        got = fvd.read_clip(clip)
        assert got.shape == (8, 64, 64, 3)
        assert (got.float() - frames[:8].float()).abs().mean() < 8  # lossless PNG, palette GIF, H.264 mp4
    with pytest.raises(fvd.VideoReadError, match="needs frame 15"):
        fvd.fake_clips(sources, fvd.fvd16)  # 10 frames cannot give a 16-frame clip


# ------------------------------------------------------------- reference outputs of piergiaj/pytorch-i3d (data)

I3D_REFERENCE = Path(__file__).parent / "data" / "i3d_reference.safetensors"


def _reference_i3d_weights(model: torch.nn.Module, seed: int) -> None:
    """The weights the stored reference outputs were computed with (the rule in the file's metadata): one
    generator walks the state-dict names in sorted order."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, value in sorted(model.state_dict().items()):
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("conv3d.weight"):
            state[name] = torch.randn(value.shape, generator=g) * (2.0 / value[0].numel()) ** 0.5
        elif name.endswith("running_var"):
            state[name] = 0.75 + 0.5 * torch.rand(value.shape, generator=g)
        elif name.endswith("bn.weight"):
            state[name] = 1.0 + 0.1 * torch.randn(value.shape, generator=g)
        else:
            state[name] = 0.1 * torch.randn(value.shape, generator=g)
    model.load_state_dict(state, strict=False)


@pytest.fixture(scope="module")
def i3d_reference():
    from tokenizer.io import load_weights

    ref, meta = load_weights(I3D_REFERENCE)
    net = InceptionI3d(400).eval()
    _reference_i3d_weights(net, meta["weight_seed"])
    g = torch.Generator().manual_seed(4321)
    logits_input = torch.rand(1, 3, 10, 224, 224, generator=g) * 2 - 1
    mixed5c_input = torch.rand(1, 3, 11, 64, 93, generator=g) * 2 - 1
    return net, ref, logits_input, mixed5c_input


def test_i3d_mixed_5c_equals_piergiaj_reference_output(i3d_reference):
    """Mixed_5c of an odd-sized, non-square clip (11 x 64 x 93: every SAME padding is uneven somewhere) equals the
    output piergiaj's InceptionI3d computed for the same seeded weights and input (stored in tests/data)."""
    net, ref, _, x = i3d_reference
    with torch.no_grad():
        out = net.mixed_5c(x)
    assert out.shape == ref["mixed5c"].shape
    torch.testing.assert_close(out, ref["mixed5c"], rtol=0, atol=1e-5)


def test_i3d_logits_equal_piergiaj_reference_output(i3d_reference):
    """The 400 logits of a 10 x 224 x 224 clip (the (2, 7, 7) average pool, the logits conv) equal piergiaj's."""
    net, ref, x, _ = i3d_reference
    with torch.no_grad():
        out = net(x)
    assert out.shape == ref["logits"].shape
    torch.testing.assert_close(out, ref["logits"], rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------ pixels and clip offsets

def _resize_taps(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) resampling matrix of the protocol's resize along one axis, written out from the filters'
    definitions: downscaling, Lanczos a = 3 (sinc(x) sinc(x / 3)) widened by the scale factor around output
    centre (i + 0.5) * scale, taps at input centres j + 0.5, normalised; upscaling, bilinear with
    align_corners=False (source position (i + 0.5) * scale - 0.5, clamped at the border)."""
    scale = n_in / n_out
    taps = np.zeros((n_out, n_in))
    for i in range(n_out):
        centre = (i + 0.5) * scale
        if scale > 1:
            x = (np.arange(n_in) + 0.5 - centre) / scale
            taps[i] = np.where(np.abs(x) < 3, np.sinc(x) * np.sinc(x / 3), 0.0)
        else:
            src = min(max(centre - 0.5, 0.0), n_in - 1)
            lo = int(np.floor(src))
            taps[i, lo] += 1 - (src - lo)
            taps[i, min(lo + 1, n_in - 1)] += src - lo
        taps[i] /= taps[i].sum()
    return taps


@pytest.mark.parametrize("size, resolution", [((240, 320), 224), ((240, 320), 40), ((18, 30), 27)])
def test_prepare_clip_resize_arithmetic(size, resolution):
    """Centre crop then the separable resize equals the written-out resampling matrices applied to a real photo:
    a small and a large reduction (Lanczos on uint8 frames: a horizontal pass, rounded to uint8, then a vertical
    one, as PIL computes it, so within one grey level) and an enlargement (bilinear, float)."""
    from skimage import data

    h, w = size
    photo = torch.from_numpy(data.coffee()[:h, :w].copy())  # (h, w, 3) uint8, a real photo
    frames = torch.stack([photo, photo.flip(1)])  # (2, h, w, 3)
    out = fvd.prepare_clip(frames, resolution).double().numpy()  # (3, 2, r, r)
    s = min(h, w)
    crop = frames[:, (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s].double().numpy()
    taps = _resize_taps(s, resolution)
    if s > resolution:
        rows = np.clip(np.round(np.einsum("tjkc,lk->tjlc", crop, taps, optimize=True)), 0, 255)
        expected = np.clip(np.round(np.einsum("ij,tjlc->ctil", taps, rows, optimize=True)), 0, 255)
        assert np.abs(out - expected).max() <= 1 and np.abs(out - expected).mean() < 0.05
    else:
        expected = np.einsum("ij,tjkc,lk->ctil", taps, crop, taps, optimize=True)
        np.testing.assert_allclose(out, expected, atol=5e-3)  # float32 rounding of values <= 255


def test_real_clip_offsets_are_the_documented_draw(monkeypatch):
    """The exact real-clip draw: videos walked in default_rng([seed, 0]).permutation order, one offset per
    accepted video from default_rng([seed, 1]).integers(0, n - span + 1), short videos skipped without a draw.
    Every offset in [0, n - span] is reachable (the last included)."""
    lengths = {f"v{i}.mp4": n for i, n in enumerate([5, 40, 23, 22, 60, 30, 22, 23, 100, 21, 22, 22] * 4)}
    monkeypatch.setattr(fvd, "num_frames_of", lambda path: lengths[str(path)])
    videos = list(lengths)
    protocol = FVDProtocol("t", num_real=30, num_frames=8, real_stride=3, seed=5)  # span 22
    clips, skipped = select_real_clips(videos, protocol)
    order = np.random.default_rng([5, 0]).permutation(len(videos))
    draws = np.random.default_rng([5, 1])
    expected, too_short = [], 0
    for i in order:
        if len(expected) == 30:
            break
        n = lengths[videos[i]]
        if n < 22:
            too_short += 1
            continue
        start = int(draws.integers(0, n - 22 + 1))
        expected.append((videos[i], tuple(range(start, start + 22, 3))))
    assert [(c.path, c.indices) for c in clips] == expected and skipped["too_short"] == too_short
    # videos exactly one span long always start at 0; one frame longer reach offset 1 as well
    starts = {n: {c.indices[0] for c in clips if lengths[c.path] == n} for n in (22, 23)}
    assert starts[22] == {0} and starts[23] == {0, 1}
