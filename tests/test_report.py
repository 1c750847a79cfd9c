"""The VAE-choice report: rows merged per VAE from the real producers' outputs (VideoVAE.describe, ReconMetrics on
real frames, compute_fvd results, bench_vae rows), "—" for what is missing, random-I3D and incomplete marks, one
table per FVD protocol (or a refusal naming the differences), bootstrap intervals and seed spreads, the PNG plot,
and the CLI's early errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipelines.fvd import compute_fvd, get_protocol
from pipelines.i3d import build_random
from pipelines.metrics import ReconMetrics
from pipelines.report import (GEN_COLUMNS, INCOMPLETE_MARK, LATENT_MARK, MISSING, RANDOM_MARK, RECON_COLUMNS,
                              ProtocolMismatch, collect, collect_rows, main, write_report)


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


def _tables(text: str) -> list[list[list[str]]]:
    """Every markdown table of the text: rows of cells, the header first."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|---"):
            continue  # the header rule
        if line.startswith("| "):
            if current is None:
                current = []
                tables.append(current)
            current.append([c.strip() for c in line.strip("|").split("|")])
        else:
            current = None
    return tables


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
    recon_t, gen_t = _tables(out["markdown"].read_text())
    header = list(RECON_COLUMNS) + ["rFVD6"]  # one rFVD protocol: one column, named by its clip length
    assert recon_t[0] == header and all(len(r) == len(header) for r in recon_t)
    cells = {r[0].strip("`"): dict(zip(header, r)) for r in recon_t[1:]}
    p = cells["plain-tiny"]
    ci = recon["plain-tiny"]["intervals"]
    assert p["PSNR"] == f"{recon['plain-tiny']['psnr']:.2f} [{ci['psnr'][0]:.2f}, {ci['psnr'][1]:.2f}]"
    assert p["SSIM"].startswith(f"{recon['plain-tiny']['ssim']:.4f} [")
    assert p["rFVD6"] == f"{recon['plain-tiny']['rfvd']['value']:.1f}{RANDOM_MARK}"
    # the generation table: its FVD column named from the protocol (6 frames, not "FVD16")
    gen_header = [c.format(fvd=f"FVD6 ({fvd.protocol.name})") for c in GEN_COLUMNS]
    assert gen_t[0] == gen_header and len(gen_t) == 2
    g = dict(zip(gen_header, gen_t[1]))
    # a 3-clip FVD under a 2048-clip protocol is both random-I3D and incomplete
    assert g[gen_header[3]] == f"{fvd.fvd:.1f}{RANDOM_MARK}{INCOMPLETE_MARK}" and g["Latte steps"] == "12"
    assert g["VAE"] == "`plain-tiny`" and g["compression"] == p["compression"]
    assert rows["plain-tiny"].parameters == sum(q.numel() for q in vae.parameters())
    assert p["params (M)"] == f"{rows['plain-tiny'].parameters / 1e6:.2f}"
    assert p["encode (ms/clip)"] == "12.3" and p["decode (ms/clip)"] == "45.6"
    assert p["compression"].startswith("×".join(map(str, vae.compression)))
    # no file states a latent shape: the one of the last clip stated (eval_recon's 5 x 64 x 64), by the preset's rule
    assert p["latent shape"] == "×".join(map(str, vae.latent_shape(5, 64, 64)))
    assert p["LPIPS"] == MISSING  # measured with lpips=False
    o = cells["other-vae"]
    for col in ("params (M)", "latent shape", "compression", "encode (ms/clip)"):
        assert o[col] == MISSING, col
    # a mirrored clip is a worse reconstruction than the codec copy
    assert float(o["PSNR"].split()[0]) < float(p["PSNR"].split()[0])
    assert "RANDOM-INIT I3D" in out["markdown"].read_text()
    assert out["not_plotted"] == ["other-vae"]
    # the plot: FVD16 against rFVD, one labelled point per VAE that has both, the others named in the caption
    import matplotlib.colors
    from PIL import Image

    (fig,) = figures
    (ax,) = fig.axes
    shown = rows["plain-tiny"]
    (points,) = ax.collections
    assert points.get_offsets().tolist() == [[shown.rfvd, fvd.fvd]]
    assert [a.get_text() for a in ax.texts] == [f"plain-tiny {RANDOM_MARK}"]
    assert "other-vae" in fig.texts[0].get_text()
    with Image.open(out["png"]) as im:  # the PNG is that figure, whole: its size in inches times its dpi
        assert im.format == "PNG" and im.size == tuple(round(s) for s in fig.get_size_inches() * fig.dpi)
        rgb = np.asarray(im.convert("RGB")).astype(int)
    # ... with the point where the axes put it: a ring of C0 (hollow: random-init I3D), nothing else in C0
    x, y = ax.transData.transform((shown.rfvd, fvd.fvd))  # pixels from the bottom left
    col, row = round(x), rgb.shape[0] - round(y)
    c0 = np.abs(rgb - np.array(matplotlib.colors.to_rgb("C0")) * 255).sum(-1) < 30
    ring = c0[row - 8:row + 9, col - 8:col + 9]
    assert ring.sum() > 10 and ring.sum() == c0.sum() and not c0[row, col]
    assert [r["vae"] for r in json.loads(out["json"].read_text())] == [r.vae for r in out["rows"]]
    assert json.loads(out["json"].read_text())[0]["fvd_column"] == f"FVD6 ({fvd.protocol.name})"


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
    assert np.isfinite(collect([root / "samples"])[1][0].fvd)


def _fvd_doc(vae: str, result, **extra) -> dict:
    return dict(kind="latte_fvd", vae=vae, fvd=result.to_dict(), **extra)


def test_two_protocols_give_two_tables_or_a_refusal(inputs, pair, tmp_path, capsys):
    """The demo-like FVD (6 frames, random I3D seed 0) and other runs' FVDs under another protocol -- the same
    protocol name with other detector weights, and 5 frames -- never share a column: one table each, named by its
    protocol, listing how it differs from the first; --single-table refuses and names the differences."""
    root, _, fvd, _ = inputs
    x, y = pair
    reals, fakes = torch.cat([x, x.flip(-1), x.flip(-2)]), torch.cat([y, x, y.flip(-1)])
    other_weights = compute_fvd(reals, fakes, fvd.protocol, build_random(seed=1), cache_dir=None, out=None,
                                progress=False, verbose=False)
    shorter = compute_fvd(reals[:, :, :5], fakes[:, :, :5], get_protocol("fvd16", num_frames=5, resolution=32),
                          build_random(), cache_dir=None, out=None, progress=False, verbose=False)
    run2, run3 = tmp_path / "run2", tmp_path / "run3"
    for run, result in ((run2, other_weights), (run3, shorter)):
        run.mkdir()
        (run / "fvd.json").write_text(json.dumps(_fvd_doc("other-vae", result, latent_shape=[8, 2, 4, 4])))
    out = write_report([root, run2, run3], tmp_path / "report")
    text = out["markdown"].read_text()
    _, first, second, third = _tables(text)
    assert first[0][3] == second[0][3] == f"FVD6 ({fvd.protocol.name})"
    assert third[0][3] == f"FVD5 ({shorter.protocol.name})"  # never "FVD16", never the FVD6 column
    assert [r[0] for r in first[1:]] == ["`plain-tiny`"] and [r[0] for r in third[1:]] == ["`other-vae`"]
    assert third[1][3] == f"{shorter.fvd:.1f}{RANDOM_MARK}{INCOMPLETE_MARK}"
    notes = [line for line in text.splitlines() if line.startswith("Not comparable with generation table 1")]
    assert len(notes) == 2 and notes[0].count(":") == 2 and "detector_sha256" in notes[0]  # the only difference
    assert "frames: 6 vs 5" in notes[1]
    with pytest.raises(ProtocolMismatch, match="generation FVD of other-vae vs plain-tiny: detector_sha256"):
        write_report([root, run2], tmp_path / "refused", single_table=True)
    assert not (tmp_path / "refused").exists()  # nothing half-written
    assert main([str(root), str(run3), "--single-table", "--out", str(tmp_path / "r2")]) == 2
    err = capsys.readouterr().err
    assert "different protocols" in err and "frames: 6 vs 5" in err


def test_seed_spread_and_latent_size_note(inputs, pair, tmp_path):
    """FVD over several sample seeds shows mean ± std and the seed count; rows of one protocol that differ in
    latent size are marked and explained."""
    root, _, fvd, _ = inputs
    doc = _fvd_doc("other-vae", fvd, latent_shape=[8, 2, 4, 4], train_steps=3,
                   seeds=dict(seeds=[0, 1, 2], values=[10.0, 12.0, 14.0], mean=12.0, std=2.0))
    run = tmp_path / "seeds"
    run.mkdir()
    (run / "fvd.json").write_text(json.dumps(doc))
    (run / "plain.json").write_text(json.dumps(_fvd_doc("plain-tiny", fvd, latent_shape=[4, 2, 8, 8])))
    rows, gens = collect([run])
    assert len(gens) == 2 and gens[0].fvd == 12.0 and gens[0].fvd_std == 2.0
    text = write_report([run], tmp_path / "report")["text"]
    _, table = _tables(text)
    cells = {r[0]: r for r in table[1:]}
    assert cells["`other-vae`"][3].startswith("12.0 ± 2.0") and cells["`other-vae`"][4] == "3"
    assert cells["`other-vae`"][1] == f"8×2×4×4{LATENT_MARK}"
    assert cells["`plain-tiny`"][1] == f"4×2×8×8{LATENT_MARK}"
    assert "saw latents of different sizes" in text and "standard deviation of the FVD over the sample seeds" in text


def test_an_rfvd_given_as_a_bare_number_is_its_own_column(tmp_path, capsys):
    """The docstring accepts ``rfvd`` as a number (no protocol recorded): the report shows it instead of crashing."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.json").write_text(json.dumps(dict(vae="plain-tiny", psnr=30.0, rfvd=55.5)))
    (tmp_path / "in" / "b.json").write_text(json.dumps(dict(vae="vcvae-tiny", psnr=29.0, rfvd=66.6)))
    assert main([str(tmp_path / "in"), "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "55.5" in out and "66.6" in out
