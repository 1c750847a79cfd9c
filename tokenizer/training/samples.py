"""Reconstruction samples a run writes every N steps: panels side by side in one gif or mp4.

A panel is a ``(C, T, H, W)`` clip in [-1, 1]; motion fields (flow x, flow y[, scale]) are drawn with torchvision's
optical-flow colour wheel (``flow_to_image``: hue = direction, saturation = magnitude, white = no motion) on a
fixed scale (``max_flow`` pixels = full saturation, so a near-zero flow stays white), and their scale channel, if
any, as grey on the fixed range [0, 5] levels. Panels of one frame (a keyframe) are held for the whole clip.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from einops import rearrange, repeat

from ..data.video_io import video_to_uint8, write_video
from ..motion import flow_norm_to_px


def flow_picture(motion: torch.Tensor, max_flow: float = 8.0) -> torch.Tensor:
    """Flow (b 2 h w), normalised units -> (b 3 h w) in [-1, 1]: torchvision's colour wheel, fixed scale.

    ``flow_to_image`` divides by the largest magnitude of each picture; one extra column holding a vector of
    ``max_flow`` pixels (cut off afterwards) pins that scale, and larger flows are clipped to it.
    """
    from torchvision.utils import flow_to_image

    px = flow_norm_to_px(motion.float())
    mag = px.norm(dim=1, keepdim=True)
    px = px * (max_flow / mag.clamp_min(max_flow))  # clip to the scale
    ref = torch.zeros_like(px[..., :1])
    ref[:, 0] = max_flow
    img = flow_to_image(torch.cat([px, ref], dim=-1))[..., :-1]  # b 3 h w uint8
    return img.float() / 127.5 - 1


def motion_panels(motion: torch.Tensor, max_flow: float = 8.0, max_scale: float = 5.0) -> list[torch.Tensor]:
    """A motion field ``(2 or 3, T, H, W)`` -> [flow picture, scale picture (if 3 channels)], each (3, T, H, W)."""
    flow = rearrange(flow_picture(rearrange(motion[:2], "m t h w -> t m h w"), max_flow), "t c h w -> c t h w")
    panels = [flow]
    if motion.shape[0] > 2:
        grey = (motion[2:3].float() / max_scale).clamp(0, 1) * 2 - 1  # 0 levels black, max_scale white
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


LABEL_HEIGHT = 12  # px of the label strip above the panels


def label_strip(labels: Sequence[str], widths: Sequence[int], t: int, gap: int = 2) -> torch.Tensor:
    """A white ``(3, T, LABEL_HEIGHT, sum widths + gaps)`` strip with each label (PIL's default font, black) above
    its panel column; a label wider than its panel is cut."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), LABEL_HEIGHT), "white")
    draw, x = ImageDraw.Draw(img), 0
    for text, w in zip(labels, widths):
        cell = Image.new("RGB", (w, LABEL_HEIGHT), "white")
        ImageDraw.Draw(cell).text((1, 0), text, fill="black")
        img.paste(cell, (x, 0))
        x += w + gap
    del draw
    strip = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 127.5 - 1  # 3 h w
    return repeat(strip, "c h w -> c t h w", t=t)


def write_panels(path: str | Path, samples: Sequence[Sequence[torch.Tensor]], fps: float = 8,
                 labels: Sequence[str] | None = None) -> Path:
    """Write one row of panels per sample (e.g. ``[[input, reconstruction], ...]``) as a gif or an H.264 mp4;
    ``labels`` (one per panel of a row) are written in a strip above the first row.

    The format follows the suffix (``.gif``, else mp4); the write is atomic.
    """
    grid = stack_rows([side_by_side(panels) for panels in samples])
    if labels is not None:
        if len(labels) != len(samples[0]):
            raise ValueError(f"{len(labels)} labels for {len(samples[0])} panels per row")
        strip = label_strip(labels, [p.shape[-1] for p in samples[0]], grid.shape[1])
        pad = torch.ones(3, grid.shape[1], LABEL_HEIGHT, grid.shape[3] - strip.shape[3])
        grid = torch.cat([torch.cat([strip, pad], dim=3), grid], dim=2)
    return write_video(path, video_to_uint8(grid), fps=fps)
