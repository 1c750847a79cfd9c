"""GPU-hour ESTIMATES for the paper recipes, from FLOPs counted by torch.utils.flop_counter (no GPU needed).

    python benchmarks/gpu_hours.py            # prints the README table

FLOPs are counted on the meta device (shapes only, nothing computed) for one clip of each recipe's shape; training
costs ``TRAIN_FACTOR`` x the forward (backward ~2x forward, plus LPIPS and the discriminator for VAEs). Hours =
FLOPs / (peak x utilisation) on one A100 (bf16 dense peak 312 TFLOP/s); the utilisations are assumptions, not
measurements: these are estimates until a run is timed.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion import build_latte  # noqa: E402
from tokenizer import build_vae  # noqa: E402

A100_PEAK = 312e12  # bf16 dense FLOP/s
UTILISATION = {"vae": 0.30, "latte": 0.40}  # assumed model-FLOP utilisation (3D convs vs. transformer matmuls)
TRAIN_FACTOR = {"vae": 3.5, "latte": 3.0}


def vae_flops(name: str, frames: int, size: int = 256) -> tuple[float, float]:
    """(encode, encode + decode) forward FLOPs of one clip."""
    with torch.device("meta"):
        vae = build_vae(name)
        x = torch.empty(1, 3, frames, size, size)
    with FlopCounterMode(display=False) as enc:
        z = vae.encode(x).sample()
    with FlopCounterMode(display=False) as dec:
        vae.decode(z)
    return enc.get_total_flops(), enc.get_total_flops() + dec.get_total_flops()


def latte_flops(channels: int, frames: int, size: int = 32, classes: int = 101) -> float:
    with torch.device("meta"):
        model = build_latte("Latte-XL/2", in_channels=channels, num_frames=frames, input_size=size,
                            num_classes=classes)
    return model.flops()


def hours(flops: float, kind: str) -> float:
    return flops / (A100_PEAK * UTILISATION[kind]) / 3600


def main() -> None:
    rows = []
    for label, name, frames, steps, batch in (
            ("DeCo-VAE phase 1 (deco_phase1.yaml)", "deco", 17, 400_000, 5),
            ("DeCo-VAE phase 2 (deco_phase2.yaml)", "deco", 17, 100_000, 5),
            ("VC-VAE stage I (vcvae_stage1.yaml)", "vcvae", 16, 500_000, 1),
            ("VC-VAE stage II (vcvae_stage2.yaml, 256 px bucket)", "vcvae", 16, 50_000, 1),
            ("plain 3D VAE (plain.yaml)", "plain", 17, 500_000, 5)):
        enc, fwd = vae_flops(name, frames)
        rows.append((label, f"{steps:,} x {batch}", fwd, hours(steps * batch * fwd * TRAIN_FACTOR["vae"], "vae")))
    enc, _ = vae_flops("deco", 17)
    rows.append(("latent cache of UCF101 (13,320 clips + flips, deco)", "26,640 clips", enc,
                 hours(26_640 * enc, "vae")))
    lat = latte_flops(16, 5)
    rows.append(("Latte-XL/2 on 16-ch 17-frame latents (latte_xl2_ucf101.yaml)", "1,000,000 x 40", lat,
                 hours(1_000_000 * 40 * lat * TRAIN_FACTOR["latte"], "latte")))
    rows.append(("sampling 2048 videos, DDPM 250 steps, CFG (2 passes)", "2048 x 250 x 2", lat,
                 hours(2048 * 250 * 2 * lat, "latte")))
    print("| job | steps x clips (or calls) | forward TFLOP per clip | estimated A100-hours |")
    print("|---|---|---|---|")
    for label, n, f, h in rows:
        est = f"~{h:,.0f}" if h >= 10 else f"~{h:.1f}"
        print(f"| {label} | {n} | {f / 1e12:.2f} | {est} |")


if __name__ == "__main__":
    main()
