"""M's pre-training objectives (the VAE trainer's ``motion`` stage calls :func:`motion_pretrain_loss`), the
measures the tests and the benchmark share, and the export of a motion run to the package's weights file.

Objectives (``motion_loss.objective``):

- ``known_motion`` (the shipped weights): pairs of real pictures moved by known random motions
  (:mod:`tokenizer.motion.pairs`); multi-scale end-point error of the flow of every pyramid level against the true
  flow (coarse levels weighted less), plus L1 of the scale against its true value (0: the pairs are sharp);
- ``photometric``: self-supervised on real clips, keyframe = first frame: Charbonnier(W(x_0, m) - x_t) plus
  edge-aware first-order smoothness of flow and scale.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from einops import rearrange
from torch import nn

from .estimators import CoarseToFineFlow, MotionModule
from .warp import flow_norm_to_px

OBJECTIVES = ("known_motion", "photometric")


@dataclass
class MotionLossConfig:
    objective: str = "known_motion"  # known_motion | photometric
    # known_motion: EPE weight per estimation level (1/16, 1/8, 1/4), coarsest first
    level_weights: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0])
    scale_weight: float = 0.1  # known_motion: L1 of the scale (levels) against the truth
    charbonnier_eps: float = 1e-3  # photometric
    smooth_weight: float = 0.02  # photometric: first-order smoothness of the flow (in pixels)
    scale_smooth_weight: float = 0.02  # photometric: first-order smoothness of the scale (in levels)
    edge_weight: float = 10.0  # edge awareness: weights exp(-edge_weight * |grad x_t|) (x_t in [-1, 1])


def charbonnier(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """sqrt(x^2 + eps^2): a differentiable L1."""
    return torch.sqrt(x * x + eps * eps)


def edge_aware_smoothness(field: torch.Tensor, image: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """mean |d field| exp(-edge_weight mean_c |d image|) over the x and y first differences; (b k h w), (b c h w)."""
    loss = 0.0
    for dim in (-1, -2):
        d_field = field.diff(dim=dim).abs()
        weight = torch.exp(-edge_weight * image.diff(dim=dim).abs().mean(1, keepdim=True))
        loss = loss + (d_field * weight).mean()
    return loss


def end_point_error(flow_px: torch.Tensor, true_px: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance of two flows (b 2 h w) in pixels."""
    return (flow_px - true_px).norm(dim=1).mean()


def clip_pairs(video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (x_t, x_0) pair of a batch of clips, keyframe = first frame: (b c t h w) -> two ((b t-1) c h w)."""
    t = video.shape[2]
    x_t = rearrange(video[:, :, 1:], "b c t h w -> (b t) c h w")
    x_0 = rearrange(video[:, :, :1].expand(-1, -1, t - 1, -1, -1), "b c t h w -> (b t) c h w")
    return x_t, x_0


def motion_module_of(model: nn.Module) -> MotionModule:
    """``model`` itself if it is a :class:`MotionModule`, else its ``motion`` attribute (DeCo-VAE)."""
    module = model if isinstance(model, MotionModule) else getattr(model, "motion", None)
    if not isinstance(module, MotionModule):
        raise ValueError(f"{type(model).__name__} has no motion module to pre-train")
    return module


def known_motion_loss(module: MotionModule, batch: dict, cfg: MotionLossConfig) -> tuple[torch.Tensor, dict]:
    """Multi-scale EPE + scale L1 on a batch of :class:`~tokenizer.motion.pairs.KnownMotionPairs`."""
    if not isinstance(module.estimator, CoarseToFineFlow):
        raise ValueError("the known-motion objective trains the learned estimator (motion kind 'learned')")
    video, true = batch["video"], batch["flow"].float()  # b 3 2 h w, b 2 h w
    m, levels = module.estimator(video[:, :, 1], video[:, :, 0], levels=True)
    if len(cfg.level_weights) != len(levels):
        raise ValueError(f"motion_loss.level_weights needs {len(levels)} entries, got {cfg.level_weights}")
    epe = [end_point_error(f, true) for f in levels]
    scale = (m[:, 2:] - batch["scale"]).abs().mean()
    loss = sum(w * e for w, e in zip(cfg.level_weights, epe)) + cfg.scale_weight * scale
    final = end_point_error(flow_norm_to_px(m[:, :2].float()), true)
    return loss, {"epe": final.detach(), "epe_coarsest": epe[0].detach(), "scale": scale.detach()}


def photometric_loss(module: MotionModule, video: torch.Tensor, cfg: MotionLossConfig) -> tuple[torch.Tensor, dict]:
    """Self-supervised loss on every (x_t, x_0) pair of clips (b 3 t h w)."""
    x_t, x_0 = clip_pairs(video)
    motion, pred = module(x_t, x_0)
    photo = charbonnier(pred - x_t, cfg.charbonnier_eps).mean()
    smooth = edge_aware_smoothness(flow_norm_to_px(motion[:, :2]), x_t, cfg.edge_weight)
    scale_smooth = edge_aware_smoothness(motion[:, 2:], x_t, cfg.edge_weight)
    total = photo + cfg.smooth_weight * smooth + cfg.scale_smooth_weight * scale_smooth
    return total, {"photometric": photo.detach(), "smooth": smooth.detach(), "scale_smooth": scale_smooth.detach()}


def motion_pretrain_loss(model: nn.Module, batch, cfg: MotionLossConfig | None = None
                         ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The motion stage's objective for a DeCo-VAE (its ``motion``) or a :class:`MotionModule`.

    ``batch``: known-motion pairs (a dict with ``flow``) or clips (b 3 t h w, or a dict with ``video``).
    Returns (loss, {"motion/<term>": detached value}).
    """
    cfg = cfg or MotionLossConfig()
    module = motion_module_of(model)
    if cfg.objective == "known_motion":
        if not (isinstance(batch, dict) and "flow" in batch):
            raise ValueError("motion_loss.objective=known_motion needs known-motion pairs (data from "
                             "motion_pairs), got clips without a true flow")
        loss, terms = known_motion_loss(module, batch, cfg)
    else:
        loss, terms = photometric_loss(module, batch["video"] if isinstance(batch, dict) else batch, cfg)
    return loss, {f"motion/{k}": v for k, v in terms.items()}


@torch.no_grad()
def warp_error(module: MotionModule, video: torch.Tensor, flow_only: bool = False) -> tuple[float, float]:
    """Mean |W(x_0, M(x_t, x_0)) - x_t| and the zero-motion error mean |x_0 - x_t| over frames t >= 1 of clips;
    ``flow_only``: the scale channel set to 0 (the flow's own share of the work)."""
    x_t, x_0 = clip_pairs(video)
    m = module.estimate(x_t, x_0)
    if flow_only:
        m = torch.cat([m[:, :2], torch.zeros_like(m[:, 2:])], dim=1)
    pred = module.warp(x_0, m)
    return float((pred - x_t).abs().mean()), float((x_0 - x_t).abs().mean())


@torch.no_grad()
def flow_error(module: MotionModule, x_t: torch.Tensor, x_0: torch.Tensor, true_px: torch.Tensor) -> float:
    """End-point error (px) of M on pairs (b 3 h w) with known flow (b 2 h w)."""
    return float(end_point_error(flow_norm_to_px(module.estimate(x_t, x_0)[:, :2].float()), true_px))


# ------------------------------------------------------------------------------------------------------ export
def export_motion(run_dir: str | Path, out: str | Path, record: dict | None = None) -> Path:
    """Write the motion estimator of a motion-stage run's latest EMA weights to ``out`` (safetensors, with a
    ``motion`` record the loader checks) and a JSON record beside it (``out`` with ``.json``)."""
    from ..io import load_weights, save_weights, sha256_file
    from ..training.rundir import EMA as EMA_FILE
    from ..training.rundir import RunDir

    run = RunDir(run_dir, keep_last=None, is_main=False)
    ckpt = run.latest()
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir}: no complete checkpoint (is it a training run folder?)")
    state, meta = load_weights(ckpt / EMA_FILE)
    est = {k.removeprefix("motion."): v for k, v in state.items() if k.startswith("motion.estimator.")}
    if not est:
        raise ValueError(f"{ckpt / EMA_FILE} has no motion.estimator.* weights")
    probe = MotionModule(_motion_config_of(meta))
    probe.load_state_dict({**probe.state_dict(), **est}, strict=True)  # the architecture fits
    info = {"motion": probe.record(), "source": {"run": str(run_dir), "checkpoint": ckpt.name}, **(record or {})}
    out = Path(out)
    save_weights(est, out, config=info)
    info["sha256"] = sha256_file(out)
    info["num_parameters"] = sum(v.numel() for v in est.values())
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return out


def _motion_config_of(meta: dict | None):
    from .estimators import MotionConfig

    cfg = (meta or {}).get("config") or {}
    return MotionConfig(kind="learned", sigma0=cfg.get("motion_sigma0", 1.5),
                        num_levels=cfg.get("motion_num_levels", 5), max_flow=cfg.get("motion_max_flow", 32.0))
