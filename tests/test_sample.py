"""pipelines/sample.py: label rules, VAE checks against a real latent cache, and (on a tiny Latte run trained on that
cache) playable mp4s, batch-size independence, resume, refusals. The SD-VAE itself: tests/test_sd_vae.py."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pipelines.sample import (SampleError, SourceError, load_cache_vae, parse_labels,
                              video_label, video_seed)


# ---------------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, ucf_tree, tiny_data_cfg):
    """A real latent cache of the tiny UCF101 tree (train split, fold 1: 6 clips of 9 frames, 32 px) made with a
    saved plain-tiny VAE; returns (cache dir, VAE folder, manifest)."""
    from tokenizer import build_vae
    from tokenizer.cache import CacheConfig, run_cache

    root = tmp_path_factory.mktemp("sample_cache")
    torch.manual_seed(0)
    vae = build_vae("plain-tiny").eval()
    vae_dir = vae.save_pretrained(root / "vae")
    data_cfg = tiny_data_cfg("ucf101", ucf_tree, split="train", fold=1, num_frames=9)
    cfg = CacheConfig(dtype="fp32", clips_per_shard=4, batch_size=4, num_workers=0, device="cpu")
    manifest = run_cache(vae, data_cfg, cfg, root / "cache", vae_source=str(vae_dir), show_progress=False,
                         log=lambda *a, **k: None)
    return root / "cache", vae_dir, manifest


# ------------------------------------------------------------------------------------------------------ labels

def test_labels_depend_on_seed_and_index_only():
    uniform = [video_label("uniform", 3, i, 101) for i in range(2000)]
    assert uniform[:40] == [video_label("uniform", 3, i, 101) for i in range(40)]  # no hidden state
    assert uniform[:40] != [video_label("uniform", 4, i, 101) for i in range(40)]
    counts = np.bincount(uniform, minlength=101)
    assert counts.min() > 0 and counts.max() < 60  # uniform over 101 classes: ~20 each
    balanced = [video_label("balanced", 3, i, 7) for i in range(70)]
    assert np.bincount(balanced).tolist() == [10] * 7
    assert [video_label([4, 2], 0, i, 7) for i in range(5)] == [4, 2, 4, 2, 4]
    assert video_label("uniform", 0, 5, 0) is None  # unconditional
    assert len({video_seed(0, i) for i in range(1000)}) == 1000 and video_seed(0, 1) != video_seed(1, 1)


def test_parse_labels():
    names = ["Biking", "CartoonBunny", "PhoneCall"]
    assert parse_labels("balanced", 3, names) == "balanced"
    assert parse_labels("2, Biking,1", 3, names) == [2, 0, 1]
    for bad in ("3", "Juggling", ""):
        with pytest.raises(SampleError):
            parse_labels(bad, 3, names)
    with pytest.raises(SampleError, match="unconditional"):
        parse_labels("1", 0, names)


# ------------------------------------------------------------------------------------- VAE against the cache

def test_cache_vae_checked_by_name_and_fingerprint(tiny_cache, tmp_path):
    from tokenizer import build_vae

    cache, vae_dir, manifest = tiny_cache
    vae = load_cache_vae("plain-tiny", manifest, None, None, torch.device("cpu"))  # from the manifest's vae_source
    assert vae.fingerprint() == manifest["identity"]["vae"]["fingerprint"]
    with pytest.raises(SourceError, match="--vae plain-tiny"):
        load_cache_vae("vcvae-tiny", manifest, None, None, torch.device("cpu"))
    torch.manual_seed(123)
    other = build_vae("plain-tiny").save_pretrained(tmp_path / "other")
    with pytest.raises(SourceError, match="fingerprint"):
        load_cache_vae("plain-tiny", manifest, str(other), None, torch.device("cpu"))
    with pytest.raises(SourceError, match="no such"):
        load_cache_vae("plain-tiny", manifest, str(tmp_path / "nope"), None, torch.device("cpu"))


# ------------------------------------------------------------------------------------------ a tiny Latte run

def _tiny_preset() -> str:
    from diffusion import LATTE_NAMES

    return next(n for n in LATTE_NAMES if "tiny" in n.lower())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cache):
    """A Latte run of the tiny preset trained for a few steps on the tiny cache (class-conditional, 3 classes)."""
    from diffusion.train_config import LatteTrainConfig
    from diffusion.training import train
    from tokenizer.config import load_config

    cache, vae_dir, _ = tiny_cache
    run = tmp_path_factory.mktemp("latte") / "run"
    cfg = load_config(LatteTrainConfig, "configs/diffusion/latte_tiny.yaml", [
        f"model.name={_tiny_preset()}", f"data.cache_dir={cache}", f"vae.ckpt={vae_dir}", f"train.run_dir={run}",
        "train.max_steps=3", "train.batch_size=2", "train.checkpoint_every=3", "train.tracker=none",
        "train.progress_bar=false", "train.log_every=1", "train.ema_decay=0.5"])
    train(cfg)
    return run


def _sample(run, out, *extra):
    from pipelines.sample import main

    return main(["--vae", "plain-tiny", "--ckpt", str(run), "--out", str(out), "--sampler", "ddim", "--steps", "3",
                 "--device", "cpu", *extra])


def _frames(path):
    from tokenizer.data.video_io import read_video_frames, video_num_frames

    return read_video_frames(path, range(video_num_frames(path)))  # (t, h, w, c) uint8


def test_sample_writes_playable_mp4s_with_sidecars_and_resumes(tiny_run, tmp_path, capsys):
    out = tmp_path / "s"
    assert _sample(tiny_run, out, "--num-videos", "3", "--batch-size", "2", "--gif-grid", "--labels", "balanced") == 0
    mp4s = sorted((out / "videos").glob("*.mp4"))
    assert [p.name for p in mp4s] == ["000000.mp4", "000001.mp4", "000002.mp4"]
    for i, p in enumerate(mp4s):
        frames = _frames(p)
        assert frames.shape == (9, 32, 32, 3)  # 3 latent frames of a causal 4x VAE -> 9 frames of 32 px
        meta = json.loads(p.with_suffix(".json").read_text())
        assert (meta["index"], meta["label"], meta["sampler"], meta["steps"], meta["vae"]) == (i, i, "ddim", 3,
                                                                                             "plain-tiny")
        assert meta["seed"] == video_seed(0, i) and meta["cfg_scale"] == 7.0  # class-conditional default
    from PIL import Image

    with Image.open(out / "grid.gif") as grid:  # 3 videos -> 2 x 2 tiles of 32 px, 9 frames
        assert (grid.n_frames, grid.size) == (9, (64, 64))
    # the default contact sheet: a labelled row per video, frames 0, 2, 4, 5, 6, 8 (6 evenly spaced of 9)
    from tokenizer.training.samples import LABEL_HEIGHT

    sheet = np.asarray(Image.open(out / "contact_sheet.png").convert("RGB"))
    row_h = 2 * LABEL_HEIGHT + 32
    assert sheet.shape == (3 * row_h + 2 * 2, 6 * 32 + 5 * 2, 3)
    last = _frames(mp4s[1])[8]  # video 1's last frame is the last tile of the second row
    tile = sheet[row_h + 2 + 2 * LABEL_HEIGHT:2 * row_h + 2, 5 * 34:5 * 34 + 32]
    assert np.array_equal(tile, last)
    assert (sheet[:LABEL_HEIGHT] < 64).any()  # the row's label ("video 0, ..., seed ...") is drawn
    assert "resolved sampling settings" in capsys.readouterr().out
    # a re-run writes nothing; a lost sidecar (killed between mp4 and sidecar) redoes that video only
    stamps = {p: p.stat().st_mtime_ns for p in mp4s}
    (out / "videos" / "000001.json").unlink()
    assert _sample(tiny_run, out, "--num-videos", "4", "--batch-size", "2", "--labels", "balanced") == 0
    changed = [p.name for p in mp4s if p.stat().st_mtime_ns != stamps[p]]
    assert changed == ["000001.mp4"] and (out / "videos" / "000003.mp4").is_file()
    assert "2 already there" in capsys.readouterr().out  # 0 and 2; 1 redone, 3 new
    # other settings into the same folder are refused, naming what differs
    assert _sample(tiny_run, out, "--num-videos", "4", "--seed", "5") == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "seed" in err and "labels" in err


def test_videos_do_not_depend_on_batch_size_or_process_split(tiny_run, tmp_path):
    from pipelines.sample import open_source, sample_batch, sample_videos

    source = open_source(tiny_run, "plain-tiny")
    seeds, labels = [video_seed(7, i) for i in range(4)], [2, 0, 1, 2]
    whole = sample_batch(source, seeds, labels, "ddpm", 4, 3.0, torch.device("cpu"))
    alone = torch.cat([sample_batch(source, seeds[i:i + 1], labels[i:i + 1], "ddpm", 4, 3.0, torch.device("cpu"))
                       for i in range(4)])
    torch.testing.assert_close(whole, alone, atol=1e-4, rtol=0)
    other = sample_batch(source, [video_seed(8, i) for i in range(4)], labels, "ddpm", 4, 3.0, torch.device("cpu"))
    assert (whole - other).abs().mean() > 100 * (whole - alone).abs().max()  # the seed matters, the batch does not
    # crf=0 (lossless x264): at a lossy rate one pixel rounded the other way can change the encoder's decisions for
    # a whole block, so two runs of one command already differ by ~0.1 grey level on average (measured)
    kw = dict(num_videos=4, sampler="ddim", steps=3, cfg_scale=2.0, seed=1, progress=False, crf=0)
    sample_videos(source, tmp_path / "b1", batch_size=1, **kw)
    sample_videos(source, tmp_path / "b4", batch_size=4, **kw)
    for r in range(2):  # two "ranks" sharing the work: indices r, r + 2
        sample_videos(source, tmp_path / "w2", batch_size=3, rank=r, world_size=2, **kw)
    for i in range(4):
        ref = _frames(tmp_path / "b1" / "videos" / f"{i:06d}.mp4").int()
        for other_dir in ("b4", "w2"):
            got = _frames(tmp_path / other_dir / "videos" / f"{i:06d}.mp4").int()
            # equal up to float rounding (1e-4 above): a pixel may round to the neighbouring grey level
            assert (got - ref).abs().float().mean() < 0.05 and (got - ref).abs().max() <= 2, (other_dir, i)
        if i:
            assert (ref - _frames(tmp_path / "b1" / "videos" / f"{i - 1:06d}.mp4").int()).abs().float().mean() > 5
        assert json.loads((tmp_path / "w2" / "videos" / f"{i:06d}.json").read_text()) == \
            json.loads((tmp_path / "b1" / "videos" / f"{i:06d}.json").read_text())


def test_wrong_vae_and_bad_requests_refused_before_work(tiny_run, tmp_path, capsys):
    out = tmp_path / "never"
    assert _sample(tiny_run, out, "--vae", "vcvae-tiny") == 2
    assert "trained on latents of VAE 'plain-tiny'" in capsys.readouterr().err
    assert _sample(tiny_run, out, "--vae", "sd", "--vae-path", str(tmp_path)) == 2
    assert "trained on latents of VAE 'plain-tiny'" in capsys.readouterr().err
    assert _sample(tiny_run, out, "--labels", "7") == 2  # 3 classes
    assert _sample(tiny_run, out, "--fvd", "--detector", "i3d_pt", "--detector-path", str(tmp_path / "x.pt")) == 2
    assert _sample(tmp_path / "no_run", out) == 2
    assert not out.exists()  # nothing was written by a refused request


def test_fvd_json_feeds_the_report(tiny_run, tiny_cache, tmp_path, capsys):
    from pipelines.report import collect

    out = tmp_path / "f"
    assert _sample(tiny_run, out, "--num-videos", "3", "--fvd", "--detector", "random", "--fvd-set", "num_frames=8",
                   "--fvd-set", "resolution=32", "--fvd-stats-dir", str(tmp_path / "stats")) == 0
    printed = capsys.readouterr().out
    record = json.loads((out / "fvd.json").read_text())
    assert record["kind"] == "latte_fvd" and record["fvd"]["clips"]["fake"] == 3 and record["train_steps"] == 3
    assert record["fvd"]["label"] and np.isfinite(record["fvd"]["fvd"])  # random I3D: labelled
    # the run's protocol (its frame interval 1: fvd16, real stride 1), printed and recorded with the reason
    protocol = record["fvd"]["protocol"]
    assert protocol["name"].startswith("fvd16[") and protocol["real_stride"] == 1
    assert "run's frame interval 1" in record["protocol_choice"] and f"FVD protocol: {protocol['name']}" in printed
    assert record["settings"]["crf"] == 18  # not the Latte protocol: the toolkit's default quality
    rows, (gen,) = collect([out])
    assert (gen.vae, gen.train_steps, gen.not_comparable, gen.incomplete) == ("plain-tiny", 3, True, True)
    assert gen.latent_shape == [16, 3, 4, 4] and rows[0].clip_shape is None  # what Latte was trained on
    assert gen.protocol["real_stride"] == 1 and gen.protocol["frames"] == 8


def test_fvd_protocol_follows_the_run_and_errors_name_the_fix(tiny_run, tmp_path, capsys):
    """auto: the real stride is the run's frame interval (3: Latte's recipe -> fvd16_latte, with Latte's CRF); a
    run with too few frames for the protocol gets an error that says which option fixes it."""
    from pipelines.sample import open_source, run_protocol

    source = open_source(tiny_run, "plain-tiny")
    assert run_protocol("auto", source)[0].name == "fvd16"
    source.data_config = dataclasses.replace(source.data_config, frame_interval=3)
    protocol, why = run_protocol("auto", source)
    assert protocol.name == "fvd16_latte" and protocol.real_stride == 3 and "frame interval 3" in why
    # the tiny run makes 9 frames: FVD16 cannot be computed from them, and the message says what to do
    assert _sample(tiny_run, tmp_path / "x", "--fvd", "--detector", "random") == 2
    err = capsys.readouterr().err
    assert "needs 16 frames per generated video; this run makes 9" in err and "--fvd-set num_frames=9" in err
    assert _sample(tiny_run, tmp_path / "y", "--fvd", "--detector", "random", "--fvd-protocol", "fvd16_latte",
                   "--fvd-set", "num_frames=8", "--dry-run") == 0
    assert '"crf": 5' in capsys.readouterr().out  # Latte's mp4 quality under Latte's protocol
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "videos").exists()


def test_seeds_give_a_mean_and_spread(tiny_run, tmp_path):
    """--seeds 0,1: one video set per seed (each as --seed would make it), one FVD each, their mean and spread."""
    from pipelines.report import collect

    out = tmp_path / "s"
    common = ["--num-videos", "2", "--fvd", "--detector", "random", "--fvd-set", "num_frames=8", "--fvd-set",
              "resolution=32", "--fvd-stats-dir", str(tmp_path / "stats")]
    assert _sample(tiny_run, out, "--seeds", "0,1", *common) == 0
    assert _sample(tiny_run, tmp_path / "one", "--seed", "1", *common) == 0
    for i in range(2):  # the seed-1 set is the one a plain --seed 1 run makes (up to H.264 rounding)
        assert json.loads((out / "seed-1" / "videos" / f"{i:06d}.json").read_text()) == \
            json.loads((tmp_path / "one" / "videos" / f"{i:06d}.json").read_text())
        a, b = (_frames(d / "videos" / f"{i:06d}.mp4").int() for d in (out / "seed-1", tmp_path / "one"))
        assert (a - b).abs().float().mean() < 1.0
    spread = json.loads((out / "fvd.json").read_text())["seeds"]
    one = json.loads((tmp_path / "one" / "fvd.json").read_text())["fvd"]["fvd"]
    assert spread["seeds"] == [0, 1] and spread["values"][1] == pytest.approx(one, rel=1e-2)
    assert spread["mean"] == pytest.approx(np.mean(spread["values"]))
    assert spread["std"] == pytest.approx(np.std(spread["values"], ddof=1)) and spread["std"] > 0
    (gen,) = collect([out])[1]
    assert (gen.fvd, gen.fvd_std, len(gen.values)) == (spread["mean"], spread["std"], 2)


def test_released_checkpoint_with_framewise_sd_vae(tmp_path, capsys):
    """A released-style Latte checkpoint ({"ema": state dict}, 4-channel SD latents) sampled with --vae sd."""
    from diffusers import AutoencoderKL

    from diffusion import build_latte
    from pipelines.sample import main

    preset = _tiny_preset()
    torch.manual_seed(0)
    torch.save({"ema": build_latte(preset, in_channels=4, num_classes=3, num_frames=4, input_size=16).state_dict()},
               tmp_path / "latte.pt")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(tmp_path / "sd")
    args = ["--vae", "sd", "--vae-path", str(tmp_path / "sd"), "--ckpt", str(tmp_path / "latte.pt"), "--model",
            preset, "--num-classes", "3", "--latent-frames", "4", "--latent-size", "16", "--num-videos", "2",
            "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(args) == 0
    assert _frames(tmp_path / "out" / "videos" / "000001.mp4").shape == (4, 32, 32, 3)  # frame-wise, 2x spatial
    meta = json.loads((tmp_path / "out" / "videos" / "000001.json").read_text())
    assert meta["vae"] == "sd" and meta["weights"] == "file"
    assert main(args[:9] + ["5"] + args[10:]) == 2 and "does not fit" in capsys.readouterr().err


def test_crf_sets_the_mp4_quality(sample_video_paths, tmp_path):
    """--crf reaches the encoder: a real clip written at Latte's CRF 5 decodes closer to its frames than at CRF 30."""
    from tokenizer.data.video_io import read_video_frames, write_video

    frames = read_video_frames(sample_video_paths[0], range(8))[:, :64, :64].contiguous()  # uint8 t h w c
    errors = {}
    for crf in (5, 30):
        path = write_video(tmp_path / f"crf{crf}.mp4", frames, fps=8, crf=crf)
        errors[crf] = (_frames(path).float() - frames.float()).abs().mean().item()
    assert errors[5] < errors[30] / 2


def test_settings_of_folders_written_before_crf_and_precision_were_recorded_still_match():
    from pipelines.sample import DEFAULT_CRF, SampleSettings

    now = SampleSettings(checkpoint="c", weights="ema", model_fingerprint="m", vae="plain-tiny", vae_fingerprint="v",
                         sampler="ddim", steps=3, cfg_scale=1.0, labels="uniform", seed=0, num_frames=9, fps=8.0)
    old = {k: v for k, v in dataclasses.asdict(now).items() if k not in ("crf", "precision")}
    assert now.crf == DEFAULT_CRF and now.diff(old) == []  # the same command resumes an older folder
    assert now.diff({**old, "precision": "fp16"}) == ["precision: folder has 'fp16', this run has 'fp32'"]
