"""Cache a dataset's latents: ``python -m tokenizer.cache --vae NAME [--ckpt DIR] --data CONFIG [--out DIR] [k=v ...]``.

Latte's own tokenizer, the frame-wise SD-VAE: ``--vae sd --vae-path DIR`` (a local diffusers AutoencoderKL folder).

One process (CPU or one GPU) as is; several with ``accelerate launch --num_processes N -m tokenizer.cache ...``
(GPUs) or ``torchrun --nproc_per_node N -m tokenizer.cache ...`` (CPU, gloo): each rank encodes its own shards and
the result is the same cache. ``key=value`` items set the data config (``root=/data/UCF-101``) or the cache
settings (``dtype=fp16``, ``flip_copies=true``); ``data.``/``cache.`` prefixes say which explicitly.

``python -m tokenizer.cache --verify --out DIR`` checks every shard against the manifest (exit status 1 if any
shard is missing, truncated, altered or foreign). Exit status 1 as well on a config error, an unusable dataset, or a
folder that holds a cache made with another VAE / data config (the message lists what differs).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..base import FrameCountError
from ..config import ConfigError, print_config, to_dict
from ..data import DataConfig, DatasetError, load_data_config
from .config import load_cache_config, split_overrides, valid_frame_count
from .manifest import CacheError, read_manifest, verify_cache
from .plan import make_plan
from .vae import seeded_preset
from .writer import make_state, resolve_runtime, run_cache


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tokenizer.cache", description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vae", help="VAE registry name (plain, vcvae, deco, sd, *-tiny, ...)")
    p.add_argument("--ckpt", help="VAE folder (save_pretrained) or training run; without it the preset is "
                                  "randomly initialised (smoke runs and tests only)")
    p.add_argument("--vae-path", help="--vae sd: a local diffusers AutoencoderKL folder, e.g. sd-vae-ft-ema "
                                      "(the same as --ckpt)")
    p.add_argument("--data", help="data config, configs/data/*.yaml")
    p.add_argument("--out", help="cache folder (default: caches/<vae>-<data config name>)")
    p.add_argument("--cache-config", help="YAML with cache settings (CacheConfig fields); optional")
    p.add_argument("--verify", action="store_true", help="check every shard of --out against its manifest, then exit")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configs and the plan, encode nothing")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the data config or the cache settings")
    return p


def _verify(out: str) -> int:
    try:
        manifest = read_manifest(out)
    except CacheError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"verifying {len(manifest['shards'])} shards of {out} "
          f"({manifest['identity']['vae']['name']}, {manifest['clips']['stored']} clips)")
    problems = verify_cache(out)
    for line in problems:
        print(f"  BAD {line}")
    print(f"{'FAILED' if problems else 'OK'}: {len(manifest['shards']) - len(problems)} of "
          f"{len(manifest['shards'])} shards match the manifest")
    return 1 if problems else 0


def _load_vae(args, init_seed: int):
    from .. import load_vae

    if args.vae_path:  # a diffusers AutoencoderKL folder: the frame-wise SD-VAE (errors say what the folder lacks)
        from ..models.sd import SDVAE

        vae = SDVAE.from_diffusers(args.vae_path)
        if vae.name != args.vae:
            raise ConfigError(f"--vae-path {args.vae_path} is a diffusers AutoencoderKL, the 'sd' VAE; --vae says "
                              f"'{args.vae}'")
        return vae, str(Path(args.vae_path).resolve())
    if args.ckpt:
        vae = load_vae(args.ckpt)
        if vae.name != args.vae:
            raise ConfigError(f"--ckpt {args.ckpt} holds a '{vae.name}' VAE but --vae says '{args.vae}'")
        return vae, str(Path(args.ckpt).resolve())
    vae = seeded_preset(args.vae, init_seed)  # the same random weights on every rank and every restart
    print(f"warning: no --ckpt: '{args.vae}' is randomly initialised (seed {init_seed}); its latents are only good "
          "for smoke runs and tests", file=sys.stderr)
    return vae, f"registry preset '{args.vae}', random init (torch seed {init_seed})"


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.verify:
        if not args.out:
            parser.error("--verify needs --out DIR")
        return _verify(args.out)
    if not args.vae or not args.data:
        parser.error("--vae and --data are required (or --verify --out DIR)")
    if args.vae_path and args.ckpt:
        parser.error("--vae-path and --ckpt both name the VAE's weights: give one of them")
    out = args.out or f"caches/{args.vae}-{Path(args.data).stem}"
    state = None
    try:
        data_over, cache_over = split_overrides(args.overrides, DataConfig)
        data_cfg = load_data_config(args.data, data_over)
        cfg = load_cache_config(args.cache_config, cache_over)
        state = make_state(cfg)
        vae, source = _load_vae(args, cfg.init_seed)
        frames = valid_frame_count(vae, data_cfg.num_frames, cfg.strict_frames)
        if state.is_main_process:
            print_config(cfg, title="cache settings")
            print_config(data_cfg, title=f"data config ({args.data})")
            d = vae.describe()
            print(f"vae: {d['name']} ({source}), {d['parameters']:,} parameters, latent {d['latent_channels']} ch, "
                  f"compression {tuple(d['compression'])}, frame rule {d['frame_rule']}, fingerprint "
                  f"{d['fingerprint']}\nclip length: {data_cfg.num_frames} frames asked, {frames} used "
                  f"(the VAE's frame rule){'' if frames == data_cfg.num_frames else ' -- see tokenizer/cache/config.py'}"
                  f"\nout: {out} ({state.num_processes} process(es))", flush=True)
        if args.dry_run:
            _, precision = resolve_runtime(cfg, state)
            plan = make_plan(vae, data_cfg, cfg, precision)
            if state.is_main_process:
                print(plan.dataset.report())
                print(f"plan: {plan.num_items} items x {plan.copies} = {plan.num_items * plan.copies} clips, latent "
                      f"{plan.latent_shape} {cfg.dtype}, {plan.num_shards} shards of {plan.items_per_shard} items, "
                      f"precision {precision}\nidentity: {to_dict(plan.identity['storage'])}")
            return 0
        run_cache(vae, data_cfg, cfg, out, vae_source=source, state=state, show_progress=not args.no_progress)
    except (ConfigError, DatasetError, CacheError, FrameCountError, FileNotFoundError, KeyError) as err:
        if state is None or state.is_main_process:
            msg = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
