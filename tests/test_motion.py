"""DeCo-VAE's motion module: the scale-space warp against CompressAI, the known-motion pairs against their own
definition, the coarse-to-fine estimator (bounded, learns at its real widths, the shipped weights on a held-out
photo), the OpenCV baseline, the shipped file and its loading rules."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tokenizer.motion import (MotionConfig, MotionLossConfig, MotionModule, ScaleSpaceWarp, default_weights_path,
                              edge_aware_smoothness, flow_error, flow_norm_to_px, flow_px_to_norm, gaussian_volume,
                              motion_pretrain_loss, scale_to_grid)
from tokenizer.motion.pairs import (HELD_OUT_PHOTOS, TRAIN_PHOTOS, KnownMotionConfig, KnownMotionPairs, homography,
                                    known_motion_pair, photo)


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


# ------------------------------------------------------------------------------------------ known-motion pairs
def test_known_motion_pair_is_the_motion_it_claims():
    """An integer shift of a held-out photo whose crop is an exact multiple of the output size is an exact pixel
    shift: x_t(p) = x_0(p + d) away from the border; and the pairs' true flow warps x_0 onto x_t far better than
    zero motion does (a sign error or a wrong pixel-centre convention in the generator fails both)."""
    pic = photo("astronaut")  # 512 px: 8 native pixels per output pixel at 64 px
    x0, xt, flow = known_motion_pair(pic, 64, homography(64, 3.0, -2.0))
    torch.testing.assert_close(flow, torch.tensor([3.0, -2.0]).view(2, 1, 1).expand(2, 64, 64))
    torch.testing.assert_close(xt[:, 4:-4, 4:-4], x0[:, 2:-6, 7:-1], atol=1e-4, rtol=0)  # x_t[y, x] = x_0[y-2, x+3]
    ds = KnownMotionPairs(KnownMotionConfig(size=48, noise=0, max_brightness=0, foreground_prob=0.5),
                          pictures=(photo("camera"), photo("coins")))
    warp = ScaleSpaceWarp()
    for i in range(4):
        item = ds[i]
        x0, xt = item["video"][None, :, 0], item["video"][None, :, 1]
        m = torch.cat([flow_px_to_norm(item["flow"][None]), torch.zeros(1, 1, 48, 48)], 1)
        err = (warp(x0, m) - xt)[..., 6:-6, 6:-6].abs().mean()
        assert err < 0.35 * (x0 - xt)[..., 6:-6, 6:-6].abs().mean(), i


def test_teacher_pairs_are_training_frames_with_a_flow_that_warps_them():
    """Teacher pairs (motion_pairs.teacher_prob): two frames of a video, and a target flow that warps x_0 onto x_t
    better than zero motion (a flow of the wrong direction -- DIS(x_0, x_t) -- or of mismatched frames fails);
    the same (seed, epoch, index) gives the same pair; teacher_prob=0 leaves the known-motion pairs as they were."""
    from tokenizer.motion.estimators import warp_px

    t = torch.arange(12, dtype=torch.float32).view(12, 1, 1, 1)
    yy, xx = torch.meshgrid(torch.arange(96.0), torch.arange(128.0), indexing="ij")
    # a synthetic "video": a textured pattern moving 1.5 px right per frame, as uint8 (t 3 h w)
    frames = (127.5 + 60 * torch.sin((xx - 1.5 * t) / 5) * torch.cos(yy / 7)
              + 40 * torch.sin((xx - 1.5 * t + yy) / 11)).expand(-1, 3, -1, -1).round().to(torch.uint8)
    cfg = KnownMotionConfig(size=48, teacher_prob=1.0, teacher_max_gap=3, min_crop=0.6)
    ds = KnownMotionPairs(cfg, pictures=(photo("camera"),), videos=(frames,))
    for i in range(6):
        item = ds[i]
        x0, xt = item["video"][None, :, 0], item["video"][None, :, 1]
        warped = warp_px(x0, item["flow"][None], (48, 48))
        inner = (..., slice(6, -6), slice(6, -6))
        assert (warped - xt)[inner].abs().mean() < 0.5 * (x0 - xt)[inner].abs().mean(), i
        assert item["flow"][0, 6:-6, 6:-6].abs().mean() > 0.3  # the pattern moved: 1.5-4.5 px scaled by the crop
    again = KnownMotionPairs(cfg, pictures=(photo("camera"),), videos=(frames,))
    torch.testing.assert_close(ds[3]["video"], again[3]["video"])
    again.set_epoch(1)
    assert not torch.equal(ds[3]["video"], again[3]["video"])
    plain = KnownMotionConfig(size=48)
    a = KnownMotionPairs(plain, pictures=(photo("camera"),))[2]
    b = KnownMotionPairs(KnownMotionConfig(size=48, teacher_prob=0.0), pictures=(photo("camera"),))[2]
    torch.testing.assert_close(a["flow"], b["flow"])
    with pytest.raises(ValueError, match="teacher_prob must be in"):
        KnownMotionPairs(KnownMotionConfig(teacher_prob=1.5), pictures=(photo("camera"),))


def test_train_and_held_out_material_are_disjoint():
    from tokenizer.motion.pairs import TRAIN_VIDEO_FRACTION, held_out_video_frames, train_video_frames

    assert not set(TRAIN_PHOTOS) & set(HELD_OUT_PHOTOS) and "cat" not in TRAIN_PHOTOS  # skimage's cat is chelsea
    for n in (120, 132, 250):
        train, held = train_video_frames(n), held_out_video_frames(n)
        assert max(train) < TRAIN_VIDEO_FRACTION * n and min(held) == max(train) + 1 and max(held) == n - 1


# ---------------------------------------------------------------------------------------------------- estimators
@pytest.fixture(scope="module")
def shipped() -> MotionModule:
    module = MotionModule(MotionConfig())
    module.load_pretrained(default_weights_path())
    return module.eval()


def test_outputs_stay_bounded_on_unfamiliar_input_at_256px(shipped):
    """Noise, a flat frame against a checkerboard, a negative: each flow component within max_flow, scale within
    [0, num_levels]
    -- also with the decoders' output weights blown up 1000x, which would send an unbounded head anywhere."""
    g = torch.Generator().manual_seed(5)
    noise = torch.rand(1, 3, 256, 256, generator=g) * 2 - 1
    checker = ((torch.arange(256)[:, None] // 8 + torch.arange(256)[None] // 8) % 2).float().expand(1, 3, -1, -1)
    pairs = [(noise, torch.rand(1, 3, 256, 256, generator=g) * 2 - 1), (torch.zeros(1, 3, 256, 256), checker * 2 - 1),
             (noise, -noise)]
    blown = MotionModule(MotionConfig())
    blown.load_state_dict(shipped.state_dict())
    with torch.no_grad():
        for dec in blown.estimator.decoders[1:]:
            dec[-1].weight.mul_(1000)
        blown.estimator.scale_head[-1].weight.mul_(1000)
    cfg = shipped.config
    for module in (shipped, blown):
        for x_t, x_0 in pairs:
            with torch.no_grad():
                m = module.estimate(x_t, x_0)
            assert torch.isfinite(m).all()
            assert flow_norm_to_px(m[:, :2]).abs().amax() <= cfg.max_flow * 1.0001
            assert m[:, 2].amin() >= 0 and m[:, 2].amax() <= cfg.num_levels


def test_shipped_weights_recover_known_motion_of_held_out_photos(shipped):
    """Photos the weights never saw (README's split): shifts and a sub-pixel shift at three sizes (zoom and rotation:
    BENCHMARKS.md, where rocket's large flat sky is the weak case)."""
    for name, size, hmat in (("astronaut", 128, homography(128, 3.3, -2.6)), ("coffee", 64, homography(64, 0.4, -0.7)),
                             ("chelsea", 128, homography(128, -2.2, 1.7)), ("astronaut", 256, homography(256, 5.5, 3.0))):
        x0, xt, flow = known_motion_pair(photo(name), size, hmat)
        c = slice(size // 10, size - size // 10)
        with torch.no_grad():
            m = shipped.estimate(xt[None], x0[None])
        epe = float((flow_norm_to_px(m[:, :2]) - flow[None]).norm(dim=1)[..., c, c].mean())
        assert epe < 0.5, (name, epe)
        assert float(m[:, 2].mean()) < 0.5  # sharp pairs: (almost) no blur


def test_opencv_dis_recovers_a_subpixel_shift():
    module = MotionModule(MotionConfig(kind="classical"))
    x0, xt, flow = known_motion_pair(photo("chelsea"), 128, homography(128, 1.5, -0.75))
    m = module.estimate(xt[None], x0[None])
    assert flow_error(module, xt[None, :, 12:-12, 12:-12], x0[None, :, 12:-12, 12:-12], flow[None, :, 12:-12, 12:-12]) \
        < 0.2
    assert (m[:, 2] == 0).all()  # the classical baseline has scale 0


def test_coarse_to_fine_relearns_its_finest_level_in_seconds(shipped):
    """The one architecture every preset uses learns flow from the known-motion objective: with the finest (1/4)
    decoder re-initialised at random (He init, its residual flow now noise), 30 steps (a few CPU seconds) on training
    photos cut the FLOW's end-point error on held-out photos by more than a third.

    (From a fully random init the flow needs a few hundred steps before it moves -- the shipped run's EPE was flat
    for its first ~150 -- which is not a few seconds on this machine.)"""
    torch.manual_seed(0)
    module = MotionModule(MotionConfig())
    module.load_state_dict(shipped.state_dict())
    finest = module.estimator.decoders[1]
    for conv in finest.modules():
        if isinstance(conv, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(conv.weight, a=0.1)
            torch.nn.init.zeros_(conv.bias)
    ds = KnownMotionPairs(KnownMotionConfig(size=64), pictures=tuple(photo(n) for n in ("camera", "coins", "brick")))
    test = [known_motion_pair(photo(n), 64, homography(64, tx, ty, z, a)) for n in ("astronaut", "rocket")
            for tx, ty, z, a in ((2.5, -1.0, 1, 0), (-0.5, 3.5, 1.03, 0), (1.0, 0.5, 1, 2.0))]
    x0, xt, flow = (torch.stack(v) for v in zip(*test))
    before = flow_error(module, xt, x0, flow)
    opt = torch.optim.Adam(finest.parameters(), lr=1e-3)
    for step in range(30):
        batch = torch.utils.data.default_collate([ds[step * 4 + j] for j in range(4)])
        loss, _ = motion_pretrain_loss(module, batch, MotionLossConfig())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(finest.parameters(), 1.0)
        opt.step()
    after = flow_error(module, xt, x0, flow)
    print(f"held-out EPE {before:.3f} -> {after:.3f} px")
    assert after < 0.67 * before, (before, after)


def test_estimator_shapes_and_padding(shipped):
    x = torch.rand(2, 3, 4, 20, 36) * 2 - 1  # sizes that are not multiples of the pyramid's stride
    m, pred = shipped(x, x[:, :, 0])
    assert m.shape == (2, 3, 4, 20, 36) and pred.shape == x.shape
    frame = shipped.estimate(x[:, :, 1], x[:, :, 0])
    torch.testing.assert_close(frame, m[:, :, 1], atol=1e-5, rtol=0)


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


def test_known_motion_loss_is_multiscale_epe_plus_scale_l1(shipped):
    ds = KnownMotionPairs(KnownMotionConfig(size=32), pictures=(photo("camera"),))
    batch = torch.utils.data.default_collate([ds[0], ds[1]])
    cfg = MotionLossConfig(level_weights=[0.2, 0.3, 1.5], scale_weight=0.7)
    loss, logs = motion_pretrain_loss(shipped, batch, cfg)
    m, levels = shipped.estimator(batch["video"][:, :, 1], batch["video"][:, :, 0], levels=True)
    epe = [float(((f - batch["flow"]) ** 2).sum(1).sqrt().mean()) for f in levels]  # per level, plain formula
    expected = sum(w * e for w, e in zip(cfg.level_weights, epe)) + 0.7 * float(m[:, 2].abs().mean())
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="known-motion pairs"):
        motion_pretrain_loss(shipped, batch["video"], cfg)  # clips have no true flow
    loss, logs = motion_pretrain_loss(shipped, batch["video"], MotionLossConfig(objective="photometric"))
    assert logs["motion/smooth"] >= 0 and torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------- flow picture
def test_flow_picture_uses_a_fixed_scale():
    from torchvision.utils import flow_to_image

    from tokenizer.training.samples import flow_picture

    px = torch.zeros(1, 2, 4, 6)
    px[0, 0, 0, 0] = 8.0  # max_flow in +x
    px[0, 1, 1, 1] = 0.05  # a tiny flow: nearly white, not saturated
    px[0, :, 2, 2] = torch.tensor([-40.0, 30.0])  # beyond the scale: clipped to it
    pic = (flow_picture(flow_px_to_norm(px), max_flow=8.0) + 1) * 127.5
    unit = flow_to_image(torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)).float()[0, :, 0, 0]
    torch.testing.assert_close(pic[0, :, 0, 0], unit, atol=0.6, rtol=0)
    assert (pic[0, :, 3, 3] == 255).all() and (pic[0, :, 1, 1] > 240).all()
    alone = (flow_picture(flow_px_to_norm(torch.full((1, 2, 4, 6), 0.05)), max_flow=8.0) + 1) * 127.5
    assert (alone > 240).all()  # a small flow alone is not stretched to full colour (torchvision's own scaling)
    sat = flow_to_image(torch.tensor([-0.8, 0.6]).view(1, 2, 1, 1)).float()[0, :, 0, 0]
    torch.testing.assert_close(pic[0, :, 2, 2], sat, atol=0.6, rtol=0)


# ------------------------------------------------------------------------------------------ shipped weights, VAE
def test_deco_presets_load_the_shipped_weights_from_the_package(tmp_path, monkeypatch):
    import json

    from tokenizer import build_vae
    from tokenizer.io import sha256_file

    monkeypatch.chdir(tmp_path)  # found from the package directory, not the working directory
    path = default_weights_path()
    record = json.loads(path.with_suffix(".json").read_text())
    assert {"command", "data", "steps", "wall_time_s", "git_commit"} <= set(record)
    sha = sha256_file(path)
    ref = None
    for name in ("deco-tiny", "deco-compact-tiny", "deco-concat-tiny"):
        vae = build_vae(name)
        assert vae.config.motion_ckpt_sha256 == sha and vae.config.motion_ckpt is None
        state = vae.motion.estimator.state_dict()
        ref = ref or state
        assert all(torch.equal(state[k], ref[k]) for k in ref)
    torch.manual_seed(0)
    rand = build_vae("deco-tiny", motion_ckpt=None)
    assert rand.config.motion_ckpt_sha256 is None
    assert not torch.equal(rand.motion.estimator.pyramid[0][0][0].weight, ref["pyramid.0.0.0.weight"])
    assert build_vae("deco-tiny", motion="classical").config.motion_ckpt_sha256 is None


def test_old_and_mismatched_motion_checkpoints_are_refused(tmp_path, shipped):
    from tokenizer import build_vae
    from tokenizer.io import save_weights

    state = {f"estimator.{k}": v for k, v in shipped.estimator.state_dict().items()}
    old = tmp_path / "old.safetensors"
    save_weights(state, old, config={"motion": {"kind": "learned", "channels": [8, 16, 16], "flow_gain": 10.0}})
    with pytest.raises(ValueError, match="older motion checkpoints are refused"):
        build_vae("deco-tiny", motion_ckpt=str(old))
    other = tmp_path / "other.safetensors"
    save_weights(state, other, config={"motion": {**shipped.record(), "max_flow": 16.0}})
    with pytest.raises(ValueError, match="max_flow=16.0"):
        build_vae("deco-tiny", motion_ckpt=str(other))
    with pytest.raises(FileNotFoundError, match="motion_pretrain.yaml"):
        build_vae("deco-tiny", motion_ckpt=str(tmp_path / "missing.safetensors"))
