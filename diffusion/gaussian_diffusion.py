"""The Gaussian diffusion formulation of DDPM / IDDPM, as Latte and DiT train it: the forward process, the
posterior, the learned-range variance, the hybrid loss and timestep respacing. No network, no sampling loop.

References (equation numbers in the comments):
- DDPM: Ho et al. 2020, "Denoising Diffusion Probabilistic Models".
- IDDPM: Nichol & Dhariwal 2021, "Improved Denoising Diffusion Probabilistic Models".

Conventions. ``t`` indexes this diffusion's own steps (0 .. num_timesteps - 1). A respaced diffusion keeps a
subset of the original steps; the network is always called with the original step number,
``timestep_map[t]`` (the network was trained on the original steps). The schedule is kept in float64 and
gathered values are cast to the data's dtype (float32 in practice).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Union

import torch

BETA_SCHEDULES = ("linear", "cosine")
FIXED_VARIANCES = ("large", "small")


def make_beta_schedule(name: str, num_timesteps: int) -> torch.Tensor:
    """(T,) float64 betas. ``linear``: DDPM's 1e-4 .. 0.02 over 1000 steps, end points scaled by 1000 / T so that
    other lengths describe the same process; ``cosine``: IDDPM eq. 17 with s = 0.008, betas capped at 0.999."""
    if name == "linear":
        scale = 1000 / num_timesteps
        return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    if name == "cosine":
        s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        alpha_bar = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2  # IDDPM eq. 17
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule '{name}': choose one of {', '.join(BETA_SCHEDULES)}")


def space_timesteps(num_timesteps: int, sections: Union[int, str, Iterable[int]]) -> list[int]:
    """The original steps a respaced sampler keeps, IDDPM's rule: the T steps are cut into equal sections and
    each section keeps ``count`` steps evenly spaced from its first to its last step (rounded; both ends kept).
    ``sections``: one count (``250``) or counts per section (``"10,15,20"``), or IDDPM's ``"ddimN"``: the integer
    stride that keeps exactly N steps, ``range(0, T, stride)`` (``ddim50`` of 1000: 0, 20, ..., 980), an error if
    no stride does. Returns sorted step numbers."""
    if isinstance(sections, str) and sections.startswith("ddim"):
        count = sections[len("ddim"):]
        if not count.isdigit():
            raise ValueError(f"respacing '{sections}': 'ddim' must be followed by a step count, e.g. ddim50")
        strides = [s for s in range(1, num_timesteps) if len(range(0, num_timesteps, s)) == int(count)]
        if not strides:
            raise ValueError(f"respacing '{sections}': no integer stride keeps exactly {count} of {num_timesteps} "
                             "steps")
        return list(range(0, num_timesteps, strides[0]))
    counts = [int(c) for c in sections.split(",")] if isinstance(sections, str) else (
        [int(sections)] if isinstance(sections, int) else [int(c) for c in sections])
    size, extra = divmod(num_timesteps, len(counts))
    kept, start = [], 0
    for i, count in enumerate(counts):
        length = size + (1 if i < extra else 0)
        if not 1 <= count <= length:
            raise ValueError(f"cannot keep {count} steps of a section of {length} (of {num_timesteps} steps)")
        stride = (length - 1) / (count - 1) if count > 1 else 1.0
        position = 0.0
        for _ in range(count):  # accumulated, not i * stride: reproduces IDDPM's rounding exactly
            kept.append(start + round(position))
            position += stride
        start += length
    return sorted(set(kept))


# ------------------------------------------------------------------------------------------------ densities

def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Phi(x) by the tanh approximation (as in DDPM's and IDDPM's decoder likelihood)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of data in [-1, 1] quantised to 256 bins (bin width 2/255) under N(mean, e^(2 log_scale)); the
    edge bins take the tails (DDPM section 3.3, the L_0 decoder term). Elementwise, nats."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255))
    cdf_min = approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_bin = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_bin))


def mean_flat(x: torch.Tensor) -> torch.Tensor:
    """Mean over every axis but the batch axis: (b, ...) -> (b,)."""
    return x.flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------- formulation

class GaussianDiffusion:
    """Forward process, posterior and loss of a discrete-time Gaussian diffusion with epsilon prediction.

    ``learn_sigma``: the network outputs ``[eps, v]`` (2c channels) and the reverse variance is IDDPM's learned
    range; else it outputs eps only and the variance is fixed ('large': beta_t, 'small': the posterior variance).
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str = "linear", learn_sigma: bool = True,
                 fixed_variance: str = "large"):
        if fixed_variance not in FIXED_VARIANCES:
            raise ValueError(f"unknown fixed variance '{fixed_variance}': choose one of {', '.join(FIXED_VARIANCES)}")
        self.config = dict(num_timesteps=num_timesteps, beta_schedule=beta_schedule, learn_sigma=learn_sigma,
                           fixed_variance=fixed_variance)
        self.learn_sigma, self.fixed_variance = learn_sigma, fixed_variance
        self._set_schedule(make_beta_schedule(beta_schedule, num_timesteps), torch.arange(num_timesteps))

    def _set_schedule(self, betas: torch.Tensor, timestep_map: torch.Tensor) -> None:
        if not (betas > 0).all() or not (betas <= 1).all():
            raise ValueError("betas must lie in (0, 1]")
        self.num_timesteps = len(betas)
        self.timestep_map = timestep_map.long()  # this diffusion's step -> the network's (original) step
        self.betas = betas
        self.alphas_cumprod = torch.cumprod(1.0 - betas, 0)  # alpha-bar_t, DDPM eq. 4
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.sqrt_alphas_cumprod = self.alphas_cumprod.sqrt()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - self.alphas_cumprod).sqrt()
        self.sqrt_recip_alphas_cumprod = (1.0 / self.alphas_cumprod).sqrt()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / self.alphas_cumprod - 1).sqrt()
        # posterior q(x_{t-1} | x_t, x_0), DDPM eqs. 6-7
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log of it with the t = 0 value (0) replaced by the t = 1 value, so that it is finite
        self.posterior_log_variance_clipped = torch.log(torch.cat([self.posterior_variance[1:2],
                                                                   self.posterior_variance[1:]]))
        self.posterior_mean_coef1 = betas * self.alphas_cumprod_prev.sqrt() / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * (1.0 - betas).sqrt()
                                     / (1.0 - self.alphas_cumprod))

    def respace(self, steps: Union[int, str, Iterable[int]]) -> "GaussianDiffusion":
        """A diffusion over a subset of this one's steps with the same alpha-bar at every kept step (IDDPM
        section 4): beta'_i = 1 - alpha-bar_{k_i} / alpha-bar_{k_(i-1)}. ``steps``: a count or sections for
        :func:`space_timesteps`, or the kept step numbers themselves (a list / range)."""
        kept = (space_timesteps(self.num_timesteps, steps) if isinstance(steps, (int, str))
                else sorted({int(s) for s in steps}))
        if not kept or kept[0] < 0 or kept[-1] >= self.num_timesteps:
            raise ValueError(f"respacing keeps steps outside 0..{self.num_timesteps - 1}: {kept[:3]}...{kept[-3:]}")
        index = torch.tensor(kept)
        alphas_cumprod = self.alphas_cumprod[index]
        betas = 1.0 - alphas_cumprod / torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        new = object.__new__(GaussianDiffusion)
        new.config, new.learn_sigma, new.fixed_variance = dict(self.config), self.learn_sigma, self.fixed_variance
        new._set_schedule(betas, self.timestep_map[index])
        return new

    # --- helpers ---------------------------------------------------------------------------------------------
    @staticmethod
    def gather(table: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """table[t] shaped (b, 1, ..., 1) to broadcast against ``like``, in its dtype and device."""
        values = table[t.cpu()].to(device=like.device, dtype=like.dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """The network's timestep for this diffusion's step ``t`` (the original step number)."""
        return self.timestep_map[t.cpu()].to(t.device)

    def sample_timesteps(self, batch: int, device: Union[str, torch.device] = "cpu",
                         generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Uniform t in 0 .. T-1 (the Latte / DiT training distribution)."""
        t = torch.randint(0, self.num_timesteps, (batch,), generator=generator,
                          device=generator.device if generator is not None else device)
        return t.to(device)

    # --- forward process and posterior -----------------------------------------------------------------------
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha-bar_t) x_0 + sqrt(1 - alpha-bar_t) eps (DDPM eq. 4)."""
        a, b = self.gather(self.sqrt_alphas_cumprod, t, x0), self.gather(self.sqrt_one_minus_alphas_cumprod, t, x0)
        return a * x0 + b * noise

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and clipped log-variance of q(x_{t-1} | x_t, x_0) (DDPM eqs. 6-7)."""
        c1, c2 = self.gather(self.posterior_mean_coef1, t, x_t), self.gather(self.posterior_mean_coef2, t, x_t)
        return c1 * x0 + c2 * x_t, self.gather(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)

    def predict_x0(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """x_0 = (x_t - sqrt(1 - alpha-bar_t) eps) / sqrt(alpha-bar_t) (DDPM eq. 4 solved for x_0)."""
        a = self.gather(self.sqrt_recip_alphas_cumprod, t, x_t)  # 1 / sqrt(alpha-bar)
        b = self.gather(self.sqrt_recipm1_alphas_cumprod, t, x_t)  # sqrt(1 / alpha-bar - 1)
        return a * x_t - b * eps

    def predict_eps(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """The eps that maps x_0 to x_t (inverse of :meth:`predict_x0`)."""
        a = self.gather(self.sqrt_recip_alphas_cumprod, t, x_t)  # 1 / sqrt(alpha-bar)
        b = self.gather(self.sqrt_recipm1_alphas_cumprod, t, x_t)  # sqrt(1 / alpha-bar - 1)
        return (a * x_t - x0) / b

    # --- the reverse process ---------------------------------------------------------------------------------
    def split_output(self, out: torch.Tensor, x_t: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Network output (b, c or 2c, ...) -> (eps, v or None), in float32."""
        c = x_t.shape[1]
        want = 2 * c if self.learn_sigma else c
        if out.shape[1] != want:
            raise ValueError(f"the network returned {out.shape[1]} channels for {c}-channel latents; this diffusion "
                             f"(learn_sigma={self.learn_sigma}) needs {want}")
        out = out.float()
        return (out[:, :c], out[:, c:]) if self.learn_sigma else (out, None)

    def model_log_variance(self, v: Optional[torch.Tensor], t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """log Sigma_theta(x_t, t). Learned range (IDDPM eq. 15): v in [-1, 1] interpolates, in the log domain,
        between the posterior variance (v = -1) and beta_t (v = +1). Fixed: log beta_t ('large', with the t = 0
        value replaced by the posterior variance at t = 1) or the clipped posterior log-variance ('small')."""
        min_log = self.gather(self.posterior_log_variance_clipped, t, x_t)
        if self.learn_sigma:
            max_log = self.gather(torch.log(self.betas), t, x_t)
            frac = (v + 1) / 2
            return frac * max_log + (1 - frac) * min_log
        if self.fixed_variance == "small":
            return min_log.expand_as(x_t)
        large = torch.log(torch.cat([self.posterior_variance[1:2], self.betas[1:]]))
        return self.gather(large, t, x_t).expand_as(x_t)

    def p_mean_variance(self, out: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                        clip_denoised: bool = False) -> dict[str, torch.Tensor]:
        """p_theta(x_{t-1} | x_t) from the network output: {'mean', 'log_variance', 'pred_x0', 'eps'}.
        The mean is the posterior mean at the predicted x_0 (DDPM eq. 11 in its x_0 form)."""
        eps, v = self.split_output(out, x_t)
        pred_x0 = self.predict_x0(x_t, t, eps)
        if clip_denoised:  # pixel-space models; latents are not clipped (Latte samples with clip_denoised=False)
            pred_x0 = pred_x0.clamp(-1, 1)
            eps = self.predict_eps(x_t, t, pred_x0)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return {"mean": mean, "log_variance": self.model_log_variance(v, t, x_t), "pred_x0": pred_x0, "eps": eps}

    # --- the loss ---------------------------------------------------------------------------------------------
    def vb_terms(self, out: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """Per-sample variational bound term L_t in bits per dimension (IDDPM eq. 4-6): KL(q(x_{t-1}|x_t,x_0) ||
        p_theta(x_{t-1}|x_t)) for t > 0, the discretised decoder NLL -log p_theta(x_0|x_1) at t = 0."""
        true_mean, true_log_var = self.q_posterior(x0, x_t, t)
        p = self.p_mean_variance(out, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -mean_flat(discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"])) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model: Callable[..., torch.Tensor], x0: torch.Tensor, t: Optional[torch.Tensor] = None,
                        noise: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                        generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        """Per-sample losses (b,) of ``model(x_t, t_model[, y=y])`` on clean latents x0 (b, c, t, h, w).

        'mse': ||eps - eps_theta||^2 averaged over elements (DDPM eq. 14, L_simple). With learn_sigma, 'vb': the
        bound term with the mean frozen (eps detached), so it trains only the variance (IDDPM L_hybrid = L_simple
        + L_vlb, weight 1 at 1000 steps as in DiT / Latte); 'loss' = mse + vb.
        """
        b = x0.shape[0]
        if t is None:
            t = self.sample_timesteps(b, x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator,
                                device=generator.device if generator is not None else x0.device).to(x0)
        x_t = self.q_sample(x0, t, noise)
        kwargs = {} if y is None else {"y": y}
        out = model(x_t, self.model_timesteps(t), **kwargs)
        eps, v = self.split_output(out, x0)
        terms = {"mse": mean_flat((noise.float() - eps) ** 2)}
        if self.learn_sigma:
            frozen = torch.cat([eps.detach(), v], dim=1)  # the bound must not pull the mean
            terms["vb"] = self.vb_terms(frozen, x0.float(), x_t.float(), t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms
