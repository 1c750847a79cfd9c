"""Latte's baseline tokenizer: the Stable Diffusion image VAE applied to every frame on its own (SD-VAE).

Latte (Ma et al. 2024) encodes each frame of a clip with ``stabilityai/sd-vae-ft-ema`` (a diffusers
``AutoencoderKL``: 4 latent channels, 8x spatial, no temporal compression) and trains on
``latent_dist.sample() * 0.18215``; its released UCF101 / SkyTimelapse checkpoints are in that latent space. As a
toolkit VAE it is the baseline row of every comparison: ``encode`` / ``decode`` treat the ``b * t`` frames as a batch
of images, so any clip length works (compression ``(1, 8, 8)``, latent frames = frames).

Weights are never downloaded: ``load_vae(DIR)`` (``--vae sd --vae-path DIR`` / ``--ckpt DIR`` on the command
lines) reads a local diffusers ``AutoencoderKL`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``
or ``.bin``, or a pipeline folder with them in ``vae/``). The latent scale is the folder's ``scaling_factor``
(0.18215 for SD's VAEs) and is used by diffusion with ``data.normalize=vae``, as Latte does. ``build_vae("sd")``
without a folder is SD's architecture randomly initialised (smoke runs only).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

from ..base import VideoVAE
from ..config import ConfigError
from ..distributions import DiagonalGaussian
from ..registry import register_vae

SD_SCALING_FACTOR = 0.18215  # Stable Diffusion's VAE (LDM): Latte multiplies its latents by it
SD_SOURCE = "https://huggingface.co/stabilityai/sd-vae-ft-ema (Latte's VAE; sd-vae-ft-mse also works)"
_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


class SDVAEFolderError(ConfigError):
    """A ``--vae-path`` that is not a usable diffusers AutoencoderKL folder."""


@dataclass
class SDVAEConfig:
    """The image VAE's ``AutoencoderKL`` arguments (defaults: sd-vae-ft-ema's config.json, SD 1.x's VAE, about 84M
    parameters) and its latent normalisation."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 4
    block_out_channels: list[int] = field(default_factory=lambda: [128, 256, 512, 512])
    layers_per_block: int = 2
    down_block_types: list[str] = field(default_factory=lambda: ["DownEncoderBlock2D"] * 4)
    up_block_types: list[str] = field(default_factory=lambda: ["UpDecoderBlock2D"] * 4)
    act_fn: str = "silu"
    norm_num_groups: int = 32
    sample_size: int = 256
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = SD_SCALING_FACTOR  # the folder's config.json value when it has one
    shift_factor: float = 0.0
    frames_per_call: int = 16  # frames per AutoencoderKL call (bounds memory; results do not depend on it)

    def architecture(self) -> dict[str, Any]:
        """The ``AutoencoderKL(**kwargs)`` of this config (the arguments this diffusers version knows)."""
        import inspect

        known = inspect.signature(_autoencoder_kl().__init__).parameters
        skip = ("scaling_factor", "shift_factor", "frames_per_call")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip and f.name in known}


def _autoencoder_kl():
    try:
        from diffusers import AutoencoderKL
    except ImportError as err:  # diffusers is an optional dependency (the test extra)
        raise ImportError("the 'sd' VAE needs diffusers: pip install diffusers") from err
    return AutoencoderKL


class SDVAE(VideoVAE):
    """Frame-wise SD-VAE: (b 3 t h w) <-> (b 4 t h/8 w/8); frame i of the latent is the image latent of frame i."""

    config_class = SDVAEConfig
    frame_rule = "in_sequence"  # with t_c = 1: any number of frames

    def __init__(self, config: SDVAEConfig, name: str | None = None, model: torch.nn.Module | None = None):
        super().__init__(config, name=name or "sd")
        self.model = model if model is not None else _autoencoder_kl()(**config.architecture())
        self.latent_channels = config.latent_channels
        s = 2 ** (len(config.block_out_channels) - 1)  # one 2x downsample per block but the last
        self.compression = (1, s, s)

    @classmethod
    def from_diffusers(cls, folder: str | Path, name: str = "sd") -> "SDVAE":
        """The SD-VAE of a local diffusers ``AutoencoderKL`` folder (or a pipeline folder with it in ``vae/``)."""
        folder = resolve_folder(folder)
        raw = json.loads((folder / "config.json").read_text())
        try:
            model = _autoencoder_kl().from_pretrained(str(folder), torch_dtype=torch.float32)
        except Exception as err:  # diffusers raises many kinds (OSError, EnvironmentError, RuntimeError, ...)
            raise SDVAEFolderError(f"cannot load an AutoencoderKL from {folder}: {str(err).splitlines()[0]}") from None
        names = {f.name for f in fields(SDVAEConfig)} - {"scaling_factor", "shift_factor", "frames_per_call"}
        arch = {k: v for k, v in dict(model.config).items() if k in names}
        config = SDVAEConfig(**json.loads(json.dumps(arch)),  # tuples -> lists (YAML / JSON records)
                             scaling_factor=float(raw.get("scaling_factor") or SD_SCALING_FACTOR),
                             shift_factor=float(raw.get("shift_factor") or 0.0))
        return cls(config, name=name, model=model.eval())

    def _framewise(self, x: torch.Tensor, fn) -> torch.Tensor:
        """Apply ``fn`` ((n c h w) -> (n c' h' w')) to every frame of x (b c t h w), a few frames per call."""
        frames = rearrange(x, "b c t h w -> (b t) c h w")
        out = torch.cat([fn(chunk) for chunk in frames.split(self.config.frames_per_call)])
        return rearrange(out, "(b t) c h w -> b c t h w", b=x.shape[0])

    def encode(self, video: torch.Tensor, chunk_size: int | None = None) -> DiagonalGaussian:
        """video (b 3 t h w) in [-1, 1] -> posterior over (b 4 t h/8 w/8); ``chunk_size`` is accepted for the
        cache's chunked encoding and changes nothing (every frame is encoded on its own anyway)."""
        self.check_video(video)
        def moments(frames: torch.Tensor) -> torch.Tensor:
            dist = self.model.encode(frames).latent_dist  # diffusers' DiagonalGaussianDistribution
            return torch.cat([dist.mean, dist.logvar], 1)  # (n, 2 * 4, h/8, w/8)

        return DiagonalGaussian(self._framewise(video, moments))  # mean | log-variance along channels

    def decode(self, z: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """latent (b 4 t h w), in the VAE's own (unscaled) space -> video (b 3 t 8h 8w)."""
        return self._framewise(z, lambda f: self.model.decode(f).sample)


def resolve_folder(folder: str | Path) -> Path:
    """The AutoencoderKL folder ``folder`` means (itself or its ``vae/``), or :class:`SDVAEFolderError` saying why
    it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SDVAEFolderError(f"SD-VAE folder {folder} does not exist: download {SD_SOURCE} once and pass its local "
                               "folder (--vae-path DIR)")
    if not (folder / "config.json").is_file() and (folder / "vae" / "config.json").is_file():
        folder = folder / "vae"
    if not (folder / "config.json").is_file() or not any((folder / f).is_file() for f in _WEIGHT_FILES):
        raise SDVAEFolderError(f"{folder} is not a diffusers AutoencoderKL folder: it needs config.json and one of "
                               f"{', '.join(_WEIGHT_FILES)} ({SD_SOURCE})")
    try:
        kind = json.loads((folder / "config.json").read_text()).get("_class_name", "AutoencoderKL")
    except (json.JSONDecodeError, AttributeError) as err:
        raise SDVAEFolderError(f"{folder / 'config.json'} is not a JSON object: {err}") from None
    if kind != "AutoencoderKL":
        raise SDVAEFolderError(f"{folder} holds a diffusers '{kind}', not an AutoencoderKL ({SD_SOURCE})")
    return folder


def is_diffusers_folder(path: str | Path) -> bool:
    """Whether ``path`` looks like a diffusers model folder rather than a toolkit ``save_pretrained`` folder."""
    path = Path(path)
    return path.is_dir() and not (path / "config.yaml").is_file() and (
        (path / "config.json").is_file() or (path / "vae" / "config.json").is_file())


@register_vae("sd", SDVAE)
def sd() -> SDVAEConfig:
    """SD 1.x's AutoencoderKL, randomly initialised; real weights come from ``load_vae(folder)``."""
    return SDVAEConfig()


@register_vae("sd-tiny", SDVAE)
def sd_tiny() -> SDVAEConfig:
    """The SD-VAE layout (4 channels, 8x) at tiny widths: tests and the demo."""
    return SDVAEConfig(block_out_channels=[8, 16, 16, 16], norm_num_groups=4, layers_per_block=1, sample_size=32)


__all__ = ["SDVAE", "SDVAEConfig", "SDVAEFolderError", "SD_SCALING_FACTOR", "is_diffusers_folder", "resolve_folder"]
