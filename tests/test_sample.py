"""pipelines/sample.py: label rules, the frame-wise SD VAE against diffusers, VAE checks against a real latent cache,
and (on a tiny Latte run trained on that cache) playable mp4s, batch-size independence, resume, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.sample import (FramewiseImageVAE, SampleError, SourceError, load_cache_vae, parse_labels,
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


# --------------------------------------------------------------------------------------------------- SD VAE

def test_framewise_sd_vae_equals_diffusers_frame_by_frame(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    ref = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1, sample_size=16).eval()
    ref.save_pretrained(tmp_path / "sd")
    vae = FramewiseImageVAE.from_folder(tmp_path / "sd")
    vae.frames_per_call = 3  # chunks that cut across videos
    assert vae.scaling_factor == pytest.approx(0.18215) and vae.compression == (1, 2, 2)
    z = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    out = vae.decode(z)
    assert out.shape == (2, 3, 5, 16, 16)
    with torch.no_grad():
        for b in range(2):
            for t in range(5):
                torch.testing.assert_close(out[b, :, t], ref.decode(z[b:b + 1, :, t] / 0.18215).sample[0],
                                           atol=1e-5, rtol=1e-5)
    assert vae.fingerprint() == FramewiseImageVAE.from_folder(tmp_path / "sd").fingerprint()
    with pytest.raises(SourceError, match="sd-vae-ft-ema"):
        FramewiseImageVAE.from_folder(tmp_path / "missing")


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
