"""diffusion.gaussian_diffusion and diffusion.samplers: schedules, respacing, posterior and DDIM update against
diffusers' schedulers, the hybrid loss against its definition, an analytic Gaussian toy where the exact eps
predictor (and the exact reverse variance) are known, classifier-free guidance, per-sample randomness, and a tiny
Latte that samples and trains."""
from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion import GaussianDiffusion, build_latte, classifier_free_guidance, ddim_sample, ddpm_sample
from diffusion.gaussian_diffusion import (discretized_gaussian_log_likelihood, make_beta_schedule, normal_kl,
                                          space_timesteps)
from diffusion.samplers import ddim_step, ddpm_step

TINY = dict(in_channels=4, num_frames=4, input_size=8)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_latte(num_classes: int = 3, std: float = 0.05, **kw) -> torch.nn.Module:
    """The tiny preset with small random weights everywhere (so the untrained zero output does not hide paths)."""
    model = build_latte("Latte-tiny/2", num_classes=num_classes, **{**TINY, **kw})
    g = gen(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


# ------------------------------------------------------------------------------------- schedules, respacing

def test_beta_schedules_match_diffusers():
    linear = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").betas.double()
    torch.testing.assert_close(make_beta_schedule("linear", 1000), linear, rtol=1e-6, atol=0)
    cosine = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2").betas.double()
    torch.testing.assert_close(make_beta_schedule("cosine", 1000), cosine, rtol=1e-5, atol=1e-9)


def test_respacing_keeps_alphas_cumprod_at_the_kept_steps():
    base = GaussianDiffusion()
    for count in (250, 50, 7):
        kept = space_timesteps(1000, count)
        ref = DDPMScheduler(num_train_timesteps=1000, timestep_spacing="linspace")
        ref.set_timesteps(count)
        assert kept == sorted(ref.timesteps.tolist())  # evenly spaced, both ends kept
        respaced = base.respace(count)
        assert respaced.num_timesteps == count and respaced.timestep_map.tolist() == kept
        torch.testing.assert_close(respaced.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-12, atol=0)
    twice = base.respace(250).respace(50)  # respacing composes: alpha-bar still the original at kept steps
    torch.testing.assert_close(twice.alphas_cumprod, base.alphas_cumprod[twice.timestep_map], rtol=1e-12, atol=0)
    assert set(twice.timestep_map.tolist()) <= set(space_timesteps(1000, 250))
    assert space_timesteps(1000, "10,20")[:3] == [0, 55, 111] and len(space_timesteps(1000, "10,20")) == 30
    with pytest.raises(ValueError):
        space_timesteps(100, 101)


def test_q_sample_matches_diffusers_add_noise():
    d, ref = GaussianDiffusion(), DDPMScheduler(num_train_timesteps=1000)
    x0, noise, t = torch.randn(4, 2, 3, 4, 4), torch.randn(4, 2, 3, 4, 4), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(d.q_sample(x0, t, noise), ref.add_noise(x0, noise, t), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------- steps vs diffusers

@pytest.mark.parametrize("variance_type, learn_sigma, fixed", [("learned_range", True, "large"),
                                                              ("fixed_small", False, "small"),
                                                              ("fixed_large", False, "large")])
@pytest.mark.parametrize("steps", [None, 25])
def test_ddpm_step_matches_diffusers_ddpm_scheduler(variance_type, learn_sigma, fixed, steps):
    """Posterior mean (predicted x0 -> mu) and variance of one reverse step, full or respaced schedule."""
    diffusion = GaussianDiffusion(learn_sigma=learn_sigma, fixed_variance=fixed)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", variance_type=variance_type,
                        clip_sample=False)
    kept = list(range(1000))
    if steps is not None:
        kept = space_timesteps(1000, steps)
        diffusion = diffusion.respace(steps)
        ref.set_timesteps(timesteps=kept[::-1])  # custom timesteps: previous = the next kept step down
    c = 3
    for i in (0, 1, 2, len(kept) // 2, len(kept) - 1):
        x = torch.randn(2, c, 2, 4, 4, generator=gen(i))
        out = torch.randn(2, 2 * c if learn_sigma else c, 2, 4, 4, generator=gen(100 + i)) * 0.5
        if learn_sigma:
            out[:, c:] = out[:, c:].clamp(-1, 1)
        expected = ref.step(out, kept[i], x, generator=gen(7)).prev_sample
        noise = torch.randn(2, c, 2, 4, 4, generator=gen(7))  # diffusers draws the same noise from the same seed
        ours = ddpm_step(diffusion, out, x, torch.full((2,), i), noise)
        torch.testing.assert_close(ours, expected, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("eta", [0.0, 0.7])
def test_ddim_step_matches_diffusers_ddim_scheduler(eta):
    diffusion = GaussianDiffusion().respace(range(0, 1000, 100))
    ref = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False, set_alpha_to_one=True,
                        steps_offset=0, timestep_spacing="leading")
    ref.set_timesteps(10)
    assert ref.timesteps.tolist() == diffusion.timestep_map.flip(0).tolist()
    for i in range(10):
        x = torch.randn(2, 4, 2, 4, 4, generator=gen(i))
        out = torch.randn(2, 8, 2, 4, 4, generator=gen(50 + i))  # eps + v (DDIM ignores v)
        z = torch.randn(2, 4, 2, 4, 4, generator=gen(99 + i))
        expected = ref.step(out[:, :4], int(diffusion.timestep_map[i]), x, eta=eta, variance_noise=z).prev_sample
        ours = ddim_step(diffusion, out, x, torch.full((2,), i), z, eta=eta)
        torch.testing.assert_close(ours, expected, rtol=2e-4, atol=2e-4)


# -------------------------------------------------------------------------------------------------- loss

def test_normal_kl_and_decoder_likelihood_against_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    m1, m2, lv1, lv2 = torch.randn(4, 50, dtype=torch.float64).unbind(0)
    ref = kl_divergence(Normal(m1, (0.5 * lv1).exp()), Normal(m2, (0.5 * lv2).exp()))
    torch.testing.assert_close(normal_kl(m1, lv1, m2, lv2), ref)
    # the decoder term: probability mass of the 2/255-wide bin around x (edge bins take the tails)
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    mean, log_scale = x + 0.01 * torch.randn(256, dtype=torch.float64), torch.full((256,), math.log(0.02))
    n = Normal(mean, log_scale.exp())
    exact = (n.cdf(x + 1 / 255) - n.cdf(x - 1 / 255)).log()
    exact[0], exact[-1] = n.cdf(x + 1 / 255)[0].log(), (1 - n.cdf(x - 1 / 255))[-1].log()  # edge bins: tails
    ours = discretized_gaussian_log_likelihood(x, mean, log_scale)  # Phi by its tanh approximation
    torch.testing.assert_close(ours.exp(), exact.exp(), rtol=0, atol=5e-4)
    torch.testing.assert_close(ours, exact, rtol=0, atol=1e-2)


def test_hybrid_loss_terms_and_stop_gradient():
    d = GaussianDiffusion()
    x0 = torch.randn(4, 2, 2, 4, 4, generator=gen(1)).clamp(-1, 1)
    noise = torch.randn(4, 2, 2, 4, 4, generator=gen(2))
    t = torch.tensor([0, 1, 400, 999])
    out = (torch.randn(4, 4, 2, 4, 4, generator=gen(3)) * 0.3).requires_grad_(True)
    seen = {}

    def model(x_t, t_model):
        seen.update(x_t=x_t, t=t_model)
        return out

    terms = d.training_losses(model, x0, t=t, noise=noise)
    torch.testing.assert_close(seen["x_t"], DDPMScheduler(num_train_timesteps=1000).add_noise(x0, noise, t))
    assert seen["t"].tolist() == t.tolist()
    torch.testing.assert_close(terms["mse"], (noise - out[:, :2]).square().flatten(1).mean(1))  # L_simple
    torch.testing.assert_close(terms["loss"], terms["mse"] + terms["vb"])
    assert (terms["vb"] > 0).all()
    # the bound trains the variance only: no gradient reaches the eps channels through it
    (grad,) = torch.autograd.grad(terms["vb"].sum(), out)
    assert torch.count_nonzero(grad[:, :2]) == 0 and torch.count_nonzero(grad[:, 2:]) > 0
    # the KL vanishes when p_theta is the true posterior: eps = the true noise, v = -1 (posterior variance)
    exact = torch.cat([noise, -torch.ones_like(noise)], dim=1)
    vb = d.vb_terms(exact, x0, d.q_sample(x0, t, noise), t)
    torch.testing.assert_close(vb[1:], torch.zeros(3), rtol=0, atol=1e-5)


def test_vb_term_against_torch_distributions():
    """The hybrid loss's L_vb per sample, rebuilt in float64 from the defining equations on diffusers' schedule:
    KL(q(x_{t-1}|x_t,x_0) || p_theta(x_{t-1}|x_t)) by torch's kl_divergence for t > 0, the discretised decoder NLL
    from Normal.cdf (bins of width 2/255, tails at -1 and 1) at t = 0; both averaged over elements, in bits."""
    from torch.distributions import Normal, kl_divergence

    d = GaussianDiffusion()
    t = torch.tensor([0, 0, 1, 10, 500, 999])
    x0 = torch.randn(6, 3, 2, 4, 4, generator=gen(1)).clamp(-1, 1)
    x0 = ((x0 + 1) * 127.5).round() / 127.5 - 1  # 8-bit data: 256 levels, about a third of them on the edges
    assert (x0 == -1).any() and (x0 == 1).any()
    noise = torch.randn(x0.shape, generator=gen(2))
    eps = noise + 0.3 * torch.randn(x0.shape, generator=gen(3))  # an imperfect eps prediction
    v = torch.rand(x0.shape, generator=gen(4)) * 2 - 1  # the variance value, anywhere in [-1, 1]
    ours = d.training_losses(lambda x_t, t_model: torch.cat([eps, v], 1), x0, t=t, noise=noise)["vb"]

    sched = DDPMScheduler(num_train_timesteps=1000)
    beta, abar = (s.double()[t].view(-1, 1, 1, 1, 1) for s in (sched.betas, sched.alphas_cumprod))
    abar_prev = torch.cat([torch.ones(1), sched.alphas_cumprod[:-1]]).double()[t].view(-1, 1, 1, 1, 1)
    x0, noise, eps, v = x0.double(), noise.double(), eps.double(), v.double()
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise  # DDPM eq. 4
    # q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7
    q_mean = abar_prev.sqrt() * beta / (1 - abar) * x0 + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * x_t
    q_var = beta * (1 - abar_prev) / (1 - abar)
    # p_theta: DDPM eq. 11 mean; IDDPM eq. 15 variance, exp(f log beta + (1 - f) log q_var) with f = (v + 1) / 2,
    # where q_var at t = 0 (zero) is replaced by its value at t = 1 (IDDPM's clipped log-variance)
    p_mean = (x_t - beta / (1 - abar).sqrt() * eps) / (1 - beta).sqrt()
    b1, ab0, ab1 = sched.betas[1].double(), sched.alphas_cumprod[0].double(), sched.alphas_cumprod[1].double()
    min_var = torch.where(t.view(-1, 1, 1, 1, 1) == 0, b1 * (1 - ab0) / (1 - ab1), q_var)
    f = (v + 1) / 2
    p_std = (f * beta.log() + (1 - f) * min_var.log()).mul(0.5).exp()

    ref = torch.empty(6, dtype=torch.float64)
    late = t > 0
    kl = kl_divergence(Normal(q_mean[late], q_var[late].sqrt()), Normal(p_mean[late], p_std[late]))
    ref[late] = kl.flatten(1).mean(1) / math.log(2)
    first, y = t == 0, x0[t == 0]
    p = Normal(p_mean[first], p_std[first])
    upper = torch.where(y == 1, torch.ones_like(y), p.cdf(y + 1 / 255))  # the top bin takes the upper tail
    lower = torch.where(y == -1, torch.zeros_like(y), p.cdf(y - 1 / 255))  # the bottom bin the lower tail
    ref[first] = -(upper - lower).log().flatten(1).mean(1) / math.log(2)
    # float32 against float64; at t = 0 the code's Phi is the tanh approximation (relative error ~2e-4 here)
    torch.testing.assert_close(ours.double(), ref, rtol=2e-3, atol=0)


def test_a_few_training_steps_on_a_fixed_batch_lower_the_loss(sample_video_paths):
    """Tiny Latte on 4 real frames of bigbuckbunny (area-resized to 8x8, RGB as 3 'latent' channels), fixed t
    and noise."""
    import decord

    path = next(p for p in sample_video_paths if "bigbuckbunny" in str(p))
    frames = decord.VideoReader(str(path), width=128, height=72, num_threads=1).get_batch([0, 5, 10, 15]).asnumpy()
    frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1  # t c h w
    x0 = torch.nn.functional.interpolate(frames, size=(8, 8), mode="area").permute(1, 0, 2, 3)[None]  # 1 3 4 8 8
    x0 = torch.cat([x0, x0.flip(-1)])  # b = 2
    torch.manual_seed(0)
    model = build_latte("Latte-tiny/2", in_channels=3, num_frames=4, input_size=8)
    d = GaussianDiffusion()
    t, noise = torch.tensor([50, 300]), torch.randn(x0.shape, generator=gen(0))
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        loss = d.training_losses(model, x0, t=t, noise=noise)["loss"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


# ------------------------------------------------------------------------------------ the Gaussian toy

MU, S = 0.7, 0.5  # data ~ N(MU, S^2), every element independent


def toy_eps(diffusion: GaussianDiffusion):
    """The exact eps-predictor of the toy: E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a s^2 + 1 - a),
    a = alpha-bar at the network's (original) step."""
    acp = diffusion.alphas_cumprod

    def eps(x, t_model):
        a = acp[t_model].float().view(-1, *([1] * (x.dim() - 1)))
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S ** 2 + 1 - a)

    return eps


def toy_learned(diffusion: GaussianDiffusion, steps: int):
    """eps plus the v that makes the learned-range variance the exact reverse variance of the respaced chain,
    Var(x_{i-1} | x_i) = posterior_var_i + coef1_i^2 Var(x_0 | x_i): with both, ancestral sampling is exact."""
    eps, sub = toy_eps(diffusion), diffusion.respace(steps)
    index = {int(k): i for i, k in enumerate(sub.timestep_map)}

    def model(x, t_model):
        i = torch.tensor([index[int(t_model[0])]])  # the sampler calls one step for the whole batch
        a = sub.alphas_cumprod[i].view(-1, 1)
        var_x0 = S ** 2 * (1 - a) / (a * S ** 2 + 1 - a)
        coef1 = sub.posterior_mean_coef1[i].view(-1, 1)
        log_var = torch.log(sub.posterior_variance[i].view(-1, 1) + coef1 ** 2 * var_x0)
        lo, hi = sub.posterior_log_variance_clipped[i].view(-1, 1), sub.betas[i].log().view(-1, 1)
        v = (2 * (log_var - lo) / (hi - lo) - 1).clamp(-1, 1).float().expand_as(x)
        return torch.cat([eps(x, t_model), v], dim=1)

    return model


def ddim_gain(diffusion: GaussianDiffusion, steps: int) -> float:
    """Closed form of deterministic DDIM on the toy: with the exact eps the update is affine in x - sqrt(a) mu and
    multiplies its scale by (sqrt(a' a) s^2 + sqrt((1 - a')(1 - a))) / (a s^2 + 1 - a) per step (a' the next
    alpha-bar); starting from x_T ~ N(0, 1), the output std is the product. It is below s (by Cauchy-Schwarz):
    DDIM's known contraction, which vanishes as steps grow."""
    acp = diffusion.respace(steps).alphas_cumprod
    gain = 1.0
    for a, a_next in zip(acp.flip(0), torch.cat([acp[:-1].flip(0), acp.new_ones(1)])):
        gain *= float(((a_next * a).sqrt() * S ** 2 + ((1 - a_next) * (1 - a)).sqrt()) / (a * S ** 2 + 1 - a))
    return gain


@pytest.mark.parametrize("case", ["ddpm-exact-variance-10", "ddpm-fixed-large-250", "ddpm-fixed-small-250",
                                  "ddim-250", "ddim-eta1-250"])
def test_gaussian_toy_samples_have_the_data_mean_and_std(case):
    shape = (4, 5000)  # 20000 independent elements: standard errors about 0.004 (mean) and 0.003 (std)
    if case.startswith("ddpm-exact"):  # exact mean and variance: exact at any step count
        diffusion = GaussianDiffusion()
        x = ddpm_sample(toy_learned(diffusion, 10), shape, diffusion, steps=10, generator=gen(0))
    elif case.startswith("ddpm-fixed"):
        diffusion = GaussianDiffusion(learn_sigma=False, fixed_variance=case.split("-")[2])
        x = ddpm_sample(toy_eps(diffusion), shape, diffusion, steps=250, generator=gen(1))
    else:
        diffusion = GaussianDiffusion(learn_sigma=False)
        x = ddim_sample(toy_eps(diffusion), shape, diffusion, steps=250, eta=1.0 if "eta1" in case else 0.0,
                        generator=gen(2))
    assert abs(x.mean().item() - MU) < 0.015, x.mean()
    assert abs(x.std().item() - S) < 0.015, x.std()


def test_gaussian_toy_ddim_with_few_steps_matches_its_closed_form():
    diffusion = GaussianDiffusion(learn_sigma=False)
    noise = torch.randn(4, 5000, generator=gen(3))
    x = ddim_sample(toy_eps(diffusion), noise.shape, diffusion, steps=20, noise=noise)
    gain = ddim_gain(diffusion, 20)
    assert gain < S - 0.03  # a visible contraction at 20 steps ...
    a_T = float(diffusion.respace(20).alphas_cumprod[-1])
    expected = MU + gain * (noise - a_T ** 0.5 * MU)  # ... that the sampler reproduces sample by sample
    torch.testing.assert_close(x, expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- guidance and seeds

def test_cfg_scale_one_is_the_conditional_output_and_guides_only_eps():
    model = tiny_latte()
    x, t, y = torch.randn(2, 4, 4, 8, 8, generator=gen(0)), torch.tensor([20, 700]), torch.tensor([0, 2])
    with torch.no_grad():
        cond, uncond = model(x, t, y), model(x, t, torch.full_like(y, 3))
        torch.testing.assert_close(classifier_free_guidance(model, 1.0, 3)(x, t, y), cond, rtol=1e-4, atol=1e-5)
        guided = classifier_free_guidance(model, 4.0, 3)(x, t, y)
    torch.testing.assert_close(guided[:, :4], uncond[:, :4] + 4.0 * (cond[:, :4] - uncond[:, :4]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(guided[:, 4:], cond[:, 4:], rtol=1e-4, atol=1e-5)  # variance: conditional half


def test_sampler_guidance_equals_a_hand_guided_model():
    model, d = tiny_latte(), GaussianDiffusion()
    y, noise = torch.tensor([1, 0]), torch.randn(2, 4, 4, 8, 8, generator=gen(3))

    def by_hand(x, t):  # two separate passes, combined as in the definition
        cond, uncond = model(x, t, y=y), model(x, t, y=torch.full_like(y, 3))
        return torch.cat([uncond[:, :4] + 2.5 * (cond[:, :4] - uncond[:, :4]), cond[:, 4:]], dim=1)

    ours = ddim_sample(model, noise.shape, d, steps=3, noise=noise, y=y, cfg_scale=2.5)
    torch.testing.assert_close(ours, ddim_sample(by_hand, noise.shape, d, steps=3, noise=noise), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="labels"):
        ddim_sample(model, noise.shape, d, steps=3, noise=noise, cfg_scale=2.5)


@pytest.mark.parametrize("sampler", [ddpm_sample, ddim_sample])
@pytest.mark.parametrize("num_classes", [0, 3])
def test_sampling_a_tiny_latte_returns_latents_of_the_right_shape(sampler, num_classes):
    model = tiny_latte(num_classes)
    y = torch.tensor([0, 2]) if num_classes else None
    x = sampler(model, (2, 4, 4, 8, 8), GaussianDiffusion(), steps=3, y=y, cfg_scale=4.0 if y is not None else 1.0,
                generator=gen(0))
    assert x.shape == (2, 4, 4, 8, 8) and torch.isfinite(x).all()


def test_per_sample_generators_make_a_video_independent_of_its_batch():
    model, d = tiny_latte(), GaussianDiffusion()
    y = torch.tensor([0, 1, 2])
    batch = ddpm_sample(model, (3, 4, 4, 8, 8), d, steps=4, y=y, cfg_scale=3.0, generator=[gen(s) for s in (5, 6, 7)])
    alone = ddpm_sample(model, (1, 4, 4, 8, 8), d, steps=4, y=y[1:2], cfg_scale=3.0, generator=[gen(6)])
    torch.testing.assert_close(batch[1:2], alone, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(batch[0], batch[1], atol=1e-2)
    again = ddpm_sample(model, (3, 4, 4, 8, 8), d, steps=4, y=y, cfg_scale=3.0, generator=[gen(s) for s in (5, 6, 7)])
    torch.testing.assert_close(batch, again, rtol=0, atol=0)
    with pytest.raises(ValueError, match="one per sample"):
        ddpm_sample(model, (3, 4, 4, 8, 8), d, steps=2, y=y, generator=[gen(1)])
