"""Latte's sampling options in the toolkit: IDDPM's ``ddimN`` respacing strings and ``sample.py --fp16``, on a
released-style Latte checkpoint (tiny preset, 4-channel SD-VAE latents) so that no training is needed."""
from __future__ import annotations

import json

import pytest
import torch
from einops import rearrange

from diffusion.gaussian_diffusion import GaussianDiffusion, space_timesteps


def iddpm_ddim(num_timesteps: int, count: int) -> list[int]:
    """IDDPM's definition of 'ddimN' (respace.py): the first integer stride i >= 1 with len(range(0, T, i)) == N."""
    for i in range(1, num_timesteps):
        if len(range(0, num_timesteps, i)) == count:
            return list(range(0, num_timesteps, i))
    raise ValueError("no stride")


@pytest.mark.parametrize("count", [2, 7, 50, 100, 250, 500])
def test_ddim_respacing_strings_follow_iddpm(count):
    assert space_timesteps(1000, f"ddim{count}") == iddpm_ddim(1000, count)
    respaced = GaussianDiffusion().respace(f"ddim{count}")
    assert respaced.timestep_map.tolist() == iddpm_ddim(1000, count) and respaced.num_timesteps == count
    if count == 50:
        assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
        assert space_timesteps(1000, "50") != space_timesteps(1000, "ddim50")  # the section rule keeps 999


def test_bad_respacing_strings_are_refused():
    for count in (1, 3000):  # IDDPM tries strides 1 .. T - 1: ddim1 has none either
        with pytest.raises(ValueError, match="no integer stride"):
            space_timesteps(1000, f"ddim{count}")
    with pytest.raises(ValueError, match="step count"):
        space_timesteps(1000, "ddimx")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """A released-style checkpoint ({"ema": state dict}) of a class-conditional tiny Latte and a tiny SD-VAE folder."""
    from diffusers import AutoencoderKL

    from diffusion import LATTE_NAMES, build_latte

    root = tmp_path_factory.mktemp("released")
    preset = next(n for n in LATTE_NAMES if "tiny" in n.lower())
    torch.manual_seed(0)
    model = build_latte(preset, in_channels=4, num_classes=3, num_frames=3, input_size=8)
    for p in model.parameters():  # adaLN-Zero starts at eps = 0: move every weight so the network does something
        p.data.add_(0.05 * torch.randn_like(p))
    torch.save({"ema": model.state_dict()}, root / "latte.pt")
    AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                  layers_per_block=1).save_pretrained(root / "sd")
    args = ["--vae", "sd", "--vae-path", str(root / "sd"), "--ckpt", str(root / "latte.pt"), "--model", preset,
            "--num-classes", "3", "--latent-frames", "3", "--latent-size", "8", "--device", "cpu"]
    return root, args


def test_fp16_sampling_runs_the_network_in_half_precision(released):
    from pipelines.sample import Float16Autocast, open_source, sample_batch

    root, _ = released
    source = open_source(root / "latte.pt", "sd", vae_path=str(root / "sd"), model=released[1][7], num_classes=3,
                         latent_frames=3, latent_size=8)
    x, t, y = torch.randn(2, 4, 3, 8, 8), torch.tensor([10, 500]), torch.tensor([0, 2])
    full = source.model(x, t, y=y)
    half = Float16Autocast(source.model)(x, t, y=y)
    assert half.dtype == torch.float32 and half.shape == full.shape
    err = (half - full).abs().max().item()
    assert 0 < err < 2e-2 * full.abs().max().item()  # float16 rounding: different, but only by rounding
    assert Float16Autocast(source.model).null_label == source.model.null_label  # guidance still finds it
    seeds, labels = [11, 12], [0, 2]
    ref = sample_batch(source, seeds, labels, "ddim", "ddim4", 2.0, torch.device("cpu"))
    source.fp16 = True
    got = sample_batch(source, seeds, labels, "ddim", "ddim4", 2.0, torch.device("cpu"))
    assert got.dtype == torch.float32 and 0 < (got - ref).abs().max() < 0.1


def test_sample_cli_takes_ddim_strings_and_fp16(released, tmp_path, capsys):
    from pipelines.sample import main

    _, args = released
    out = tmp_path / "out"
    assert main(args + ["--num-videos", "1", "--sampler", "ddim", "--steps", "ddim4", "--fp16", "--out", str(out)]) == 0
    settings = json.loads((out / "sample_settings.json").read_text())
    assert (settings["steps"], settings["precision"]) == ("ddim4", "fp16")
    assert settings["crf"] == 5  # a released checkpoint's protocol is fvd16_latte: Latte's CRF, --fvd given or not
    # fp32 videos are not mixed into a folder of fp16 ones; a bad respacing string is one clear error
    assert main(args + ["--num-videos", "1", "--sampler", "ddim", "--steps", "ddim4", "--out", str(out)]) == 2
    assert "precision" in capsys.readouterr().err
    assert main(args + ["--steps", "ddim3000", "--out", str(tmp_path / "never")]) == 2
    assert "error: --steps ddim3000: respacing 'ddim3000'" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_released_checkpoint_decodes_latte_latents_through_the_folders_scale_and_shift(released, tmp_path):
    """Latte's diffusion space is x = (z - shift) * scaling_factor of the SD-VAE folder: sample_batch hands the
    decoder exactly x / scale + shift, and the frames equal diffusers' decode of it frame by frame."""
    from diffusers import AutoencoderKL

    from pipelines.sample import open_source, sample_batch

    root, args = released
    sd = AutoencoderKL.from_pretrained(root / "sd")
    sd.register_to_config(scaling_factor=0.5, shift_factor=0.25)  # not SD's 0.18215 / 0: a swap or a drop shows
    sd.save_pretrained(tmp_path / "sd")
    source = open_source(root / "latte.pt", "sd", vae_path=str(tmp_path / "sd"), model=args[7], num_classes=3,
                         latent_frames=3, latent_size=8)
    sampled, seen = [], []
    sample, decode = source.sample, source.vae.decode
    source.sample = lambda *a: sampled.append(sample(*a)) or sampled[-1]  # x in diffusion space
    source.vae.decode = lambda z: seen.append(z) or decode(z)  # what the VAE is handed
    video = sample_batch(source, [3], [1], "ddim", "ddim4", 2.0, torch.device("cpu"))
    torch.testing.assert_close(seen[0], sampled[0] / 0.5 + 0.25)
    with torch.no_grad():
        ref = sd.eval().decode(rearrange(seen[0], "b c t h w -> (b t) c h w")).sample.clamp(-1, 1)
    torch.testing.assert_close(video, rearrange(ref, "(b t) c h w -> b c t h w", b=1), atol=1e-5, rtol=1e-5)
