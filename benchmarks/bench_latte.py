"""Training throughput, peak memory and MFU of the toolkit's Latte beside a baseline and a peer, per preset.

    python benchmarks/bench_latte.py                                   # GPU: the four /2 presets, 16x32x32, batch 5
    python benchmarks/bench_latte.py --compile --sdpa-backend flash    # add torch.compile rows, force flash kernels
    python benchmarks/bench_latte.py --device cpu --threads 1 --presets Latte-S/2 --frames 4 --size 16 --batch 2

Rows per preset, all on the same latents (b, c, t, h, w), the same loss (GaussianDiffusion.training_losses: eps
MSE + VLB, uniform t, class labels) and the same optimiser step (AdamW; forward + backward + step is one sample
of the timing):

- baseline: this Latte in the public Latte code's default training mode: fp32, 'math' attention (explicit
  softmax(q k^T) v), no compile (Vchitect/Latte configs: mixed_precision False, use_compile False,
  attention_mode 'math');
- ours: 'sdpa' attention in fp32; 'sdpa' under bf16 autocast; with --compile, bf16 + torch.compile;
- peer: diffusers ``LatteTransformer3DModel`` at the nearest configuration, i.e. the same hidden size, heads,
  patch, frames and MLP (tanh-GELU, ratio 4), ``num_layers`` = depth / 2 (it counts spatial + temporal pairs),
  adaLN-single modulation and no cross-attention (its text path fed one zero token), its default SDPA
  processor, run in fp32 and in bf16 autocast. It is the text-to-video variant (one shared modulation table),
  so it does slightly less work per step than Latte-XL/2; its own FLOP count is reported.

Every row runs in a fresh Python process, so one row's peak memory does not hide another's. Measured: samples
per second (best of ``--repeat`` timings of ``--steps`` optimiser steps, after ``--warmup`` untimed steps; on CPU
also per CPU-second of the process, which a shared machine's other jobs disturb far less than wall time), peak
memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: the process's peak RSS, which includes the ~0.4 GiB
torch baseline), model FLOPs per training step (3x the forward: ours from ``Latte.flops``, checked against
``torch.utils.flop_counter`` in the tests; the peer's counted by ``torch.utils.flop_counter`` with diffusers'
plain attention processor) and MFU = achieved FLOP/s / the device's peak for the row's precision (known GPUs
below, or ``--peak-tflops``; none on CPU). On CPU the bf16 rows are left out unless named with ``--rows``: a CPU
without bf16 units emulates it (about 14x slower than fp32 on the AMD EPYC this was written on), which says
nothing about GPUs. Prints a Markdown table with the machine, date and command.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# dense peak TFLOP/s by precision (vendor data sheets; SXM parts)
PEAK_TFLOPS = {"H100": {"bf16": 989.4, "fp32": 66.9}, "H200": {"bf16": 989.4, "fp32": 66.9},
               "A100": {"bf16": 312.0, "fp32": 19.5}}
ROWS = {  # name -> (model kind, attention, precision, compile)
    "baseline": ("ours", "math", "fp32", False),
    "ours-sdpa-fp32": ("ours", "sdpa", "fp32", False),
    "ours-sdpa-bf16": ("ours", "sdpa", "bf16", False),
    "ours-sdpa-bf16-compile": ("ours", "sdpa", "bf16", True),
    "diffusers-fp32": ("diffusers", "sdpa", "fp32", False),
    "diffusers-bf16": ("diffusers", "sdpa", "bf16", False),
}


def build(kind: str, preset: str, args: argparse.Namespace, attention: str, device: str):
    """(module, fn(x, t, y) -> output, forward FLOPs for the batch)."""
    from diffusion import build_latte

    ours = build_latte(preset, in_channels=args.channels, num_classes=args.num_classes, num_frames=args.frames,
                       input_size=args.size, attention=attention if kind == "ours" else "sdpa")
    if kind == "ours":
        return ours.to(device), ours, ours.flops(args.batch)
    from diffusers import LatteTransformer3DModel
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
    from torch.utils.flop_counter import FlopCounterMode

    cfg = ours.config
    peer = LatteTransformer3DModel(
        num_attention_heads=cfg["num_heads"], attention_head_dim=cfg["hidden_size"] // cfg["num_heads"],
        in_channels=args.channels, out_channels=2 * args.channels, num_layers=cfg["depth"] // 2,
        sample_size=args.size, patch_size=cfg["patch_size"], activation_fn="gelu-approximate",
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True,
        caption_channels=cfg["hidden_size"], video_length=args.frames).to(device)
    context = torch.zeros(args.batch, 1, cfg["hidden_size"], device=device)
    fn = lambda x, t, y=None: peer(x, timestep=t, encoder_hidden_states=context).sample  # noqa: E731
    attentions = [m for m in peer.modules() if isinstance(m, Attention)]
    for m in attentions:
        m.set_processor(AttnProcessor())  # plain matmuls, so that the counter sees the attention
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn(torch.zeros(args.batch, args.channels, args.frames, args.size, args.size, device=device),
           torch.zeros(args.batch, dtype=torch.long, device=device))
    for m in attentions:
        m.set_processor(AttnProcessor2_0())  # diffusers' default: torch SDPA
    return peer, fn, counter.get_total_flops()


def sdpa_context(name: str):
    import contextlib

    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    return contextlib.nullcontext() if name == "auto" else sdpa_kernel(backends[name])


def measure(row: str, preset: str, args: argparse.Namespace) -> dict:
    """One row: train for warmup + repeat x steps, return throughput, memory and FLOPs."""
    from diffusion import GaussianDiffusion

    kind, attention, precision, compile_ = ROWS[row]
    device = args.device
    torch.manual_seed(0)
    module, fn, fwd_flops = build(kind, preset, args, attention, device)
    module.train()
    if compile_:
        fn = torch.compile(fn)
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4, weight_decay=0)
    diffusion = GaussianDiffusion()
    x0 = torch.randn(args.batch, args.channels, args.frames, args.size, args.size, device=device)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device) if kind == "ours" else None
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16")
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step():
        with autocast, sdpa_context(args.sdpa_backend):
            loss = diffusion.training_losses(fn, x0, y=y)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for _ in range(args.warmup):
        step()
    sync()
    times, cpu_times = [], []
    for _ in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    best = min(times)
    flops_per_step = 3 * fwd_flops  # forward + backward (about twice the forward)
    out = {"row": row, "preset": preset, "params": params, "train_flops_per_step": flops_per_step,
           "samples_per_s": args.batch * args.steps / best,
           "samples_per_cpu_s": args.batch * args.steps / min(cpu_times),
           "achieved_tflops": flops_per_step * args.steps / best / 1e12,
           "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mib": rss_before}
    if device.startswith("cuda"):
        out["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        name = torch.cuda.get_device_name()
        peak = args.peak_tflops or next((v[precision] for k, v in PEAK_TFLOPS.items() if k in name), None)
        out["mfu"] = out["achieved_tflops"] / peak if peak else None
    else:
        out["mfu"] = out["achieved_tflops"] / args.peak_tflops if args.peak_tflops else None
    return out


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    load = os.getloadavg()[0]
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), torch "
            f"{torch.__version__}, 1-min load average {load:.1f} at the start")


def table(results: list[dict], device: str) -> str:
    """Markdown rows; 'vs baseline' compares samples/s (GPU) or samples per CPU-second (CPU)."""
    gpu = device.startswith("cuda")
    key = "samples_per_s" if gpu else "samples_per_cpu_s"
    cpu_col = "" if gpu else " samples/CPU-s |"
    lines = [f"| preset | row | params (M) | samples/s |{cpu_col} vs baseline | peak mem | GFLOP/s | MFU |",
             "|---|---|---:|---:|" + ("" if gpu else "---:|") + "---:|---:|---:|---:|"]
    base = {r["preset"]: r[key] for r in results if r["row"] == "baseline"}
    for r in results:
        mem = f"{r['peak_gpu_gib']:.2f} GiB" if gpu else f"{r['peak_rss_mib'] / 1024:.2f} GiB RSS"
        ratio = f"{r[key] / base[r['preset']]:.2f}x" if r["preset"] in base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "n/a"
        cpu = "" if gpu else f" {r['samples_per_cpu_s']:.3f} |"
        lines.append(f"| {r['preset']} | {r['row']} | {r['params'] / 1e6:.1f} | {r['samples_per_s']:.3f} |{cpu} "
                     f"{ratio} | {mem} | {1000 * r['achieved_tflops']:.1f} | {mfu} |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["Latte-S/2", "Latte-B/2", "Latte-L/2", "Latte-XL/2"])
    p.add_argument("--rows", nargs="+", default=None, choices=list(ROWS),
                   help="default: every row but the compiled one (added by --compile)")
    p.add_argument("--compile", action="store_true", help="add the bf16 + torch.compile row")
    p.add_argument("--sdpa-backend", default="auto", choices=["auto", "flash", "efficient", "cudnn", "math"],
                   help="restrict torch's SDPA to one kernel (auto: torch chooses)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--batch", type=int, default=5, help="per-device batch (Latte UCF101: 5)")
    p.add_argument("--frames", type=int, default=16, help="latent frames")
    p.add_argument("--size", type=int, default=32, help="latent height = width (256 px at 8x)")
    p.add_argument("--channels", type=int, default=4, help="latent channels (SD VAE: 4)")
    p.add_argument("--num-classes", type=int, default=101)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10, help="optimiser steps per timing")
    p.add_argument("--repeat", type=int, default=3, help="timings per row; the best is kept")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: known GPUs)")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    p.add_argument("--worker", nargs=2, metavar=("ROW", "PRESET"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from diffusion import LATTE_NAMES

    for preset in args.presets:
        if preset not in LATTE_NAMES:
            p.error(f"unknown preset {preset}: choose from {', '.join(LATTE_NAMES)}")
    if args.size % 2 or min(args.batch, args.frames, args.steps, args.repeat) < 1:
        p.error("--size must be even; --batch, --frames, --steps, --repeat at least 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: no GPU visible")
    if args.rows is None:
        args.rows = [r for r in ROWS if (r != "ours-sdpa-bf16-compile" or args.compile)
                     and (args.device.startswith("cuda") or ROWS[r][2] == "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def main(argv=None) -> int:
    args = parse(argv)
    if args.worker:
        print("RESULT " + json.dumps(measure(args.worker[0], args.worker[1], args)), flush=True)
        return 0
    settings = {k: v for k, v in vars(args).items() if k not in ("worker", "json")}
    print("resolved settings:", json.dumps(settings, default=str), flush=True)
    results = []
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for preset in args.presets:
        for row in args.rows:
            cmd = [sys.executable, __file__, *passthrough, "--worker", row, preset]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                print(f"{preset} {row}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            results.append(json.loads(lines[-1][len("RESULT "):]))
            r = results[-1]
            print(f"{preset:12s} {row:24s} {r['samples_per_s']:.3f} samples/s", flush=True)
    shape = f"{args.batch} x ({args.channels}, {args.frames}, {args.size}, {args.size})"
    print(f"\nmachine: {machine(args.device)}; date {datetime.date.today()}; latents {shape}; "
          f"sdpa backend {args.sdpa_backend}")
    print("command: python benchmarks/bench_latte.py " + " ".join(passthrough) + "\n")
    print(table(results, args.device))
    if args.json:
        args.json.write_text(json.dumps({"settings": settings, "rows": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
