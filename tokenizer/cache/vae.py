"""Which VAE a latent cache was made with, and how to get it back.

A cache job given no ``--ckpt`` encodes with a registry preset randomly initialised under ``init_seed`` (smoke runs
and tests). :func:`seeded_preset` is that convention, used by the job and by :func:`cache_vae` when it rebuilds
the VAE; every candidate :func:`cache_vae` tries is accepted only with the manifest's weights fingerprint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..config import from_dict
from .manifest import CacheError


def seeded_preset(name: str, seed: int, config: dict | None = None):
    """The registry preset ``name`` (with ``config``, else its own) initialised under torch seed ``seed``; the
    caller's random stream is left untouched."""
    from ..registry import build_vae, get_preset

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if config is None:
            return build_vae(name)
        cls, _ = get_preset(name)
        return cls(from_dict(cls.config_class, config, source="the cache manifest"), name=name)


def cache_vae(manifest: dict, ckpt: str | Path | None = None, device: str | torch.device = "cpu"):
    """The VAE whose latents the cache holds, verified by its weights fingerprint.

    Tried in order: ``ckpt``; the path the cache job recorded (``vae_source``); for a cache made with a randomly
    initialised preset, that preset rebuilt under the cache job's torch seed. Raises :class:`CacheError` naming
    what was tried when none of them has the cache's fingerprint.
    """
    from .. import load_vae

    vae_id = manifest["identity"]["vae"]
    want = vae_id["fingerprint"]
    candidates: list[tuple[str, Callable[[], Any]]] = []
    if ckpt is not None:
        candidates.append((f"the weights {ckpt}", lambda: load_vae(ckpt)))
    source = str(manifest.get("vae_source") or "")
    if source and Path(source).exists():
        candidates.append((f"the cache's vae_source {source}", lambda: load_vae(source)))
    seed = (manifest.get("cache") or {}).get("init_seed")
    if seed is not None:
        candidates.append((f"preset '{vae_id['name']}' re-initialised with torch seed {seed}",
                           lambda: seeded_preset(vae_id["name"], seed, vae_id["config"])))
    tried = []
    for what, make in candidates:
        vae = make()
        if vae.fingerprint() == want:
            return vae.to(device).eval()
        tried.append(what)
    raise CacheError(f"cannot find the VAE of the cache ('{vae_id['name']}', fingerprint {want[:16]}...): tried "
                     f"{'; '.join(tried) or 'nothing (no weights given, no readable vae_source)'}; give its weights")
