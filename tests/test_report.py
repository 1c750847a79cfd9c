"""The VAE-choice report: rows merged per VAE from the real producers' outputs (VideoVAE.describe, ReconMetrics on
real frames, compute_fvd results, bench_vae rows), "—" for what is missing, random-I3D and incomplete marks, the
PNG plot, and the CLI's early errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.fvd import compute_fvd, get_protocol
from pipelines.i3d import build_random
from pipelines.metrics import ReconMetrics
from pipelines.report import COLUMNS, INCOMPLETE_MARK, MISSING, RANDOM_MARK, collect_rows, main, write_report


@pytest.fixture(scope="module")
def pair(sample_video_paths):
    """carphone pristine vs its codec-distorted copy, (1, 3, 6, 64, 64) in [-1, 1]: a real reconstruction error."""
    from tokenizer.data import read_video_frames

    paths = {p.stem: p for p in sample_video_paths}
    frames = [read_video_frames(paths[n], range(6))[:, :64, :64] for n in ("carphone_pristine", "carphone_distorted")]
    return [(f.permute(3, 0, 1, 2).float() / 127.5 - 1)[None] for f in frames]  # t h w c -> 1 c t h w


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, pair):
    """A folder of producer outputs for two VAEs, plus files the report must ignore."""
    from tokenizer import build_vae

    root = tmp_path_factory.mktemp("report_inputs")
    det = build_random()
    x, y = pair
    recon = {}
    for name, rec in (("plain-tiny", y), ("other-vae", x.flip(-1))):
        m = ReconMetrics(lpips=False, fvd_detector=det, fvd_resolution=32)
        m.update(torch.cat([x, x.flip(-2)]), torch.cat([rec, rec.flip(-2)]))
        recon[name] = m.compute()
        # plain-tiny as eval_recon writes it (metrics nested, clip facts beside), the other one flat
        doc = dict(vae=name, frames=5, resolution=64, lpips_random_backbone=False, metrics=recon[name]) \
            if name == "plain-tiny" else dict(vae=name, **recon[name])
        (root / "eval" / name).mkdir(parents=True)
        (root / "eval" / name / "recon.json").write_text(json.dumps(doc))
    vae = build_vae("plain-tiny")
    (root / "plain-tiny-describe.json").write_text(json.dumps(vae.describe()))
    protocol = get_protocol("fvd16", num_frames=6, resolution=32)
    reals = torch.cat([x, x.flip(-1), x.flip(-2)])
    fakes = torch.cat([y, y.flip(-1), x])
    fvd = compute_fvd(reals, fakes, protocol, det, cache_dir=None, out=None, progress=False, verbose=False)
    (root / "samples").mkdir()
    (root / "samples" / "fvd.json").write_text(json.dumps(dict(kind="latte_fvd", vae="plain-tiny", train_steps=12,
                                                               fvd=fvd.to_dict())))
    (root / "samples" / "000000.json").write_text(json.dumps(dict(kind="sample_video", vae="plain-tiny", seed=1)))
    (root / "config.json").write_text(json.dumps({"lr": 1e-4}))  # names no VAE
    (root / "broken.json").write_text("{not json")
    params = sum(q.numel() for q in vae.parameters())
    bench = [dict(model="plain-tiny", peer=False, frames=17, size=64, compression="4x8x8", latent_channels=4,
                  params_M=params / 1e6, tflops=0.1, encode_s=0.0123, decode_s=0.0456),
             dict(model="cogvideox", peer=True, frames=16, size=64, params_M=215.0, encode_s=1.0, decode_s=2.0)]
    (root / "bench.json").write_text(json.dumps(bench))
    return root, recon, fvd, vae


def _table(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]


def _keep_figures(monkeypatch) -> list:
    """The figures the report draws, kept as pyplot closes them (to hold the PNG against what was drawn)."""
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (figures.append(fig), close(fig))[1])
    return figures


def test_report_one_row_per_vae_from_real_producers(inputs, tmp_path, monkeypatch):
    root, recon, fvd, vae = inputs
    figures = _keep_figures(monkeypatch)
    out = write_report([root], tmp_path / "report")
    rows = {r.vae: r for r in out["rows"]}
    assert set(rows) == {"plain-tiny", "other-vae"}  # peers, sidecars, configs and broken files are not rows
    table = _table(out["markdown"].read_text())
    assert table[0] == list(COLUMNS) and all(len(r) == len(COLUMNS) for r in table)
    cells = {r[0].strip("`"): dict(zip(COLUMNS, r)) for r in table[1:]}
    p = cells["plain-tiny"]
    assert p["PSNR"] == f"{recon['plain-tiny']['psnr']:.2f}" and p["SSIM"] == f"{recon['plain-tiny']['ssim']:.4f}"
    assert p["rFVD"] == f"{recon['plain-tiny']['rfvd']['value']:.1f}{RANDOM_MARK}"
    # a 3-clip FVD under a 2048-clip protocol is both random-I3D and incomplete
    assert p["Latte FVD16"] == f"{fvd.fvd:.1f}{RANDOM_MARK}{INCOMPLETE_MARK}" and p["Latte steps"] == "12"
    assert rows["plain-tiny"].parameters == sum(q.numel() for q in vae.parameters())
    assert p["params (M)"] == f"{rows['plain-tiny'].parameters / 1e6:.2f}"
    assert p["encode (ms/clip)"] == "12.3" and p["decode (ms/clip)"] == "45.6"
    assert p["compression"].startswith("×".join(map(str, vae.compression)))
    # no file states a latent shape: the one of the last clip stated (eval_recon's 5 x 64 x 64), by the preset's rule
    assert p["latent shape"] == "×".join(map(str, vae.latent_shape(5, 64, 64)))
    assert p["LPIPS"] == MISSING  # measured with lpips=False
    o = cells["other-vae"]
    for col in ("params (M)", "latent shape", "compression", "encode (ms/clip)", "Latte FVD16", "Latte steps"):
        assert o[col] == MISSING, col
    assert float(o["PSNR"]) < float(p["PSNR"])  # a mirrored clip is a worse reconstruction than the codec copy
    assert "RANDOM-INIT I3D" in out["markdown"].read_text()
    assert out["not_plotted"] == ["other-vae"]
    # the plot: FVD16 against rFVD, one labelled point per VAE that has both, the others named in the caption
    import matplotlib.colors
    from PIL import Image

    (fig,) = figures
    (ax,) = fig.axes
    shown = rows["plain-tiny"]
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[shown.rfvd, shown.fvd16]]
    assert [a.get_text() for a in ax.texts] == [f"plain-tiny {RANDOM_MARK}"]
    assert "other-vae" in fig.texts[0].get_text()
    with Image.open(out["png"]) as im:  # the PNG is that figure, whole: its size in inches times its dpi
        assert im.format == "PNG" and im.size == tuple(round(s) for s in fig.get_size_inches() * fig.dpi)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # ... with the point where the axes put it: a ring of C0 (hollow: random-init I3D), nothing else in C0
    x, y = ax.transData.transform((shown.rfvd, shown.fvd16))  # pixels from the bottom left
    col, row = round(x), rgb.shape[0] - round(y)
    c0 = np.abs(rgb - np.array(matplotlib.colors.to_rgb("C0")) * 255).sum(-1) < 30
    ring = c0[row - 8:row + 9, col - 8:col + 9]
    assert ring.sum() > 10 and ring.sum() == c0.sum() and not c0[row, col]
    assert [r["vae"] for r in json.loads(out["json"].read_text())] == [r.vae for r in out["rows"]]


def test_flags_travel_with_their_numbers(tmp_path):
    """A later non-random rFVD replaces an earlier random one and clears its mark; None never erases a number."""
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(dict(vae="v", psnr=30.0, rfvd=dict(value=90.0, label="RANDOM", detector={}))))
    b.write_text(json.dumps(dict(vae="v", ssim=0.9, rfvd=dict(value=40.0, label=None,
                                                              detector=dict(random_init=False)))))
    (row,) = collect_rows([a, b])
    assert (row.psnr, row.ssim, row.rfvd, row.rfvd_random) == (30.0, 0.9, 40.0, False)
    (row,) = collect_rows([b, a])
    assert (row.rfvd, row.rfvd_random) == (90.0, True)


def test_cli_errors_and_output(inputs, tmp_path, capsys):
    root = inputs[0]
    assert main([str(tmp_path / "nope")]) == 2 and "not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    assert "no report inputs" in capsys.readouterr().err
    assert main([str(root / "eval"), str(root / "samples"), "--out", str(tmp_path / "r")]) == 0
    assert "| `plain-tiny` |" in capsys.readouterr().out and (tmp_path / "r" / "vae_report.png").is_file()
    assert np.isfinite(collect_rows([root / "samples"])[0].fvd16)
