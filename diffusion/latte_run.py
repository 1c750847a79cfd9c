"""What a Latte run is trained on and how to rebuild it: the cache check, the decoding VAE, the run record.

A Latte run folder (``tokenizer.training.RunDir`` layout) holds, besides checkpoints::

    latte_run.json         the run record: Latte preset + build kwargs, diffusion settings, num_classes and class
                           names, latent shape, the latent normaliser (exact inverse for decoding), the cache
                           (path, identity digest, clip length, frame interval, resolution) and its VAE (name,
                           fingerprint, ckpt path or how it was built)
    cache_manifest.json    a copy of the cache's manifest (the run stays interpretable if the cache moves)
    step-NNNNNN/ema.safetensors   EMA weights; the run record in the metadata ({"name", "config", ...})

so that ``load_latte_run(run_dir)`` rebuilds the model and everything a sampler needs without the training config.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tokenizer.cache import CacheError, LatentNormalizer, cache_vae, read_manifest
from tokenizer.cache.manifest import identity_digest
from tokenizer.config import ConfigError
from tokenizer.io import load_state_dict_file, load_torch_file, load_weights, write_json
from tokenizer.training.rundir import EMA as EMA_FILE

from .train_config import LatteTrainConfig

RUN_RECORD = "latte_run.json"
MANIFEST_COPY = "cache_manifest.json"
RECORD_FORMAT = 1


# --- the cache a run trains on ---------------------------------------------------------------------------------
@dataclass
class CacheSpec:
    """What a run learns from its cache's manifest, checked against the config."""

    cache_dir: Path
    manifest: dict
    latent_shape: tuple[int, int, int, int]  # (C, T', H', W')
    num_classes: int  # 0: unconditional
    class_names: list[str]

    @property
    def vae(self) -> dict:
        return self.manifest["identity"]["vae"]


def open_cache(cfg: LatteTrainConfig, vae_fingerprint: str | None = None) -> CacheSpec:
    """Read and check the cache of ``cfg.data.cache_dir``; raise ConfigError / CacheError with what to change.

    Checks: the folder is a complete cache; its VAE is ``cfg.vae.name`` (when given) and has the weights
    fingerprint ``vae_fingerprint`` (the VAE of ``cfg.vae.ckpt``, when given); posterior sampling has the std it
    needs; the model's pinned channels / latent frames / latent size (when given) equal the cache's.
    """
    cache_dir = Path(cfg.data.cache_dir)
    if not cache_dir.is_dir():
        raise ConfigError(f"data.cache_dir={cache_dir}: no such folder (make one with scripts/cache_latents.sh)")
    manifest = read_manifest(cache_dir)
    ident = manifest["identity"]
    vae = ident["vae"]
    if cfg.vae.name is not None and cfg.vae.name != vae["name"]:
        raise CacheError(f"the cache {cache_dir} was made with VAE '{vae['name']}', but vae.name={cfg.vae.name}: "
                         "train on a cache of that VAE or set vae.name to the cache's")
    if vae_fingerprint is not None and vae_fingerprint != vae["fingerprint"]:
        raise CacheError(f"the cache {cache_dir} was made with VAE '{vae['name']}' of weights fingerprint "
                         f"{vae['fingerprint'][:16]}..., but vae.ckpt={cfg.vae.ckpt} has fingerprint "
                         f"{vae_fingerprint[:16]}...: its latents do not belong to the VAE that would decode the "
                         "samples; re-cache with that VAE or point vae.ckpt at the cache's VAE")
    if cfg.data.sample_posterior and not ident["storage"]["store_std"]:
        raise ConfigError(f"data.sample_posterior=true needs the posterior std, but {cache_dir} stores the mean only: "
                          "set data.sample_posterior=false or re-cache with store_std=true")
    shape = tuple(int(s) for s in ident["latent_shape"])
    c, t, h, w = shape
    if h != w:
        raise ConfigError(f"the cache's latents are {h}x{w}; Latte takes square latents")
    for key, want in (("in_channels", c), ("num_frames", t), ("input_size", h)):
        pinned = getattr(cfg.model, key)
        if pinned is not None and pinned != want:
            raise ConfigError(f"model.{key}={pinned}, but the cache {cache_dir} holds latents of shape (C, T', H', W') "
                              f"= {shape} ({vae['name']}, {ident['num_frames']} frames at "
                              f"{ident['data']['resolution']} px): set model.{key}={want} or null")
    names = list(manifest.get("class_names") or [])
    mode = cfg.data.conditioning
    if mode == "class" and len(names) < 2:
        raise ConfigError(f"data.conditioning=class, but the cache {cache_dir} has {len(names)} class(es): "
                          "use data.conditioning=none for an unconditional run (SkyTimelapse)")
    conditional = mode == "class" or (mode == "auto" and len(names) > 1)
    return CacheSpec(cache_dir=cache_dir, manifest=manifest, latent_shape=shape,
                     num_classes=len(names) if conditional else 0, class_names=names if conditional else [])


def latte_kwargs(cfg: LatteTrainConfig, spec: CacheSpec) -> dict:
    """The ``build_latte(name, **kwargs)`` arguments of a run (everything a rebuild needs)."""
    c, t, h, _ = spec.latent_shape
    return dict(cfg.model.config, in_channels=c, num_frames=t, input_size=h, num_classes=spec.num_classes,
                learn_sigma=cfg.model.learn_sigma, class_dropout_prob=cfg.model.class_dropout_prob)


# --- the VAE that decodes ---------------------------------------------------------------------------------------
def load_config_vae(ckpt: str | Path):
    """The VAE of ``vae.ckpt`` (a ``save_pretrained`` folder, a weights file or a VAE training run)."""
    from tokenizer import load_vae

    path = Path(ckpt)
    if not path.exists():
        raise ConfigError(f"vae.ckpt={ckpt}: no such file or folder (a save_pretrained folder or a VAE run)")
    return load_vae(path)


# --- the run record ---------------------------------------------------------------------------------------------
def run_record(cfg: LatteTrainConfig, spec: CacheSpec, normalizer: LatentNormalizer) -> dict:
    """Everything a sampler needs beside the weights (stored as latte_run.json and in the weights' metadata)."""
    ident = spec.manifest["identity"]
    data = ident["data"]
    return {
        "format": RECORD_FORMAT,
        "name": cfg.model.name,
        "config": latte_kwargs(cfg, spec),  # build_latte(name, **config)
        "diffusion": {"num_timesteps": cfg.diffusion.num_timesteps, "beta_schedule": cfg.diffusion.beta_schedule,
                      "learn_sigma": cfg.model.learn_sigma},
        "num_classes": spec.num_classes,
        "class_names": spec.class_names,
        "latent_shape": list(spec.latent_shape),
        "normalizer": normalizer.to_dict(),
        "cache": {"dir": str(spec.cache_dir.resolve()), "identity_digest": identity_digest(ident),
                  "num_frames": ident["num_frames"], "frame_interval": data.get("frame_interval"),
                  "resolution": data.get("resolution"), "dataset": data.get("kind"), "split": data.get("split"),
                  "clips": (spec.manifest.get("clips") or {}).get("stored"),
                  # the augmentation recipe: cached windows per video, flip copies, how training draws them
                  "clips_per_video": data.get("clips_per_video"), "frame_indices": data.get("frame_indices", "stride"),
                  "flip_copies": ident["storage"].get("flip_copies"), "variants": cfg.data.variants},
        "vae": {"name": spec.vae["name"], "fingerprint": spec.vae["fingerprint"],
                "ckpt": str(Path(cfg.vae.ckpt).resolve()) if cfg.vae.ckpt else None,
                "source": spec.manifest.get("vae_source"),
                "init_seed": (spec.manifest.get("cache") or {}).get("init_seed"),
                "compression": spec.vae.get("compression"), "frame_rule": spec.vae.get("frame_rule")},
    }


def write_run_files(root: Path, record: dict, manifest: dict) -> None:
    """latte_run.json and the manifest copy (main process)."""
    write_json(root / RUN_RECORD, record)
    write_json(root / MANIFEST_COPY, manifest)


# --- loading a run ----------------------------------------------------------------------------------------------
@dataclass
class LatteRun:
    """A trained Latte run, rebuilt: the model (eval mode) and what it was trained on."""

    model: nn.Module
    record: dict  # the run record (latte_run.json)
    normalizer: LatentNormalizer  # normalizer.denormalize(x) -> VAE latents for vae.decode
    manifest: dict  # the cache manifest the run trained on (its copy in the run folder)
    step: int
    checkpoint: Path
    which: str  # "ema" | "raw"

    @property
    def num_classes(self) -> int:
        return int(self.record["num_classes"])

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.record["latent_shape"])

    def vae(self, ckpt: str | Path | None = None, device: str | torch.device = "cpu"):
        """The cache's VAE, verified by fingerprint (see :func:`tokenizer.cache.cache_vae`)."""
        return cache_vae(self.manifest, ckpt or self.record["vae"].get("ckpt"), device=device)


def build_from_record(record: dict) -> nn.Module:
    from .latte import build_latte

    return build_latte(record["name"], **record["config"])


def load_latte_run(run_dir: str | Path, which: str = "ema", checkpoint: str | Path | None = None,
                   device: str | torch.device = "cpu") -> LatteRun:
    """Rebuild a Latte run's model from its folder: the ``latest`` checkpoint (or ``checkpoint``, a step folder
    name or path), with the EMA weights (``which="ema"``, the slim safetensors file) or the raw training weights
    (``which="raw"``, from the full training state)."""
    from tokenizer.training.rundir import RunDir

    if which not in ("ema", "raw"):
        raise ValueError(f"which must be 'ema' or 'raw', got {which!r}")
    root = Path(run_dir)
    if not (root / RUN_RECORD).is_file():
        raise FileNotFoundError(f"{root} is not a Latte run: no {RUN_RECORD} (made by diffusion/train_latte.py)")
    run = RunDir(root, keep_last=None, is_main=False)  # a read-only view
    if checkpoint is None:
        folder = run.latest()
        if folder is None:
            raise FileNotFoundError(f"{root} has no complete checkpoint yet")
    else:
        folder = Path(checkpoint) if Path(checkpoint).is_dir() else root / str(checkpoint)
        if not folder.is_dir():
            raise FileNotFoundError(f"no checkpoint folder {folder}")
    if which == "ema":
        state, record = load_weights(folder / EMA_FILE)
        if not record or record.get("format") != RECORD_FORMAT:
            raise ValueError(f"{folder / EMA_FILE} carries no Latte run record in its metadata")
    else:
        full = load_torch_file(folder / "state.pt")
        state = full["model"]
        record = json.loads((root / RUN_RECORD).read_text())
    model = build_from_record(record)
    model.load_state_dict(state, strict=True)
    manifest = json.loads((root / MANIFEST_COPY).read_text())
    step = int(folder.name.split("-")[-1]) if folder.name.startswith("step-") else -1
    return LatteRun(model=model.to(device).eval(), record=record,
                    normalizer=LatentNormalizer.from_dict(record["normalizer"]), manifest=manifest, step=step,
                    checkpoint=folder, which=which)


def load_init_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Weights to start a fresh run from: a Latte run folder (its EMA), a safetensors file, or a torch checkpoint
    such as the public Latte releases (``{"ema": ...}`` / ``{"model": ...}`` / a bare state dict; the EMA is
    preferred). Torch files load with ``weights_only=True``."""
    path = Path(path)
    if path.is_dir():
        if (path / RUN_RECORD).is_file():
            return load_weights(load_latte_run_folder(path) / EMA_FILE)[0]
        raise ConfigError(f"model.init_from={path}: a folder but not a Latte run (no {RUN_RECORD})")
    if not path.is_file():
        raise ConfigError(f"model.init_from={path}: no such file (the public Latte checkpoints, e.g. ucf101.pt and "
                          "skytimelapse.pt, are published at https://huggingface.co/maxin-cn/Latte)")
    try:
        return load_state_dict_file(path)
    except pickle.UnpicklingError as err:  # pickled objects besides tensors (e.g. argparse args) are refused
        raise ConfigError(f"model.init_from={path} cannot be loaded with weights_only=True ({err}); save its state "
                          "dict alone (torch.save(ckpt['ema'], ...)) or as safetensors") from None


def load_latte_run_folder(root: Path) -> Path:
    from tokenizer.training.rundir import RunDir

    folder = RunDir(root, keep_last=None, is_main=False).latest()
    if folder is None:
        raise FileNotFoundError(f"{root} has no complete checkpoint yet")
    return folder
