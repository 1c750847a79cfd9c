"""Training-step speed and peak memory of each video-VAE preset, beside a diffusers peer, on the machine at hand.

    python benchmarks/bench_vae_train.py                          # full-size presets + peer at the papers' clip size
    python benchmarks/bench_vae_train.py --vae plain-tiny deco-tiny vcvae-tiny --peer-size tiny
    python benchmarks/bench_vae_train.py --size 64 --steps 2       # smaller clips where 256 px does not fit

One training step is what ``tokenizer/train_vae.py`` does per step, without data loading: forward with a
posterior sample, the papers' generator loss (L1 + LPIPS per frame + KL; ``--gan`` adds the 3D PatchGAN's
adaptive-weighted term and the discriminator's own hinge step), backward, Adam. LPIPS uses a random VGG trunk
(the ImageNet weights are not needed for timing). Batch 1 per step (``--batch``).

Clip size: the papers' -- 17 frames (causal VAEs: plain, DeCo-VAE, the peer) or 16 (in-sequence: VC-VAE) at
``--size`` x ``--size`` (256). The peer is diffusers' ``AutoencoderKLCogVideoX`` (a 4x8x8 causal 3D VAE with 16
latent channels; ``--peer-size full`` = its default widths, ``tiny`` = the toolkit's tiny widths [8, 16, 16, 16]),
trained with the same loss code.

Each model runs in a fresh Python process, so that one model's peak memory does not hide another's:

- time: seconds per step after ``--warmup`` untimed steps, best and mean of ``--steps``;
- memory: the process's peak resident set size (``ru_maxrss``: weights, optimiser state, activations, baseline);
- the machine's 1-minute load average at the end (the machine is shared: other jobs slow it down).

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
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TINY_WIDTHS = (8, 16, 16, 16)


def _build(spec: str, peer_size: str):
    """(model, encode -> posterior, decode, frame rule, last layer) for 'vae:NAME' or 'peer:cogvideox'."""
    kind, name = spec.split(":", 1)
    if kind == "vae":
        from tokenizer import build_vae
        from tokenizer.training.vae_parts import find_last_layer

        m = build_vae(name)
        return m, m.encode, m.decode, m.frame_rule, find_last_layer(m)
    from diffusers import AutoencoderKLCogVideoX

    kw = {} if peer_size == "full" else dict(
        block_out_channels=TINY_WIDTHS, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, norm_num_groups=2, layers_per_block=1)
    m = AutoencoderKLCogVideoX(**kw)
    return (m, lambda x: m.encode(x).latent_dist, lambda z: m.decode(z).sample, "causal",
            m.decoder.conv_out.conv.weight)


def run_one(args: argparse.Namespace) -> dict:
    """Time training steps of one model in this process; return the measurements."""
    from tokenizer.discriminator import PatchDiscriminator3D
    from tokenizer.losses import LossConfig, VAELoss

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, encode, decode, rule, last = _build(args.one, args.peer_size)
    frames = args.frames or (17 if rule == "causal" else 16)
    x = torch.rand(args.batch, 3, frames, args.size, args.size) * 2 - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss = VAELoss(LossConfig(recon_weight=4.0, perceptual_weight=4.0, lpips_net="vgg",
                                  lpips_random_backbone=True, kl_weight=1e-7, gan_weight=0.2 if args.gan else 0.0,
                                  gan_start=1))
    disc = PatchDiscriminator3D() if args.gan else None
    opt = torch.optim.Adam(model.parameters(), lr=1e-5, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=1e-5, betas=(0.5, 0.9)) if disc is not None else None
    model.train()

    def step(i: int) -> None:
        posterior = encode(x)
        x_hat = decode(posterior.sample())
        if disc is not None:
            disc.requires_grad_(False)
        g, _ = loss.generator(x, x_hat, posterior, i + 1, disc, last)
        opt.zero_grad(set_to_none=True)
        g.backward()
        opt.step()
        if disc is not None:
            disc.requires_grad_(True)
            d, _ = loss.discriminator(x, x_hat, disc)
            opt_d.zero_grad(set_to_none=True)
            d.backward()
            opt_d.step()

    for i in range(args.warmup):
        step(i)
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step(args.warmup + i)
        times.append(time.perf_counter() - t0)
    return {"model": args.one, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "clip": f"{frames}x{args.size}x{args.size}", "best_s": min(times), "mean_s": sum(times) / len(times),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "load": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", nargs="*", default=None, help="registry names (default: every full-size preset)")
    p.add_argument("--peer-size", choices=("full", "tiny", "none"), default="full")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--frames", type=int, default=None, help="default: 17 causal, 16 in-sequence")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    p.add_argument("--gan", action="store_true", help="include the discriminator (its G term and its D step)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per model")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one model, print JSON
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    from tokenizer import vae_names

    names = args.vae if args.vae else [n for n in vae_names() if not n.endswith("-tiny")]
    specs = [f"vae:{n}" for n in names] + ([] if args.peer_size == "none" else ["peer:cogvideox"])
    passthrough = ["--size", str(args.size), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup",
                   str(args.warmup), "--threads", str(args.threads), "--peer-size", args.peer_size]
    if args.frames:
        passthrough += ["--frames", str(args.frames)]
    if args.gan:
        passthrough.append("--gan")
    rows = []
    for spec in specs:
        cmd = [sys.executable, __file__, "--one", spec, *passthrough]
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
        except subprocess.TimeoutExpired:
            rows.append({"model": spec, "error": f"over {args.timeout}s"})
            print(f"{spec}: over {args.timeout}s", file=sys.stderr, flush=True)
            continue
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["?"])[-1]
            rows.append({"model": spec, "error": err[:120]})
            print(f"{spec}: failed: {err}", file=sys.stderr, flush=True)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(f"\nMachine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch "
          f"{torch.__version__}, {args.threads} threads; {datetime.date.today()}; CPU only.")
    print(f"Command: python benchmarks/bench_vae_train.py {' '.join(argv if argv is not None else sys.argv[1:])}\n")
    print("| model | params (M) | clip | s / step (best) | s / step (mean) | steps / s | peak RSS (GB) | load |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | | | {r['error']} | | | | |")
            continue
        print(f"| {r['model']} | {r['params_m']:.1f} | {r['clip']} | {r['best_s']:.2f} | {r['mean_s']:.2f} | "
              f"{1 / r['best_s']:.3f} | {r['peak_rss_gb']:.2f} | {r['load']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
