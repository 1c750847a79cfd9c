"""The schema of ``configs/study/study.yaml``: which variants train, at which budget, and which paper tables they fill.

A variant is the study's training recipe (``recipe``, an ordinary ``configs/tokenizer``-style training config)
plus a few ``key=value`` overrides, started from one of three points:

- ``start: fresh`` -- the model's own initialisation;
- ``start: image_vae`` -- inflated from the study's own 2D image VAE (``model.init_from``, VC-VAE sec. 3.2);
- ``start: motion`` -- from the DeCo-VAE motion stage of the same seed and model (``model.init_from_run``), the
  first step of DeCo-VAE's decoupled adaptation (``motion_steps`` of ``train.stage=motion``).

``decoupled_adaptation: true`` adds DeCo-VAE's two phases inside the run: phase 1 freezes the motion module,
phase 2 (from ``phase2_at`` of the steps on) freezes the keyframe encoder.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from omegaconf import MISSING

from tokenizer.config import ConfigError, check_at_least, check_choices

STARTS = ("fresh", "image_vae", "motion")
METRICS = ("psnr", "psnr_first", "psnr_rest")


@dataclass
class Variant:
    name: str = MISSING  # run folders are <out>/runs/<name>-s<seed>
    label: str = ""  # what the tables call it
    overrides: list[str] = field(default_factory=list)  # key=value on the recipe
    start: str = "fresh"  # fresh | image_vae | motion
    decoupled_adaptation: bool = False


@dataclass
class TableRow:
    variant: str = MISSING
    paper: Optional[float] = None  # the paper's number (None: the paper gives none)


@dataclass
class Table:
    title: str = MISSING
    source: str = ""  # where the paper's numbers come from
    metric: str = "psnr"  # psnr (all frames) | psnr_first (frame 0) | psnr_rest (frames 1..)
    rows: list[TableRow] = field(default_factory=list)  # in the paper's order: each row should beat the one above
    note: str = ""
    claim: bool = True  # False: no paper claims an order (a choice the study settles); rows are only compared


@dataclass
class ImageVAESpec:
    """The study's own image VAE: diffusers AutoencoderKL in the Flux layout (no quant convs) at small widths."""

    block_out_channels: list[int] = field(default_factory=lambda: [8, 16, 16, 16])
    layers_per_block: int = 1
    norm_num_groups: int = 2
    latent_channels: int = 16
    steps: int = 600
    batch_size: int = 32  # frames
    lr: float = 2.0e-3
    warmup_steps: int = 30
    kl_weight: float = 1.0e-7
    # augmentation: a random square crop of [random_crop_min, 1] x the side of frames decoded at 3x the size, resized
    # to the size, mirrored half the time (1.0: the frames as they are, no mirroring: the study's setting)
    random_crop_min: float = 1.0


@dataclass
class TestSpec:
    """Held-out clips: the same videos, later in time (no frame of them is ever trained on)."""

    time_range: list[float] = field(default_factory=lambda: [0.75, 1.0])
    clips_per_video: int = 4


@dataclass
class StudyConfig:
    recipe: str = "configs/study/vae.yaml"
    steps: int = 600  # optimisation steps of every variant
    eval_every: int = 100  # held-out evaluation points (checkpoints) along each run
    motion_steps: int = 100  # DeCo-VAE's motion stage (train.stage=motion), shared by the start=motion variants
    motion_overrides: list[str] = field(default_factory=list)  # on top of the variant's model.* overrides
    phase2_at: float = 0.75  # decoupled adaptation: phase 2 starts at this fraction of the steps
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    image_vae: ImageVAESpec = field(default_factory=ImageVAESpec)
    test: TestSpec = field(default_factory=TestSpec)
    variants: list[Variant] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)


def check_image_vae(iv: ImageVAESpec, spell=lambda name, value: f"image_vae.{name}={value}") -> None:
    """ConfigError naming the first bad field of ``iv``; ``spell(name, value)`` writes it as the user wrote it (a
    config key by default; the image-VAE command passes its option spelling)."""
    def bad(name: str, rule: str) -> ConfigError:
        return ConfigError(f"invalid value '{spell(name, getattr(iv, name))}': {rule}")

    for name in ("steps", "batch_size", "latent_channels"):
        if getattr(iv, name) < 1:
            raise bad(name, "at least 1")
    if not iv.block_out_channels or any(c < 1 or c % iv.norm_num_groups for c in iv.block_out_channels):
        raise bad("block_out_channels", f"positive multiples of norm_num_groups={iv.norm_num_groups}")
    if not 0 < iv.random_crop_min <= 1:
        raise bad("random_crop_min", "in (0, 1]")


def validate(cfg: StudyConfig) -> None:
    check_at_least(cfg, ("steps", "eval_every", "motion_steps"))
    check_image_vae(cfg.image_vae)
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ConfigError(f"invalid value 'seeds={cfg.seeds}': distinct seeds, at least one")
    if not 0 < cfg.phase2_at < 1:
        raise ConfigError(f"invalid value 'phase2_at={cfg.phase2_at}': in (0, 1)")
    names = [v.name for v in cfg.variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"invalid value 'variants': names must be distinct, got {names}")
    for i, v in enumerate(cfg.variants):
        check_choices((f"variants.{i}.start", v.start, STARTS))
    for i, t in enumerate(cfg.tables):
        check_choices((f"tables.{i}.metric", t.metric, METRICS))
        unknown = [r.variant for r in t.rows if r.variant not in names]
        if unknown:
            raise ConfigError(f"tables.{i} ('{t.title}') names unknown variant(s) {unknown}; variants: {names}")
