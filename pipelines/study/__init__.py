"""The ablation study: the DeCo-VAE and VC-VAE papers' claims reproduced at CPU scale, by one command.

    python -m pipelines.study [--out study_out] [--quick] [--only vcvae-image vcvae-random ...] [key=value ...]

Order of work (each run an ordinary run folder of the toolkit's own VAE trainer; a finished image VAE is reused,
an unfinished one starts again):

1. per seed, the study's own 2D image VAE (``image_vae``), VC-VAE's initialiser;
2. per seed, DeCo-VAE's motion stage (``train.stage=motion``), where the DeCo variants start;
3. every variant x seed for the same number of steps (``configs/study/study.yaml``), a progress bar each;
4. every checkpoint's EMA weights on held-out clips (the last quarter of each sample video, never trained on);
5. ``study.md`` (one table per paper ablation, the paper's number beside ours and whether its direction holds),
   ``study.png`` (held-out PSNR against step; per-frame PSNR for the first-frame comparison) and ``study.json``.

A killed study re-run with the same command skips finished runs and resumes the unfinished one from its last
checkpoint (the trainer's own resume).
"""
from __future__ import annotations

import dataclasses
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

from .spec import StudyConfig, validate

# --quick: the CI setting (<= 2 minutes on 2 cores): the same variants, tables and seeds, a few steps each
QUICK = ["steps=6", "eval_every=3", "motion_steps=2", "image_vae.steps=10", "image_vae.batch_size=8",
         "test.clips_per_video=1"]
QUICK_RECIPE = ["data.clips_per_video=2", "train.batch_size=2", "optim.warmup_steps=2"]


def run_study(study: StudyConfig, out: Path, recipe_overrides: Sequence[str] = (), only: Sequence[str] | None = None,
              progress: bool = True, log: Callable[[str], None] = print, mode: str = "full",
              command: str = "") -> dict:
    from . import runs
    from .image_vae import AUGMENT_SOURCE, image_vae_psnr, train_image_vae
    from .report import write_report

    out = Path(out).resolve()
    extra = list(recipe_overrides)
    variants = [v for v in study.variants if only is None or v.name in only]
    records: dict[str, list[dict]] = {v.name: [] for v in study.variants}
    image_facts = []
    t0 = time.perf_counter()
    for seed in study.seeds:
        if any(v.start == "image_vae" for v in variants):
            base = runs.train_config(study, [*extra, f"train.run_dir={out / 'unused'}"], progress)
            data = base.data  # the recipe's training clips (early part of each video); at 3x for random crops
            if study.image_vae.random_crop_min < 1:
                data = dataclasses.replace(data, resolution=data.resolution * AUGMENT_SOURCE)
            info = train_image_vae(study.image_vae, runs.load_clips(data), out / f"image-vae-s{seed}", seed, log,
                                   size=base.data.resolution)
            test = runs.load_clips(runs.test_data_config(study, base))
            image_facts.append({**info, "psnr": image_vae_psnr(out / f"image-vae-s{seed}", test)})
        for v in variants:
            if v.start == "motion":  # finished already for an earlier variant of the same model: skipped
                runs.train(runs.train_config(study, runs.motion_overrides(study, v, seed, out, extra), progress), log)
            cfg = runs.train_config(study, runs.run_overrides(study, v, seed, out, extra), progress)
            runs.train(cfg, log)
            records[v.name].append(runs.evaluate(study, cfg))
    if only is not None:  # a partial study reports the tables whose variants all trained
        tables = [t for t in study.tables if all(r.variant in only for r in t.rows)]
        if not tables:
            log(f"trained {', '.join(v.name for v in variants)}; no table has all its variants here: no report")
            return {"records": records}
        study = dataclasses.replace(study, variants=variants, tables=tables)
        records = {v.name: records[v.name] for v in variants}
        mode += f", partial: {', '.join(v.name for v in variants)}"
    base = runs.train_config(study, [*extra, f"train.run_dir={out / 'unused'}"], progress)
    first = next(iter(records.values()))[0]
    facts = {"mode": mode, "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
             "machine": _machine(),
             "command": command, "batch": base.train.batch_size, "resolution": base.data.resolution,
             "train_range": list(base.data.time_range or [0, 1]), "test_clips": f"{first['test_clips']} clips",
             "wall_s_this_launch": time.perf_counter() - t0}
    if image_facts:
        facts["image_vae"] = {"parameters": image_facts[0]["parameters"], "steps": image_facts[0]["steps"],
                              "psnr": sum(f["psnr"] for f in image_facts) / len(image_facts)}
    return write_report(study, records, out, facts)


def _machine() -> str:
    import os

    import torch

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


def study_mode(args: argparse.Namespace) -> str:
    """What study.md's title calls the run: quick, full (the config as written), or reduced (and by what)."""
    changed = [*args.overrides, *(f"--recipe-set {kv}" for kv in args.recipe_set),
               *([f"--only {' '.join(args.only)}"] if args.only else [])]
    if args.quick:
        return "quick (CI setting, a few steps: numbers mean nothing)"
    return f"reduced ({', '.join(changed)})" if changed else "full"


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from tokenizer.config import ConfigError, load_config

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="configs/study/study.yaml", help="the study: variants, budget, tables")
    p.add_argument("--out", default="study_out", help="output folder (re-running resumes there)")
    p.add_argument("--quick", action="store_true", help="a few steps per run (the test suite's setting, < 2 min)")
    p.add_argument("--only", nargs="+", help="train and score only these variants (the report keeps the tables "
                                             "whose variants are all among them); put key=value overrides before it")
    p.add_argument("--recipe-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override on every run's training config, e.g. train.batch_size=2")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the study config, e.g. steps=300")
    args = p.parse_intermixed_args(argv)
    try:
        study = load_config(StudyConfig, args.config, (QUICK if args.quick else []) + args.overrides,
                            validate=validate)
        names = {v.name for v in study.variants}
        if args.only and set(args.only) - names:
            raise ConfigError(f"--only: unknown variant(s) {sorted(set(args.only) - names)}; variants: "
                              f"{', '.join(sorted(names))}")
        recipe = (QUICK_RECIPE if args.quick else []) + args.recipe_set
        from . import runs

        for seed in study.seeds:  # every run's config is checked before any work
            for v in study.variants:
                runs.train_config(study, runs.run_overrides(study, v, seed, Path(args.out), recipe), False)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    mode = study_mode(args)
    command = "python -m pipelines.study " + " ".join(argv if argv is not None else sys.argv[1:])
    start = time.perf_counter()
    result = run_study(study, Path(args.out), recipe, args.only, not args.no_progress, mode=mode, command=command)
    print(f"study finished in {time.perf_counter() - start:.0f}s: {Path(args.out) / 'study.md'}", flush=True)
    if "tables" in result:
        print((Path(args.out) / "study.md").read_text())
    return 0
