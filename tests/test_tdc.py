"""TDC (VC-VAE eqs. 5-7) against its defining equations and against a plain conv3d with the transformed kernel."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from tokenizer.modules import CausalConv3d, GroupCausalConv3d, TemporalDownsample, TemporalUpsample, tdc_kernel
from tokenizer.modules import conv as conv_mod


def _randomise(module):
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


def _tdc_by_equation(xp, weight, bias, anchor, stride=1):
    """Y_t = W_a * X_a + sum_{i != a} W_i * (X_i - X_a), each term a per-frame conv2d (eqs. 5, 6, 7)."""
    k_t, t_out = weight.shape[2], (xp.shape[2] - weight.shape[2]) // stride + 1
    frames = []
    for t in range(t_out):
        window = [xp[:, :, t * stride + i] for i in range(k_t)]
        x_a = window[anchor]
        y = F.conv2d(x_a, weight[:, :, anchor], bias, padding=1)
        for i in range(k_t):
            if i != anchor:
                y = y + F.conv2d(window[i] - x_a, weight[:, :, i], None, padding=1)
        frames.append(y)
    return torch.stack(frames, dim=2)


def _paper_kernel(weight, anchor):
    """The kernel the equations imply, written out: W'_a = W_a - sum_{i != a} W_i, W'_i = W_i."""
    w = weight.clone()
    w[:, :, anchor] = weight[:, :, anchor] - sum(weight[:, :, i] for i in range(weight.shape[2]) if i != anchor)
    return w


@pytest.fixture(params=[16, 1000], ids=["taps2d", "conv3d"])
def conv_path(request, monkeypatch):
    """Run every check through both CPU paths of the temporal conv."""
    monkeypatch.setattr(conv_mod, "TAPS_MAX_IN_CHANNELS", request.param)


def test_causal_tdc_eq7(conv_path):
    conv = _randomise(CausalConv3d(4, 5, 3, tdc=True))
    x = torch.randn(2, 4, 7, 6, 5)
    xp = torch.cat([x[:, :, :1], x[:, :, :1], x], dim=2)  # first frame replicated k_t - 1 = 2 times
    y = conv(x)
    assert conv.anchor == 2  # the current frame X_t
    torch.testing.assert_close(y, _tdc_by_equation(xp, conv.weight, conv.bias, 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, F.conv3d(xp, _paper_kernel(conv.weight, 2), conv.bias, padding=(0, 1, 1)),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("group", [1, 2, 4])
@pytest.mark.parametrize("back_pad", ["zeros", "replicate"])
def test_group_causal_tdc_eq5(conv_path, group, back_pad):
    conv = _randomise(GroupCausalConv3d(4, 3, group, 3, tdc=True, back_pad=back_pad))
    x = torch.randn(1, 4, 8, 5, 6)
    y = conv(x)
    assert conv.anchor == 1  # the centre frame of the window
    for g in range(8 // group):  # each group alone: [last frame of previous group | group | back pad]
        s = g * group
        front = x[:, :, s - 1:s] if s else x[:, :, :1]
        behind = torch.zeros_like(x[:, :, :1]) if back_pad == "zeros" else x[:, :, s + group - 1:s + group]
        xp = torch.cat([front, x[:, :, s:s + group], behind], dim=2)
        torch.testing.assert_close(y[:, :, s:s + group], _tdc_by_equation(xp, conv.weight, conv.bias, 1),
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(y[:, :, s:s + group],
                                   F.conv3d(xp, _paper_kernel(conv.weight, 1), conv.bias, padding=(0, 1, 1)),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal_first", [False, True])
def test_temporal_interaction_down_eq6(conv_path, causal_first):
    down = _randomise(TemporalDownsample(4, tdc=True, causal_first=causal_first))
    x = torch.randn(1, 4, 9 if causal_first else 8, 5, 5)
    xp = torch.cat([x[:, :, :1], x], dim=2) if causal_first else x
    y = down(x)
    # Y = W_a * X_a + W_p * (X_p - X_a): anchor = the later frame of each stride-2 pair
    torch.testing.assert_close(y, _tdc_by_equation(xp, down.conv.weight, down.conv.bias, 1, stride=2),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y, F.conv3d(xp, _paper_kernel(down.conv.weight, 1), down.conv.bias,
                                           stride=(2, 1, 1), padding=(0, 1, 1)), atol=1e-5, rtol=1e-5)


def test_temporal_interaction_up_eq6(conv_path):
    up = _randomise(TemporalUpsample(3, tdc=True))
    x = torch.randn(1, 3, 4, 5, 5)
    xp = torch.cat([x[:, :, :1], x], dim=2)
    ref = _tdc_by_equation(xp, up.conv.weight, up.conv.bias, 1)  # b 2c t h w, before depth-to-time
    y = up(x)
    torch.testing.assert_close(y[:, :, 0::2], ref[:, :3], atol=1e-5, rtol=1e-5)  # channel half 0 -> frame 2t
    torch.testing.assert_close(y[:, :, 1::2], ref[:, 3:], atol=1e-5, rtol=1e-5)  # channel half 1 -> frame 2t+1


@pytest.mark.parametrize("make", [lambda tdc: CausalConv3d(8, 8, 3, tdc=tdc),
                                  lambda tdc: GroupCausalConv3d(8, 8, 4, 3, tdc=tdc),
                                  lambda tdc: TemporalDownsample(8, tdc=tdc)], ids=["causal", "group", "down"])
def test_tdc_same_parameters_and_flops(make):
    plain, tdc = make(False), make(True)
    assert sum(p.numel() for p in tdc.parameters()) == sum(p.numel() for p in plain.parameters())
    x = torch.randn(1, 8, 8, 6, 6)
    flops = []
    for m in (plain, tdc):
        with FlopCounterMode(display=False) as counter:
            m(x)
        flops.append(counter.get_total_flops())
    assert flops[0] == flops[1] > 0


def test_causal_conv_flops_equal_nn_conv3d():
    conv, x = CausalConv3d(32, 32, 3, tdc=True), torch.randn(1, 32, 6, 8, 8)
    ref = torch.nn.Conv3d(32, 32, 3, padding=(0, 1, 1))
    counts = []
    for fn in (lambda: conv(x), lambda: ref(torch.cat([x[:, :, :1]] * 2 + [x], dim=2))):
        with FlopCounterMode(display=False) as counter:
            fn()
        counts.append(counter.get_total_flops())
    assert counts[0] == counts[1]


def test_static_clip_sees_only_the_anchor():
    """On a static clip every difference is zero: causal TDC output = conv2d with W_a alone, at every frame."""
    conv = _randomise(CausalConv3d(3, 4, 3, tdc=True))
    frame = torch.randn(1, 3, 6, 6)
    y = conv(frame[:, :, None].expand(-1, -1, 5, -1, -1))
    expected = F.conv2d(frame, conv.weight[:, :, conv.anchor], conv.bias, padding=1)
    torch.testing.assert_close(y, expected[:, :, None].expand_as(y), atol=1e-5, rtol=1e-5)


def test_tdc_kernel_keeps_anchor_only_kernels():
    """An inflated kernel (2D weights on the anchor, zeros elsewhere) is its own TDC transform."""
    w = torch.zeros(4, 3, 3, 3, 3)
    w[:, :, 1] = torch.randn(4, 3, 3, 3)
    assert torch.equal(tdc_kernel(w, 1), w)
    with pytest.raises(ValueError, match="anchor"):
        tdc_kernel(w, 3)
