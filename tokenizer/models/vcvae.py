"""VC-VAE: a video VAE built like a video codec (keyframe prior + Temporal Dynamic Difference Convolution).

The network is the shared 3D backbone (:mod:`tokenizer.models.backbone`) in the layout and sizes of the Flux image
VAE, with group causal 3x3x3 convs (groups of 4 / 2 / 1 frames), TDC in every temporal conv (eqs. 5-7),
temporal samplers with ``k_t = 2`` after the first two (4x) or three (8x) spatial downsamplers, and in-sequence
first-frame processing: clips of ``t_c * k`` frames, an image being a pseudo-video of repeated frames.

``init_from_image_vae`` (``build_vae("vcvae", init_from=path)``) inflates a Flux / diffusers image VAE so that
at initialisation a static clip reconstructs exactly as the image VAE reconstructs each frame (sec. 3.2).

Ablation switches (config fields): ``tdc`` (Tables 4, 8), ``conv_type='causal'`` (Table 4's causal rows),
``first_frame='separate'`` (Table 6), ``group_end_pad='replicate'`` (the group-end padding the study compares
with IV-VAE's zeros).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from ..inflate import inflate_image_vae, load_image_vae
from ..registry import register_vae
from .backbone import TINY_SIZES, Backbone3DVAE, Backbone3DVAEConfig

FLUX_SIZES = dict(block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32)


@dataclass
class VCVAEConfig(Backbone3DVAEConfig):
    """VC-VAE defaults: group causal convs, TDC, in-sequence first frame, Flux latent normalisation."""

    conv_type: str = "group_causal"
    tdc: bool = True
    first_frame: str = "in_sequence"
    temporal_down_levels: list[int] = field(default_factory=lambda: [0, 1])
    scaling_factor: float = 0.3611  # the Flux VAE's: at initialisation the latent space is Flux's
    shift_factor: float = 0.1159


class VCVAE(Backbone3DVAE):
    """VC-VAE (b 3 4k h w) <-> (b 16 k h/8 w/8) at 4x8x8, (b 3 8k h w) <-> (b 32 k h/8 w/8) at 8x8x8."""

    config_class = VCVAEConfig

    def init_from_image_vae(self, path: str | Path) -> "VCVAE":
        """Inflate the image VAE at ``path`` (diffusers AutoencoderKL folder or Flux ``ae.safetensors``) into self.

        The model's latent normalisation becomes the image VAE's where the image VAE declares one.
        """
        image = load_image_vae(path)
        inflate_image_vae(self, image)
        changes = {k: v for k, v in (("scaling_factor", image.scaling_factor), ("shift_factor", image.shift_factor))
                   if v is not None}
        if changes:
            self.config = dataclasses.replace(self.config, **changes)
        return self


@register_vae("vcvae", VCVAE)
def vcvae() -> VCVAEConfig:
    """4x8x8, 16 channels (paper Table 1, upper block)."""
    return VCVAEConfig(latent_channels=16, **FLUX_SIZES)


@register_vae("vcvae-8x", VCVAE)
def vcvae_8x() -> VCVAEConfig:
    """8x8x8, 32 channels; the first 16 from the image VAE, the rest zero at initialisation (Table 1, lower)."""
    return VCVAEConfig(latent_channels=32, temporal_down_levels=[0, 1, 2], **FLUX_SIZES)


@register_vae("vcvae-tiny", VCVAE)
def vcvae_tiny() -> VCVAEConfig:
    return VCVAEConfig(latent_channels=16, **TINY_SIZES)


@register_vae("vcvae-8x-tiny", VCVAE)
def vcvae_8x_tiny() -> VCVAEConfig:
    return VCVAEConfig(latent_channels=32, temporal_down_levels=[0, 1, 2], **TINY_SIZES)
