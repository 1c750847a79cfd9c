"""The contract every video VAE in the toolkit honours (see DESIGN.md, "A video VAE").

Subclasses set ``latent_channels``, ``compression`` = (t, h, w) and ``frame_rule`` and implement
``encode(video) -> DiagonalGaussian`` and ``decode(z) -> video``. Everything else (frame-count rules, saving,
loading, fingerprints, the latent scale/shift used by diffusion) lives here once.

Frame rules:
- ``"causal"``: clips of ``1 + t_c * k`` frames, latent frames ``1 + k`` (17 -> 5 at 4x);
- ``"in_sequence"``: clips of ``t_c * k`` frames, latent frames ``k`` (16 -> 4 at 4x).
"""
from __future__ import annotations

import abc
import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml
from torch import nn

from .config import from_dict, to_dict
from .distributions import DiagonalGaussian
from . import pretrained
from .io import load_weights, state_dict_fingerprint

# the folder layout before diffusers-style folders (still read)
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"


class FrameCountError(ValueError):
    """A clip whose number of frames the VAE cannot take."""


class VideoVAE(nn.Module, abc.ABC):
    """Base class: b c t h w video in [-1, 1] <-> latent b c' t' h' w'. A subclass without ``encode`` or
    ``decode`` cannot be instantiated (abstract methods)."""

    config_class: ClassVar[type]
    frame_rule: str = "causal"  # or "in_sequence"

    def __init__(self, config: Any, name: str | None = None):
        super().__init__()
        self.config = config
        self.name = name or type(self).__name__.lower()

    # --- subclasses provide ---------------------------------------------------------------------------------
    latent_channels: int
    compression: tuple[int, int, int]

    @abc.abstractmethod
    def encode(self, video: torch.Tensor) -> DiagonalGaussian:
        """video (b c t h w) in [-1, 1] -> posterior over the latent (b c' t' h' w')."""

    @abc.abstractmethod
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """latent (b c' t' h' w') -> video (b c t h w)."""

    # --- latent normalisation for diffusion ------------------------------------------------------------------
    @property
    def scaling_factor(self) -> float:
        return float(getattr(self.config, "scaling_factor", 1.0))

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.config, "shift_factor", 0.0))

    # --- frame-count rules -----------------------------------------------------------------------------------
    def num_latent_frames(self, num_frames: int) -> int:
        self.check_frames(num_frames)
        t = self.compression[0]
        return 1 + (num_frames - 1) // t if self.frame_rule == "causal" else num_frames // t

    def num_frames(self, num_latent_frames: int) -> int:
        t = self.compression[0]
        return 1 + t * (num_latent_frames - 1) if self.frame_rule == "causal" else t * num_latent_frames

    def valid_num_frames(self, num_frames: int) -> bool:
        t = self.compression[0]
        if self.frame_rule == "causal":
            return num_frames >= 1 and (num_frames - 1) % t == 0
        return num_frames >= t and num_frames % t == 0

    def check_frames(self, num_frames: int) -> None:
        if not self.valid_num_frames(num_frames):
            t = self.compression[0]
            rule = f"1 + {t}k (1, {1 + t}, {1 + 2 * t}, {1 + 4 * t}, ...)" if self.frame_rule == "causal" \
                else f"{t}k ({t}, {2 * t}, {4 * t}, ...)"
            raise FrameCountError(f"{self.name} takes clips of {rule} frames, got {num_frames}")

    def check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5:
            raise ValueError(f"{self.name}: expected a video of shape (b, c, t, h, w), got {tuple(video.shape)}")
        self.check_frames(video.shape[2])
        s = self.compression[1]
        if video.shape[-1] % s or video.shape[-2] % s:
            raise ValueError(f"{self.name}: height and width must be multiples of {s}, got {tuple(video.shape[-2:])}")

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(c, t, h, w) of the latent of one clip."""
        return (self.latent_channels, self.num_latent_frames(num_frames), height // self.compression[1],
                width // self.compression[2])

    # --- convenience -----------------------------------------------------------------------------------------
    def forward(self, video: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, DiagonalGaussian]:
        posterior = self.encode(video)
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.decode(z), posterior

    def fingerprint(self) -> str:
        """SHA-256 of the weights (see :func:`tokenizer.io.state_dict_fingerprint`)."""
        return state_dict_fingerprint(self.state_dict())

    def describe(self) -> dict:
        return {"name": self.name, "config": to_dict(self.config), "latent_channels": self.latent_channels,
                "compression": list(self.compression), "frame_rule": self.frame_rule,
                "parameters": sum(p.numel() for p in self.parameters()), "fingerprint": self.fingerprint()}

    # --- persistence -----------------------------------------------------------------------------------------
    def save_pretrained(self, folder: str | Path, training: str | None = None,
                        metrics: dict | None = None) -> Path:
        """A diffusers-style folder (see :mod:`tokenizer.pretrained`): ``config.json`` (registry name + config),
        ``diffusion_pytorch_model.safetensors`` and a model card ``README.md`` stating ``training`` (how the
        weights were made) and ``metrics`` (e.g. held-out PSNR), kept from the loaded folder unless given."""
        card = pretrained.merge_card(getattr(self, "card", None), training, metrics)
        card["usage"] = ["from tokenizer import load_vae", f'vae = load_vae("{Path(folder).name}")',
                         "# or, through diffusers:", "from tokenizer.diffusers_compat import VidtokVAE",
                         f'vae = VidtokVAE.from_pretrained("{Path(folder).name}").model']
        facts = {"registry name": f"`{self.name}`", "class": type(self).__name__,
                 "parameters": f"{sum(p.numel() for p in self.parameters()):,}",
                 "latent channels": self.latent_channels,
                 "compression (t, h, w)": "x".join(str(c) for c in self.compression),
                 "frames": (f"1 + {self.compression[0]}k (causal)" if self.frame_rule == "causal" else
                            "any" if self.compression[0] == 1 else f"{self.compression[0]}k (in sequence)"),
                 "latent scale / shift": f"{self.scaling_factor} / {self.shift_factor}",
                 "weights fingerprint (SHA-256)": f"`{self.fingerprint()}`"}
        text = pretrained.model_card(f"{self.name}: a vidtok-lab video VAE",
                                     "A video VAE of vidtok-lab: video `b c t h w` in [-1, 1] <-> a diagonal Gaussian "
                                     "latent `b c' t' h' w'`.", facts, card)
        self.card = card
        return pretrained.save_folder(folder, self.state_dict(), pretrained.VAE_CLASS, self.name,
                                      to_dict(self.config), card, text)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str = "cpu") -> "VideoVAE":
        return cls.load(folder, device=device)

    @staticmethod
    def load(path: str | Path, device: str = "cpu") -> "VideoVAE":
        """Rebuild a VAE from a ``save_pretrained`` folder (diffusers-style, or the older config.yaml +
        model.safetensors), a weights file, or a training run (its EMA weights)."""
        from .registry import get_preset

        path = Path(path)
        weights = resolve_weights(path)
        state, record = load_weights(weights, device=device)
        folder_config = pretrained.read_config(weights.parent, pretrained.VAE_CLASS) \
            if weights.name == pretrained.WEIGHTS else None
        if folder_config is not None:
            record = {"name": folder_config["name"], "config": folder_config["build_args"]}
        cfg_file = weights.parent / CONFIG_FILE
        if record is None and cfg_file.is_file():
            record = yaml.safe_load(cfg_file.read_text())
        if not record or "name" not in record:
            raise ValueError(f"{weights} carries no VAE config (expected 'name' and 'config' in its metadata)")
        if "latent_shape" in record and "vae" in record:  # a Latte run's record (diffusion/latte_run.py)
            raise ValueError(f"{path} is a Latte run ('{record['name']}', trained on latents of VAE "
                             f"'{record['vae'].get('name')}'), not a VAE: give the VAE's save_pretrained folder, "
                             "training run or weights file")
        cls, _ = get_preset(record["name"])
        config = from_dict(cls.config_class, record.get("config", {}), source=str(weights))
        model = cls(config, name=record["name"])
        model.load_state_dict(state, strict=True)
        if folder_config is not None:
            model.card = folder_config.get(pretrained.CARD_KEY) or {}
        elif weights.parent.name.startswith("step-"):  # a training run's EMA weights
            run = weights.parent.parent
            model.card = {"training": f"EMA weights of the vidtok-lab training run `{run.name}` at "
                                      f"{weights.parent.name} (tokenizer/train_vae.py; the resolved config is the "
                                      "run's config.yaml)."}
        return model.to(device).eval()


def resolve_weights(path: str | Path) -> Path:
    """The weights file a VAE path means: the file itself, a ``save_pretrained`` folder's weights, or a training
    run's EMA weights at its latest complete checkpoint."""
    from .training.rundir import EMA as EMA_FILE
    from .training.rundir import RunDir

    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise FileNotFoundError(f"no VAE at {path}")
    latest = RunDir(path, keep_last=None, is_main=False).latest()  # read-only view of a run
    candidates = ([latest / EMA_FILE] if latest is not None else []) + [path / pretrained.WEIGHTS,
                                                                         path / WEIGHTS_FILE, path / EMA_FILE]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"no VAE weights in {path} (looked for {', '.join(str(c) for c in candidates)})")


def replace_config(config: Any, **changes) -> Any:
    return dataclasses.replace(config, **changes)
