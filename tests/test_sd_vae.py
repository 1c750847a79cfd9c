"""The frame-wise SD-VAE (registry name ``sd``, Latte's tokenizer) against diffusers' AutoencoderKL called on each
frame, its latent scale, its errors, and a cache -> 2-step Latte run -> sample.py round trip on a tiny folder."""
from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from tokenizer import load_vae  # noqa: E402
from tokenizer.config import ConfigError  # noqa: E402
from tokenizer.registry import get_preset  # noqa: E402
from tokenizer.models.sd import SD_SCALING_FACTOR, SDVAE, SDVAEFolderError  # noqa: E402


def tiny_autoencoder(levels: int = 4, seed: int = 0, **config):
    """A random diffusers AutoencoderKL in SD's layout (4 latent channels, quant convs) at tiny widths."""
    torch.manual_seed(seed)
    widths = (8, 16, 16, 16)[:levels]
    return diffusers.AutoencoderKL(block_out_channels=widths, down_block_types=("DownEncoderBlock2D",) * levels,
                                   up_block_types=("UpDecoderBlock2D",) * levels, latent_channels=4,
                                   norm_num_groups=4, layers_per_block=1, sample_size=32, **config).eval()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sd") / "sd-vae"
    tiny_autoencoder().save_pretrained(folder)
    return folder


def test_encode_decode_equal_diffusers_frame_by_frame(sd_folder):
    ref = diffusers.AutoencoderKL.from_pretrained(str(sd_folder)).eval()
    vae = load_vae(sd_folder)
    vae.config.frames_per_call = 3  # calls that cut across frames of two videos
    assert (vae.name, vae.latent_channels, vae.compression) == ("sd", 4, (1, 8, 8))
    for t in (5, 1):  # any number of frames: latent frames = frames
        video = torch.rand(2, 3, t, 32, 32, generator=torch.Generator().manual_seed(t)) * 2 - 1
        assert vae.num_latent_frames(t) == t and vae.latent_shape(t, 32, 32) == (4, t, 4, 4)
        with torch.no_grad():
            post = vae.encode(video)
            z = post.sample(torch.Generator().manual_seed(0))
            out = vae.decode(z)
            assert post.mean.shape == (2, 4, t, 4, 4) and out.shape == video.shape
            for b in range(2):
                for i in range(t):
                    dist = ref.encode(video[b:b + 1, :, i]).latent_dist
                    torch.testing.assert_close(post.mean[b, :, i], dist.mean[0], atol=1e-6, rtol=1e-5)
                    torch.testing.assert_close(post.logvar[b, :, i], dist.logvar[0], atol=1e-6, rtol=1e-5)
                    torch.testing.assert_close(out[b, :, i], ref.decode(z[b:b + 1, :, i]).sample[0], atol=2e-5,
                                               rtol=1e-5)
        assert post.kl().shape == (2,) and (post.kl() > 0).all()


def test_latent_scale_comes_from_the_folder(tmp_path):
    tiny_autoencoder(levels=2, scaling_factor=0.5, shift_factor=0.25).save_pretrained(tmp_path / "a")
    a = load_vae(tmp_path / "a")
    assert (a.scaling_factor, a.shift_factor, a.compression) == (0.5, 0.25, (1, 2, 2))
    tiny_autoencoder(levels=2).save_pretrained(tmp_path / "b")  # a folder that does not say: SD's 0.18215
    cfg_file = tmp_path / "b" / "config.json"
    raw = json.loads(cfg_file.read_text())
    del raw["scaling_factor"]
    cfg_file.write_text(json.dumps(raw))
    assert load_vae(tmp_path / "b").scaling_factor == SD_SCALING_FACTOR == 0.18215
    cls, preset = get_preset("sd")  # the registry preset: SD's architecture and scale
    assert cls is SDVAE and preset().scaling_factor == 0.18215 and preset().block_out_channels == [128, 256, 512, 512]
    # a pipeline folder with the VAE in vae/ (as stabilityai's model repositories) is found too
    tiny_autoencoder(levels=2, scaling_factor=0.5).save_pretrained(tmp_path / "pipe" / "vae")
    assert load_vae(tmp_path / "pipe").scaling_factor == 0.5


def test_save_pretrained_round_trip(sd_folder, tmp_path):
    vae = load_vae(sd_folder)
    again = load_vae(vae.save_pretrained(tmp_path / "saved"))
    assert isinstance(again, SDVAE) and again.config == vae.config and again.fingerprint() == vae.fingerprint()
    video = torch.rand(1, 3, 2, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(again.encode(video).mean, vae.encode(video).mean)


def test_missing_or_invalid_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SDVAEFolderError, match="does not exist.*sd-vae-ft-ema"):
        SDVAE.from_diffusers(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SDVAEFolderError, match="config.json"):
        SDVAE.from_diffusers(tmp_path / "empty")
    tiny_autoencoder(levels=2).save_pretrained(tmp_path / "unet")
    raw = json.loads((tmp_path / "unet" / "config.json").read_text())
    (tmp_path / "unet" / "config.json").write_text(json.dumps(dict(raw, _class_name="UNet2DConditionModel")))
    with pytest.raises(SDVAEFolderError, match="UNet2DConditionModel"):
        SDVAE.from_diffusers(tmp_path / "unet")
    tiny_autoencoder(levels=2).save_pretrained(tmp_path / "broken")
    (tmp_path / "broken" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SDVAEFolderError, match="cannot load"):
        load_vae(tmp_path / "broken")
    assert issubclass(SDVAEFolderError, ConfigError)  # the command lines print it as one line


def test_cache_cli_refuses_a_bad_folder(tmp_path, capsys):
    from tokenizer.cache.__main__ import main

    args = ["--vae", "sd", "--vae-path", str(tmp_path / "nowhere"), "--data", "configs/data/samples_tiny.yaml",
            "--out", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: SD-VAE folder") and "sd-vae-ft-ema" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_cache_train_and_sample_with_the_sd_vae(sd_folder, ucf_tree, tmp_path):
    """--vae sd --vae-path DIR: the cache holds the frame-wise latents, Latte trains 2 steps on them with Latte's
    0.18215 scaling (data.normalize=vae), sample.py decodes with the same folder."""
    from diffusion.train_config import LatteTrainConfig
    from diffusion.training import train
    from pipelines.sample import main as sample_main
    from tokenizer.cache import LatentCacheDataset
    from tokenizer.cache.__main__ import main as cache_main
    from tokenizer.config import load_config
    from tokenizer.data import build_dataset, load_data_config

    data = ["root=" + str(ucf_tree), "split=test", "num_frames=8", "frame_interval=2", "resolution=32",
            "clips_per_video=1", "hflip=false", "offset=start", "probe_workers=1"]
    cache = tmp_path / "cache"
    assert cache_main(["--vae", "sd", "--vae-path", str(sd_folder), "--data", "configs/data/ucf101.yaml", "--out",
                       str(cache), "--no-progress", *data, "dtype=fp32", "num_workers=0", "device=cpu"]) == 0
    ds = LatentCacheDataset(cache, normalize="vae")
    vae = load_vae(sd_folder)
    assert len(ds) == 3 and ds.latent_shape == (4, 8, 4, 4) and ds.fingerprint == vae.fingerprint()
    clip = build_dataset(load_data_config("configs/data/ucf101.yaml", data))[1]["video"]
    with torch.no_grad():
        mean = vae.encode(clip[None]).mean[0]
    torch.testing.assert_close(ds.raw(1)["mean"], mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ds[1]["latent"], mean * 0.18215, atol=1e-5, rtol=1e-5)  # Latte's z * 0.18215

    run = tmp_path / "run"
    cfg = load_config(LatteTrainConfig, "configs/diffusion/latte_tiny.yaml", [
        f"data.cache_dir={cache}", "data.normalize=vae", f"vae.ckpt={sd_folder}", f"train.run_dir={run}",
        "train.max_steps=2", "train.batch_size=2", "train.checkpoint_every=2", "train.tracker=none",
        "train.progress_bar=false"])
    train(cfg)
    out = tmp_path / "samples"
    assert sample_main(["--vae", "sd", "--vae-path", str(sd_folder), "--ckpt", str(run), "--out", str(out),
                        "--num-videos", "1", "--sampler", "ddim", "--steps", "2", "--device", "cpu"]) == 0
    meta = json.loads((out / "videos" / "000000.json").read_text())
    assert meta["vae"] == "sd" and meta["vae_fingerprint"] == vae.fingerprint()
    from tokenizer.data.video_io import read_video_frames, video_num_frames

    mp4 = out / "videos" / "000000.mp4"
    assert read_video_frames(mp4, range(video_num_frames(mp4))).shape == (8, 32, 32, 3)  # 8 latent frames -> 8
