"""The schema of ``configs/tokenizer/*.yaml``: one video-VAE training run (a model, a stage, its data and losses).

Stages:
- ``vae``: reconstruction training of any registered VAE (plain, VC-VAE stage I / II, DeCo-VAE phases 1 / 2):
  L1 + LPIPS + KL (+ the 3D PatchGAN from ``loss.gan_start``). Parameter groups can be frozen per phase
  (``phases``), switching at a configured step inside one run; a later phase can also be its own run started
  from a previous run's weights (``model.init_from_run``).
- ``motion``: DeCo-VAE's motion-module pre-training (``tokenizer.motion``): ``motion_loss.objective=known_motion``
  (default) on known-motion pairs of real pictures (``motion_pairs``, the ``data`` section is not read), or
  ``photometric`` (warp + smoothness) on the ``data`` clips; only the ``motion`` parameter group is trained.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING

from ..config import Choice, ConfigError, check_at_least, check_choices
from ..data import DataConfig
from ..data.video_io import VideoFormat
from ..discriminator import DiscriminatorConfig
from ..losses import LossConfig
from ..motion import OBJECTIVES, MotionLossConfig
from ..motion.pairs import KnownMotionConfig
from .trackers import check_tracker


class Stage(Choice):
    vae = "vae"
    motion = "motion"


class InitWeights(Choice):
    model = "model"
    ema = "ema"


PRECISIONS = ("no", "bf16")  # fp16 would need one gradient scaler per optimiser: not offered
SCHEDULES = ("constant", "cosine")  # of the lr after the linear warm-up


@dataclass
class ModelSection:
    name: str = MISSING  # registry name: plain, vcvae, vcvae-8x, deco, ... and the *-tiny presets
    config: dict[str, Any] = field(default_factory=dict)  # overrides of the preset's config fields
    init_from: Optional[str] = None  # image VAE to inflate at the start of a fresh run (VC-VAE, DeCo-VAE)
    init_from_run: Optional[str] = None  # start a fresh run from these weights (a run folder or a weights file)
    init_weights: InitWeights = InitWeights.model  # init_from_run of a run folder: its raw 'model' weights or 'ema'
    last_layer: Optional[str] = None  # parameter for the adaptive GAN weight; default: the decoder's conv_out weight
    gradient_checkpointing: bool = False


@dataclass
class PhaseSection:
    """From step ``start`` on (1-based, inclusive), the parameter groups in ``freeze`` are not trained."""

    start: int = 1
    name: str = ""
    freeze: list[str] = field(default_factory=list)


@dataclass
class BucketSection:
    """One clip shape of a mixed-shape stream (VC-VAE stage II); unset fields keep the ``data`` values."""

    resolution: Optional[int] = None
    num_frames: Optional[int] = None
    frame_interval: Optional[int] = None
    batch_size: Optional[int] = None  # per process; default train.batch_size
    weight: float = 1.0  # relative probability of the bucket at each step


@dataclass
class OptimSection:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.9])
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0  # linear warm-up from lr / warmup_steps to lr over this many steps
    schedule: str = "constant"  # after the warm-up: constant | cosine (to min_lr_ratio * lr at train.max_steps)
    min_lr_ratio: float = 0.0  # cosine only: the last step's lr as a fraction of lr
    max_grad_norm: Optional[float] = None  # clip the generator's gradient norm (None: no clipping)
    disc_lr: Optional[float] = None  # default: lr


@dataclass
class TrainSection:
    run_dir: str = MISSING  # the run folder; re-running the same command resumes from its 'latest'
    stage: Stage = Stage.vae
    max_steps: int = 1000
    batch_size: int = 1  # per process
    seed: int = 0
    num_workers: int = 0  # DataLoader workers per process
    cache_items: bool = False  # keep decoded clips in memory (deterministic data configs, small sets; with
    #                            num_workers > 0 each worker holds its own cache, rebuilt every epoch)
    mixed_precision: str = "no"  # no | bf16
    cpu: bool = False  # force the CPU even where a GPU exists
    ema_decay: float = 0.999
    checkpoint_every: int = 1000
    keep_last: int = 3  # complete checkpoints kept
    sample_every: int = 1000
    num_samples: int = 2  # clips in each reconstruction sample
    sample_format: VideoFormat = VideoFormat.gif
    sample_fps: float = 8.0
    log_every: int = 10
    max_nonfinite: int = 5  # stop after this many consecutive steps with a NaN / Inf loss or gradient
    tracker: str = "tensorboard"  # any accelerate tracker, comma-separated ones, all, or none
    tracker_project: str = "vidtok-lab"  # project name for the trackers (tensorboard: trackers/<it>)
    progress_bar: bool = True


@dataclass
class VAETrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    buckets: list[BucketSection] = field(default_factory=list)
    loss: LossConfig = field(default_factory=LossConfig)
    disc: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    optim: OptimSection = field(default_factory=OptimSection)
    phases: list[PhaseSection] = field(default_factory=list)
    motion_loss: MotionLossConfig = field(default_factory=MotionLossConfig)  # train.stage=motion only
    motion_pairs: KnownMotionConfig = field(default_factory=KnownMotionConfig)  # motion_loss.objective=known_motion
    train: TrainSection = field(default_factory=TrainSection)


def validate(cfg: VAETrainConfig) -> None:
    """Checks that need several fields; raises ConfigError with the offending key."""
    t = cfg.train
    check_choices(("train.mixed_precision", t.mixed_precision, PRECISIONS),  # "no": YAML reads a bare no as false
                  ("motion_loss.objective", cfg.motion_loss.objective, OBJECTIVES),
                  ("optim.schedule", cfg.optim.schedule, SCHEDULES))
    check_tracker("train.tracker", t.tracker)
    check_at_least(t, ("max_steps", "batch_size", "checkpoint_every", "sample_every", "log_every", "max_nonfinite",
                       "keep_last"), prefix="train.")
    check_at_least(t, ("num_workers",), low=0, prefix="train.")
    from ..registry import vae_names

    check_choices(("model.name", cfg.model.name, tuple(vae_names())))
    o = cfg.optim
    for key in ("lr", "disc_lr"):
        if getattr(o, key) is not None and not getattr(o, key) > 0:
            raise ConfigError(f"invalid value 'optim.{key}={getattr(o, key)}': must be > 0")
    if o.weight_decay < 0:
        raise ConfigError(f"invalid value 'optim.weight_decay={o.weight_decay}': must be >= 0")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"invalid value 'train.ema_decay={t.ema_decay}': must be in [0, 1)")
    if not 0 <= cfg.optim.min_lr_ratio <= 1:
        raise ConfigError(f"invalid value 'optim.min_lr_ratio={cfg.optim.min_lr_ratio}': must be in [0, 1]")
    if cfg.optim.warmup_steps < 0:
        raise ConfigError(f"invalid value 'optim.warmup_steps={cfg.optim.warmup_steps}': must be >= 0")
    if cfg.optim.max_grad_norm is not None and cfg.optim.max_grad_norm <= 0:
        raise ConfigError(f"invalid value 'optim.max_grad_norm={cfg.optim.max_grad_norm}': > 0, or null for no "
                          "clipping")
    if len(cfg.optim.betas) != 2:
        raise ConfigError(f"invalid value 'optim.betas={cfg.optim.betas}': two numbers (beta1, beta2)")
    starts = [p.start for p in cfg.phases]
    if starts != sorted(set(starts)) or any(s < 1 for s in starts):
        raise ConfigError(f"invalid value 'phases': starts must be >= 1 and strictly increasing, got {starts}")
    if cfg.phases and cfg.phases[0].start != 1:
        raise ConfigError("invalid value 'phases': the first phase must start at step 1")
    if cfg.model.init_from and cfg.model.init_from_run:
        raise ConfigError("model.init_from and model.init_from_run are exclusive: start from one or the other")
    if t.cache_items and (cfg.data.offset == "random" or cfg.data.crop == "random" or cfg.data.hflip):
        raise ConfigError("train.cache_items=true needs deterministic clips (data.offset start|center, data.crop "
                          "center, data.hflip false): cached items would freeze the random draws")
    if t.stage == "motion" and cfg.loss.gan_weight > 0:
        raise ConfigError("train.stage=motion trains the motion module alone: set loss.gan_weight=0")
    for i, b in enumerate(cfg.buckets):
        if b.weight < 0:
            raise ConfigError(f"invalid value 'buckets.{i}.weight={b.weight}': must be >= 0")
    if cfg.buckets and sum(b.weight for b in cfg.buckets) <= 0:
        raise ConfigError("invalid value 'buckets': the weights must have a positive sum")


def lr_factor(cfg: VAETrainConfig, taken: int) -> float:
    """The learning rate of step ``taken + 1`` as a fraction of ``optim.lr`` (``taken`` steps done before it).

    Linear warm-up over ``optim.warmup_steps`` (1/w, 2/w, ..., 1), then ``constant`` or half a cosine period
    from 1 down to ``min_lr_ratio`` at the last step (SGDR, Loshchilov & Hutter 2017, without restarts). Short runs of
    tiny models at a high lr need both: without the warm-up Adam's first steps overshoot, and without the decay
    the loss keeps bouncing at the final lr.
    """
    o = cfg.optim
    return schedule_factor(taken, o.warmup_steps, cfg.train.max_steps, o.schedule, o.min_lr_ratio)


def schedule_factor(taken: int, warmup: int, total: int, schedule: str = "cosine", min_ratio: float = 0.05) -> float:
    """:func:`lr_factor` without a config: warm-up over ``warmup`` steps, then ``constant`` or a cosine from 1 to
    ``min_ratio`` at step ``total`` (also the study's image VAE's schedule)."""
    if taken < warmup:
        return (taken + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(total - warmup - 1, 1)  # steps warmup+1 .. total: progress 0 .. 1
    progress = min((taken - warmup) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def active_phase(cfg: VAETrainConfig, step: int) -> int | None:
    """Index of the phase step ``step`` (1-based) belongs to, or None without phases."""
    idx = None
    for i, p in enumerate(cfg.phases):
        if p.start <= step:
            idx = i
    return idx
