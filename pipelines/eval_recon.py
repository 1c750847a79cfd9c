"""Reconstruction quality of a video VAE on a dataset's clips: PSNR, SSIM, LPIPS, rFVD (Table-1 style).

    python pipelines/eval_recon.py --vae deco --ckpt runs/deco-phase2 --data configs/data/ucf101.yaml root=/data/UCF-101
    accelerate launch pipelines/eval_recon.py --vae vcvae --ckpt runs/vcvae-stage2 --data ... (clips split by rank)

Clips follow the VAE's frame rule at the papers' size: 17 x 256 x 256 for causal VAEs (1 + 4k frames: plain,
DeCo-VAE), 16 x 256 x 256 for in-sequence ones (VC-VAE); ``--frames`` / ``--resolution`` change that. Each clip
is encoded to its posterior mode and decoded. The VAE and the metric networks see one clip at a time (batched
convolutions round differently with the batch size) and metrics are accumulated per clip and frame in float64
(:class:`pipelines.metrics.ReconMetrics`), so ``--batch-size`` (clips per data-loading batch) does not change
the numbers, bit for bit.

Writes ``recon.json`` (every number, per-frame curves, first frame vs later frames, what produced them) and
``recon.md`` (a Table-1-style row and the frame breakdown) into ``--out``, atomically.
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    # Run as a file: keep this folder's modules (fvd, metrics, ...) from shadowing top-level names, and make the
    # repository root importable.
    _here = os.path.dirname(os.path.abspath(__file__))
    sys.path = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(_here))

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import torch  # noqa: E402

from tokenizer.config import ConfigError, print_config, to_dict  # noqa: E402
from tokenizer.data import build_dataset, load_data_config  # noqa: E402
from tokenizer.data.workers import loader_workers  # noqa: E402
from tokenizer.io import write_json, write_text  # noqa: E402

DETECTOR_CHOICES = ("i3d_pt", "i3d_torchscript", "random", "none")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", required=True, help="registry name of the VAE (plain, deco, vcvae, ..., *-tiny)")
    p.add_argument("--ckpt", required=True, help="a save_pretrained folder, a training run folder or a weights file")
    p.add_argument("--data", required=True, help="configs/data/*.yaml")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the data config (e.g. root=/data/UCF-101)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: 17 causal, 16 in-sequence)")
    p.add_argument("--resolution", type=int, default=256, help="clip height and width (default 256)")
    p.add_argument("--num-clips", type=int, default=None, help="evaluate the first N clips (default: all)")
    p.add_argument("--batch-size", type=int, default=4, help="clips per data-loading batch (the numbers do not change)")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg", "squeeze"))
    p.add_argument("--lpips-backbone", default=None,
                   help="torchvision ImageNet weights of the LPIPS trunk (default: torchvision's cache folder)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS")
    p.add_argument("--lpips-random-backbone", action="store_true",
                   help="tests / demo only: LPIPS with a random trunk (labelled in every output)")
    p.add_argument("--fvd-detector", default="i3d_pt", choices=DETECTOR_CHOICES,
                   help="rFVD feature network ('none' skips rFVD, 'random' is for tests and is labelled)")
    p.add_argument("--detector-path", default=None, help="weights file of the I3D detector")
    p.add_argument("--fvd-resolution", type=int, default=224,
                   help="frame size the I3D sees (224 = the FVD protocol; smaller only for quick tests)")
    p.add_argument("--out", default=None, help="output folder (default: outputs/eval_recon/<vae>-<data>)")
    p.add_argument("--device", default=None, help="cpu | cuda[:i] (default: cuda if available)")
    return p.parse_intermixed_args(argv)


def clip_frames(vae: Any, frames: int | None) -> int:
    """The paper clip length for the VAE's frame rule (17 causal, 16 in-sequence), or ``frames`` if valid."""
    t = frames if frames is not None else (17 if vae.frame_rule == "causal" else 16)
    vae.check_frames(t)
    return t


class CodecTimer:
    """Wall-clock milliseconds of encode and decode per clip; the first clip is a warm-up and is not counted."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.ms: dict[str, list[float]] = {"encode": [], "decode": []}
        self._seen = 0

    def __call__(self, stage: str, fn, *args):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = fn(*args)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        if self._seen > 0:
            self.ms[stage].append((time.perf_counter() - t0) * 1000)
        if stage == "decode":
            self._seen += 1
        return out

    def summary(self) -> dict:
        """{"encode_ms", "decode_ms": means or None, "clips": how many were timed}."""
        mean = {k: sum(v) / len(v) if v else None for k, v in self.ms.items()}
        return {"encode_ms": mean["encode"], "decode_ms": mean["decode"], "clips": len(self.ms["decode"])}


@torch.no_grad()
def evaluate(vae: Any, dataset: Any, metrics: Any, batch_size: int = 4, num_workers: int = 0,
             num_clips: int | None = None, device: str | torch.device = "cpu", log=print,
             timer: CodecTimer | None = None) -> dict:
    """Reconstruct every clip (this process's share under torch.distributed) and return ``metrics.compute()``;
    ``timer`` (optional) collects this process's encode and decode times per clip."""
    from torch.utils.data import DataLoader, Subset

    from pipelines.fvd import dist_info

    rank, world = dist_info()
    n = len(dataset) if num_clips is None else min(num_clips, len(dataset))
    mine = list(range(rank, n, world))  # clip i goes to rank i % world; the merged result does not depend on it
    loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False,
                        num_workers=loader_workers(num_workers))
    vae = vae.to(device).eval()
    done, t0 = 0, time.time()
    for batch in loader:
        x = batch["video"].to(device)
        # One clip at a time through the VAE and the metric networks (LPIPS, SSIM's filter, I3D): batched
        # convolutions round differently with the batch size, and the numbers must not depend on it.
        for i in range(x.shape[0]):
            xi = x[i:i + 1]
            if timer is None:
                metrics.update(xi, vae.decode(vae.encode(xi).mode()).clamp(-1, 1))
                continue
            z = timer("encode", lambda v: vae.encode(v).mode(), xi)
            metrics.update(xi, timer("decode", vae.decode, z).clamp(-1, 1))
        done += x.shape[0]
        if rank == 0:
            log(f"  {done * world}/{n} clips ({time.time() - t0:.1f}s)")
    return metrics.compute()


def table_row(name: str, vae: Any, report: dict) -> str:
    """A Table-1-style markdown row: method, compression, channels, PSNR, SSIM, LPIPS, rFVD."""
    t, h, w = vae.compression
    lp = f"{report['lpips']:.4f}" if "lpips" in report else "-"
    fvd = f"{report['rfvd']['value']:.1f}" if report.get("rfvd") else "-"
    return (f"| {name} | {t}x{h}x{w} | {vae.latent_channels} | {report['psnr']:.2f} | {report['ssim']:.4f} | "
            f"{lp} | {fvd} |")


def markdown(name: str, vae: Any, report: dict, meta: dict) -> str:
    names = [k for k in ("psnr", "ssim", "lpips") if k in report]
    lines = [f"# Reconstruction: {name}", "",
             f"{meta['num_clips']} clips of {meta['frames']}x{meta['resolution']}x{meta['resolution']} from "
             f"{meta['data']['kind']} ({meta['data_config']}); weights {meta['weights_fingerprint'][:16]}.", ""]
    lines += [f"**{label}**" for label in meta["labels"]]
    if meta.get("encode_ms") is not None:
        lines += ["", f"Encode {meta['encode_ms']:.1f} ms, decode {meta['decode_ms']:.1f} ms per clip: "
                      f"{meta['timing']}."]
    lines += ["", "| Method | Compression | Channels | PSNR↑ | SSIM↑ | LPIPS↓ | rFVD↓ |",
              "|---|---|---|---|---|---|---|", table_row(name, vae, report), "",
              "| Frames | " + " | ".join(n.upper() for n in names) + " |", "|---|" + "---|" * len(names)]
    for key, label in (("first_frame", "first frame"), ("later_frames", "frames 1.."), (None, "all frames")):
        vals = report[key] if key else {n: report[n] for n in names}
        lines.append(f"| {label} | " + " | ".join("-" if vals[n] is None else f"{vals[n]:.4f}" for n in names) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from pipelines.fvd import dist_info
    from pipelines.metrics import ReconMetrics, load_lpips
    from tokenizer import load_vae, vae_names

    if args.vae not in vae_names():
        print(f"error: unknown VAE '{args.vae}'; available: {', '.join(vae_names())}", file=sys.stderr)
        return 2
    try:
        for key, value, low in (("--batch-size", args.batch_size, 1), ("--num-workers", args.num_workers, 0),
                                ("--resolution", args.resolution, 1), ("--num-clips", args.num_clips or 1, 1)):
            if value < low:
                raise ConfigError(f"{key} {value}: must be >= {low}")
        data_cfg = load_data_config(args.data, args.overrides)
        try:
            vae = load_vae(args.ckpt)
        except (ValueError, FileNotFoundError) as err:  # a Latte run, a wrong weights file, an unknown VAE name
            raise ConfigError(f"--ckpt {args.ckpt}: {err}") from None
        if vae.name != args.vae:
            raise ConfigError(f"--ckpt {args.ckpt} holds a '{vae.name}' VAE, not '{args.vae}'")
        frames = clip_frames(vae, args.frames)
        s = vae.compression[1]
        if args.resolution % s:
            raise ConfigError(f"--resolution {args.resolution} is not a multiple of {args.vae}'s spatial "
                              f"compression {s}")
        import dataclasses

        data_cfg = dataclasses.replace(data_cfg, num_frames=frames, resolution=args.resolution)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    # one process, or the ranks of `accelerate launch` (clips split by rank); gloo on CPU needs cpu=True
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = torch.device(args.device) if args.device else state.device
    rank, world = dist_info()
    labels = []
    lpips_model = None
    if not args.no_lpips:
        try:  # a random trunk is seeded: the same one on every run and rank
            lpips_model = load_lpips(args.lpips_net, args.lpips_random_backbone, device, args.lpips_backbone)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.lpips_random_backbone:
            labels.append(f"RANDOM-BACKBONE LPIPS ({args.lpips_net}): not comparable to published LPIPS")
    detector = None if args.fvd_detector == "none" else args.fvd_detector
    try:
        metrics = ReconMetrics(lpips=lpips_model is not None, lpips_model=lpips_model, fvd_detector=detector,
                               detector_path=args.detector_path, fvd_resolution=args.fvd_resolution, device=device)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if metrics.detector is not None and metrics.detector.info.label:
        labels.append(metrics.detector.info.label)
    if metrics.detector is not None and args.fvd_resolution != 224:
        labels.append(f"rFVD at {args.fvd_resolution} px, not the protocol's 224: not comparable to published rFVD")
    dataset = build_dataset(data_cfg)
    if rank == 0:
        print_config(data_cfg, title="resolved data config")
        print(f"--- eval_recon ---\nvae {vae.name} from {args.ckpt} (fingerprint {vae.fingerprint()[:16]})\n"
              f"{dataset.report()}\nclips: {frames}x{args.resolution}x{args.resolution}, {world} process(es) on "
              f"{device}\n---", flush=True)
    timer = CodecTimer(device)
    report = evaluate(vae, dataset, metrics, args.batch_size, args.num_workers, args.num_clips, device, timer=timer)
    if rank != 0:
        return 0
    timing = timer.summary()
    meta = {"vae": vae.name, "ckpt": str(args.ckpt), "weights_fingerprint": vae.fingerprint(),
            "compression": list(vae.compression), "latent_channels": vae.latent_channels, "frames": frames,
            "resolution": args.resolution, "num_clips": report["num_videos"], "data_config": str(args.data),
            "data": to_dict(data_cfg), "lpips_net": None if args.no_lpips else args.lpips_net,
            "lpips_random_backbone": bool(args.lpips_random_backbone), "labels": labels,
            "encode_ms": timing["encode_ms"], "decode_ms": timing["decode_ms"],
            "timing": f"mean per clip (batch 1, {device}) over {timing['clips']} clips after one warm-up clip"}
    out = Path(args.out or Path("outputs") / "eval_recon" / f"{vae.name}-{Path(args.data).stem}")
    md = markdown(vae.name, vae, report, meta)
    try:
        write_json(out / "recon.json", {**meta, "metrics": report})
        write_text(out / "recon.md", md)
    except OSError as err:  # disk full, permission: one line naming the file and the free space
        from tokenizer.io import write_error_line

        print(f"error: {write_error_line(err, 'the evaluation can be run again')}", file=sys.stderr)
        return 4
    print(md + f"\nwritten: {out / 'recon.json'}, {out / 'recon.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
