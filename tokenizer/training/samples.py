"""Reconstruction samples a run writes every N steps: panels side by side in one gif or mp4.

A panel is a ``(C, T, H, W)`` clip in [-1, 1]; motion fields (flow x, flow y[, scale]) are drawn with the
optical-flow colour wheel of ``tokenizer.motion.flow_to_rgb`` (hue = direction, saturation = magnitude, white = no
motion) and their scale channel, if any, as grey. Panels of one frame (a keyframe) are held for the whole clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from einops import repeat

from ..data.video_io import video_to_uint8, write_video
from ..motion import flow_to_rgb


def motion_panels(motion: torch.Tensor) -> list[torch.Tensor]:
    """A motion field ``(2 or 3, T, H, W)`` -> [flow picture, scale picture (if 3 channels)], each (3, T, H, W)."""
    panels = [flow_to_rgb(motion[None, :2])[0]]  # DeCo-VAE's colour wheel (tokenizer.motion)
    if motion.shape[0] > 2:
        s = motion[2:3].float()
        lo, hi = float(s.min()), float(s.max())
        grey = (s - lo) / (hi - lo) * 2 - 1 if hi > lo else torch.zeros_like(s)
        panels.append(repeat(grey, "1 t h w -> c t h w", c=3))
    return panels


def side_by_side(panels: Sequence[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """Clips ``(C, T_i, H, W_i)`` in [-1, 1] -> one ``(3, T, H, sum W + gaps)`` clip; T = the longest panel."""
    t = max(p.shape[1] for p in panels)
    h = panels[0].shape[2]
    cols = []
    for p in panels:
        if p.shape[2] != h:
            raise ValueError(f"panels must share their height, got {[tuple(q.shape) for q in panels]}")
        p = p.float().cpu()
        if p.shape[0] == 1:
            p = repeat(p, "1 t h w -> c t h w", c=3)
        if p.shape[1] == 1:
            p = repeat(p, "c 1 h w -> c t h w", t=t)  # a single frame (keyframe) held for the clip
        elif p.shape[1] != t:
            raise ValueError(f"panels must have 1 or {t} frames, got {p.shape[1]}")
        cols += [p, torch.ones(3, t, h, gap)]
    return torch.cat(cols[:-1], dim=3)


def stack_rows(rows: Sequence[torch.Tensor], gap: int = 2) -> torch.Tensor:
    """Side-by-side clips ``(3, T, H, W_i)`` (one per sample) stacked vertically, padded white to one width."""
    width = max(r.shape[3] for r in rows)
    parts = []
    for r in rows:
        pad = torch.ones(3, r.shape[1], r.shape[2], width - r.shape[3])
        parts += [torch.cat([r, pad], dim=3), torch.ones(3, r.shape[1], gap, width)]
    return torch.cat(parts[:-1], dim=2)


def write_panels(path: str | Path, samples: Sequence[Sequence[torch.Tensor]], fps: float = 8) -> Path:
    """Write one row of panels per sample (e.g. ``[[input, reconstruction], ...]``) as a gif or an H.264 mp4.

    The format follows the suffix (``.gif``, else mp4); the write is atomic.
    """
    grid = stack_rows([side_by_side(panels) for panels in samples])
    return write_video(path, video_to_uint8(grid), fps=fps)
