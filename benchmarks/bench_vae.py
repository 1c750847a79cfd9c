"""Parameters, FLOPs, encode + decode time and peak memory of the toolkit's video VAEs beside diffusers peers.

    python benchmarks/bench_vae.py                                   # every full-size preset + the peers, 256 px
    python benchmarks/bench_vae.py --vae vcvae plain --size 128      # a subset, smaller clips
    python benchmarks/bench_vae.py --peers                           # the toolkit's VAEs only

What is measured, in one run, one model at a time, each in a fresh Python process (so that one model's peak
memory does not hide another's):

- the toolkit's VAEs by registry name (default: every full-size preset registered, i.e. without '-tiny'),
  randomly initialised (speed does not depend on the weights);
- the peers: diffusers ``AutoencoderKLCogVideoX()`` and ``AutoencoderKLWan()`` at their default sizes, both
  4x8x8 with 16 latent channels, random init, no download, no tiling;
- one clip of ``--frames`` frames (16; causal models, the peers included, take ``frames + 1`` = 17, their
  nearest valid count) at ``--size`` x ``--size``, encode (posterior mode) then decode, ``torch.inference_mode``;
- time: wall-clock seconds of encode and of decode, best of ``--repeat`` (after ``--warmup`` untimed passes);
- memory: the process's peak resident set size (``ru_maxrss``: weights + activations + the Python/torch baseline)
  and its growth during encode + decode (peak RSS after minus peak RSS before the first pass);
- the machine's 1-minute load average when the model finished (on a shared machine other jobs slow it down), and
  the CPU seconds the process spent in encode + decode (all threads; far less disturbed by other jobs than the
  wall clock);
- the first peer named is measured first, then the toolkit's VAEs, then the other peers (a run cut short still
  has its reference: ``--peers wan cogvideox``);
- ``--gop N``: DeCo-VAE presets take a keyframe every N frames and run group by group (bounded memory on long
  clips);
- chunking: without gradients the toolkit's VAEs encode and decode one latent frame at a time through their
  causal caches by default (the result equals the whole-clip one); ``--chunk ENC DEC`` sets ``ENC`` frames and
  ``DEC`` latent frames instead, ``--chunk 0 0`` the whole clip at once; peers unchanged;
- ``--device cuda``: time with CUDA synchronisation, memory = ``torch.cuda.max_memory_allocated`` (peak) and its
  growth over the allocation before the first pass (weights), instead of the process's RSS;
- FLOPs: counted by ``torch.utils.flop_counter`` on the meta device at the same shape (convs and matmuls);
  ``--count-only`` prints parameters and FLOPs alone, without running anything. A model that cannot run on the
  meta device is counted on CPU at 64 x 64 and scaled by the pixel count (marked ≈; exact for convolutions).

Prints a Markdown table for BENCHMARKS.md with the machine, date and command.
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

PEERS = {"cogvideox": "AutoencoderKLCogVideoX", "wan": "AutoencoderKLWan"}


def _build(spec: str, device: str = "cpu", chunk: tuple[int, int] | None = None, gop: int | None = None):
    """(model, encode, decode, frame_rule, compression, latent channels) for 'vae:NAME' or 'peer:NAME';
    ``chunk`` = (encode chunk in frames, decode chunk in latent frames) for the toolkit's VAEs, ``gop`` the
    frames per keyframe of DeCo-VAE presets."""
    kind, name = spec.split(":", 1)
    with torch.device(device):
        if kind == "vae":
            from tokenizer import build_vae

            model = build_vae(name, **({"gop": gop} if gop and name.startswith("deco") else {})).eval()
            enc_chunk, dec_chunk = chunk or (None, None)
            return (model, lambda x: model.encode(x, chunk_size=enc_chunk).mode(),
                    lambda z: model.decode(z, chunk_size=dec_chunk), model.frame_rule, model.compression,
                    model.latent_channels)
        import diffusers

        model = getattr(diffusers, PEERS[name])().eval()
        return (model, lambda x: model.encode(x).latent_dist.mode(), lambda z: model.decode(z).sample, "causal",
                (4, 8, 8), model.config.get("latent_channels", model.config.get("z_dim")))


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def count(spec: str, frames: int, size: int) -> dict:
    """Parameters and FLOPs of one model on one clip, on the meta device (nothing is computed)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, encode, decode, rule, compression, latent_channels = _build(spec, device="meta")
    t = frames + 1 if rule == "causal" else frames
    approx = False
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            decode(encode(torch.empty(1, 3, t, size, size, device="meta")))
        flops = counter.get_total_flops()
    except (RuntimeError, NotImplementedError):  # a model that cannot run on meta: count on CPU at 64 px, scale
        model, encode, decode, *_ = _build(spec)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            decode(encode(torch.zeros(1, 3, t, 64, 64)))
        flops, approx = counter.get_total_flops() * (size / 64) ** 2, True
    return {"model": spec.split(":", 1)[1], "peer": spec.startswith("peer:"), "frames": t, "size": size,
            "compression": "x".join(map(str, compression)), "latent_channels": latent_channels,
            "params_M": sum(p.numel() for p in model.parameters()) / 1e6, "tflops": flops / 1e12,
            "flops_approx": approx}


def measure(spec: str, frames: int, size: int, repeat: int, warmup: int, chunk: tuple[int, int] | None = None,
            gop: int | None = None, device: str = "cpu") -> dict:
    """Run in the child process: time, memory and FLOPs of one model on one clip."""
    model, encode, decode, rule, compression, latent_channels = _build(spec, chunk=chunk, gop=gop)
    t = frames + 1 if rule == "causal" else frames
    clip = torch.rand(1, 3, t, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    cuda = device.startswith("cuda")
    if cuda:
        model.to(device)
        clip = clip.to(device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rss_before = torch.cuda.memory_allocated() / 2**20 if cuda else _peak_rss_mib()
    enc_times, dec_times, cpu_times = [], [], []
    with torch.inference_mode():
        for i in range(warmup + repeat):
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            z = encode(clip)
            sync()
            mid = time.perf_counter()
            out = decode(z)
            sync()
            end, cpu_end = time.perf_counter(), time.process_time()
            if i >= warmup:
                enc_times.append(mid - start)
                dec_times.append(end - mid)
                cpu_times.append(cpu_end - cpu_start)
    rss_after = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib()
    load = os.getloadavg()[0]  # 1-minute load average at the end: other jobs on this machine skew the times
    assert out.shape == clip.shape, (spec, tuple(out.shape), tuple(clip.shape))
    del model, z, out
    best = min(range(repeat), key=lambda i: enc_times[i] + dec_times[i])
    chunked = {"chunk": list(chunk)} if chunk and spec.startswith("vae:") else {}
    if gop and spec.startswith("vae:deco"):
        chunked["gop"] = gop
    return {**count(spec, frames, size), **chunked, "encode_s": enc_times[best], "decode_s": dec_times[best],
            "peak_rss_mib": rss_after, "rss_growth_mib": rss_after - rss_before, "load": load,
            "cpu_s": cpu_times[best],
            "device": torch.cuda.get_device_name() if cuda else "cpu"}


def default_vaes() -> list[str]:
    from tokenizer import vae_names

    return [n for n in vae_names() if not n.endswith("-tiny")]


def table(rows: list[dict]) -> str:
    gpu = any(r.get("device", "cpu") != "cpu" for r in rows)
    memory = "peak CUDA allocated (MiB) | growth (MiB)" if gpu else "peak RSS (MiB) | RSS growth (MiB)"
    lines = ["| model | compression / channels | clip | params (M) | TFLOPs | encode (s) | decode (s) | "
             f"encode + decode (s) | {memory} | load avg | CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        name = f"{r['model']} (diffusers peer)" if r["peer"] else f"`{r['model']}`"
        if r.get("chunk") == [0, 0]:
            name += " (whole clip at once)"
        elif r.get("chunk"):
            name += f" (chunks: encode {r['chunk'][0]} frames, decode {r['chunk'][1]} latent)"
        if r.get("gop"):
            name += f" (gop {r['gop']}: group by group)"
        if "error" in r:
            lines.append(f"| {name} | | | | | failed: {r['error']} | | | | | | |")
            continue
        digits = 3 if gpu else 1
        timed = (f"{r['encode_s']:.{digits}f} | {r['decode_s']:.{digits}f} | "
                 f"{r['encode_s'] + r['decode_s']:.{digits}f} | "
                 f"{r['peak_rss_mib']:.0f} | {r['rss_growth_mib']:.0f} | {r.get('load', float('nan')):.1f} | "
                 f"{r.get('cpu_s', float('nan')):.0f}") if "encode_s" in r else "- | - | - | - | - | - | -"
        lines.append(f"| {name} | {r['compression']} / {r['latent_channels']} | {r['frames']}x{r['size']}x{r['size']} "
                     f"| {r['params_M']:.1f} | {'≈' if r['flops_approx'] else ''}{r['tflops']:.2f} | {timed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vae", nargs="*", default=None, help="registry names (default: all full-size presets)")
    parser.add_argument("--peers", nargs="*", default=list(PEERS), choices=list(PEERS),
                        help="diffusers peers (default: cogvideox wan; pass --peers alone for none)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--chunk", nargs=2, type=int, metavar=("ENC", "DEC"), default=None,
                        help="the toolkit's VAEs encode ENC frames and decode DEC latent frames at a time (causal "
                             "cache, results equal to the whole clip; default: one latent frame; 0 0: the whole clip "
                             "at once); the peers are unchanged")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--gop", type=int, default=None,
                        help="DeCo-VAE presets: a keyframe every GOP frames, encoded and decoded group by group")
    parser.add_argument("--json", default=None, help="also write the rows here (pipelines.report reads them)")
    parser.add_argument("--count-only", action="store_true", help="parameters and FLOPs only (meta device, fast)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:  # one measurement, JSON on the last line of stdout
        print(json.dumps(measure(args.child, args.frames, args.size, args.repeat, args.warmup,
                                 tuple(args.chunk) if args.chunk else None, args.gop, args.device)))
        return
    if args.size % 8 or args.frames % 8 or args.repeat < 1:
        parser.error("--size and --frames must be multiples of 8 (8x8x8 presets), --repeat >= 1")
    vaes = default_vaes() if args.vae is None else args.vae
    peers = [f"peer:{p}" for p in args.peers]
    specs = peers[:1] + [f"vae:{n}" for n in vaes] + peers[1:]  # the reference first
    print(f"# models: {', '.join(specs)}; clip {args.frames}(+1)x{args.size}x{args.size}; threads "
          f"{args.threads or torch.get_num_threads()}", flush=True)
    rows = []
    for spec in specs:
        if args.count_only:
            rows.append(count(spec, args.frames, args.size))
            continue
        cmd = [sys.executable, __file__, "--child", spec, "--frames", str(args.frames), "--size", str(args.size),
               "--repeat", str(args.repeat), "--warmup", str(args.warmup)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.chunk:
            cmd += ["--chunk", *map(str, args.chunk)]
        if args.gop:
            cmd += ["--gop", str(args.gop)]
        if args.device != "cpu":
            cmd += ["--device", args.device]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            rows.append({"model": spec.split(":", 1)[1], "peer": spec.startswith("peer:"),
                         "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"# {spec}: {rows[-1]}", flush=True)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else None
    print(f"\nMachine: {cpu}, {os.cpu_count()} cores visible, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), {gpu or 'CPU only'}. Date: {datetime.date.today()}.")
    print("Command: `python " + " ".join([Path(__file__).relative_to(Path.cwd()).as_posix()
                                          if Path(__file__).is_relative_to(Path.cwd()) else __file__]
                                         + sys.argv[1:]) + "`\n")
    print(table(sorted(rows, key=lambda r: r["peer"])))  # the toolkit's VAEs first, as before
    if args.json:
        from tokenizer.io import write_json

        write_json(args.json, rows)


if __name__ == "__main__":
    main()
