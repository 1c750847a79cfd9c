"""The schema of ``configs/diffusion/*.yaml``: one Latte training run on a latent cache.

A run is (a Latte preset) x (a latent cache made by ``python -m tokenizer.cache``) x (the Latte recipe). The latent
shape -- channels, latent frames, latent size -- comes from the cache's manifest; the model section may pin any of
them, and a cache that does not match is refused before any work starts. The VAE section names the VAE the
generated latents will be decoded with: a cache made with other weights is refused.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from tokenizer.config import Choice, ConfigError, check_at_least, check_choices
from tokenizer.data.video_io import VideoFormat
from tokenizer.training.trackers import check_tracker

from .gaussian_diffusion import BETA_SCHEDULES
from .latte import LATTE_PRESETS, Latte
from .samplers import SAMPLERS

# fp16 is left out: its dynamic loss scaler must see overflowing steps, which the non-finite guard skips
PRECISIONS = ("no", "bf16")


class Normalize(Choice):
    stats = "stats"  # the manifest's per-channel mean / std
    vae = "vae"  # the VAE's scaling / shift factors
    none = "none"


CONDITIONING = ("auto", "class", "none")  # a string choice: 'class' cannot name an Enum member
VARIANTS = ("all", "one_per_video")


@dataclass
class ModelSection:
    name: str = "Latte-XL/2"  # a diffusion.LATTE_NAMES preset
    in_channels: Optional[int] = None  # latent channels; null: the cache's (16 / 32 / 48 by VAE)
    num_frames: Optional[int] = None  # latent frames; null: the cache's (17 frames -> 5 at causal 4x)
    input_size: Optional[int] = None  # latent height = width; null: the cache's (256 px -> 32 at 8x)
    learn_sigma: bool = True  # eps + learned-range variance (the DiT/IDDPM hybrid loss needs it)
    class_dropout_prob: float = 0.1  # label dropout for classifier-free guidance (class-conditional runs)
    config: dict[str, Any] = field(default_factory=dict)  # further build_latte keyword arguments
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward
    init_from: Optional[str] = None  # start a fresh run from these weights (public Latte .pt, safetensors, a run)


@dataclass
class VAESection:
    """The VAE the generated latents are decoded with; the cache must have been made with it."""

    name: Optional[str] = None  # registry name; null: the cache's
    ckpt: Optional[str] = None  # its weights (save_pretrained folder or VAE run); the fingerprint must match


@dataclass
class DataSection:
    cache_dir: str = MISSING  # a complete latent cache folder
    normalize: Normalize = Normalize.stats  # stats (manifest per-channel mean/std) | vae (scale/shift) | none
    sample_posterior: bool = True  # z = mu + sigma * eps per item (as Latte's vae.encode().sample()); needs std
    conditioning: str = "auto"  # class (num_classes from the manifest) | none (unconditional) | auto: class if >1
    # all: every cached clip (each window, each flip copy) once per epoch | one_per_video: each epoch visits every
    # video once and draws one of its cached variants, seeded by (train.seed, epoch, video) -- Latte's loader
    variants: str = "all"
    num_workers: int = 0  # DataLoader workers per process


@dataclass
class DiffusionSection:
    """Forward process and loss (diffusion.gaussian_diffusion): 1000-step linear betas, eps + learned range."""

    num_timesteps: int = 1000
    beta_schedule: str = "linear"


@dataclass
class OptimSection:
    lr: float = 1e-4  # Latte: AdamW 1e-4, constant
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    max_grad_norm: Optional[float] = 0.1  # Latte: clip_max_norm 0.1 ...
    clip_start_step: int = 100_000  # ... from step 100k on (start_clip_iter); before it the norm is only logged


@dataclass
class SampleSection:
    """Periodic samples: a few videos from the EMA model, decoded with the cache's VAE."""

    every: int = 0  # steps; 0 = off
    num: int = 4  # videos per sample grid
    sampler: str = "ddim"
    steps: int = 25
    cfg_scale: float = 1.0  # classifier-free guidance on the eps channels (1 = none)
    seed: int = 0  # the same noise and labels at every sample step
    format: VideoFormat = VideoFormat.gif
    fps: float = 8.0


@dataclass
class TrainSection:
    run_dir: str = MISSING  # re-running the same command resumes from its 'latest'
    max_steps: int = 1000
    batch_size: int = 5  # per process and micro-batch; effective = batch_size x processes x grad_accum
    grad_accum: int = 1  # micro-batches per optimisation step
    seed: int = 0
    mixed_precision: str = "bf16"  # no | bf16 (autocast; master weights, optimiser and EMA stay fp32)
    cpu: bool = False  # force the CPU even where a GPU exists
    ema_decay: float = 0.9999
    checkpoint_every: int = 10_000
    keep_last: int = 3
    log_every: int = 50
    max_nonfinite: int = 5  # stop after this many consecutive non-finite steps
    tracker: str = "tensorboard"  # any accelerate tracker, comma-separated ones, all, or none
    tracker_project: str = "vidtok-lab"  # project name for the trackers (tensorboard: trackers/<it>)
    progress_bar: bool = True
    check_replicas: bool = True  # at each checkpoint, compare every process's weights (DDP desync detector)
    fsdp: bool = False  # shard parameters, gradients and AdamW state over the processes (FSDP2) instead of DDP


@dataclass
class LatteTrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    vae: VAESection = field(default_factory=VAESection)
    data: DataSection = field(default_factory=DataSection)
    diffusion: DiffusionSection = field(default_factory=DiffusionSection)
    optim: OptimSection = field(default_factory=OptimSection)
    sample: SampleSection = field(default_factory=SampleSection)
    train: TrainSection = field(default_factory=TrainSection)


def validate(cfg: LatteTrainConfig) -> None:
    """Checks of single fields and field combinations; raises ConfigError naming the key."""
    t, s = cfg.train, cfg.sample
    check_choices(("train.mixed_precision", t.mixed_precision, PRECISIONS),
                  ("sample.sampler", s.sampler, tuple(SAMPLERS)),
                  ("model.name", cfg.model.name, tuple(LATTE_PRESETS)),
                  ("diffusion.beta_schedule", cfg.diffusion.beta_schedule, BETA_SCHEDULES),
                  ("data.conditioning", cfg.data.conditioning, CONDITIONING),
                  ("data.variants", cfg.data.variants, VARIANTS))
    check_tracker("train.tracker", t.tracker)
    check_at_least(t, ("max_steps", "batch_size", "grad_accum", "checkpoint_every", "log_every", "max_nonfinite",
                       "keep_last"), prefix="train.")
    check_at_least(cfg.data, ("num_workers",), low=0, prefix="data.")
    for key in ("every", "num", "steps"):
        low = 0 if key == "every" else 1
        if getattr(s, key) < low:
            raise ConfigError(f"invalid value 'sample.{key}={getattr(s, key)}': must be >= {low}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"invalid value 'train.ema_decay={t.ema_decay}': must be in [0, 1)")
    if not 0 <= cfg.model.class_dropout_prob < 1:
        raise ConfigError(f"invalid value 'model.class_dropout_prob={cfg.model.class_dropout_prob}': in [0, 1)")
    o = cfg.optim
    if len(o.betas) != 2:
        raise ConfigError(f"invalid value 'optim.betas={o.betas}': two numbers (beta1, beta2)")
    if o.max_grad_norm is not None and o.max_grad_norm <= 0:
        raise ConfigError(f"invalid value 'optim.max_grad_norm={o.max_grad_norm}': > 0, or null for no clipping")
    if o.clip_start_step < 0:
        raise ConfigError(f"invalid value 'optim.clip_start_step={o.clip_start_step}': must be >= 0")
    if not o.lr > 0:
        raise ConfigError(f"invalid value 'optim.lr={o.lr}': must be > 0")
    if o.weight_decay < 0:
        raise ConfigError(f"invalid value 'optim.weight_decay={o.weight_decay}': must be >= 0")
    if s.cfg_scale < 1.0:
        raise ConfigError(f"invalid value 'sample.cfg_scale={s.cfg_scale}': >= 1 (1 = no guidance)")
    if cfg.diffusion.num_timesteps < 2:
        raise ConfigError(f"invalid value 'diffusion.num_timesteps={cfg.diffusion.num_timesteps}': >= 2")
    for key in ("in_channels", "num_frames", "input_size"):
        v = getattr(cfg.model, key)
        if v is not None and v < 1:
            raise ConfigError(f"invalid value 'model.{key}={v}': >= 1 or null (take it from the cache)")
    reserved = {"in_channels", "num_frames", "input_size", "num_classes", "learn_sigma", "class_dropout_prob"}
    clash = sorted(reserved & set(cfg.model.config))
    if clash:
        raise ConfigError(f"model.config must not set {clash}: they have their own keys (model.<key>) or come "
                          "from the cache (num_classes: data.conditioning)")
    fields = set(inspect.signature(Latte.__init__).parameters) - {"self"} - reserved
    unknown = sorted(set(cfg.model.config) - fields)
    if unknown:
        raise ConfigError(f"model.config: unknown Latte field(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}")


def clip_active(cfg: LatteTrainConfig, step: int) -> bool:
    """Whether the gradient norm is clipped at optimisation step ``step`` (1-based)."""
    return cfg.optim.max_grad_norm is not None and step > cfg.optim.clip_start_step
