"""The ablation study in its CI setting (``python -m pipelines.study --quick``): every variant of
configs/study/study.yaml trained by the toolkit's own trainer, scored on held-out clips, reported, and resumable."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.study import QUICK
from tokenizer.config import load_config

ROOT = Path(__file__).resolve().parents[1]
STEPS = int(next(o for o in QUICK if o.startswith("steps=")).split("=")[1])


def _study(out, *args):
    cmd = [sys.executable, "-m", "pipelines.study", "--quick", "--no-progress", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    done = _study(out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _spec():
    from pipelines.study.spec import StudyConfig, validate

    return load_config(StudyConfig, ROOT / "configs" / "study" / "study.yaml", QUICK, validate=validate)


def test_every_variant_is_an_ordinary_run_folder_with_its_switches(quick):
    spec = _spec()
    for v in spec.variants:
        for seed in spec.seeds:
            run = quick / "runs" / f"{v.name}-s{seed}"
            assert (run / "latest").read_text().strip() == f"step-{STEPS:06d}"
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            assert cfg["train"]["seed"] == seed and cfg["train"]["max_steps"] == STEPS
            assert cfg["data"]["time_range"] == [0.0, 0.75]  # trains on the early part of each video only
            if v.start == "image_vae":  # the study's own image VAE, a diffusers folder, through model.init_from
                assert Path(cfg["model"]["init_from"]) == quick / f"image-vae-s{seed}"
                assert (quick / f"image-vae-s{seed}" / "config.json").is_file()
            if v.start == "motion":
                assert Path(cfg["model"]["init_from_run"]).name.startswith("motion-")
            assert bool(cfg["phases"]) == v.decoupled_adaptation
    notdc = yaml.safe_load((quick / "runs" / "vcvae-notdc-s0" / "config.yaml").read_text())
    assert notdc["model"]["config"] == {"tdc": False}
    padcopy = yaml.safe_load((quick / "runs" / "vcvae-padcopy-s0" / "config.yaml").read_text())
    assert padcopy["model"]["config"] == {"group_end_pad": "replicate"}
    from diffusers import AutoencoderKL

    image = AutoencoderKL.from_pretrained(quick / "image-vae-s0")
    assert not image.config.use_quant_conv and list(image.config.block_out_channels) == [8, 16, 16, 16]


def test_report_numbers_are_the_runs_held_out_numbers(quick):
    """study.json's rows are the seeds' last-checkpoint numbers; one of them recomputed here from the EMA weights on
    clips cut from the last quarter of each video, which no training clip touches."""
    from pipelines.metrics import psnr_frames
    from tokenizer import load_vae
    from tokenizer.data import build_dataset, load_data_config

    spec = _spec()
    result = json.loads((quick / "study.json").read_text())
    md = (quick / "study.md").read_text()
    assert [t["title"] for t in result["tables"]] == [t.title for t in spec.tables]
    for table, t in zip(spec.tables, result["tables"]):
        assert f"## {table.title}" in md
        for row, got in zip(table.rows, t["rows"]):
            assert got["variant"] == row.variant and got["paper"] == row.paper
            if row.paper is not None:
                assert f"{row.paper:.2f}" in md
            finals = [max(r["checkpoints"].values(), key=lambda c: c["step"]) for r in result["runs"][row.variant]]
            per = [f["per_frame"][0] if table.metric == "psnr_first" else f["psnr"] for f in finals]
            assert got["seeds"] == pytest.approx(per) and got["mean"] == pytest.approx(sum(per) / len(per))
            assert len(per) == len(spec.seeds)
        assert all("direction" in r for r in t["rows"][1:])
    for line in md.splitlines():  # every table row has its 6 cells (a label's own '|' is escaped)
        if line.startswith("| ") and "`" in line:
            assert len(line.replace("\\|", "").split("|")) == 8, line
    assert (quick / "study.png").stat().st_size > 10_000
    # recompute vcvae-image, seed 1, from its weights and freshly cut held-out clips
    run = quick / "runs" / "vcvae-image-s1"
    cfg = yaml.safe_load((run / "config.yaml").read_text())["data"]
    test = load_data_config(None, [f"{k}={json.dumps(v)}" for k, v in cfg.items() if k in ("num_frames", "resolution",
                                                                                              "frame_interval")]
                            + ["time_range=[0.75, 1.0]", "clips_per_video=1", "offset=start"])
    train = load_data_config(None, [f"num_frames={cfg['num_frames']}", f"frame_interval={cfg['frame_interval']}",
                                    "time_range=[0.0, 0.75]", f"clips_per_video={cfg['clips_per_video']}",
                                    "offset=start"])
    test_ds, train_ds = build_dataset(test), build_dataset(train)
    for v in range(len(test_ds.videos)):  # per video, every test frame comes after every training frame
        last_train = max(train_ds.clip_frames(i)[2][-1] for i in range(len(train_ds)) if
                         i // train.clips_per_video == v)
        assert test_ds.clip_frames(v)[2][0] > last_train
    clips = torch.stack([test_ds[i]["video"] for i in range(len(test_ds))])
    vae = load_vae(run)
    with torch.no_grad():
        recon = vae.decode(vae.encode(clips).mode()).clamp(-1, 1)
    ours = psnr_frames(clips, recon).mean().item()
    final = max(result["runs"]["vcvae-image"][1]["checkpoints"].values(), key=lambda c: c["step"])
    assert final["psnr"] == pytest.approx(ours, abs=1e-4)


def test_rerun_skips_finished_runs_and_resumes_a_killed_one(quick, tmp_path):
    """Re-running the same command trains nothing; a run cut back to its middle checkpoint (as a kill leaves it)
    resumes there through the trainer's own resume and ends with the same weights as uninterrupted."""
    out = tmp_path / "copy"
    shutil.copytree(quick, out)
    again = _study(out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "training to step" not in again.stdout and "resuming" not in again.stdout
    assert again.stdout.count("finished earlier") >= len(_spec().variants) * 2
    run = out / "runs" / "plain-s1"
    want = (run / f"step-{STEPS:06d}" / "ema.safetensors").read_bytes()
    shutil.rmtree(run / f"step-{STEPS:06d}")
    (run / "latest").write_text(f"step-{STEPS // 2:06d}\n")
    resumed = _study(out, "--only", "plain")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"plain-s1: resuming from step-{STEPS // 2:06d}" in resumed.stdout
    assert "plain-s0: finished earlier" in resumed.stdout
    assert (run / f"step-{STEPS:06d}" / "ema.safetensors").read_bytes() == want


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bad = _study(tmp_path / "x", "--only", "no-such-variant")
    assert bad.returncode == 2 and "unknown variant" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    bad = _study(tmp_path / "x", "stepz=3")
    assert bad.returncode == 2 and "stepz" in bad.stderr
    for key, value in (("latent_channels", "0"), ("block_out_channels", "[8,15,16,16]"), ("random_crop_min", "0")):
        bad = _study(tmp_path / "x", f"image_vae.{key}={value}")  # the image VAE's spec, named as it was written
        assert bad.returncode == 2 and f"image_vae.{key}=" in bad.stderr, bad.stderr
    assert not (tmp_path / "x").exists()


def test_direction_verdicts_and_table_rows_from_records():
    """The verdict compares the gap of the means with the seeds' combined spread; rows are last-checkpoint means
    and sample standard deviations over seeds (numbers made by hand here, checked against statistics)."""
    import statistics

    from pipelines.study.report import table_rows, verdict
    from pipelines.study.spec import StudyConfig, Table, TableRow, Variant

    assert verdict((20.0, 0.1), (21.0, 0.1)) == "holds"
    assert verdict((20.0, 0.3), (20.6, 0.4)) == "holds"  # spread = hypot(0.3, 0.4) = 0.5 < 0.6
    assert verdict((20.0, 1.0), (20.5, 1.0)) == "holds within seed spread"
    assert verdict((21.0, 0.1), (20.0, 0.1)) == "does not hold"
    assert verdict((20.5, 1.0), (20.0, 1.0)) == "does not hold (within seed spread)"

    def rec(*curve):  # checkpoints at steps 10, 20, ... with per-frame PSNR [v, v + 1]
        return {"checkpoints": {f"step-{10 * (i + 1):06d}": {"step": 10 * (i + 1), "per_frame": [v, v + 1.0],
                                                             "psnr": v + 0.5} for i, v in enumerate(curve)},
                "wall_s": 5.0}

    study = StudyConfig(variants=[Variant(name="a"), Variant(name="b")])
    records = {"a": [rec(10.0, 12.0), rec(11.0, 14.0)], "b": [rec(12.0, 13.0), rec(13.5, 16.0)]}
    rows = table_rows(study, Table(title="t", rows=[TableRow("a", 1.0), TableRow("b", 2.0)]), records)
    assert rows[0]["seeds"] == [12.5, 14.5] and rows[1]["seeds"] == [13.5, 16.5]
    assert rows[1]["std"] == pytest.approx(statistics.stdev([13.5, 16.5]))
    assert rows[1]["direction"] == "holds within seed spread"
    assert rows[1]["steps_to_first_row_final"] == 20  # b's mean curve (13.25, 15.5) passes a's final 13.5 at 20
    first = table_rows(study, Table(title="t", metric="psnr_first", rows=[TableRow("a"), TableRow("b")]), records)
    assert first[0]["seeds"] == [12.0, 14.0] and first[1]["mean"] == pytest.approx(14.5)
    # a table without a paper's claim (the group-end padding choice) reports the gap, not a verdict
    open_question = table_rows(study, Table(title="t", claim=False, rows=[TableRow("a"), TableRow("b")]), records)
    assert open_question[1]["direction"] == "+1.50 dB vs row above (within seed spread)"


def test_study_title_says_quick_full_or_what_was_reduced():
    from argparse import Namespace

    from pipelines.study import study_mode

    plain = dict(quick=False, overrides=[], recipe_set=[], only=None)
    assert study_mode(Namespace(**plain)) == "full"
    assert study_mode(Namespace(**{**plain, "quick": True})).startswith("quick")
    reduced = study_mode(Namespace(**{**plain, "overrides": ["steps=120"], "only": ["plain", "deco-da"]}))
    assert reduced == "reduced (steps=120, --only plain deco-da)"


def test_image_vae_command_trains_a_folder_vcvae_inflates_from(tmp_path):
    """``python -m pipelines.study.image_vae`` (the demo's VC-VAE initialiser): a diffusers folder whose latent
    normalisation VC-VAE adopts through ``init_from``; a finished folder is reused; a bad step count is exit 2."""
    out = tmp_path / "image-vae"
    cmd = [sys.executable, "-m", "pipelines.study.image_vae", "--out", str(out), "--steps", "3",
           "data.clips_per_video=1", "data.resolution=32"]
    first = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    assert "32 training frames at 32 px, 3 steps" in first.stdout  # 4 videos x 1 clip x 8 frames
    info = json.loads((out / "study.json").read_text())
    from tokenizer import build_vae

    vae = build_vae("vcvae-tiny", init_from=out)
    assert vae.config.scaling_factor == pytest.approx(info["scaling_factor"])
    stamp = (out / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    assert (out / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    bad = subprocess.run([*cmd[:6], "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--steps 0" in bad.stderr
    crops = subprocess.run([*cmd[:4], str(tmp_path / "aug"), *cmd[5:], "--random-crop-min", "0.5"], cwd=ROOT,
                           check=True, capture_output=True, text=True)
    assert "random crops of [0.5, 1] x the side of 96 px frames, mirrored" in crops.stdout
    assert build_vae("vcvae-tiny", init_from=tmp_path / "aug").config.scaling_factor > 0
    # another spec in the same folder (the demo's: 5 latent channels, doubled widths) trains it again, and DeCo-VAE
    # at those widths inflates from it
    wide = ["--latent-channels", "5", "--block-out-channels", "16,32,32,32"]
    subprocess.run([*cmd, *wide], cwd=ROOT, check=True, capture_output=True, text=True)
    assert (out / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns != stamp
    spec = json.loads((out / "study.json").read_text())["spec"]
    assert spec["latent_channels"] == 5 and spec["block_out_channels"] == [16, 32, 32, 32]
    deco = build_vae("deco-compact-tiny", init_from=out, block_out_channels=[16, 32, 32, 32])
    assert deco.enc_m.conv_out.weight.shape[0] == 10
    bad = subprocess.run([*cmd, "--block-out-channels", "16,31,32,32"], cwd=ROOT, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "--block-out-channels" in bad.stderr


def test_random_crops_are_crops_of_the_frames():
    """The image VAE's augmentation: with min_side 1 a crop is the whole frame resized (or mirrored); every crop of
    a frame whose left half is -1 and right half +1 keeps that order, or its mirror image."""
    from pipelines.study.image_vae import random_crops

    frames = torch.cat([-torch.ones(1, 3, 12, 6), torch.ones(1, 3, 12, 6)], dim=-1)  # 1 3 12 12
    whole = random_crops(frames, 8, 6, 1.0, torch.Generator().manual_seed(0))
    import torch.nn.functional as F

    resized = F.interpolate(frames, size=(6, 6), mode="bilinear", antialias=True, align_corners=False)
    for crop in whole:
        assert torch.allclose(crop, resized[0]) or torch.allclose(crop, resized[0].flip(-1))
    crops = random_crops(frames, 32, 6, 0.5, torch.Generator().manual_seed(1))
    assert crops.shape == (32, 3, 6, 6) and crops.abs().max() <= 1
    rows = crops[:, 0, 0]  # (32, 6): each crop's top row
    rising, falling = (rows.diff(dim=1) >= -1e-6).all(1), (rows.diff(dim=1) <= 1e-6).all(1)
    assert (rising | falling).all()  # a crop of the frame keeps its halves in order, or mirrored
    assert (rising & ~falling).any() and (falling & ~rising).any()  # both orientations occur
    # on a horizontal ramp a crop's smallest value is where its left edge sits: the offsets vary, not only the sizes
    ramp = torch.linspace(-1, 1, 12).expand(1, 3, 12, 12)
    starts = random_crops(ramp, 32, 6, 0.5, torch.Generator().manual_seed(2)).amin(dim=(1, 2, 3))
    assert float(starts.max() - starts.min()) > 0.4  # a fixed top-left corner gives < 0.1
