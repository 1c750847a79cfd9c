"""Samplers: pure functions with one shared signature,

    sampler(model, shape, diffusion, *, steps, noise=None, generator=None, y=None, cfg_scale=1.0,
            clip_denoised=False, progress=False) -> x_0   (b, c, t, h, w)

``model(x_t, t, y=None)`` is the network (e.g. a Latte in eval mode); ``diffusion`` the (1000-step)
``GaussianDiffusion`` it was trained with, respaced here to ``steps``. DDIM takes one more keyword, ``eta``.

Randomness, so that a video does not depend on the batch it was drawn in:

- ``noise``: the initial x_T (b, c, t, h, w); drawn from ``generator`` when not given;
- ``generator``: one ``torch.Generator`` for the whole batch, or a list of b generators, one per sample: then
  sample i draws its x_T (unless given) and every later step's noise from ``generator[i]`` alone, so its result
  depends only on its own generator (and noise), never on the batch size or its neighbours.

Classifier-free guidance (``cfg_scale != 1`` with labels ``y``): conditional and unconditional (null label) passes
in one batch, guidance on the eps channels only, the variance channels of the conditional half kept (DiT / Latte).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch

from .gaussian_diffusion import GaussianDiffusion

Generator = Union[None, torch.Generator, Sequence[torch.Generator]]


# ------------------------------------------------------------------------------------------------ randomness

def randn(shape: Sequence[int], generator: Generator, device: Union[str, torch.device]) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a generator list, row i comes from ``generator[i]`` alone."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}: pass one per sample")
        rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device).to(device) for g in generator]
        return torch.stack(rows)
    if generator is None:
        return torch.randn(tuple(shape), device=device)
    return torch.randn(tuple(shape), generator=generator, device=generator.device).to(device)


# -------------------------------------------------------------------------------------------------- guidance

def classifier_free_guidance(model: Callable[..., torch.Tensor], cfg_scale: float,
                             null_label: int) -> Callable[..., torch.Tensor]:
    """A denoiser ``fn(x, t, y)`` that batches the conditional pass (labels y) and the unconditional one (the null
    label) and returns eps_u + s (eps_c - eps_u) on the first c channels (c = x's channels), then the conditional
    output's remaining (variance) channels (Ho & Salimans 2022, eq. 6, in eps form)."""

    def guided(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        out = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, torch.full_like(y, null_label)]))
        cond, uncond = out.chunk(2)  # b C' t h w each
        eps = uncond[:, :c] + cfg_scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([eps, cond[:, c:]], dim=1)

    return guided


def _denoiser(model: Callable[..., torch.Tensor], y: Optional[torch.Tensor],
              cfg_scale: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if y is None:
        if cfg_scale != 1.0:
            raise ValueError(f"cfg_scale={cfg_scale} needs class labels y (classifier-free guidance)")
        return lambda x, t: model(x, t)
    if cfg_scale == 1.0:
        return lambda x, t: model(x, t, y=y)
    null_label = getattr(model, "null_label", None)
    if null_label is None:
        raise ValueError("classifier-free guidance needs a model with a null label (a class-conditional Latte)")
    guided = classifier_free_guidance(model, cfg_scale, null_label)
    return lambda x, t: guided(x, t, y)


# ---------------------------------------------------------------------------------------------------- steps

def ddpm_step(diffusion: GaussianDiffusion, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
              noise: Optional[torch.Tensor], clip_denoised: bool = False) -> torch.Tensor:
    """x_{t-1} ~ p_theta(x_{t-1} | x_t) (DDPM Algorithm 2 with IDDPM's learned variance); no noise at t = 0."""
    p = diffusion.p_mean_variance(out, x, t, clip_denoised)
    if noise is None:
        return p["mean"]
    nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return p["mean"] + nonzero * torch.exp(0.5 * p["log_variance"]) * noise


def ddim_step(diffusion: GaussianDiffusion, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor,
              noise: Optional[torch.Tensor], clip_denoised: bool = False, eta: float = 0.0) -> torch.Tensor:
    """DDIM update (Song et al. 2021, eq. 12 with sigma from eq. 16):
    x_{t-1} = sqrt(a'_prev) x0 + sqrt(1 - a'_prev - sigma^2) eps + sigma z,
    sigma = eta sqrt((1 - a'_prev) / (1 - a')) sqrt(1 - a' / a'_prev)   (a' = alpha-bar)."""
    p = diffusion.p_mean_variance(out, x, t, clip_denoised)
    a = diffusion.gather(diffusion.alphas_cumprod, t, x)
    a_prev = diffusion.gather(diffusion.alphas_cumprod_prev, t, x)
    sigma = eta * ((1 - a_prev) / (1 - a)).sqrt() * (1 - a / a_prev).sqrt()
    x_prev = a_prev.sqrt() * p["pred_x0"] + (1 - a_prev - sigma ** 2).sqrt() * p["eps"]
    if eta == 0 or noise is None:
        return x_prev
    nonzero = (t != 0).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    return x_prev + nonzero * sigma * noise


# -------------------------------------------------------------------------------------------------- loops

def _device_of(model: Callable, noise: Optional[torch.Tensor]) -> torch.device:
    if noise is not None:
        return noise.device
    if isinstance(model, torch.nn.Module):
        first = next(model.parameters(), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


@torch.no_grad()
def _sample_loop(step: Callable[..., torch.Tensor], stochastic: bool, model: Callable[..., torch.Tensor],
                 shape: Sequence[int], diffusion: GaussianDiffusion, steps: int, noise: Optional[torch.Tensor],
                 generator: Generator, y: Optional[torch.Tensor], cfg_scale: float, progress: bool) -> torch.Tensor:
    shape = tuple(shape)
    device = _device_of(model, noise)
    if noise is not None and tuple(noise.shape) != shape:
        raise ValueError(f"initial noise has shape {tuple(noise.shape)}, the sample shape is {shape}")
    if y is not None and tuple(y.shape) != shape[:1]:
        raise ValueError(f"labels y must have shape ({shape[0]},), got {tuple(y.shape)}")
    respaced = diffusion.respace(steps)
    denoise = _denoiser(model, y.to(device) if y is not None else None, cfg_scale)
    x = (noise if noise is not None else randn(shape, generator, device)).to(device=device, dtype=torch.float32)
    indices = range(respaced.num_timesteps - 1, -1, -1)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, desc="sampling", leave=False)
    for i in indices:
        t = torch.full((shape[0],), i, device=device, dtype=torch.long)
        out = denoise(x, respaced.model_timesteps(t))
        z = randn(shape, generator, device) if stochastic and i > 0 else None
        x = step(respaced, out, x, t, z)
    return x


def ddpm_sample(model: Callable[..., torch.Tensor], shape: Sequence[int], diffusion: GaussianDiffusion, *,
                steps: int = 250, noise: Optional[torch.Tensor] = None, generator: Generator = None,
                y: Optional[torch.Tensor] = None, cfg_scale: float = 1.0, clip_denoised: bool = False,
                progress: bool = False) -> torch.Tensor:
    """Ancestral DDPM sampling over ``steps`` respaced steps (Latte's default: 250). Returns x_0 (shape)."""
    step = lambda d, out, x, t, z: ddpm_step(d, out, x, t, z, clip_denoised)  # noqa: E731
    return _sample_loop(step, True, model, shape, diffusion, steps, noise, generator, y, cfg_scale, progress)


def ddim_sample(model: Callable[..., torch.Tensor], shape: Sequence[int], diffusion: GaussianDiffusion, *,
                steps: int = 250, noise: Optional[torch.Tensor] = None, generator: Generator = None,
                y: Optional[torch.Tensor] = None, cfg_scale: float = 1.0, clip_denoised: bool = False,
                progress: bool = False, eta: float = 0.0) -> torch.Tensor:
    """DDIM sampling over ``steps`` respaced steps; ``eta=0`` is deterministic given x_T. Returns x_0 (shape)."""
    step = lambda d, out, x, t, z: ddim_step(d, out, x, t, z, clip_denoised, eta)  # noqa: E731
    return _sample_loop(step, eta > 0, model, shape, diffusion, steps, noise, generator, y, cfg_scale, progress)


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}
