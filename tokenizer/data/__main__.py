"""Load every clip of a data config and report: ``python -m tokenizer.data --config FILE [key=value ...]``.

Prints the resolved config, reads all clips through a DataLoader (with a progress bar), then prints videos found,
clips, clip shape, value range, skipped files with reasons and clips per second. Exit status 1 on a config or
dataset error (the message names the key / root and the expected layout).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..config import ConfigError, print_config
from .config import load_data_config
from .dataset import build_dataset
from .layouts import DatasetError
from .workers import loader_workers


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tokenizer.data", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/data/*.yaml")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-clips", type=int, default=None, help="stop after this many clips")
    args = parser.parse_args(argv)
    if args.workers < 0 or args.batch_size < 1:
        parser.error("--workers must be >= 0 and --batch-size >= 1")
    try:
        cfg = load_data_config(args.config, args.overrides)
        print_config(cfg, title=f"data config ({args.config})", file=sys.stdout)
        ds = build_dataset(cfg)
    except (ConfigError, DatasetError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    torch.set_num_threads(1)  # workers decode in parallel; one intra-op thread each avoids oversubscription
    loader = DataLoader(ds, batch_size=args.batch_size, num_workers=loader_workers(args.workers), shuffle=False)
    total = len(ds) if args.max_clips is None else min(len(ds), args.max_clips)
    n, lo, hi, shape, labels = 0, float("inf"), float("-inf"), None, {}
    t0 = time.perf_counter()
    with tqdm(total=total, unit="clip", file=sys.stdout) as bar:
        for batch in loader:
            video = batch["video"]  # (b, c, t, h, w)
            ds.note_read_errors(batch)
            shape = tuple(video.shape[1:])
            lo, hi = min(lo, video.min().item()), max(hi, video.max().item())
            for label in batch["label"].tolist():
                labels[label] = labels.get(label, 0) + 1
            n += video.shape[0]
            bar.update(video.shape[0])
            if n >= total:
                break
    elapsed = time.perf_counter() - t0
    print(ds.report())
    print(f"  clips read: {n}, clip shape (C, T, H, W): {shape}, value range: [{lo:.3f}, {hi:.3f}]")
    if ds.num_classes:
        print(f"  clips per label: {dict(sorted(labels.items()))}")
    print(f"  speed: {n / elapsed:.2f} clips/s ({args.workers} workers, batch {args.batch_size}, {elapsed:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
