"""DeCo-VAE's parameter count per part (motion module, E_k, E_m, E_r, shared decoder) beside the plain baseline,
and, with ``--time``, where one clip's encode + decode time goes (motion, encoders, decoder, recoupling).

    python benchmarks/bench_deco_params.py                      # exact counts, meta device (nothing computed)
    python benchmarks/bench_deco_params.py --time --size 256    # + per-stage time of one 17x256x256 clip on CPU

Counts are exact (every parameter of the registered presets). The timing row of ``plain`` (one encoder and one
decoder of the same sizes, no decoupling) is the peer measured in the same run; models are randomly initialised
(time does not depend on the weights). Whole-model time and peak memory against the diffusers VAEs are in
``benchmarks/bench_vae.py``. Prints Markdown for BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import header  # noqa: E402
from tokenizer import build_vae  # noqa: E402

PRESETS = ("deco", "deco-compact", "deco-concat", "plain")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_table() -> str:
    lines = ["| preset | latent channels | motion module | E_k | E_m | E_r | encoder (concat / plain) | shared decoder "
             "| total |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in PRESETS:
        with torch.device("meta"):
            vae = build_vae(name)
        groups = vae.parameter_groups() if hasattr(vae, "parameter_groups") else \
            {"encoder": vae.encoder, "decoder": vae.decoder}
        cell = lambda k: f"{n_params(groups[k]):,}" if k in groups else "-"  # noqa: E731
        split = "+".join(map(str, vae.config.component_channels)) if hasattr(vae.config, "component_channels") \
            else str(vae.latent_channels)
        lines.append(f"| `{name}` | {vae.latent_channels} ({split}) | {cell('motion')} | {cell('enc_k')} | "
                     f"{cell('enc_m')} | {cell('enc_r')} | {cell('encoder')} | {cell('decoder')} | "
                     f"**{n_params(vae):,}** ({n_params(vae) / 1e6:.2f}M) |")
    return "\n".join(lines)


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


@torch.inference_mode()
def stage_times(name: str, frames: int, size: int, **overrides) -> dict:
    """Seconds per stage of encode (posterior mode) + decode of one clip."""
    vae = build_vae(name, **overrides).eval()
    clip = torch.rand(1, 3, frames, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if not hasattr(vae, "decouple"):  # the plain peer
        z, enc = _timed(lambda x: vae.encode(x).mode(), clip)
        _, dec = _timed(vae.decode, z)
        return {"encoders": enc, "decoder": dec, "total": enc + dec}
    comps, t_motion = _timed(vae.decouple, clip)
    t_enc = 0.0
    for enc, c in zip((vae.enc_k, vae.enc_m, vae.enc_r), ("keyframe", "motion", "residual")):
        _, t = _timed(enc, comps[c])
        t_enc += t
    z = vae.encode(clip).mode()
    hats, t_dec = _timed(vae.decode_components, z)
    x0 = {0: hats["keyframe"].mean(dim=2)}
    _, t_rec = _timed(vae.recouple, x0, hats["motion"], hats["residual"])
    return {"motion": t_motion, "encoders": t_enc, "decoder": t_dec, "recouple": t_rec,
            "total": t_motion + t_enc + t_dec + t_rec}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--time", action="store_true", help="also time the stages of one clip on CPU")
    parser.add_argument("--frames", type=int, default=17)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--motion", default="learned", choices=("learned", "classical"))
    args = parser.parse_args()
    print(header("benchmarks/bench_deco_params.py"))
    print(count_table())
    if not args.time:
        return
    print(f"\nStage times, one {args.frames}x{args.size}x{args.size} clip, seconds:\n")
    print("| model | motion (M + W) | encoders | decoder | recoupling | total |\n|---|---:|---:|---:|---:|---:|")
    for name, overrides in (("deco", {"motion": args.motion}), ("plain", {})):
        t = stage_times(name, args.frames, args.size, **overrides)
        cells = " | ".join(f"{t[k]:.2f}" if k in t else "-" for k in ("motion", "encoders", "decoder", "recouple"))
        label = f"`{name}`" + (f" (motion={args.motion})" if name == "deco" else " (peer)")
        print(f"| {label} | {cells} | {t['total']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
