"""Reconstruction metrics: PSNR and SSIM against scikit-image on real frames, LPIPS against the lpips package,
batch-size independence, the first-frame / later-frames breakdown, the missing-backbone error, and rFVD."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from pipelines.i3d import RANDOM_LABEL, build_random
from pipelines.metrics import ReconMetrics, load_lpips, psnr_frames, rfvd, ssim_frames
from tokenizer.losses import lpips_backbone_file


@pytest.fixture(scope="module")
def pair(sample_video_paths):
    """carphone pristine vs its codec-distorted copy: real frames with a real compression error, (1, 3, 6, 72, 88)."""
    from tokenizer.data import read_video_frames

    paths = {p.stem: p for p in sample_video_paths}
    frames = [read_video_frames(paths[name], range(6))[:, ::2, ::2] for name in ("carphone_pristine",
                                                                                   "carphone_distorted")]
    return [(f.permute(3, 0, 1, 2).float() / 127.5 - 1)[None] for f in frames]  # t h w c -> 1 c t h w in [-1, 1]


@pytest.fixture(scope="module")
def lpips_random():
    torch.manual_seed(0)
    return load_lpips("alex", random_backbone=True)


def _unit(video: torch.Tensor, t: int) -> np.ndarray:
    return ((video[0, :, t].permute(1, 2, 0).double().numpy() + 1) / 2).clip(0, 1)  # (h, w, c) in [0, 1]


def test_psnr_and_ssim_match_scikit_image(pair):
    x, y = pair
    psnr, ssim = psnr_frames(x, y), ssim_frames(x, y)
    for t in range(x.shape[2]):
        a, b = _unit(x, t), _unit(y, t)
        assert psnr[0, t].item() == pytest.approx(peak_signal_noise_ratio(a, b, data_range=1.0), abs=1e-6)
        ref = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1.0, channel_axis=2)
        assert ssim[0, t].item() == pytest.approx(ref, abs=1e-9)  # float64 SSIM: rounding only
    assert 20 < psnr.mean() < 40 and 0.3 < ssim.mean() < 0.99  # a real, visible compression error


def test_lpips_matches_the_package_frame_by_frame(pair, lpips_random):
    x, y = pair
    metrics = ReconMetrics(lpips_model=lpips_random)
    metrics.update(x, y)
    curve = metrics.compute()["per_frame"]["lpips"]
    with torch.no_grad():
        ref = [lpips_random(x[:, :, t], y[:, :, t]).item() for t in range(x.shape[2])]
    np.testing.assert_allclose(curve, ref, rtol=1e-5, atol=1e-7)


def test_recon_metrics_independent_of_batching_and_first_frame_breakdown(pair, lpips_random):
    x, y = pair
    gen = torch.Generator().manual_seed(0)
    originals = torch.cat([x, x.flip(-1), x.flip(-2)])  # three videos of real frames
    recons = torch.cat([y, (x + 0.05 * torch.randn(x.shape, generator=gen)).flip(-1), y.flip(-2)])
    recons[:, :, 0] += 0.2 * torch.randn(recons[:, :, 0].shape, generator=gen)  # a worse first frame, as causal VAEs
    whole = ReconMetrics(lpips_model=lpips_random)
    whole.update(originals, recons)
    split = ReconMetrics(lpips_model=lpips_random)
    split.update(originals[:1], recons[:1])
    split.update(originals[1:], recons[1:])
    a, b = whole.compute(), split.compute()
    for k in ("psnr", "ssim", "lpips"):
        assert a[k] == pytest.approx(b[k], rel=1e-6)
        np.testing.assert_allclose(a["per_frame"][k], b["per_frame"][k], rtol=1e-6)
    frames = psnr_frames(originals, recons)  # (3, t): the breakdown is plain means of this table
    assert a["psnr"] == pytest.approx(frames.mean().item(), rel=1e-12)
    assert a["first_frame"]["psnr"] == pytest.approx(frames[:, 0].mean().item(), rel=1e-12)
    assert a["later_frames"]["psnr"] == pytest.approx(frames[:, 1:].mean().item(), rel=1e-12)
    assert a["first_frame"]["psnr"] < a["later_frames"]["psnr"] - 3
    assert a["first_frame"]["lpips"] > a["later_frames"]["lpips"]
    assert a["num_videos"] == 3 and a["num_frames"] == 3 * x.shape[2]


def test_videos_of_different_lengths_share_the_per_frame_curve(pair):
    x, y = pair
    metrics = ReconMetrics(lpips=False)
    metrics.update(x, y)
    metrics.update(x[:, :, :2], y[:, :, :2])
    report = metrics.compute()
    psnr = psnr_frames(x, y)[0]
    expected = [psnr[0].item(), psnr[1].item()] + psnr[2:].tolist()  # frames 0 and 1 seen twice, same values
    np.testing.assert_allclose(report["per_frame"]["psnr"], expected, rtol=1e-12)
    assert report["psnr"] == pytest.approx((psnr.sum() + psnr[:2].sum()).item() / 8, rel=1e-12)
    assert "lpips" not in report


def test_missing_lpips_backbone_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))  # an empty torchvision cache
    with pytest.raises(FileNotFoundError) as err:
        ReconMetrics()
    msg = str(err.value)
    name, url = lpips_backbone_file("alex")
    assert name in msg and url in msg and str(tmp_path) in msg and "lpips=false" in msg
    ReconMetrics(lpips=False)  # switched off: no backbone needed


def test_rfvd_streaming_equals_whole_and_separates_reconstructions(pair):
    x, y = pair
    det = build_random()
    originals = torch.cat([x[:, :, :, :64, :64], x[:, :, :, 8:72, 20:84], y[:, :, :, :64, :64]])
    recons = originals.flip(-1)
    whole = rfvd(originals, recons, det, resolution=32, verbose=False)
    metrics = ReconMetrics(lpips=False, fvd_detector=det, fvd_resolution=32)
    metrics.update(originals[:2], recons[:2])
    metrics.update(originals[2:], recons[2:])
    streamed = metrics.compute()["rfvd"]
    assert streamed["value"] == pytest.approx(whole.fvd, rel=1e-5) and streamed["label"] == RANDOM_LABEL
    assert whole.protocol.num_frames == 6 and whole.num_real == whole.num_fake == 3 and whole.fvd > 0
    assert abs(rfvd(originals, originals, det, resolution=32, verbose=False).fvd) < 1e-3 * whole.fvd


def test_bootstrap_intervals_over_clips(pair):
    """The interval is the percentile bootstrap of the frame-weighted mean over clips (checked against a plain loop
    over the same seeded draws), contains the estimate, and collapses when every clip scores the same."""
    x, y = pair
    gen = torch.Generator().manual_seed(1)
    originals = torch.cat([x, x.flip(-1), x.flip(-2), x])
    recons = torch.cat([y, y.flip(-1), (x + 0.1 * torch.randn(x.shape, generator=gen)).flip(-2), x.clamp(-0.9, 0.9)])
    metrics = ReconMetrics(lpips=False, bootstrap=200, bootstrap_seed=3)
    metrics.update(originals[:3], recons[:3])
    metrics.update(originals[3:, :, :4], recons[3:, :, :4])  # a shorter clip: weights are frame counts
    report = metrics.compute()
    per_clip = [psnr_frames(originals[i:i + 1], recons[i:i + 1]) for i in range(3)]
    per_clip.append(psnr_frames(originals[3:, :, :4], recons[3:, :, :4]))
    sums = [c.sum().item() for c in per_clip]
    lengths = [c.shape[1] for c in per_clip]
    draws = np.random.default_rng(3).integers(0, 4, size=(200, 4))
    values = [sum(sums[j] for j in row) / sum(lengths[j] for j in row) for row in draws]
    np.testing.assert_allclose(report["intervals"]["psnr"], np.quantile(values, [0.025, 0.975]), rtol=1e-12)
    lo, hi = report["intervals"]["psnr"]
    assert lo < report["psnr"] < hi and hi - lo > 1.0  # four quite different clips: a wide interval
    same = ReconMetrics(lpips=False, bootstrap=50)
    same.update(torch.cat([x, x]), torch.cat([y, y]))
    lo, hi = same.compute()["intervals"]["ssim"]
    assert hi - lo < 1e-12
