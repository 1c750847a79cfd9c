"""Video tokenizers (DeCo-VAE, VC-VAE, a plain 3D VAE), video datasets, the latent cache and VAE training."""
from .base import FrameCountError, VideoVAE
from .distributions import DiagonalGaussian
from .registry import build_vae, load_vae, register_vae, vae_names


def __getattr__(name):
    # VAE_NAMES is computed lazily so that importing the package does not import every model family.
    if name == "VAE_NAMES":
        return tuple(vae_names())
    raise AttributeError(f"module 'tokenizer' has no attribute {name!r}")


__all__ = ["build_vae", "load_vae", "register_vae", "VAE_NAMES", "VideoVAE", "DiagonalGaussian",
           "FrameCountError"]
