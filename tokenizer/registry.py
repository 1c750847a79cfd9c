"""Video VAEs by name: ``build_vae("deco")``, ``load_vae("runs/vae-deco")``, ``VAE_NAMES``.

Each model family registers its presets with :func:`register_vae`; a preset is a function returning a config
dataclass instance, and the model class is built from it. The same names are what ``--vae`` takes everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

_PRESETS: dict[str, tuple[type, Callable]] = {}


class UnknownVAEError(KeyError, ValueError):
    """A VAE name the registry does not know (a ValueError too, so that entry points report it as bad input)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def register_vae(name: str, cls: type) -> Callable:
    """Decorator for a preset function ``() -> Config`` building model class ``cls``."""

    def deco(fn: Callable) -> Callable:
        if name in _PRESETS:
            raise ValueError(f"VAE preset '{name}' registered twice")
        _PRESETS[name] = (cls, fn)
        return fn

    return deco


def vae_names() -> list[str]:
    _import_models()
    return sorted(_PRESETS)


def get_preset(name: str) -> tuple[type, Callable]:
    _import_models()
    if name not in _PRESETS:
        raise UnknownVAEError(f"unknown VAE '{name}'; available: {', '.join(sorted(_PRESETS))}")
    return _PRESETS[name]


def build_vae(name: str, init_from: str | Path | None = None, **overrides):
    """Build a VAE preset by registry name; ``overrides`` replace config fields; ``init_from`` an image VAE path.

    ``init_from`` is honoured by families that support inflation from an image VAE (VC-VAE, DeCo-VAE); others refuse
    it.
    """
    import dataclasses

    cls, preset = get_preset(name)
    cfg = preset()
    if overrides:
        valid = {f.name for f in dataclasses.fields(cfg)}
        unknown = sorted(set(overrides) - valid)
        if unknown:
            raise TypeError(f"unknown config field(s) {unknown} for VAE '{name}'; valid: {', '.join(sorted(valid))}")
        cfg = dataclasses.replace(cfg, **overrides)
    model = cls(cfg, name=name)
    if init_from is not None:
        init = getattr(model, "init_from_image_vae", None)
        if init is None:
            raise ValueError(f"VAE '{name}' cannot be initialised from an image VAE (init_from={init_from})")
        init(init_from)
    return model


def load_vae(path: str | Path, device: str = "cpu"):
    """Load a VAE saved with ``save_pretrained``, the EMA weights of a VAE training run folder, or a local diffusers
    ``AutoencoderKL`` folder (the frame-wise SD-VAE, registry name ``sd``: Latte's tokenizer)."""
    from .base import VideoVAE

    from .models.sd import SDVAE, is_diffusers_folder

    if is_diffusers_folder(path):
        return SDVAE.from_diffusers(path).to(device).eval()
    return VideoVAE.load(path, device=device)


def _import_models() -> None:
    # Importing the model modules runs their @register_vae decorators.
    import importlib

    for mod in ("tokenizer.models.vcvae", "tokenizer.models.plain", "tokenizer.models.deco", "tokenizer.models.sd"):
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:  # a real import error inside an existing module must surface
                raise
