"""The VAE contract for every backbone model (plain, VC-VAE and its ablation variants) on real video frames.

Shapes and frame rules, chunked (causal-cache) inference == whole clip on 33 frames, causality of the latent,
save / load round trip, batch independence, gradient checkpointing.
"""
import pytest
import torch

from tokenizer import FrameCountError, build_vae, load_vae
from tokenizer.models.vcvae import VCVAE

# (registry name, config overrides, clip length for the 33-frame tests)
VARIANTS = {
    "plain-tiny": ("plain-tiny", {}, 33),
    "vcvae-tiny": ("vcvae-tiny", {}, 32),
    "vcvae-tiny-separate": ("vcvae-tiny", {"first_frame": "separate"}, 33),
    "vcvae-tiny-causalconv": ("vcvae-tiny", {"conv_type": "causal"}, 32),
    "vcvae-tiny-replicate-pad": ("vcvae-tiny", {"group_end_pad": "replicate"}, 32),
    "vcvae-8x-tiny": ("vcvae-8x-tiny", {}, 32),
}


@pytest.fixture(scope="module")
def real_clip(sample_video_paths):
    """33 frames of the bundled 'bikes' sample video at 64x64, as (1 3 33 64 64) in [-1, 1]."""
    import decord

    path = next(p for p in sample_video_paths if p.name == "bikes.mp4")
    frames = decord.VideoReader(str(path), width=64, height=64, num_threads=1).get_batch(list(range(33))).asnumpy()
    return torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0


def _build(key, seed=0):
    name, overrides, _ = VARIANTS[key]
    torch.manual_seed(seed)
    model = build_vae(name, **overrides).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that no path hides behind an identity
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _assert_same(a, b):
    # float32 rounding through ~30 layers whose convs see different batch shapes; a missing cache costs ~1e-1
    torch.testing.assert_close(a, b, atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("key", list(VARIANTS))
def test_chunked_equals_whole_clip(key, real_clip):
    model = _build(key)
    clip = real_clip[:, :, :VARIANTS[key][2]]
    t_c = model.compression[0]
    with torch.no_grad():
        whole = model.encode(clip, chunk_size=0)  # 0: the whole clip at once
        chunked = model.encode(clip, chunk_size=t_c)  # the smallest chunk: one latent frame
        _assert_same(chunked.mean, whole.mean)
        _assert_same(chunked.logvar, whole.logvar)
        assert torch.equal(model.encode(clip).mean, chunked.mean)  # without gradients the default is chunked
        z = whole.mode()
        video = model.decode(z, chunk_size=0)
        _assert_same(model.decode(z, chunk_size=1), video)
        _assert_same(model.decode(z, chunk_size=3), video)
        assert torch.equal(model.decode(z), model.decode(z, chunk_size=1))
    with torch.enable_grad():  # with gradients (training) the default is the whole clip
        short = clip[:, :, :model.num_frames(2)]
        assert torch.equal(model.encode(short).mean.detach(), model.encode(short, chunk_size=0).mean.detach())
    with torch.no_grad():
        if model.frame_rule == "in_sequence":  # control: a chunk without the cache is far off, so the check has teeth
            alone = model.encode(clip[:, :, t_c:2 * t_c]).mean[:, :, 0]
            assert (alone - whole.mean[:, :, 1]).abs().max() > 1e-2
    assert video.shape == clip.shape


def test_shapes_and_frame_rules():
    vc, plain, vc8 = build_vae("vcvae-tiny").eval(), build_vae("plain-tiny").eval(), build_vae("vcvae-8x-tiny").eval()
    with torch.no_grad():
        assert vc.encode(torch.zeros(1, 3, 16, 32, 32)).mean.shape == (1, 16, 4, 4, 4)  # in-sequence
        assert vc.encode(torch.zeros(1, 3, 4, 256, 256)).mean.shape == (1, 16, 1, 32, 32)
        assert plain.encode(torch.zeros(1, 3, 17, 32, 32)).mean.shape == (1, 16, 5, 4, 4)  # causal
        assert vc8.encode(torch.zeros(1, 3, 16, 32, 32)).mean.shape == (1, 32, 2, 4, 4)
        assert vc.decode(torch.zeros(1, 16, 4, 4, 4)).shape == (1, 3, 16, 32, 32)
        assert plain.decode(torch.zeros(1, 16, 5, 4, 4)).shape == (1, 3, 17, 32, 32)
    assert (vc.frame_rule, plain.frame_rule, vc.compression, vc8.compression) == \
        ("in_sequence", "causal", (4, 8, 8), (8, 8, 8))
    assert vc.latent_shape(16, 256, 256) == (16, 4, 32, 32) and plain.num_latent_frames(17) == 5
    for model, bad in ((vc, 17), (plain, 16), (vc8, 12)):
        with pytest.raises(FrameCountError, match=f"got {bad}"):
            model.encode(torch.zeros(1, 3, bad, 32, 32))
    with pytest.raises(ValueError, match="multiples of 8"):
        vc.encode(torch.zeros(1, 3, 4, 30, 32))
    with pytest.raises(ValueError, match="multiple of 4"):
        vc.encode(torch.zeros(1, 3, 8, 32, 32), chunk_size=6)


def _changed(fn, x, index):
    x2 = x.clone()
    x2[:, :, index] += 0.5
    with torch.no_grad():
        diff = (fn(x2) - fn(x)).abs().amax(dim=(0, 1, 3, 4))
    return torch.nonzero(diff > 0).flatten().tolist()


@pytest.mark.parametrize("key,last_frame_of_latent", [("plain-tiny", lambda j: 4 * j),
                                                      ("vcvae-tiny", lambda j: 4 * j + 3),
                                                      ("vcvae-tiny-separate", lambda j: 4 * j)])
def test_latent_is_causal(key, last_frame_of_latent, real_clip):
    """Changing frame t changes no latent frame whose frames all precede t; the decoder is causal in latents."""
    model = _build(key)
    clip = real_clip[:, :, :VARIANTS[key][2]][..., :32, :32]
    t = 9
    changed = _changed(lambda v: model.encode(v).mean, clip, t)
    assert changed and min(changed) == min(j for j in range(9) if last_frame_of_latent(j) >= t)
    z = torch.randn(1, 16, 8 if model.frame_rule == "in_sequence" else 9, 4, 4)
    j = 3
    first_frame_of_latent = 4 * j if model.frame_rule == "in_sequence" else 4 * j - 3
    assert min(_changed(model.decode, z, j)) == first_frame_of_latent


@pytest.mark.parametrize("key,mixes", [("vcvae-tiny", True), ("vcvae-tiny-separate", False)])
def test_first_frame_sees_its_group_only_in_sequence(key, mixes, real_clip):
    """In-sequence groups (VC-VAE): frames 0-3 form one group, so input frame 1 reaches output frame 0; with a
    separate first frame it is a group of its own and nothing after it reaches it."""
    model = _build(key)
    clip = real_clip[:, :, :VARIANTS[key][2]][..., :32, :32]
    changed = _changed(lambda v: model.decode(model.encode(v).mode()), clip, 1)
    assert (0 in changed) == mixes and 1 in changed


@pytest.mark.parametrize("key", ["plain-tiny", "vcvae-tiny-separate"])
def test_save_load_round_trip_is_bit_exact(key, tmp_path, real_clip):
    model = _build(key, seed=3)
    model.save_pretrained(tmp_path / "vae")
    loaded = load_vae(tmp_path / "vae")
    assert type(loaded) is type(model) and loaded.config == model.config and loaded.name == model.name
    assert loaded.fingerprint() == model.fingerprint()
    clip = real_clip[:, :, :17, :32, :32]
    with torch.no_grad():
        assert torch.equal(loaded.encode(clip).mean, model.encode(clip).mean)
        assert torch.equal(loaded.decode(model.encode(clip).mean), model.decode(model.encode(clip).mean))
    assert type(VCVAE.from_pretrained(tmp_path / "vae")) is type(model)


def test_batch_size_does_not_change_the_result(real_clip):
    model = _build("vcvae-tiny")
    clips = torch.cat([real_clip[:, :, :8, :32, :32], real_clip[:, :, 8:16, 32:, 32:]])
    with torch.no_grad():
        both = model.encode(clips).mean
        for i in range(2):
            torch.testing.assert_close(both[i:i + 1], model.encode(clips[i:i + 1]).mean, atol=1e-5, rtol=1e-5)


def test_gradient_checkpointing_gives_the_same_gradients(real_clip):
    clip = real_clip[:, :, :8, :32, :32]
    grads = []
    for ckpt in (False, True):
        model = _build("vcvae-tiny")
        model.enable_gradient_checkpointing(ckpt)
        recon, posterior = model(clip, sample=False)
        ((recon - clip).abs().mean() + 1e-6 * posterior.kl().mean()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def test_a_vae_without_decode_cannot_be_built():
    """encode and decode are the contract's abstract methods: leaving one out fails at construction, not later."""
    from tokenizer.base import VideoVAE

    class EncodeOnly(VideoVAE):
        latent_channels, compression = 4, (4, 8, 8)

        def encode(self, video):
            return None

    with pytest.raises(TypeError, match="abstract method.*decode"):
        EncodeOnly(config=None)
