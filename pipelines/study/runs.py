"""The study's runs: each variant x seed is an ordinary training run of the toolkit's own VAE trainer, in its own run
folder, resumed by the trainer itself; each checkpoint's EMA weights are scored on held-out clips.

Layout of ``<out>``::

    image-vae-s<seed>/      the study's 2D image VAE (diffusers folder), VC-VAE's initialiser
    runs/motion-<model>-s<seed>/  DeCo-VAE's motion stage (train.stage=motion), where start=motion variants begin
    runs/<variant>-s<seed>/ one training run folder (config.yaml, train.log, step-*/ema.safetensors, ...)
        heldout.json        held-out PSNR of every checkpoint (per frame and mean), and the launches' wall time
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

from tokenizer.config import load_config
from tokenizer.io import write_json
from tokenizer.training.rundir import EMA as EMA_FILE
from tokenizer.training.rundir import RunDir
from tokenizer.training.vae_config import VAETrainConfig, validate

from .spec import StudyConfig, Variant

HELDOUT = "heldout.json"


def run_overrides(study: StudyConfig, variant: Variant, seed: int, out: Path, extra: list[str]) -> list[str]:
    """The ``key=value`` overrides on the recipe that make this variant's run (the order decides ties)."""
    steps = study.steps
    o = [*extra, *variant.overrides, f"train.max_steps={steps}", f"train.seed={seed}",
         f"train.run_dir={out / 'runs' / f'{variant.name}-s{seed}'}", f"train.checkpoint_every={study.eval_every}",
         "train.keep_last=1000"]
    if variant.start == "image_vae":
        o.append(f"model.init_from={out / f'image-vae-s{seed}'}")
    elif variant.start == "motion":
        o.append(f"model.init_from_run={motion_run(out, model_name(study, variant), seed)}")
    if variant.decoupled_adaptation:  # DeCo-VAE sec. 3.3: phase 1 motion frozen, phase 2 keyframe encoder frozen
        s2 = max(2, round(study.phase2_at * steps) + 1)
        o.append(f"phases=[{{start: 1, name: phase1, freeze: [motion]}}, {{start: {s2}, name: phase2, "
                 f"freeze: [enc_k]}}]")
    return o


def model_name(study: StudyConfig, variant: Variant) -> str:
    """The registry name a variant trains (its last model.name override, else the recipe's)."""
    names = [o.split("=", 1)[1] for o in variant.overrides if o.startswith("model.name=")]
    return names[-1] if names else load_config(VAETrainConfig, study.recipe).model.name


def motion_run(out: Path, model: str, seed: int) -> Path:
    return out / "runs" / f"motion-{model}-s{seed}"


def motion_overrides(study: StudyConfig, variant: Variant, seed: int, out: Path, extra: list[str]) -> list[str]:
    """DeCo-VAE's motion stage for the variant's model (the motion module alone; the concat model's weights do not
    fit the dedicated model's, so each model has its own stage, with the same seed, data and steps)."""
    model = [o for o in variant.overrides if o.startswith("model.")]
    return [*extra, *model, *study.motion_overrides, "train.stage=motion", f"train.max_steps={study.motion_steps}",
            f"train.seed={seed}", f"train.run_dir={motion_run(out, model_name(study, variant), seed)}",
            f"train.checkpoint_every={study.motion_steps}"]


def train_config(study: StudyConfig, overrides: list[str], progress: bool) -> VAETrainConfig:
    return load_config(VAETrainConfig, study.recipe, [*overrides, f"train.progress_bar={str(progress).lower()}"],
                       validate=validate)


def finished(cfg: VAETrainConfig) -> bool:
    latest = RunDir(cfg.train.run_dir, keep_last=None, is_main=False).latest()
    return latest is not None and latest.name == f"step-{cfg.train.max_steps:06d}"


def train(cfg: VAETrainConfig, log: Callable[[str], None]) -> float:
    """Train (or resume) one run with the toolkit's trainer; returns this launch's wall time (0 if it was done)."""
    from tokenizer.training.vae_trainer import VAETrainer

    run = Path(cfg.train.run_dir)
    if finished(cfg):
        log(f"{run.name}: finished earlier (step {cfg.train.max_steps}), skipped")
        return 0.0
    latest = RunDir(run, keep_last=None, is_main=False).latest()
    log(f"{run.name}: " + (f"resuming from {latest.name}" if latest else "training") + f" to step {cfg.train.max_steps}")
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        VAETrainer(cfg).fit()
    wall = time.perf_counter() - start
    record = _read(run)
    record["wall_s"] = record.get("wall_s", 0.0) + wall  # launches add up; a killed launch's time is lost
    write_json(run / HELDOUT, record)
    return wall


def _read(run: Path) -> dict:
    path = run / HELDOUT
    return json.loads(path.read_text()) if path.is_file() else {"checkpoints": {}}


def test_data_config(study: StudyConfig, cfg: VAETrainConfig):
    """The run's data section moved to the held-out part of each video (same clip shape, evenly spaced clips)."""
    import dataclasses

    return dataclasses.replace(cfg.data, time_range=list(study.test.time_range),
                               clips_per_video=study.test.clips_per_video, offset="start", crop="center",
                               hflip=False)


_CLIPS: dict = {}


def load_clips(data_cfg) -> torch.Tensor:
    """(n c t h w) clips of a data config, decoded once per config."""
    from tokenizer.data import build_dataset

    key = repr(data_cfg)
    if key not in _CLIPS:
        ds = build_dataset(data_cfg)
        _CLIPS[key] = torch.stack([ds[i]["video"] for i in range(len(ds))])
    return _CLIPS[key]


@torch.no_grad()
def psnr_per_frame(weights: Path, clips: torch.Tensor) -> list[float]:
    """Held-out PSNR (dB) of each frame index, averaged over the clips, for the VAE in ``weights`` (posterior mode)."""
    from pipelines.metrics import psnr_frames
    from tokenizer import load_vae

    vae = load_vae(weights).eval()
    recon = torch.cat([vae.decode(vae.encode(c).mode()).clamp(-1, 1) for c in clips.split(8)])
    return psnr_frames(clips, recon).mean(0).tolist()  # (t,)


def evaluate(study: StudyConfig, cfg: VAETrainConfig) -> dict:
    """Score every checkpoint of the run not scored yet; returns the run's record."""
    run = Path(cfg.train.run_dir)
    record = _read(run)
    clips = load_clips(test_data_config(study, cfg))
    changed = False
    for ckpt in sorted(run.glob("step-*")):
        if ckpt.name not in record["checkpoints"] and (ckpt / EMA_FILE).is_file():
            frames = psnr_per_frame(ckpt / EMA_FILE, clips)
            record["checkpoints"][ckpt.name] = {"step": int(ckpt.name.split("-")[1]), "per_frame": frames,
                                                "psnr": sum(frames) / len(frames)}
            changed = True
    record["test_clips"] = int(clips.shape[0])
    if changed:
        write_json(run / HELDOUT, record)
    return record
