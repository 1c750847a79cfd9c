"""Latent video diffusion: the Latte network, the Gaussian diffusion (schedules, loss, respacing) and samplers.

    from diffusion import build_latte, LATTE_NAMES, GaussianDiffusion, ddpm_sample, ddim_sample
    model = build_latte("Latte-XL/2", in_channels=16, num_classes=101, num_frames=4, input_size=32)
    diffusion = GaussianDiffusion()                       # 1000 linear steps, eps + learned-range variance
    loss = diffusion.training_losses(model, x0, y=y)["loss"].mean()
    x0 = ddpm_sample(model.eval(), x0.shape, diffusion, steps=250, y=y, cfg_scale=7.0)
"""
from .gaussian_diffusion import GaussianDiffusion, space_timesteps
from .latte import LATTE_NAMES, LATTE_PRESETS, Latte, build_latte
from .samplers import SAMPLERS, classifier_free_guidance, ddim_sample, ddpm_sample

__all__ = ["LATTE_NAMES", "LATTE_PRESETS", "Latte", "build_latte", "GaussianDiffusion", "space_timesteps",
           "SAMPLERS", "classifier_free_guidance", "ddpm_sample", "ddim_sample"]
