"""Reconstruction metrics of a video VAE: PSNR, SSIM, LPIPS per frame, first frame vs later frames, and rFVD.

Community conventions (the numbers in the VC-VAE / DeCo-VAE / WF-VAE tables):

- PSNR per frame on [0, 1] (videos clamped to [-1, 1] first), averaged over all frames of all videos; a frame
  reconstructed exactly counts as 100 dB (its MSE is floored at 1e-10) instead of infinity;
- SSIM (Wang et al. 2004) per frame and channel with an 11 x 11 Gaussian window, sigma 1.5, K1 = 0.01,
  K2 = 0.03, data range 1, over the 'valid' window positions, averaged over channels (scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``);
- LPIPS from the ``lpips`` package (AlexNet by default) on frames in [-1, 1]; its backbone weights come from a
  file given by path or torchvision's cache folder (``torch.hub.get_dir()/checkpoints``), never from the network
  at run time;
- rFVD: the FVD between the original clips and their reconstructions (:func:`rfvd`);
- first frame vs later frames (VC-VAE, Fig. 4): causal VAEs code frame 0 on its own and often reconstruct it
  worse; :class:`ReconMetrics` reports frame 0, frames 1.., and the whole per-frame curve;
- uncertainty: a 95% percentile bootstrap interval over clips of PSNR / SSIM / LPIPS (``intervals``; 1000
  resamples, seeded), and of rFVD when asked (``rfvd_bootstrap``: resamples of the stored per-clip features).

:class:`ReconMetrics` is a streaming accumulator: feed it batches of ``(original, reconstruction)`` videos
``(b, c, t, h, w)`` in [-1, 1]; sums are kept per frame index in float64, so the result does not depend on how
the videos were batched, and under torch.distributed (accelerate) :meth:`ReconMetrics.compute` merges all ranks.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from tokenizer.losses import build_lpips

from .fvd import (FVDProtocol, FVDResult, compute_fvd, default_device, dist_info, extract_features, feature_stats,
                  frechet_distance, video_tensor_to_uint8)
from .i3d import I3DDetector, build_detector

PSNR_MSE_FLOOR = 1e-10  # identical frames: 100 dB rather than inf
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def _to_unit(video: torch.Tensor) -> torch.Tensor:
    return (video.clamp(-1, 1) + 1) / 2  # [-1, 1] -> [0, 1]


def psnr_frames(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of every frame on [0, 1]: (b, c, t, h, w) x 2 -> (b, t) float64."""
    diff = _to_unit(original.double()) - _to_unit(reconstruction.double())
    mse = diff.square().mean(dim=(1, 3, 4)).clamp_min(PSNR_MSE_FLOOR)  # (b, t)
    return 10 * torch.log10(1.0 / mse)  # peak 1 on [0, 1]


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (size,), the separable SSIM window."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.square() / (2 * sigma ** 2))
    return g / g.sum()


def ssim_frames(original: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """SSIM of every frame (Wang et al. 2004, eq. 13 with a Gaussian window): (b, c, t, h, w) x 2 -> (b, t) float64."""
    b, c, t, h, w = original.shape
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs frames of at least {SSIM_WINDOW} x {SSIM_WINDOW} pixels, got {h} x {w}")
    # float64 throughout: the variances are differences of close numbers (E[x^2] - E[x]^2), which float32 rounds
    # to ~1e-5 of SSIM
    x = rearrange(_to_unit(original.double()), "b c t h w -> (b t c) 1 h w")
    y = rearrange(_to_unit(reconstruction.double()), "b c t h w -> (b t c) 1 h w")
    g = gaussian_window().to(x)
    gh, gw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable Gaussian, 'valid' positions only
        return F.conv2d(F.conv2d(z, gh), gw)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.square()
    var_y = blur(y * y) - mu_y.square()
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.square() + mu_y.square() + c1) * (var_x + var_y + c2))
    per_channel = ssim_map.mean(dim=(1, 2, 3))  # ((b t c),) float64
    return rearrange(per_channel, "(b t c) -> b t c", b=b, t=t).mean(dim=2)  # channel average, as scikit-image


def load_lpips(net: str = "alex", random_backbone: bool = False, device: str | torch.device = "cpu",
               backbone: str | None = None) -> nn.Module:
    """The ``lpips`` package's LPIPS (v0.1 linear heads shipped with the package), built by the same
    :func:`tokenizer.losses.build_lpips` the VAE trainer uses.

    The trunk's ImageNet weights come from ``backbone`` (a torchvision state-dict file) or torchvision's cache; a
    missing file is an error that names it, nothing is downloaded. ``random_backbone=True`` keeps the linear heads
    with a randomly initialised trunk (tests only).
    """
    model = build_lpips(net, backbone, random_backbone,
                        options=("--lpips-backbone", "switch LPIPS off (lpips=false, --no-lpips)"))
    return model.to(device)


@torch.no_grad()
def lpips_frames(model: nn.Module, original: torch.Tensor, reconstruction: torch.Tensor,
                 frames_per_batch: int = 64) -> torch.Tensor:
    """LPIPS of every frame: (b, c, t, h, w) x 2 in [-1, 1] -> (b, t) float64."""
    b, t = original.shape[0], original.shape[2]
    device = next(model.parameters()).device
    x = rearrange(original.clamp(-1, 1), "b c t h w -> (b t) c h w")
    y = rearrange(reconstruction.clamp(-1, 1), "b c t h w -> (b t) c h w")
    out = [model(x[i:i + frames_per_batch].to(device).float(), y[i:i + frames_per_batch].to(device).float())
           for i in range(0, x.shape[0], frames_per_batch)]
    return rearrange(torch.cat(out).double().cpu(), "(b t) 1 1 1 -> b t", b=b, t=t)


def rfvd(originals: torch.Tensor, reconstructions: torch.Tensor, detector: str | I3DDetector = "i3d_pt", *,
         detector_path: str | None = None, batch_size: int = 8, device: str | torch.device | None = None,
         resolution: int = 224, verbose: bool = True) -> FVDResult:
    """rFVD: FVD between original clips and their reconstructions, both (b, c, t, h, w) in [-1, 1].

    Clips are taken as given (no selection); the protocol in the result says how many and how long.
    """
    if originals.shape != reconstructions.shape:
        raise ValueError(f"rFVD needs matching shapes, got {tuple(originals.shape)} and {tuple(reconstructions.shape)}")
    n, t = originals.shape[0], originals.shape[2]
    protocol = FVDProtocol("rfvd", num_real=n, num_fake=n, num_frames=t, resolution=resolution)
    return compute_fvd(originals, reconstructions, protocol, detector, detector_path=detector_path,
                       batch_size=batch_size, device=device, cache_dir=None, out=None, progress=False,
                       verbose=verbose)


def bootstrap_interval(clip_sums: np.ndarray, clip_lengths: np.ndarray, resamples: int = 1000, seed: int = 0,
                       level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval over clips of a frame-weighted mean: clips are drawn with replacement
    (``default_rng(seed)``), each resample's value is sum(clip sums) / sum(clip lengths), as the metric itself."""
    n = len(clip_sums)
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))  # (resamples, n)
    values = clip_sums[idx].sum(axis=1) / clip_lengths[idx].sum(axis=1)
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def rfvd_bootstrap_interval(original: np.ndarray, reconstruction: np.ndarray, resamples: int = 100, seed: int = 0,
                            level: float = 0.95) -> list[float]:
    """Percentile bootstrap interval of rFVD over clips: (original, reconstruction) pairs drawn with replacement.
    Each resample costs a 400 x 400 matrix square root (about 0.1 s)."""
    n = len(original)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        idx = rng.integers(0, n, size=n)
        mu_o, sigma_o = feature_stats(original[idx])
        mu_r, sigma_r = feature_stats(reconstruction[idx])
        values.append(frechet_distance(mu_o, sigma_o, mu_r, sigma_r))
    lo, hi = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _all_gather_objects(obj: Any) -> list[Any]:
    rank, world = dist_info()
    if world == 1:
        return [obj]
    parts: list[Any] = [None] * world
    torch.distributed.all_gather_object(parts, obj)
    return parts


class ReconMetrics:
    """Streaming PSNR / SSIM / LPIPS (and optionally rFVD) over (original, reconstruction) video pairs.

    ``lpips=False`` switches LPIPS off; ``lpips_model`` hands in a built LPIPS (e.g. a random backbone in tests).
    ``fvd_detector`` (a name or an :class:`I3DDetector`) also collects I3D features of both streams for rFVD.
    """

    NAMES = ("psnr", "ssim", "lpips")

    def __init__(self, lpips: bool = True, lpips_net: str = "alex", lpips_model: nn.Module | None = None,
                 fvd_detector: str | I3DDetector | None = None, detector_path: str | None = None,
                 fvd_resolution: int = 224, fvd_batch_size: int = 8, device: str | torch.device | None = None,
                 bootstrap: int = 1000, rfvd_bootstrap: int = 0, bootstrap_seed: int = 0):
        self.device = torch.device(device) if device is not None else default_device()
        self.lpips_model = (lpips_model or load_lpips(lpips_net, device=self.device)) if lpips else None
        if isinstance(fvd_detector, str):
            fvd_detector = build_detector(fvd_detector, detector_path, self.device)
        self.detector = fvd_detector
        self.fvd_resolution, self.fvd_batch_size = fvd_resolution, fvd_batch_size
        self.bootstrap, self.rfvd_bootstrap, self.bootstrap_seed = bootstrap, rfvd_bootstrap, bootstrap_seed
        self.reset()

    def reset(self) -> None:
        self.sums = {k: np.zeros(0) for k in self.NAMES}  # per frame index, float64
        self.clip_sums: dict[str, list[float]] = {k: [] for k in self.NAMES}  # per clip (for the bootstrap)
        self.clip_lengths: list[int] = []
        self.counts = np.zeros(0, dtype=np.int64)  # videos that have a frame at that index
        self.num_videos = 0
        self.features: dict[str, list[np.ndarray]] = {"original": [], "reconstruction": []}
        self.clip_frames: set[int] = set()

    def _add(self, name: str, values: torch.Tensor) -> None:
        self.clip_sums[name] += values.sum(dim=1).tolist()  # (b,) sum over the clip's frames
        per_t = values.sum(dim=0).numpy()  # (t,) float64
        if len(self.sums[name]) < len(per_t):
            self.sums[name] = np.pad(self.sums[name], (0, len(per_t) - len(self.sums[name])))
        self.sums[name][:len(per_t)] += per_t

    @torch.no_grad()
    def update(self, original: torch.Tensor, reconstruction: torch.Tensor) -> None:
        """original, reconstruction: (b, c, t, h, w) in [-1, 1] (reconstructions are clamped)."""
        if original.shape != reconstruction.shape or original.ndim != 5:
            raise ValueError(f"expected two (b, c, t, h, w) videos of one shape, got {tuple(original.shape)} and "
                             f"{tuple(reconstruction.shape)}")
        original, reconstruction = original.detach().to(self.device), reconstruction.detach().to(self.device)
        b, t = original.shape[0], original.shape[2]
        self._add("psnr", psnr_frames(original, reconstruction).cpu())
        self._add("ssim", ssim_frames(original, reconstruction).cpu())
        if self.lpips_model is not None:
            self._add("lpips", lpips_frames(self.lpips_model, original, reconstruction))
        if len(self.counts) < t:
            self.counts = np.pad(self.counts, (0, t - len(self.counts)))
        self.counts[:t] += b
        self.num_videos += b
        self.clip_lengths += [t] * b
        if self.detector is not None:
            self.clip_frames.add(t)
            for key, video in (("original", original), ("reconstruction", reconstruction)):
                self.features[key].append(extract_features(
                    video_tensor_to_uint8(video), self.detector, self.fvd_resolution, self.fvd_batch_size,
                    self.device, progress=False, split_ranks=False))

    def _merged(self) -> tuple[dict, np.ndarray, int, dict]:
        """This rank's state merged with every other rank's (identity on one process)."""
        state = (self.sums, self.counts, self.num_videos,
                 {k: np.concatenate(v) if v else np.zeros((0, 400)) for k, v in self.features.items()},
                 self.clip_sums, self.clip_lengths)
        parts = _all_gather_objects(state)
        length = max(len(p[1]) for p in parts)
        pad = lambda a: np.pad(a, (0, length - len(a)))  # noqa: E731
        sums = {k: sum(pad(p[0][k]) for p in parts) for k in self.NAMES}
        counts = sum(pad(p[1]) for p in parts)
        feats = {k: np.concatenate([p[3][k] for p in parts]) for k in ("original", "reconstruction")}
        self._clips = ({k: np.array([v for p in parts for v in p[4][k]]) for k in self.NAMES},
                       np.array([n for p in parts for n in p[5]]))
        return sums, counts, sum(p[2] for p in parts), feats

    def compute(self) -> dict:
        """Averages over all frames, frame 0, frames 1.., the per-frame curve, and rFVD when features were kept."""
        sums, counts, num_videos, feats = self._merged()
        if num_videos == 0:
            raise ValueError("ReconMetrics.compute() before any update()")
        names = [k for k in self.NAMES if k != "lpips" or self.lpips_model is not None]
        later = counts[1:].sum()
        report: dict[str, Any] = {"num_videos": int(num_videos), "num_frames": int(counts.sum())}
        for k in names:
            report[k] = float(sums[k].sum() / counts.sum())
        report["first_frame"] = {k: float(sums[k][0] / counts[0]) for k in names}
        report["later_frames"] = {k: float(sums[k][1:].sum() / later) if later else None for k in names}
        report["per_frame"] = {k: (sums[k] / np.maximum(counts, 1)).tolist() for k in names}
        clip_sums, lengths = self._clips
        report["intervals"] = {k: bootstrap_interval(clip_sums[k], lengths, self.bootstrap, self.bootstrap_seed)
                               for k in names} if self.bootstrap else {}
        report["rfvd"] = None
        if self.detector is not None:
            mu_o, sigma_o = feature_stats(feats["original"])
            mu_r, sigma_r = feature_stats(feats["reconstruction"])
            report["rfvd"] = dict(value=frechet_distance(mu_o, sigma_o, mu_r, sigma_r),
                                  label=self.detector.info.label, detector=self.detector.info.to_dict(),
                                  num_clips=len(feats["original"]), clip_frames=sorted(self.clip_frames),
                                  resolution=self.fvd_resolution)
            if self.rfvd_bootstrap:
                report["rfvd"]["interval"] = rfvd_bootstrap_interval(feats["original"], feats["reconstruction"],
                                                                     self.rfvd_bootstrap, self.bootstrap_seed)
        return report
