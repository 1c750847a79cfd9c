"""Building blocks: convs against padded F.conv3d / plain loops, causality, per-frame ops, samplers, caches."""
import pytest
import torch
import torch.nn.functional as F

from tokenizer import build_vae
from tokenizer.modules import (CausalConv3d, FrameAttention, FrameCache, FrameGroupNorm, GroupCausalConv3d,
                               GroupOfOneConv3d, TemporalDownsample, TemporalUpsample)
from tokenizer.modules import conv as conv_mod


def _rand(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


@pytest.mark.parametrize("c_in", [4, 24])  # the per-tap 2D path and the conv3d path
def test_causal_conv_is_conv3d_on_replicate_padded_input(c_in):
    conv = _rand(CausalConv3d(c_in, 5, 3))
    x = torch.randn(2, c_in, 6, 7, 5)
    ref = F.conv3d(torch.cat([x[:, :, :1], x[:, :, :1], x], 2), conv.weight, conv.bias, padding=(0, 1, 1))
    torch.testing.assert_close(conv(x), ref, atol=1e-5, rtol=1e-5)


def test_taps_fast_path_equals_conv3d():
    """The per-tap 2D path against F.conv3d, with temporal stride 2 (temporal downsampler)."""
    x, w, b = torch.randn(2, 6, 9, 5, 4), torch.randn(7, 6, 2, 3, 3), torch.randn(7)
    fast = conv_mod.temporal_conv(x, w, b, stride_t=2)
    torch.testing.assert_close(fast, F.conv3d(x, w, b, stride=(2, 1, 1), padding=(0, 1, 1)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("lone_first", [False, True])
@pytest.mark.parametrize("c_in,k_t", [(3, 3), (20, 3), (3, 5)])  # taps / conv3d path; k_t 5: the generic path
@pytest.mark.parametrize("back_pad", ["zeros", "replicate"])
def test_group_causal_conv_against_plain_loop(group, lone_first, c_in, k_t, back_pad):
    conv = _rand(GroupCausalConv3d(c_in, 4, group, (k_t, 3, 3), lone_first=lone_first, back_pad=back_pad))
    t, p = 8 + lone_first, k_t // 2
    x = torch.randn(2, c_in, t, 5, 5)
    y = conv(x)
    starts = ([0] if lone_first else []) + list(range(int(lone_first), t, group))
    padded = torch.cat([x[:, :, :1]] * p + [x], dim=2)  # frames before the clip: copies of the first
    for s, e in zip(starts, starts[1:] + [t]):
        prev = padded[:, :, s:s + p]  # the p frames before the group (the previous group's last for k_t = 3)
        behind = torch.zeros_like(prev) if back_pad == "zeros" else torch.cat([x[:, :, e - 1:e]] * p, dim=2)
        window = torch.cat([prev, x[:, :, s:e], behind], dim=2)
        torch.testing.assert_close(y[:, :, s:e], F.conv3d(window, conv.weight, conv.bias, padding=(0, 1, 1)),
                                   atol=1e-4, rtol=1e-4)


def test_group_causal_conv_wrong_length_is_an_error():
    with pytest.raises(ValueError, match="whole number of groups of 4"):
        GroupCausalConv3d(3, 3, 4)(torch.randn(1, 3, 6, 4, 4))


def _changed_frames(module, x, t):
    """Output frames that change when input frame t changes."""
    x2 = x.clone()
    x2[:, :, t] += 1.0
    with torch.no_grad():
        diff = (module(x2) - module(x)).abs().amax(dim=(0, 1, 3, 4))
    return set(torch.nonzero(diff > 0).flatten().tolist())


def test_causal_conv_never_looks_ahead():
    conv, x = _rand(CausalConv3d(3, 3, 3, tdc=True)), torch.randn(1, 3, 8, 4, 4)
    for t in range(8):
        assert _changed_frames(conv, x, t) == set(range(t, min(t + 3, 8)))


def test_group_causal_conv_never_sees_a_later_group():
    conv, x = _rand(GroupCausalConv3d(3, 3, 4, tdc=True)), torch.randn(1, 3, 12, 4, 4)
    for t in range(12):
        changed, g = _changed_frames(conv, x, t), t // 4
        assert min(changed) >= 4 * g  # no earlier group is touched
        assert set(range(4 * g, 4 * g + 4)) & changed  # bidirectional inside the group
    # the last frame of a group reaches the first frame of the next (front pad) and the first frame of its own
    assert _changed_frames(conv, x, 3) == {2, 3, 4}
    assert 0 in _changed_frames(conv, x, 1)  # a later frame of the group reaches an earlier one


def test_frame_group_norm_is_group_norm_per_frame():
    norm = _rand(FrameGroupNorm(2, 6, eps=1e-6))
    x = torch.randn(2, 6, 5, 4, 3) * 3 + 1
    ref = torch.stack([F.group_norm(x[:, :, t], 2, norm.weight, norm.bias, 1e-6) for t in range(5)], dim=2)
    torch.testing.assert_close(norm(x), ref, atol=1e-5, rtol=1e-5)


def test_frame_attention_is_per_frame_softmax_attention():
    attn = _rand(FrameAttention(8, groups=2))
    x = torch.randn(1, 8, 3, 4, 5)
    y = attn(x)
    for t in range(3):  # plain single-head attention over the 20 positions of frame t
        h = F.group_norm(x[:, :, t], 2, attn.group_norm.weight, attn.group_norm.bias, 1e-6)
        tok = h.flatten(2).transpose(1, 2)  # 1 (h w) c
        q, k, v = attn.to_q(tok), attn.to_k(tok), attn.to_v(tok)
        a = torch.softmax(q @ k.transpose(1, 2) / 8 ** 0.5, dim=-1)
        out = attn.to_out[0](a @ v).transpose(1, 2).reshape(1, 8, 4, 5)
        torch.testing.assert_close(y[:, :, t], x[:, :, t] + out, atol=1e-5, rtol=1e-5)


def test_temporal_samplers_select_and_broadcast_at_init():
    """Eq. 3: frames {0,1,2,3} -> keyframes {1,3} (in-sequence) / {0,2,4} (causal first); eq. 4: broadcast."""
    x = torch.randn(1, 4, 8, 3, 3)
    down = TemporalDownsample(4, tdc=True)
    down.init_keyframe_selection()
    torch.testing.assert_close(down(x), x[:, :, 1::2])
    down_c = TemporalDownsample(4, tdc=True, causal_first=True)
    down_c.init_keyframe_selection()
    torch.testing.assert_close(down_c(x[:, :, :5]), x[:, :, 0:5:2])
    up = TemporalUpsample(4, tdc=True)
    up.init_broadcast()
    torch.testing.assert_close(up(x[:, :, :3]), x[:, :, :3].repeat_interleave(2, dim=2))
    up_c = TemporalUpsample(4, tdc=True, drop_first=True)
    up_c.init_broadcast()
    torch.testing.assert_close(up_c(x[:, :, :3]), x[:, :, :3].repeat_interleave(2, dim=2)[:, :, 1:])


@pytest.mark.parametrize("make,chunks", [
    (lambda: CausalConv3d(3, 4, 3, tdc=True), [1, 3, 2, 4]),
    (lambda: GroupCausalConv3d(3, 4, 2, tdc=True), [2, 4, 2]),
    (lambda: GroupCausalConv3d(3, 4, 2, tdc=True, lone_first=True), [3, 2, 4]),
    (lambda: GroupCausalConv3d(3, 4, 2, tdc=True, back_pad="replicate"), [2, 4, 2]),
    (lambda: GroupCausalConv3d(3, 4, 2, (5, 3, 3), tdc=True), [2, 4, 2]),  # two frames of history
    (lambda: TemporalDownsample(3, tdc=True), [3, 3, 1, 3]),  # chunk edges inside a stride window
    (lambda: TemporalDownsample(3, tdc=True, causal_first=True), [1, 4, 3, 3]),
    (lambda: TemporalUpsample(3, tdc=True, drop_first=True), [2, 1, 3]),
], ids=["causal", "group", "group-lone-first", "group-replicate", "group-kt5", "down", "down-causal", "up-causal"])
def test_chunked_equals_whole_per_module(make, chunks):
    module = _rand(make())
    x = torch.randn(1, 3, sum(chunks), 4, 4)
    whole = module(x)
    cache, parts, start = FrameCache(), [], 0
    for n in chunks:
        parts.append(module(x[:, :, start:start + n], cache))
        start += n
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["vcvae-tiny", "plain-tiny"])
def test_cache_entries_own_exactly_the_frames_they_keep(name):
    """After every chunk each cache entry is a tensor of its own (not a view keeping a whole chunk input alive),
    holding at most the frames the next chunk needs: k_t - 1 (causal), k_t // 2 (group causal), < k_t (strided)."""
    torch.manual_seed(0)
    vae = build_vae(name).eval()
    t_c = vae.compression[0]
    x = torch.rand(1, 3, 3 * t_c + (vae.frame_rule == "causal"), 16, 16) * 2 - 1
    temporal = {id(m): m for m in vae.modules() if isinstance(m, (CausalConv3d, GroupCausalConv3d))}
    for coder, chunks in ((vae.encoder, [x[:, :, :t_c + 1], x[:, :, t_c + 1:]] if vae.frame_rule == "causal"
                          else list(x.split(t_c, dim=2))), (vae.decoder, list(torch.randn(1, 16, 4, 2, 2).unbind(2)))):
        cache = FrameCache()
        for chunk in chunks:
            with torch.no_grad():
                coder(chunk if chunk.ndim == 5 else chunk[:, :, None], cache)
            entries = [(temporal[k], f) for k, f in cache._frames.items()]
            assert len(entries) > 5
            for module, frames in entries:
                assert frames.untyped_storage().nbytes() == frames.numel() * frames.element_size()
                if isinstance(module, GroupCausalConv3d):
                    assert frames.shape[2] == module.pad
                elif module.stride[0] == 1:
                    assert frames.shape[2] == module.k_t - 1
                else:  # a strided conv keeps what its next output window still needs
                    assert frames.shape[2] < module.k_t
            assert cache.nbytes() == sum(f.numel() * f.element_size() for _, f in entries)


@pytest.mark.parametrize("tdc", [False, True])
@pytest.mark.parametrize("lone_first", [False, True])
@pytest.mark.parametrize("c_in", [3, 20])
@pytest.mark.parametrize("back_pad", ["zeros", "replicate"])
def test_group_of_one_is_the_group_causal_conv_without_its_dead_tap(tdc, lone_first, c_in, back_pad):
    """A group causal conv over groups of one frame, its weights converted (the back taps folded into the anchor as
    the padding says), is the causal k_t = 2 conv: same outputs, whole clip and chunk by chunk, 2/3 of the kernel."""
    old = _rand(GroupCausalConv3d(c_in, 4, 1, 3, tdc=tdc, lone_first=lone_first, back_pad=back_pad))
    new = GroupOfOneConv3d(c_in, 4, 3, tdc=tdc, back_pad=back_pad)
    if back_pad == "zeros":
        new.load_state_dict(old.state_dict())  # the old k_t = 3 kernel, converted on load
    else:  # no checkpoint of the old layout used this padding: loading one into it is refused
        with pytest.raises(ValueError, match="group_end_pad='zeros'"):
            new.load_state_dict(old.state_dict())
        new.load_state_dict({"weight": new.old_weight(old.weight), "bias": old.bias})
    assert new.weight.shape[2] == 2 and new.anchor == 1
    x = torch.randn(2, c_in, 7, 5, 5)
    torch.testing.assert_close(new(x), old(x), atol=1e-4, rtol=1e-4)
    cache, parts = FrameCache(), []
    for part in x.split([3, 1, 3], dim=2):
        parts.append(new(part, cache))
    torch.testing.assert_close(torch.cat(parts, dim=2), old(x), atol=1e-4, rtol=1e-4)


def test_static_clip_changes_at_group_ends_under_tdc_with_zero_back_pad():
    """README: with IV-VAE's zero back pad, TDC's future tap at the last frame of a group computes W_f * (0 - X_t),
    so a static clip is not static at group ends; inside a group it is, and with zero future taps (inflation) too."""
    conv = _rand(GroupCausalConv3d(3, 4, 4, tdc=True))
    x = torch.randn(1, 3, 1, 5, 5).expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        y = conv(x)
        dev = (y - y[:, :, :1]).abs().amax(dim=(0, 1, 3, 4))
        assert dev[[0, 1, 2, 4, 5, 6]].max() < 1e-5 and dev[[3, 7]].min() > 1e-1
        conv.weight[:, :, 2] = 0  # future taps zero, as after inflating an image VAE
        y = conv(x)
    assert (y - y[:, :, :1]).abs().max() < 1e-5


@pytest.mark.parametrize("tdc", [False, True])
def test_static_clip_stays_static_with_replicate_back_pad(tdc):
    """With a copy of the group's last frame behind it, every frame of a static clip sees the same window."""
    conv = _rand(GroupCausalConv3d(3, 4, 4, tdc=tdc, back_pad="replicate"))
    x = torch.randn(1, 3, 1, 5, 5).expand(-1, -1, 8, -1, -1)
    with torch.no_grad():
        y = conv(x)
    assert (y - y[:, :, :1]).abs().max() < 1e-5


def test_unknown_back_pad_is_named():
    with pytest.raises(ValueError, match="zeros, replicate.*'reflect'"):
        GroupCausalConv3d(3, 3, 4, back_pad="reflect")
