"""The study's own 2D image VAE: VC-VAE's initialiser (sec. 3.2), trained here because no Flux VAE can be fetched.

A diffusers ``AutoencoderKL`` in the Flux layout (no quant convs, mid-block attention) at small widths, trained on
single frames of the training clips (L1 + KL, Adam with a linear warm-up and a cosine decay), saved with
``save_pretrained`` -- the diffusers folder layout -- so that VC-VAE (and, in the demo, DeCo-VAE) inflates it
through the same ``model.init_from=`` path that reads the Flux VAE. Its latent normalisation (``scaling_factor``, ``shift_factor``)
is measured on the training frames, as Flux's was. The folder is written atomically: a killed study trains it again.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
from einops import rearrange

from tokenizer.training.vae_config import schedule_factor

from .spec import ImageVAESpec


def build_image_vae(spec: ImageVAESpec):
    from diffusers import AutoencoderKL

    n = len(spec.block_out_channels)
    return AutoencoderKL(block_out_channels=tuple(spec.block_out_channels), down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=spec.layers_per_block,
                         latent_channels=spec.latent_channels, norm_num_groups=spec.norm_num_groups,
                         use_quant_conv=False, use_post_quant_conv=False, mid_block_add_attention=True)


AUGMENT_SOURCE = 3  # with random crops, frames are decoded at this multiple of the training size


def random_crops(frames: torch.Tensor, n: int, size: int, min_side: float, gen: torch.Generator) -> torch.Tensor:
    """``n`` random square crops of ``frames`` (N c S S), side uniform in [min_side S, S], resized to ``size``
    (antialiased), each mirrored with probability 1/2."""
    import torch.nn.functional as F

    side_px = frames.shape[-1]
    out = []
    for i in torch.randint(len(frames), (n,), generator=gen).tolist():
        s = int(torch.randint(int(min_side * side_px), side_px + 1, (1,), generator=gen))
        y, x = (int(torch.randint(side_px - s + 1, (1,), generator=gen)) for _ in range(2))
        crop = F.interpolate(frames[i:i + 1, :, y:y + s, x:x + s], size=(size, size), mode="bilinear",
                             antialias=True, align_corners=False)
        out.append(crop.flip(-1) if float(torch.rand(1, generator=gen)) < 0.5 else crop)
    return torch.cat(out).clamp(-1, 1)


def finished_image_vae(out: Path, spec: ImageVAESpec) -> dict | None:
    """The record of an image VAE finished earlier in ``out`` with the same spec (steps, augmentation, widths,
    latent width), else None (a folder made with other settings, e.g. by a ``--quick`` run, is trained again)."""
    try:
        info = json.loads((out / "study.json").read_text())
    except (OSError, ValueError):
        return None
    return info if info.get("spec") == dataclasses.asdict(spec) else None


def train_image_vae(spec: ImageVAESpec, clips: torch.Tensor, out: Path, seed: int, log=print,
                    size: int | None = None) -> dict:
    """Train on the frames of ``clips`` (n c t h w in [-1, 1]) and save to ``out``; returns what it measured.
    With ``spec.random_crop_min < 1`` the clips are at a higher resolution and every batch is random crops of them
    resized to ``size`` (:func:`random_crops`). A folder finished with the same settings is reused."""
    done = finished_image_vae(out, spec)
    if done is not None:
        return done
    augment = spec.random_crop_min < 1
    if augment and size is None:
        raise ValueError("random crops need the training size (size=)")
    torch.manual_seed(seed)
    frames = rearrange(clips, "n c t h w -> (n t) c h w")
    vae = build_image_vae(spec).train()
    opt = torch.optim.Adam(vae.parameters(), lr=spec.lr, betas=(0.9, 0.99))
    # linear warm-up, then a cosine to 5 % (the VAE trainer's optim.schedule=cosine)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: schedule_factor(i, max(spec.warmup_steps, 1), spec.steps))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(spec.steps):
        if augment:
            batch = random_crops(frames, spec.batch_size, size, spec.random_crop_min, gen)
        else:
            batch = frames[torch.randint(len(frames), (spec.batch_size,), generator=gen)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = (recon - batch).abs().mean() + spec.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % max(spec.steps // 5, 1) == 0:
            log(f"image VAE step {step + 1}/{spec.steps}: L1 {loss.item():.4f}")
    vae.eval()
    if augment:  # the latent statistics of the frames as VC-VAE will see them: whole, at the training size
        import torch.nn.functional as F

        frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    with torch.no_grad():
        z = torch.cat([vae.encode(f).latent_dist.mode() for f in frames.split(256)])
    shift, std = z.mean().item(), z.std().item()
    vae.register_to_config(shift_factor=shift, scaling_factor=1.0 / std)
    info = {"steps": spec.steps, "frames": len(frames), "wall_s": time.perf_counter() - start,
            "random_crop_min": spec.random_crop_min, "spec": dataclasses.asdict(spec),
            "scaling_factor": 1.0 / std, "shift_factor": shift,
            "parameters": sum(p.numel() for p in vae.parameters())}
    tmp = out.with_name(f".{out.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    vae.save_pretrained(tmp)
    (tmp / "study.json").write_text(json.dumps(info, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


@torch.no_grad()
def image_vae_psnr(folder: Path, clips: torch.Tensor) -> float:
    """Held-out PSNR (dB, frames on [0, 1]) of the image VAE reconstructing each frame of ``clips`` on its own."""
    from diffusers import AutoencoderKL

    from pipelines.metrics import psnr_frames

    vae = AutoencoderKL.from_pretrained(folder).eval()
    frames = rearrange(clips, "n c t h w -> (n t) c h w")
    recon = vae.decode(vae.encode(frames).latent_dist.mode()).sample.clamp(-1, 1)
    recon = rearrange(recon, "(n t) c h w -> n c t h w", n=clips.shape[0])
    return psnr_frames(clips, recon).mean().item()


def widths(text: str) -> list[int]:
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise ValueError(f"expected comma-separated integers, got '{text}'") from None


def cli_spec(base: ImageVAESpec, **options) -> ImageVAESpec:
    """``base`` (the study config's spec) with the command's options that are set; ConfigError names a bad one.
    The demo builds its spec here too, so that it recognises the folder this command finished."""
    from .spec import check_image_vae

    spec = dataclasses.replace(base, **{k: v for k, v in options.items() if v is not None})
    check_image_vae(spec, lambda name, value: f"--{name.replace('_', '-')} {value}")
    return spec


def main(argv: list[str] | None = None) -> int:
    """``python -m pipelines.study.image_vae --out DIR [--steps N] [data.key=value ...]``: the study's image VAE alone
    (its spec from the study config, its frames from the recipe's training clips), e.g. the demo's initialiser of
    both VAEs. A finished folder is reused."""
    import argparse
    import sys

    from tokenizer.config import ConfigError, load_config

    from . import runs
    from .spec import StudyConfig, validate

    p = argparse.ArgumentParser(description=main.__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="the diffusers folder to write")
    p.add_argument("--config", default="configs/study/study.yaml", help="study config: image_vae spec and recipe")
    p.add_argument("--steps", type=int, help="training steps (default: the study config's image_vae.steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--random-crop-min", type=float, help="augment: random crops of [this, 1] x the frame side, "
                   "mirrored (default: the study config's image_vae.random_crop_min)")
    p.add_argument("--latent-channels", type=int, help="latent width (default: the study config's "
                   "image_vae.latent_channels; e.g. 5 for deco-compact, whose narrower latents are inflated from it)")
    p.add_argument("--block-out-channels", type=widths, metavar="C,C,C,C",
                   help="widths of the levels, comma-separated (default: the study config's, vcvae-tiny's 8,16,16,16)")
    p.add_argument("overrides", nargs="*", help="overrides of the recipe's training config, e.g. data.resolution=32")
    args = p.parse_args(argv)
    try:
        study = load_config(StudyConfig, args.config, [], validate=validate)
        spec = cli_spec(study.image_vae, steps=args.steps, random_crop_min=args.random_crop_min,
                        latent_channels=args.latent_channels, block_out_channels=args.block_out_channels)
        recipe = runs.train_config(study, [*args.overrides, "train.run_dir=unused"], False)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    size = recipe.data.resolution
    augment = spec.random_crop_min < 1
    data = dataclasses.replace(recipe.data, resolution=size * AUGMENT_SOURCE) if augment else recipe.data
    clips = runs.load_clips(data)
    print(f"image VAE: {clips.shape[0] * clips.shape[2]} training frames at {size} px"
          + (f" (random crops of [{spec.random_crop_min:g}, 1] x the side of {data.resolution} px frames, mirrored)"
             if augment else "") + f", {spec.steps} steps -> {args.out}", flush=True)
    info = train_image_vae(spec, clips, Path(args.out), args.seed, lambda line: print(line, flush=True), size)
    print(f"image VAE: {info['parameters']:,} parameters, {info['steps']} steps, {info['wall_s']:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
