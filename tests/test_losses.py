"""VAE losses and the 3D PatchGAN: each term against its defining formula or a well-kept library."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tokenizer.discriminator import DiscriminatorConfig, PatchDiscriminator3D
from tokenizer.distributions import DiagonalGaussian
from tokenizer.losses import (LossConfig, PerceptualLoss, VAELoss, adaptive_weight, build_lpips, generator_adv_loss,
                              hinge_d_loss, kl_loss, l1_loss, lpips_backbone_file)


def test_hinge_d_loss_matches_its_formula():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(2, 1, 3, 4, 4, generator=g) * 2, torch.randn(2, 1, 3, 4, 4, generator=g) * 2
    r, f = real.flatten().tolist(), fake.flatten().tolist()
    expected = 0.5 * (sum(max(0.0, 1 - v) for v in r) / len(r) + sum(max(0.0, 1 + v) for v in f) / len(f))
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected, rel=1e-6)
    assert generator_adv_loss(fake).item() == pytest.approx(-sum(f) / len(f), rel=1e-6)


def test_adaptive_weight_matches_hand_computed_gradients():
    # last layer y = W x; nll = mean|y - t|, g = -mean(v * y): gradients written out by hand
    g = torch.Generator().manual_seed(1)
    x, t, v = torch.randn(5, 7, generator=g), torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
    w = nn.Parameter(torch.randn(3, 5, generator=g))
    y = w @ x
    nll = (y - t).abs().mean()
    g_loss = -(v * y).mean()
    n = y.numel()
    grad_nll = (np.sign((w @ x - t).detach().numpy()) @ x.numpy().T) / n
    grad_g = -(v.numpy() @ x.numpy().T) / n
    expected = np.linalg.norm(grad_nll) / (np.linalg.norm(grad_g) + 1e-6)
    got = adaptive_weight(nll, g_loss, w)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert not got.requires_grad
    assert adaptive_weight(nll * 1e9, g_loss, w, max_weight=10.0).item() == 10.0  # clamped


def test_kl_matches_torch_distributions_and_l1_is_mean_abs():
    g = torch.Generator().manual_seed(2)
    mean, logvar = torch.randn(2, 4, 2, 3, 3, generator=g), torch.randn(2, 4, 2, 3, 3, generator=g)
    q = torch.distributions.Normal(mean, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    expected = torch.distributions.kl_divergence(q, p).flatten(1).sum(1).mean()  # sum over latent, mean over batch
    assert torch.allclose(kl_loss(DiagonalGaussian(mean=mean, logvar=logvar)), expected, rtol=1e-5)
    a, b = torch.randn(2, 3, 5, 4, 4, generator=g), torch.randn(2, 3, 5, 4, 4, generator=g)
    assert torch.allclose(l1_loss(a, b), F.l1_loss(a, b))


@pytest.fixture(scope="module")
def squeeze_lpips():
    with pytest.warns(UserWarning, match="RANDOM"):
        return build_lpips("squeeze", random_backbone=True, seed=0)


def test_perceptual_loss_is_lpips_frame_by_frame(squeeze_lpips):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    y = torch.rand(2, 3, 3, 32, 32, generator=g) * 2 - 1
    got = PerceptualLoss(squeeze_lpips)(x, y)
    loop = torch.tensor([[squeeze_lpips(y[b, :, t][None], x[b, :, t][None]).item() for t in range(3)]
                         for b in range(2)]).mean(1)
    assert torch.allclose(got, loop, atol=1e-6)


def test_lpips_trunk_loads_torchvision_weights_and_a_random_trunk_ignores_them(tmp_path, monkeypatch):
    """The trunk is read from torchvision's cache folder (or a given file) into LPIPS's slices; asking for a random
    trunk never picks up a cached real one (it would then be labelled random while being LPIPS)."""
    import torchvision

    torch.manual_seed(4)
    tv = torchvision.models.squeezenet1_1(weights=None)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    path = tmp_path / "checkpoints" / lpips_backbone_file("squeeze")[0]
    path.parent.mkdir()
    torch.save(tv.state_dict(), path)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    # torchvision's own feature stack: LPIPS taps squeezenet after modules 1, 4, 7, 9, 10, 11, 12
    h, taps = x, []
    for i, layer in enumerate(tv.features):
        h = layer(h)
        if i in (1, 4, 7, 9, 10, 11, 12):
            taps.append(h)
    for model in (build_lpips("squeeze"), build_lpips("squeeze", backbone=str(path))):
        for a, b in zip(model.net(x), taps):
            assert torch.equal(a, b)
    with pytest.warns(UserWarning, match="RANDOM"):
        random = build_lpips("squeeze", random_backbone=True)
    assert not torch.equal(random.net(x)[0], taps[0])
    with pytest.raises(ValueError, match="choose one"):
        build_lpips("squeeze", backbone=str(path), random_backbone=True)


def test_lpips_without_trunk_weights_names_the_file(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    name, url = lpips_backbone_file("vgg")
    with pytest.raises(FileNotFoundError) as err:
        build_lpips("vgg")
    assert name in str(err.value) and url in str(err.value) and "perceptual_weight=0" in str(err.value)


def test_generator_loss_gan_starts_at_its_step():
    torch.manual_seed(5)
    cfg = LossConfig(recon_weight=4.0, perceptual_weight=0.0, kl_weight=1e-7, gan_weight=0.2, gan_start=10)
    loss = VAELoss(cfg)
    calls = []
    disc = PatchDiscriminator3D(DiscriminatorConfig(channels=4, num_layers=2)).requires_grad_(False)
    disc.register_forward_hook(lambda *a: calls.append(1))
    last = nn.Parameter(torch.randn(3, 3, 1, 1, 1))
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    x_hat = F.conv3d(x, last)  # a "decoder" whose last layer is `last`
    post = DiagonalGaussian(mean=torch.randn(1, 4, 2, 2, 2), logvar=torch.zeros(1, 4, 2, 2, 2))
    before, logs = loss.generator(x, x_hat, post, step=9, discriminator=disc, last_layer=last)
    assert not calls and "g_adv" not in logs
    assert before.item() == pytest.approx(4.0 * logs["l1"].item() + 1e-7 * logs["kl"].item(), rel=1e-6)
    after, logs = loss.generator(x, x_hat, post, step=10, discriminator=disc, last_layer=last)
    assert calls and "g_adv" in logs
    expected = before + 0.2 * logs["d_weight"] * logs["g_adv"]
    assert after.item() == pytest.approx(expected.item(), rel=1e-6)


def test_patch_discriminator_layout():
    torch.manual_seed(6)
    d = PatchDiscriminator3D(DiscriminatorConfig(channels=4, num_layers=3))
    convs = [m for m in d.modules() if isinstance(m, nn.Conv3d)]
    assert all(m.kernel_size == (3, 3, 3) for m in convs) and convs[-1].out_channels == 1
    assert [m.stride for m in convs] == [(2, 2, 2), (2, 2, 2), (1, 2, 2), (1, 1, 1), (1, 1, 1)]
    x = torch.rand(2, 3, 9, 64, 64) * 2 - 1
    out = d(x)
    assert out.shape == (2, 1, 3, 8, 8)  # one logit per space-time patch: T 9 -> 5 -> 3, H and W / 8
    # BatchNorm on batch statistics only (no running statistics): train and eval mode agree, no buffers to drift
    assert not list(d.buffers()) and torch.equal(d.eval()(x), out)


def test_discriminator_learns_to_separate_real_from_fake():
    torch.manual_seed(7)
    d = PatchDiscriminator3D(DiscriminatorConfig(channels=8, num_layers=2))
    opt = torch.optim.Adam(d.parameters(), lr=2e-3, betas=(0.5, 0.9))
    ramp = torch.linspace(-1, 1, 16)
    real = ramp.view(1, 1, 1, 1, 16).expand(2, 3, 5, 16, 16).contiguous()  # smooth "videos"
    losses = []
    for _ in range(15):
        fake = torch.rand(2, 3, 5, 16, 16) * 2 - 1  # noise
        loss = hinge_d_loss(d(real), d(fake))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
