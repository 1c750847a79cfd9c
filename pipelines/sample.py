"""Sample videos from a trained Latte run, decode them with the run's VAE, write mp4 + JSON sidecars, score FVD.

    python pipelines/sample.py --vae deco --ckpt runs/latte-ucf101-deco --num-videos 2048 --fvd \
        --detector i3d_pt --detector-path i3d_pretrained_400.pt
    accelerate launch pipelines/sample.py ...            # several GPUs split the videos, FVD features are gathered
    python -m pipelines.sample --vae sd --vae-path sd-vae-ft-ema --ckpt ucf101.pt --model Latte-XL/2 \
        --num-classes 101 --latent-frames 16 --latent-size 32  # a released Latte checkpoint (SD-VAE latents)

Reproducibility: video ``i`` has its own seed ``derive_seed(seed, i)``; its initial noise and every per-step noise
of the sampler come from generators seeded by it, and its label from ``(seed, i)`` under the label rule, so a
video does not depend on the batch size or on how many processes share the work (rank ``r`` of ``W`` takes
indices ``r, r + W, ...``). Files: ``OUT/videos/NNNNNN.mp4`` (+ ``.json`` sidecar: seed, label, sampler, steps,
cfg, checkpoint, VAE fingerprint), ``OUT/sample_settings.json`` (what every video in the folder shares; another
setting into the same folder is refused), ``OUT/contact_sheet.png`` (the first videos, a row each, labelled with
index, class and seed; ``--no-contact-sheet`` skips it), ``OUT/grid.gif`` (``--gif-grid``), ``OUT/fvd.json``
(``--fvd``).
Re-running the same command skips every video whose mp4 and matching sidecar exist.

FVD (``--fvd``) is computed under the run's protocol unless ``--fvd-protocol`` names one: real clips at the run's
frame interval (Latte's UCF101 recipe, every 3rd frame: ``fvd16_latte``), printed and recorded in ``fvd.json``
with the reason. mp4s are written at x264 CRF 5 under ``fvd16_latte`` (Latte's imageio quality 9), else CRF 18
(``--crf``). ``--seeds 0,1,2`` samples one set per seed into ``OUT/seed-<s>/`` and records each FVD, their mean
and standard deviation in ``OUT/fvd.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

if __package__ in (None, ""):  # run as a script (python pipelines/sample.py, accelerate launch): repo root on path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from einops import rearrange

from tokenizer.config import find_config
from tokenizer.io import state_dict_fingerprint, write_json
from tokenizer.training.state import derive_seed

SAMPLERS = ("ddpm", "ddim")
LABEL_RULES = ("uniform", "balanced")
SETTINGS_FILE = "sample_settings.json"
DEFAULT_CRF = 18
LATTE_CRF = 5  # Latte writes its samples with imageio quality 9, which ffmpeg's libx264 maps to about CRF 5
VIDEO_DIR = "videos"


class SampleError(ValueError):
    """A sampling request that cannot be honoured as asked (clear message, exit code 2 from the CLI)."""


class SourceError(ValueError):
    """A checkpoint / VAE combination that cannot be sampled (wrong VAE for the run, missing file, mismatch)."""


# ------------------------------------------------------------------------------------------ what is sampled

@dataclass
class LatteSource:
    """A Latte model, its diffusion, the latent normalisation and the VAE that decodes: everything sampling needs."""

    model: torch.nn.Module
    diffusion: Any
    vae: Any  # a tokenizer VideoVAE (for released Latte checkpoints: the frame-wise SD-VAE, 'sd')
    normalizer: Any  # tokenizer.cache.LatentNormalizer (None: latents are used as they are)
    latent_shape: tuple  # (c, t, h, w) of one latent video
    num_classes: int
    class_names: list
    checkpoint: str
    which: str
    model_fingerprint: str
    vae_name: str
    vae_fingerprint: str
    data_config: Any = None  # the run's DataConfig (real videos of FVD)
    train_steps: Optional[int] = None
    fp16: bool = False  # the network under float16 autocast (--fp16; sampler arithmetic and decoding in float32)

    @property
    def num_frames(self) -> int:
        return int(self.vae.num_frames(self.latent_shape[1]))

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.normalizer is None else self.normalizer.denormalize(x)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z)

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, y: Optional[torch.Tensor], sampler: str, steps: int, cfg_scale: float,
               generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Latents (b, c, t, h, w) in diffusion space from initial noise x_T and per-video step generators."""
        from diffusion import samplers

        fn = {"ddpm": samplers.ddpm_sample, "ddim": samplers.ddim_sample}[sampler]
        model = Float16Autocast(self.model) if self.fp16 else self.model
        return fn(model, tuple(noise.shape), self.diffusion, steps=steps, noise=noise, generator=list(generators),
                  y=y, cfg_scale=cfg_scale, progress=False)


def load_cache_vae(vae_name: str, manifest: dict, vae_ckpt: Optional[str], recorded: Optional[str],
                   device: torch.device):
    """The VAE whose latents the run trained on, checked against the cache manifest's name and fingerprint.

    ``vae_ckpt`` (``--vae-ckpt``) must have the cache's fingerprint; without it the VAE is found as the training
    script finds it (:func:`tokenizer.cache.cache_vae`: the run's recorded ckpt, the cache's ``vae_source``, or
    the preset rebuilt under the cache job's seed), always verified by fingerprint.
    """
    from tokenizer import load_vae
    from tokenizer.cache import CacheError, cache_vae

    ident = manifest["identity"]["vae"]
    if vae_name != ident["name"]:
        raise SourceError(f"--vae {vae_name}: this Latte run was trained on latents of VAE '{ident['name']}' "
                          f"(fingerprint {ident['fingerprint'][:16]}...); sample it with --vae {ident['name']}")
    if vae_ckpt is None:
        try:
            return cache_vae(manifest, recorded, device=device)
        except CacheError as err:
            raise SourceError(f"{err} (or pass the weights with --vae-ckpt)") from None
    if not Path(vae_ckpt).exists():
        raise SourceError(f"--vae-ckpt {vae_ckpt}: no such file or folder")
    try:
        vae = load_vae(vae_ckpt, device=str(device))
    except (ValueError, FileNotFoundError) as err:  # a Latte run, a wrong weights file, an unknown VAE name
        raise SourceError(f"--vae-ckpt {vae_ckpt}: {err}") from None
    if vae.name != ident["name"] or vae.fingerprint() != ident["fingerprint"]:
        raise SourceError(f"--vae-ckpt {vae_ckpt} ('{vae.name}', fingerprint {vae.fingerprint()[:16]}...) is not the "
                          f"VAE the run's latent cache was made with ('{ident['name']}', fingerprint "
                          f"{ident['fingerprint'][:16]}...): its decoded samples would be garbage")
    return vae


def open_source(ckpt: str | Path, vae: str, vae_ckpt: Optional[str] = None, vae_path: Optional[str] = None,
                which: str = "ema", model: Optional[str] = None, num_classes: int = 0, latent_frames: int = 16,
                latent_size: int = 32, device: str | torch.device = "cpu") -> LatteSource:
    """A Latte run folder (this toolkit's) or, with ``vae='sd'``, a released Latte checkpoint file."""
    device = torch.device(device)
    ckpt = Path(ckpt)
    if not ckpt.exists():
        raise SourceError(f"--ckpt {ckpt}: no such Latte run folder or checkpoint file")
    if ckpt.is_file():
        return _open_released(ckpt, vae, vae_path, model, num_classes, latent_frames, latent_size, device)
    return _open_run(ckpt, vae, vae_ckpt or vae_path, which, device)  # --vae sd: --vae-path is its weights


def _open_released(ckpt: Path, vae: str, vae_path: Optional[str], model: Optional[str], num_classes: int,
                   latent_frames: int, latent_size: int, device: torch.device) -> LatteSource:
    from diffusion import LATTE_NAMES, build_latte
    from diffusion.gaussian_diffusion import GaussianDiffusion
    from tokenizer import load_vae
    from tokenizer.cache import LatentNormalizer
    from tokenizer.io import load_state_dict_file
    from tokenizer.models.sd import is_diffusers_folder

    if vae != "sd" or not vae_path:
        raise SourceError(f"--ckpt {ckpt} is a checkpoint file: released Latte checkpoints are sampled with "
                          "--vae sd --vae-path <diffusers AutoencoderKL folder>")
    if model not in LATTE_NAMES:
        raise SourceError(f"--model: a released checkpoint needs its Latte preset, one of {', '.join(LATTE_NAMES)}")
    if not is_diffusers_folder(vae_path):
        raise SourceError(f"--vae-path {vae_path}: not a diffusers AutoencoderKL folder (no config.json); the SD VAE "
                          "Latte used is published as stabilityai/sd-vae-ft-ema (or sd-vae-ft-mse) on the Hugging Face "
                          "Hub: download it once and pass the folder")
    decoder = load_vae(vae_path, device=str(device))  # the frame-wise SD-VAE (tokenizer.models.sd)
    c = decoder.latent_channels
    # Latte's latents are the SD-VAE's times 0.18215 (the folder's scaling_factor): x = (z - shift) * scale
    normalizer = LatentNormalizer.from_vae_factors(c, decoder.shift_factor, decoder.scaling_factor,
                                                   {"vae": decoder.name, "fingerprint": decoder.fingerprint()})
    net = build_latte(model, in_channels=c, num_classes=num_classes, num_frames=latent_frames, input_size=latent_size)
    state = load_state_dict_file(ckpt)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise SourceError(f"{ckpt} does not fit {model} with {c} channels, {num_classes} classes, {latent_frames} "
                          f"frames, {latent_size} px latents: {str(err).splitlines()[0]}") from None
    return LatteSource(net.to(device).eval(), GaussianDiffusion(), decoder, normalizer, (c, latent_frames, latent_size,
                       latent_size), num_classes, [], str(ckpt.resolve()), "file", state_dict_fingerprint(state),
                       "sd", decoder.fingerprint())


def _open_run(run_dir: Path, vae: str, vae_ckpt: Optional[str], which: str, device: torch.device) -> LatteSource:
    from diffusion.latte_run import load_latte_run
    from tokenizer.config import from_dict
    from tokenizer.data import DataConfig

    try:
        run = load_latte_run(run_dir, which=which, device=device)
    except (FileNotFoundError, ValueError) as err:
        raise SourceError(f"--ckpt {run_dir}: {err}") from None
    manifest = run.manifest
    decoder = load_cache_vae(vae, manifest, vae_ckpt, run.record["vae"].get("ckpt"), device)
    data = from_dict(DataConfig, manifest["data"], source=f"{run_dir} cache manifest") if manifest.get("data") else None
    return LatteSource(run.model, build_diffusion(run.record["diffusion"]), decoder, run.normalizer,
                       tuple(run.latent_shape), run.num_classes, list(run.record.get("class_names") or []),
                       str(run.checkpoint.resolve()), which, state_dict_fingerprint(run.model.state_dict()),
                       decoder.name, decoder.fingerprint(), data, run.step)


def build_diffusion(record: dict):
    """The run's Gaussian diffusion (1000-step linear schedule, eps + learned-range variance by default)."""
    from diffusion.gaussian_diffusion import GaussianDiffusion

    return GaussianDiffusion(**record)


class Float16Autocast(torch.nn.Module):
    """``--fp16``: the network's forward under float16 autocast, its output back in float32 for the sampler."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model, self.null_label = model, getattr(model, "null_label", None)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: Optional[torch.Tensor] = None) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.float16):
            out = self.model(x, t) if y is None else self.model(x, t, y=y)
        return out.float()


def parse_steps(steps: int | str) -> int | str:
    """``--steps``: a count (``250``) or a respacing string (``ddim50``, ``10,15,20``), checked on 1000 steps."""
    from diffusion.gaussian_diffusion import space_timesteps

    text = str(steps).strip()
    value: int | str = int(text) if text.isdigit() else text
    try:
        space_timesteps(1000, value)
    except ValueError as err:
        raise SampleError(f"--steps {steps}: {err}") from None
    return value


# ------------------------------------------------------------------------------------------- seeds and labels

def video_seed(seed: int, index: int) -> int:
    """The seed of video ``index``: a function of (seed, index) only."""
    return derive_seed(seed, index)


def video_label(rule: str | Sequence[int], seed: int, index: int, num_classes: int) -> Optional[int]:
    """Class label of video ``index``: ``uniform`` (Latte's protocol: uniformly random, drawn from (seed, index)),
    ``balanced`` (index mod num_classes: equal counts per class), or a given list (cycled). None if unconditional."""
    if num_classes == 0:
        return None
    if isinstance(rule, str):
        if rule == "uniform":
            return int(np.random.default_rng([seed, index, 1]).integers(num_classes))
        if rule == "balanced":
            return index % num_classes
        raise SampleError(f"unknown label rule '{rule}': choose {', '.join(LABEL_RULES)} or a list of labels")
    return int(rule[index % len(rule)])


def parse_labels(text: str, num_classes: int, class_names: Sequence[str] = ()) -> str | list[int]:
    """``uniform`` | ``balanced`` | ``3,7,12`` | ``Biking,PlayingGuitar`` (class names of the run's dataset)."""
    if text in LABEL_RULES:
        return text
    if num_classes == 0:
        raise SampleError(f"--labels {text}: the run is unconditional (no classes)")
    labels = []
    for tok in (t.strip() for t in text.split(",") if t.strip()):
        if tok.lstrip("-").isdigit():
            labels.append(int(tok))
        elif tok in class_names:
            labels.append(list(class_names).index(tok))
        else:
            raise SampleError(f"--labels: '{tok}' is neither a label rule ({', '.join(LABEL_RULES)}), a class index "
                              f"nor a class name of the run's dataset")
    bad = [y for y in labels if not 0 <= y < num_classes]
    if not labels or bad:
        raise SampleError(f"--labels: class indices must lie in [0, {num_classes}), got {bad or text!r}")
    return labels


# -------------------------------------------------------------------------------------------------- settings

@dataclass
class SampleSettings:
    """What every video of an output folder shares (the sidecar of each video repeats it)."""

    checkpoint: str
    weights: str  # ema | raw | file
    model_fingerprint: str
    vae: str
    vae_fingerprint: str
    sampler: str
    steps: Any  # respaced steps: a count, or a respacing string ("ddim50", "10,15,20")
    cfg_scale: float
    labels: Any  # rule name or list
    seed: int
    num_frames: int
    fps: float
    latent_shape: list = field(default_factory=list)
    crf: int = DEFAULT_CRF  # x264 constant rate factor of the mp4s (FVD is computed from these files)
    precision: str = "fp32"  # of the network's forward: fp32 | fp16 (autocast)

    def diff(self, other: dict) -> list[str]:
        mine = json.loads(json.dumps(asdict(self)))
        other = {"crf": DEFAULT_CRF, "precision": "fp32", **other}  # folders from before these were recorded
        return [f"{k}: folder has {other.get(k)!r}, this run has {v!r}" for k, v in mine.items() if other.get(k) != v]


def make_settings(source: "LatteSource", sampler: str, steps: int, cfg_scale: float, labels: str | Sequence[int],
                  seed: int, fps: float, crf: int = DEFAULT_CRF) -> SampleSettings:
    return SampleSettings(
        checkpoint=source.checkpoint, weights=source.which, model_fingerprint=source.model_fingerprint,
        vae=source.vae_name, vae_fingerprint=source.vae_fingerprint, sampler=sampler, steps=parse_steps(steps),
        cfg_scale=float(cfg_scale), labels=labels if isinstance(labels, str) else list(map(int, labels)),
        seed=int(seed), num_frames=source.num_frames, fps=float(fps), latent_shape=list(source.latent_shape),
        crf=int(crf), precision="fp16" if source.fp16 else "fp32")


def check_out_dir(out: Path, settings: SampleSettings) -> bool:
    """Refuse to mix videos of different settings in one folder. Returns True when the settings file is to be
    written: a new folder, or one whose recorded settings differ but which holds no video yet (a run refused
    before its first video)."""
    path = out / SETTINGS_FILE
    has_videos = (out / VIDEO_DIR).is_dir() and any(p.suffix in (".mp4", ".json") and not p.name.startswith(".")
                                                    for p in (out / VIDEO_DIR).iterdir())
    if path.is_file():
        diff = settings.diff(json.loads(path.read_text()))
        if diff and has_videos:
            raise SampleError(f"{out} holds videos sampled with other settings; use another --out, or the same "
                              "settings to resume:\n  " + "\n  ".join(diff))
        return bool(diff)
    if has_videos:
        raise SampleError(f"{out / VIDEO_DIR} is not empty but {out} has no {SETTINGS_FILE}: not a sample.py folder")
    return True


def check_guidance(cfg_scale: float, num_classes: int) -> None:
    """Classifier-free guidance needs class labels: refused on an unconditional run, before anything is written."""
    if cfg_scale != 1.0 and num_classes == 0:
        raise SampleError(f"--cfg-scale {cfg_scale:g}: the run is unconditional (no classes), so there is nothing to "
                          "guide; leave --cfg-scale out or set it to 1")


def video_paths(out: Path, index: int) -> tuple[Path, Path]:
    return out / VIDEO_DIR / f"{index:06d}.mp4", out / VIDEO_DIR / f"{index:06d}.json"


def sidecar(settings: SampleSettings, index: int, label: Optional[int], class_names: Sequence[str]) -> dict:
    name = class_names[label] if label is not None and label < len(class_names) else None
    shared = asdict(settings)
    shared["base_seed"] = shared.pop("seed")  # 'seed' is this video's own seed, derive_seed(base_seed, index)
    return dict(kind="sample_video", index=index, seed=video_seed(settings.seed, index), label=label,
                label_name=name, **shared)


def is_done(out: Path, expected: dict) -> bool:
    """Video written by an earlier run with exactly these settings, seed and label (mp4 then sidecar, atomically)."""
    mp4, meta = video_paths(out, expected["index"])
    if not (mp4.is_file() and meta.is_file()):
        return False
    try:
        return json.loads(meta.read_text()) == json.loads(json.dumps(expected))
    except json.JSONDecodeError:
        return False


# -------------------------------------------------------------------------------------------------- sampling

@torch.no_grad()
def sample_batch(source: LatteSource, seeds: Sequence[int], labels: Sequence[Optional[int]], sampler: str,
                 steps: int, cfg_scale: float, device: torch.device) -> torch.Tensor:
    """Videos (b, 3, T, H, W) in [-1, 1] for the given per-video seeds and labels (b = len(seeds)).

    Video j's initial noise comes from ``Generator(seeds[j])``, its per-step noise from ``Generator(derive_seed(
    seeds[j], 1))``: nothing depends on the other videos of the batch.
    """
    shape = tuple(source.latent_shape)  # (c, t, h, w)
    noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    step_gens = [torch.Generator().manual_seed(derive_seed(s, 1)) for s in seeds]  # CPU: same draws on any device
    y = None if source.num_classes == 0 else torch.tensor([int(l) for l in labels], device=device)
    x = source.sample(noise.to(device), y, sampler, steps, cfg_scale, step_gens)  # (b, c, t, h, w) diffusion space
    z = source.denormalize(x)  # the VAE's latent space
    return source.decode(z).clamp(-1, 1)


def write_grid(out: Path, indices: Sequence[int], fps: float, max_videos: int = 16) -> Optional[Path]:
    """A GIF grid of the first written videos (read back from their mp4s), ceil(sqrt(n)) columns."""
    from tokenizer.data.video_io import read_video_frames, video_num_frames, write_video

    paths = [video_paths(out, i)[0] for i in sorted(indices)[:max_videos]]
    paths = [p for p in paths if p.is_file()]
    if not paths:
        return None
    clips = [read_video_frames(p, range(video_num_frames(p))) for p in paths]  # (t, h, w, c) uint8 each
    t = min(c.shape[0] for c in clips)
    cols = int(np.ceil(np.sqrt(len(clips))))
    blank = torch.zeros_like(clips[0][:t])
    tiles = [c[:t] for c in clips] + [blank] * (cols * int(np.ceil(len(clips) / cols)) - len(clips))
    grid = rearrange(torch.stack(tiles), "(gr gc) t h w c -> t (gr h) (gc w) c", gc=cols)
    return write_video(out / "grid.gif", grid.contiguous(), fps=fps)


def write_contact_sheet(out: Path, indices: Sequence[int], max_videos: int = 8,
                        num_frames: int = 6) -> Optional[Path]:
    """``OUT/contact_sheet.png``: the first written videos (read back from their mp4s), one row each with
    ``num_frames`` evenly spaced frames, labelled from its sidecar (index, class, seed)."""
    from tokenizer.data.video_io import read_video_frames, video_num_frames
    from tokenizer.training.samples import contact_sheet, write_png

    videos, labels = [], []
    for i in sorted(indices)[:max_videos]:
        mp4, meta = video_paths(out, i)
        if not (mp4.is_file() and meta.is_file()):
            continue
        frames = read_video_frames(mp4, range(video_num_frames(mp4)))  # t h w c uint8
        videos.append(rearrange(frames, "t h w c -> c t h w").float() / 127.5 - 1)
        side = json.loads(meta.read_text())
        name = side.get("label_name") or (f"class {side['label']}" if side.get("label") is not None else None)
        labels.append(", ".join(x for x in (f"video {i}", name, f"seed {side['seed']}") if x))
    if not videos:
        return None
    return write_png(out / "contact_sheet.png", contact_sheet(videos, labels, num_frames=num_frames))


def sample_videos(source: LatteSource, out: str | Path, num_videos: int, sampler: str = "ddpm", steps: int = 250,
                  cfg_scale: float = 1.0, labels: str | Sequence[int] = "uniform", seed: int = 0,
                  batch_size: int = 4, fps: float = 8.0, gif_grid: bool = False, progress: bool = True,
                  rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                  crf: int = DEFAULT_CRF, sheet: bool = True) -> dict:
    """Sample videos ``0 .. num_videos - 1`` into ``out`` (this process: indices ``rank, rank + W, ...``).

    Returns ``{"written": [...], "skipped": [...], "paths": [mp4 of every index], "settings": ...}``; videos already
    in ``out`` with the same settings are skipped, so an interrupted run continues where it stopped.
    """
    from tqdm import tqdm

    from tokenizer.data.video_io import video_to_uint8, write_video

    out, device = Path(out), torch.device(device)
    if sampler not in SAMPLERS:
        raise SampleError(f"unknown sampler '{sampler}': choose {', '.join(SAMPLERS)}")
    if num_videos < 1 or batch_size < 1:
        raise SampleError("--num-videos and --batch-size must be >= 1")
    steps = parse_steps(steps)
    check_guidance(cfg_scale, source.num_classes)
    settings = make_settings(source, sampler, steps, cfg_scale, labels, seed, fps, crf)
    if check_out_dir(out, settings):  # every rank: same content, atomic, after validation, before its first video
        write_json(out / SETTINGS_FILE, asdict(settings))
    mine = list(range(rank, num_videos, world_size))
    expected = {i: sidecar(settings, i, video_label(labels, seed, i, source.num_classes), source.class_names)
                for i in mine}
    todo = [i for i in mine if not is_done(out, expected[i])]
    skipped = [i for i in mine if i not in todo]
    bar = tqdm(total=len(todo), desc="videos", unit="video", disable=not progress or rank != 0)
    for k in range(0, len(todo), batch_size):
        batch = todo[k:k + batch_size]
        videos = sample_batch(source, [expected[i]["seed"] for i in batch], [expected[i]["label"] for i in batch],
                              sampler, steps, cfg_scale, device)
        for i, video in zip(batch, videos):
            mp4, meta = video_paths(out, i)
            write_video(mp4, video_to_uint8(video), fps=fps, crf=crf)  # atomic; the sidecar marks it done
            write_json(meta, expected[i])
        bar.update(len(batch))
    bar.close()
    # the grid needs every rank's videos: with several processes the caller writes it after a barrier (see main)
    grid = write_grid(out, range(num_videos), fps) if gif_grid and world_size == 1 else None
    sheet_path = write_contact_sheet(out, range(num_videos)) if sheet and world_size == 1 else None
    return dict(written=todo, skipped=skipped, paths=[video_paths(out, i)[0] for i in range(num_videos)],
                settings=settings, grid=grid, sheet=sheet_path)


def fvd_record(result: Any, source: LatteSource, settings: SampleSettings, num_videos: int,
               protocol_choice: str = "", per_seed: Sequence[tuple[int, Any]] = ()) -> dict:
    """What ``OUT/fvd.json`` holds; :mod:`pipelines.report` reads it (``kind: latte_fvd``). With several sample
    seeds (``per_seed``: (seed, result) pairs), ``seeds`` holds each FVD, their mean and standard deviation
    (ddof 1) and ``fvd`` the first seed's full result (the protocol they share)."""
    c, t, h, w = source.latent_shape
    s = source.vae.compression[1]
    record = dict(kind="latte_fvd", vae=source.vae_name, vae_fingerprint=source.vae_fingerprint,
                  latent_shape=[c, t, h, w], clip_shape=[3, source.num_frames, h * s, w * s],
                  latent_channels=c, compression=list(source.vae.compression),
                  checkpoint=source.checkpoint, weights=source.which, train_steps=source.train_steps,
                  num_videos=num_videos, settings=asdict(settings), protocol_choice=protocol_choice,
                  fvd=result.to_dict())
    if len(per_seed) > 1:
        values = [float(r.fvd) for _, r in per_seed]
        record["seeds"] = dict(seeds=[int(k) for k, _ in per_seed], values=values, mean=float(np.mean(values)),
                               std=float(np.std(values, ddof=1)), lines=[r.line() for _, r in per_seed])
    return record


# ------------------------------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.sample", description=__doc__.split("\n\n")[0])
    p.add_argument("--vae", required=True, help="registry name of the run's VAE (checked), or 'sd' (+ --vae-path)")
    p.add_argument("--vae-ckpt", help="VAE weights (folder / run / file); default: the one recorded by the cache")
    p.add_argument("--vae-path", help="--vae sd: a local diffusers AutoencoderKL folder (e.g. sd-vae-ft-ema)")
    p.add_argument("--ckpt", required=True, help="Latte run folder (or, with --vae sd, a released checkpoint file)")
    p.add_argument("--weights", choices=("ema", "raw"), default="ema", help="which weights of the run (default ema)")
    p.add_argument("--num-videos", type=int, default=16)
    p.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    p.add_argument("--steps", default="250", help="respaced sampling steps (Latte: DDPM 250), or a respacing string: "
                                                  "ddimN (IDDPM's integer stride) or section counts 10,15,20")
    p.add_argument("--fp16", action="store_true", help="run the network under float16 autocast (Latte's "
                                                       "--use_fp16 casts its weights instead)")
    p.add_argument("--cfg-scale", type=float, default=None,
                   help="classifier-free guidance on eps (default: 7.0 for class-conditional runs, 1.0 otherwise)")
    p.add_argument("--labels", default="uniform", help="uniform | balanced | comma list of class indices or names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", help="several sample seeds, e.g. 0,1,2: one set of videos per seed (OUT/seed-<s>/), "
                                   "one FVD each; fvd.json holds their mean and spread (overrides --seed)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--out", default=None, help="output folder (default: RUN/samples/<sampler>-<steps>-cfg<scale>)")
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--crf", type=int, default=None,
                   help=f"x264 CRF of the mp4s (default: {LATTE_CRF}, Latte's quality, under the fvd16_latte protocol; "
                        f"{DEFAULT_CRF} otherwise)")
    p.add_argument("--gif-grid", action="store_true", help="also write a GIF grid of the first 16 videos")
    p.add_argument("--no-contact-sheet", action="store_true",
                   help="skip OUT/contact_sheet.png (the first 8 videos, 6 frames each, labelled)")
    p.add_argument("--fvd", action="store_true", help="FVD against the run's dataset after sampling")
    p.add_argument("--fvd-protocol", default="auto",
                   help="auto (default): the run's protocol, real clips at its frame interval (Latte's UCF101 recipe, "
                        "interval 3: fvd16_latte; interval 1: fvd16); or a protocol name (fvd16, fvd16_latte, fvd128)")
    p.add_argument("--fvd-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol field (e.g. num_real=512); the result's protocol name records it")
    p.add_argument("--fvd-real", help="real videos for FVD (data config YAML or folder); default: the run's data")
    p.add_argument("--detector", default="i3d_pt",
                   help="i3d_pt | i3d_torchscript | i3d_rgb_imagenet (labelled) | random (labelled)")
    p.add_argument("--detector-path", help="detector weights file (else $VIDTOK_I3D_PATH)")
    p.add_argument("--fvd-stats-dir", default="outputs/fvd_stats", help="cache of real-data statistics")
    p.add_argument("--model", help="released checkpoint only: Latte preset, e.g. Latte-XL/2")
    p.add_argument("--num-classes", type=int, default=0, help="released checkpoint only (UCF101: 101)")
    p.add_argument("--latent-frames", type=int, default=16, help="released checkpoint only")
    p.add_argument("--latent-size", type=int, default=32, help="released checkpoint only")
    p.add_argument("--device", default="auto")
    p.add_argument("--dry-run", action="store_true", help="validate and print the resolved settings only")
    return p


def run_protocol(name: str, source: LatteSource) -> tuple[Any, str]:
    """The FVD protocol ``--fvd-protocol`` names and why: ``auto`` takes the run's frame interval as the real
    stride (generated clips move at that interval, so the real ones must too)."""
    from pipelines.fvd import get_protocol, protocol_for_run

    if name != "auto":
        return get_protocol(name), f"--fvd-protocol {name}"
    if source.data_config is not None:
        interval = int(source.data_config.frame_interval)
        return (protocol_for_run(16, interval),
                f"auto: real clips at the run's frame interval {interval} (its data config)")
    if source.which == "file":  # a released Latte checkpoint: Latte's recipe samples every 3rd frame
        return protocol_for_run(16, 3), "auto: a released Latte checkpoint, trained on every 3rd frame"
    return protocol_for_run(16, 1), "auto: the run records no data config; real clips at stride 1"


def _fvd_args(args: argparse.Namespace, source: LatteSource, device: torch.device) -> tuple[Any, Any, Any, str]:
    """Validate the FVD request before any sampling: protocol, detector file, real data."""
    from pipelines.fvd import get_protocol
    from pipelines.i3d import build_detector
    from tokenizer.config import ConfigError

    overrides = {}
    for item in args.fvd_set:
        key, sep, value = item.partition("=")
        if not sep:
            raise SampleError(f"--fvd-set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key] = int(value)
        except ValueError:
            raise SampleError(f"--fvd-set {key}: expects a whole number, got {value!r}") from None
    try:
        base, why = run_protocol(args.fvd_protocol, source)
        protocol = get_protocol(base, **overrides)
    except ConfigError as err:
        raise SampleError(f"--fvd-protocol: {err}") from None
    except (TypeError, ValueError) as err:
        raise SampleError(f"--fvd-set: {err}") from None
    frames_needed = (protocol.num_frames - 1) * protocol.fake_stride + 1
    if source.num_frames < frames_needed:
        fits = (source.num_frames - 1) // protocol.fake_stride + 1
        raise SampleError(f"FVD protocol {protocol.name} needs {frames_needed} frames per generated video; this run "
                          f"makes {source.num_frames}. Either score the frames it makes with --fvd-set "
                          f"num_frames={fits} (an FVD{fits}: its own protocol, not comparable to published "
                          f"FVD{protocol.num_frames}), or train on clips of at least {frames_needed} frames")
    real = args.fvd_real or source.data_config
    if real is None:
        raise SampleError("--fvd: the checkpoint records no dataset; give the real videos with --fvd-real")
    if isinstance(real, str) and not find_config(real).exists():  # a bundled config name counts
        raise SampleError(f"--fvd-real: no such data config or folder: {real}")
    try:
        detector = build_detector(args.detector, args.detector_path, device)  # a missing weights file stops here
    except ValueError as err:  # an unknown name, or rgb_imagenet.pt given as i3d_pt
        raise SampleError(f"--detector: {err}") from None
    return protocol, detector, real, why


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from accelerate import PartialState

    from tokenizer.config import ConfigError

    # one process, or the ranks of `accelerate launch` (on CPU-only machines PartialState must be told cpu=True,
    # else it reports one process while the launcher started several)
    state = PartialState(cpu=args.device == "cpu" or not torch.cuda.is_available())
    device = state.device if args.device == "auto" else torch.device(args.device)
    try:
        source = open_source(args.ckpt, vae=args.vae, vae_ckpt=args.vae_ckpt, vae_path=args.vae_path,
                             which=args.weights, model=args.model, num_classes=args.num_classes,
                             latent_frames=args.latent_frames, latent_size=args.latent_size, device=device)
        labels = parse_labels(args.labels, source.num_classes, source.class_names)
        cfg_scale = args.cfg_scale if args.cfg_scale is not None else (7.0 if source.num_classes else 1.0)
        default_out = Path(args.ckpt) if Path(args.ckpt).is_dir() else Path(args.ckpt).parent
        out = Path(args.out) if args.out else default_out / "samples" / f"{args.sampler}-{args.steps}-cfg{cfg_scale:g}"
        if out.exists() and not out.is_dir():
            raise SampleError(f"--out {out} exists and is not a folder")
        if args.num_videos < 1 or args.batch_size < 1:
            raise SampleError("--num-videos and --batch-size must be >= 1")
        args.steps = parse_steps(args.steps)
        source.fp16 = args.fp16
        check_guidance(cfg_scale, source.num_classes)
        seeds = parse_seeds(args.seeds) if args.seeds else [args.seed]
        fvd = _fvd_args(args, source, device) if args.fvd else None
        # the run's protocol picks the default CRF whether or not --fvd is given now, so a folder sampled first and
        # scored later keeps its settings
        protocol = fvd[0] if fvd is not None else run_protocol(args.fvd_protocol, source)[0]
        crf = args.crf if args.crf is not None else (
            LATTE_CRF if protocol.name.split("[")[0] == "fvd16_latte" else DEFAULT_CRF)
        if not 0 <= crf <= 51:
            raise SampleError(f"--crf {crf}: x264 takes 0 (lossless) .. 51")
        outs = {seed: out if len(seeds) == 1 else out / f"seed-{seed}" for seed in seeds}
        for seed, folder in outs.items():
            check_out_dir(folder, make_settings(source, args.sampler, args.steps, cfg_scale, labels, seed, args.fps,
                                                crf))
    except (SampleError, SourceError, ConfigError, FileNotFoundError, ValueError) as err:  # wrong weights files too
        print(f"error: {err}", file=sys.stderr)
        return 2
    if state.is_main_process:
        resolved = dict(checkpoint=source.checkpoint, weights=source.which, vae=source.vae_name,
                        vae_fingerprint=source.vae_fingerprint, latent_shape=list(source.latent_shape),
                        num_frames=source.num_frames, num_classes=source.num_classes, num_videos=args.num_videos,
                        sampler=args.sampler, steps=args.steps, cfg_scale=cfg_scale, labels=labels, seeds=seeds,
                        batch_size=args.batch_size, processes=state.num_processes, out=str(out), crf=crf,
                        fvd=None if fvd is None else dict(protocol=fvd[0].to_dict(), why=fvd[3],
                                                          detector=fvd[1].info.to_dict(), real=str(fvd[2])))
        print("--- resolved sampling settings ---\n" + json.dumps(resolved, indent=2, default=str) + "\n---")
        if fvd is not None:
            print(f"FVD protocol: {fvd[0].name} ({fvd[3]}; real stride {fvd[0].real_stride}, {fvd[0].num_frames} "
                  f"frames, {fvd[0].resolution} px), detector {fvd[1].info.name}")
    if args.dry_run:
        return 0
    if state.is_main_process:  # one job per folder; then the hidden temporary files of a killed earlier run go
        from tokenizer.io import FolderLockedError, hold_folder, remove_stale_temps

        try:
            out.mkdir(parents=True, exist_ok=True)
            hold_folder(out, "another --out")
        except FolderLockedError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for folder in outs.values():
            remove_stale_temps(folder / VIDEO_DIR)
            remove_stale_temps(folder)
    state.wait_for_everyone()  # (the folder's lock goes with this process)
    per_seed = []
    for seed, folder in outs.items():
        try:
            result = sample_videos(source, folder, args.num_videos, args.sampler, args.steps, cfg_scale, labels, seed,
                                   args.batch_size, args.fps, gif_grid=False, rank=state.process_index,
                                   world_size=state.num_processes, device=device, crf=crf, sheet=False)
        except SampleError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except OSError as err:  # disk full, permission: every finished video is kept, a re-run continues
            from tokenizer.io import write_error_line

            hint = "the videos written so far are kept; re-run the same command to continue"
            print(f"error: {write_error_line(err, hint)}", file=sys.stderr)
            return 4
        state.wait_for_everyone()  # every rank's videos are on disk
        if state.is_main_process:
            grid = write_grid(folder, range(args.num_videos), args.fps) if args.gif_grid else None
            sheet = None if args.no_contact_sheet else write_contact_sheet(folder, range(args.num_videos))
            print(f"{args.num_videos} videos in {folder / VIDEO_DIR} ({len(result['skipped'])} already there on this "
                  "rank)" + (f"; contact sheet {sheet}" if sheet else "") + (f"; grid {grid}" if grid else ""))
        if fvd is not None:
            from pipelines.fvd import compute_fvd

            protocol, detector, real, _ = fvd
            res = compute_fvd(real, [str(p) for p in result["paths"]], protocol, detector, batch_size=args.batch_size,
                              device=device, cache_dir=args.fvd_stats_dir, out=None)
            per_seed.append((seed, res, result["settings"]))
    if per_seed and state.is_main_process:
        seed0, res0, settings0 = per_seed[0]
        record = fvd_record(res0, source, settings0, args.num_videos, fvd[3], [(k, r) for k, r, _ in per_seed])
        write_json(out / "fvd.json", record)
        if len(per_seed) > 1:
            spread = record["seeds"]
            print(f"FVD{protocol.num_frames} ({protocol.name}) over sample seeds {spread['seeds']}: "
                  f"{spread['mean']:.4f} ± {spread['std']:.4f} (std, ddof 1)")
        print(f"FVD result saved to {out / 'fvd.json'}")
    return 0


def parse_seeds(text: str) -> list[int]:
    """``--seeds 0,1,2`` -> [0, 1, 2] (distinct whole numbers, in the given order)."""
    try:
        seeds = [int(tok) for tok in text.split(",") if tok.strip()]
    except ValueError:
        raise SampleError(f"--seeds expects comma-separated whole numbers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SampleError(f"--seeds expects distinct whole numbers, got {text!r}")
    return seeds


if __name__ == "__main__":
    sys.exit(main())
