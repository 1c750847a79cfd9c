"""Reconstruction samples a run writes every N steps: labelled panels side by side in one gif or mp4, and the
same as a still contact sheet (a few frames of it, side by side) for the trackers and for pipelines/sample.py.

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
from PIL import Image, ImageDraw, ImageFont

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


LABEL_HEIGHT = 12  # px of a label strip (PIL's default bitmap font is 11 px high)


def text_strip(texts: Sequence[str], widths: Sequence[int], gap: int = 2) -> torch.Tensor:
    """A white ``(3, LABEL_HEIGHT, sum widths + gaps)`` strip in [-1, 1] with ``texts[i]`` in black at the left of
    column i (cut at the column's edge)."""
    width = sum(widths) + gap * (len(widths) - 1)
    strip = Image.new("RGB", (width, LABEL_HEIGHT), "white")
    font = ImageFont.load_default()
    x = 0
    for text, w in zip(texts, widths):
        column = Image.new("RGB", (w, LABEL_HEIGHT), "white")
        ImageDraw.Draw(column).text((1, 0), text, fill="black", font=font)
        strip.paste(column, (x, 0))
        x += w + gap
    return torch.from_numpy(np.array(strip)).permute(2, 0, 1).float() / 127.5 - 1  # 3 h w


def labelled_row(panels: Sequence[torch.Tensor], labels: Sequence[str] | None, gap: int = 2) -> torch.Tensor:
    """:func:`side_by_side` with a label strip above each panel (held for every frame)."""
    row = side_by_side(panels, gap)
    if not labels:
        return row
    if len(labels) != len(panels):
        raise ValueError(f"{len(labels)} labels for {len(panels)} panels")
    strip = text_strip(labels, [p.shape[3] for p in panels], gap)
    return torch.cat([repeat(strip, "c h w -> c t h w", t=row.shape[1]), row], dim=2)


def write_panels(path: str | Path, samples: Sequence[Sequence[torch.Tensor]], fps: float = 8,
                 labels: Sequence[Sequence[str]] | None = None) -> Path:
    """Write one row of panels per sample (e.g. ``[[input, reconstruction], ...]``) as a gif or an H.264 mp4,
    each panel under its label (``labels[i][j]`` for panel j of sample i).

    The format follows the suffix (``.gif``, else mp4); the write is atomic.
    """
    grid = panel_grid(samples, labels)
    return write_video(path, video_to_uint8(grid), fps=fps)


def panel_grid(samples: Sequence[Sequence[torch.Tensor]],
               labels: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
    """The ``(3, T, H, W)`` clip :func:`write_panels` writes."""
    return stack_rows([labelled_row(panels, labels[i] if labels else None) for i, panels in enumerate(samples)])


def contact_sheet(videos: Sequence[torch.Tensor], labels: Sequence[str], num_frames: int = 4,
                  gap: int = 2) -> np.ndarray:
    """A still ``(H, W, 3)`` uint8 picture: one row per video ``(3, T, H, W)`` in [-1, 1], its label above it,
    ``num_frames`` evenly spaced frames (each titled with its index) side by side."""
    rows = []
    for video, label in zip(videos, labels):
        t = video.shape[1]
        idx = sorted({round(i * (t - 1) / max(num_frames - 1, 1)) for i in range(min(num_frames, t))})
        frames = [video[:, i:i + 1].float().cpu() for i in idx]
        row = labelled_row(frames, [f"frame {i}" for i in idx], gap)[:, 0]  # 3 h w
        title = text_strip([label], [row.shape[2]], gap)
        rows.append(torch.cat([title, row], dim=1)[:, None])  # 3 1 h w
    sheet = stack_rows(rows, gap)[:, 0]  # 3 H W
    return rearrange(video_to_uint8(sheet[:, None]), "1 h w c -> h w c").numpy()


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """An ``(H, W, 3)`` uint8 picture as a PNG, atomically."""
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return Path(path)
