"""The plain 3D causal VAE baseline: the shared backbone with causal convs, no TDC, no decoupling.

It is the "w/o" row of the comparison tables: the same Flux-layout 3D backbone as VC-VAE, built from causal 3x3x3
convs (first frame replicated in front), a separate first frame (clips of 1 + 4k frames, 17 -> 5 latent frames at
4x8x8) and 16 latent channels, at the sizes DeCo-VAE uses for each of its encoders and its decoder
(:data:`~tokenizer.models.backbone.PLAIN_SIZES`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..registry import register_vae
from .backbone import PLAIN_SIZES, TINY_SIZES, Backbone3DVAE, Backbone3DVAEConfig


@dataclass
class PlainVAEConfig(Backbone3DVAEConfig):
    """Backbone config with the baseline's defaults: causal convs, TDC off, separate first frame."""

    conv_type: str = "causal"
    tdc: bool = False
    first_frame: str = "separate"


class PlainVAE(Backbone3DVAE):
    """Plain 3D causal VAE (b 3 1+4k h w) <-> (b 16 1+k h/8 w/8)."""

    config_class = PlainVAEConfig


@register_vae("plain", PlainVAE)
def plain() -> PlainVAEConfig:
    return PlainVAEConfig(**PLAIN_SIZES)


@register_vae("plain-tiny", PlainVAE)
def plain_tiny() -> PlainVAEConfig:
    return PlainVAEConfig(**TINY_SIZES)
