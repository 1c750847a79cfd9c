"""Write a latent cache: encode every clip once, in shards, resumably, on one process or many.

:func:`run_cache` is the library entry point behind ``python -m tokenizer.cache``. One call, on every rank:

1. plan (:mod:`.plan`): clip length from the VAE's frame rule, dataset probe, shard size, identity;
2. rank 0 claims the folder (writes the manifest with ``complete: false``) unless a manifest is there already;
   every rank then refuses a manifest whose identity differs from its own, naming each difference;
3. each rank skips its shards that are done (shard + sidecar present, hash matching) and encodes the others:
   DataLoader workers decode and resize the next clips while the VAE encodes, a writer thread stores finished
   shards atomically (:func:`tokenizer.io.atomic_write`) and then their sidecars;
4. rank 0 folds the per-shard float64 sums into the statistics and rewrites the manifest as complete.

A killed run restarted with the same command therefore redoes at most the shards that were in flight. Clips whose
video fails to decode are dropped (never replaced by another video's clip) and the video is listed in the manifest.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from einops import rearrange
from safetensors.torch import save as safetensors_bytes
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ..config import ConfigError, to_dict
from ..data import DataConfig, VideoReadError
from ..io import LOCK_FILE, atomic_write, hold_folder, release_folder, sha256_file, write_json
from .config import CacheConfig
from .manifest import (FORMAT, MANIFEST, SHARD_DIR, SHARD_METADATA_KEY, VERSION, CacheError, CacheMismatchError, combine_stats,
                       identity_diff, read_manifest, shard_path, sidecar_path)
from ..data.workers import loader_workers
from .plan import CachePlan, count, make_plan

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


# ------------------------------------------------------------------------------------------------ the folder
def _plan_manifest(plan: CachePlan, vae_source: str) -> dict:
    ds = plan.dataset
    return {"format": FORMAT, "version": VERSION, "complete": False, "identity": plan.identity,
            "vae_source": vae_source, "data": to_dict(plan.data_cfg), "cache": to_dict(plan.cfg),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "num_shards": plan.num_shards, "class_names": ds.class_names, "videos": plan.video_table(),
            "skipped": [{"path": p, "reason": r, "when": "probe"} for p, r in ds.skipped]}


def _claim_folder(out: Path, plan: CachePlan, vae_source: str) -> None:
    """Rank 0, before the others look: write the plan manifest into an empty folder; clean stale temp files."""
    for tmp in [*out.glob(f".{MANIFEST}.*.tmp*"), *(out / SHARD_DIR).glob(".*.tmp*")]:
        tmp.unlink(missing_ok=True)  # left by a kill in the middle of an atomic write (the first manifest too)
    if (out / MANIFEST).is_file():
        return
    if out.exists() and any(p.name != LOCK_FILE for p in out.iterdir()):
        return  # not ours: every rank refuses it in _check_folder
    write_json(out / MANIFEST, _plan_manifest(plan, vae_source))


def _check_folder(out: Path, plan: CachePlan) -> None:
    if not (out / MANIFEST).is_file():
        raise CacheError(f"{out} is not empty and holds no {MANIFEST}: refusing to write a cache into it")
    manifest = read_manifest(out, require_complete=False)
    diff = identity_diff(manifest["identity"], plan.identity)
    if diff:
        raise CacheMismatchError(f"{out} holds a cache made differently; refusing to mix it with this run:\n  "
                                 + "\n  ".join(diff) + "\n(use another --out folder, or delete this one)")


def _done_record(out: Path, k: int, digest: str, verify: bool) -> dict | None:
    """The sidecar of shard ``k`` if the shard is complete and intact, else None."""
    side, path = sidecar_path(out, k), shard_path(out, k)
    if not (side.is_file() and path.is_file()):
        return None
    try:
        rec = json.loads(side.read_text())
    except json.JSONDecodeError:
        return None
    if rec.get("identity") != digest or path.stat().st_size != rec.get("bytes"):
        return None
    if verify and sha256_file(path) != rec.get("sha256"):
        return None
    return rec


# ----------------------------------------------------------------------------------------------- one shard
def _channel_sums(x: torch.Tensor, rows: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel float64 sums of x and x^2 over (n, C, T', H', W') rows, a few rows at a time (a float64 copy of
    a whole 256 MB shard would take 1-2 GB)."""
    total = torch.zeros(x.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, x.shape[0], rows):
        part = x[i:i + rows].double()
        total += part.sum((0, 2, 3, 4))
        squares += part.square().sum((0, 2, 3, 4))
    return total, squares


class ShardBuffer:
    """Rows of one shard as they come out of the VAE, then its file and sidecar."""

    def __init__(self, k: int, expected_batches: int):
        self.k, self.remaining = k, expected_batches
        self.columns: dict[str, list[torch.Tensor]] = {}
        self.dropped: list[dict] = []

    def add(self, rows: dict[str, torch.Tensor]) -> None:
        for name, value in rows.items():
            self.columns.setdefault(name, []).append(value)

    def write(self, out: Path, plan: CachePlan) -> dict:
        c, t, h, w = plan.latent_shape
        empty = {"mean": torch.empty(0, c, t, h, w, dtype=plan.storage_dtype)}
        if plan.cfg.store_std:
            empty["std"] = empty["mean"]
        for name in ("label", "item", "flip", "video", "start", "clip"):
            empty[name] = torch.empty(0, dtype=torch.int64)
        tensors = {name: torch.cat(self.columns[name]) if name in self.columns else empty[name] for name in empty}
        # one metadata key: safetensors writes a metadata dict in hash order, which would make the bytes vary
        meta = json.dumps({"format": FORMAT, "identity": plan.digest, "shard": self.k}, sort_keys=True)
        blob = safetensors_bytes(tensors, metadata={SHARD_METADATA_KEY: meta})
        with atomic_write(shard_path(out, self.k)) as f:
            f.write(blob)
        total, squares = _channel_sums(tensors["mean"])  # of the stored values
        stats = {"count": tensors["mean"].shape[0] * t * h * w, "sum": total.tolist(), "sumsq": squares.tolist()}
        if plan.cfg.store_std:
            stats["var_sum"] = _channel_sums(tensors["std"])[1].tolist()
        labels = tensors["label"].tolist()
        record = {"shard": self.k, "identity": plan.digest, "file": f"{SHARD_DIR}/{self.k:05d}.safetensors",
                  "items": [plan.shard_items(self.k).start, plan.shard_items(self.k).stop], "clips": len(labels),
                  "bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest(), "stats": stats,
                  "per_label": {str(y): labels.count(y) for y in sorted(set(labels))}, "dropped": self.dropped}
        write_json(sidecar_path(out, self.k), record)  # after the shard: a sidecar always describes a full shard
        return record


# ------------------------------------------------------------------------------------------------- encoding
def to_channels_last_3d(model: nn.Module) -> nn.Module:
    """Lay out the 5-D (3D-convolution) weights channels-last; 4-D weights (e.g. DeCo-VAE's 2D motion estimator),
    which ``Module.to(memory_format=torch.channels_last_3d)`` would refuse, are left as they are."""
    for p in model.parameters():
        if p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return model


class ExactClips(Dataset):
    """The dataset's items, each read from its own video or not at all (:meth:`VideoClipDataset.read_exact`).

    A cache must never store one video's clip under another's item, nor stop at broken videos: a clip whose video
    fails while decoding comes back as a zero placeholder with ``read_error`` set, and :class:`ClipEncoder` drops
    it and lists the video.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            return {**self.dataset.read_exact(index), "read_error": ""}
        except VideoReadError as err:
            cfg = self.dataset.cfg
            v, clip = divmod(index, cfg.clips_per_video)
            info = self.dataset.videos[v]
            return {"video": torch.zeros(3, cfg.num_frames, cfg.resolution, cfg.resolution), "label": info.label,
                    "path": info.path, "start": -1, "clip": clip, "index": index,
                    "read_error": f"{info.path}: {err.reason}"}


class ClipEncoder:
    """Batches of decoded clips -> storage-dtype rows (posterior mean [and std] + metadata columns)."""

    def __init__(self, plan: CachePlan, device: torch.device, channels_last: bool):
        self.plan, self.device, self.channels_last = plan, device, channels_last
        self.vae = plan.vae.eval().to(device)
        if channels_last:
            to_channels_last_3d(self.vae)
        self.kwargs = {} if plan.cfg.chunk_size is None else {"chunk_size": plan.cfg.chunk_size}

    def __call__(self, batch: dict, buffer: ShardBuffer) -> int:
        """Encode one DataLoader batch into ``buffer``; return the number of clips stored."""
        plan, cpv = self.plan, self.plan.data_cfg.clips_per_video
        items = batch["index"]  # (b,)
        ok = torch.tensor([not err for err in batch["read_error"]], dtype=torch.bool)
        for j in (~ok).nonzero().flatten().tolist():  # its video failed while decoding: drop it, list the video
            video = plan.dataset.videos[int(items[j]) // cpv]
            reason = batch["read_error"][j].split("\n")[0].partition(": ")[2]
            buffer.dropped.append({"item": int(items[j]), "path": video.path, "reason": reason})
        if not ok.any():
            return 0
        video = batch["video"] if ok.all() else batch["video"][ok]  # (b, c, t, h, w) float32 in [-1, 1]
        if plan.copies == 2:  # each clip followed by its horizontal mirror
            video = rearrange(torch.stack([video, video.flip(-1)], 1), "b f c t h w -> (b f) c t h w")
        video = video.to(self.device, non_blocking=True)
        if self.channels_last:
            video = video.contiguous(memory_format=torch.channels_last_3d)
        autocast = (torch.autocast(self.device.type, dtype=AUTOCAST[plan.precision])
                    if plan.precision in AUTOCAST else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            posterior = self.vae.encode(video, **self.kwargs)
        rows = {"mean": posterior.mean.float().to(plan.storage_dtype).cpu().contiguous()}  # (b f, C, T', H', W')
        if plan.cfg.store_std:
            rows["std"] = posterior.std.float().to(plan.storage_dtype).cpu().contiguous()
        rep = lambda x: x[ok].repeat_interleave(plan.copies)  # noqa: E731 - one value per stored row
        rows.update(label=rep(batch["label"]), item=rep(items), video=rep(items // cpv), start=rep(batch["start"]),
                    clip=rep(batch["clip"]), flip=torch.arange(plan.copies).repeat(int(ok.sum())))
        buffer.add(rows)
        return rows["mean"].shape[0]


def _encode_shards(plan: CachePlan, shards: list[int], out: Path, device: torch.device, show: bool,
                   desc: str) -> None:
    cfg = plan.cfg
    batches = plan.batches(shards)
    per_shard = Counter(k for k, _ in batches)  # VAE calls per shard
    workers = loader_workers(cfg.num_workers)  # never more than the cores
    loader = DataLoader(ExactClips(plan.dataset), batch_sampler=[items for _, items in batches], num_workers=workers,
                        pin_memory=device.type == "cuda", prefetch_factor=cfg.prefetch_factor if workers else None,
                        persistent_workers=False)
    channels_last = cfg.channels_last if cfg.channels_last is not None else device.type == "cuda"
    encode = ClipEncoder(plan, device, channels_last)
    total = sum(len(plan.shard_items(k)) for k in shards) * plan.copies
    buffers: dict[int, ShardBuffer] = {}
    pending: list[Future] = []
    with ThreadPoolExecutor(max_workers=1) as writer, \
            tqdm(total=total, unit="clip", desc=desc, disable=not show, dynamic_ncols=True) as bar:
        for (k, items), batch in zip(batches, loader):
            buf = buffers.setdefault(k, ShardBuffer(k, per_shard[k]))
            encode(batch, buf)
            bar.update(len(items) * plan.copies)
            buf.remaining -= 1
            if buf.remaining == 0:  # the shard is complete: hand it to the writer thread, go on encoding
                pending.append(writer.submit(buffers.pop(k).write, out, plan))
                for done in [f for f in pending if f.done()]:
                    done.result()  # surface a write error now rather than at the end
        for f in pending:
            f.result()


# ------------------------------------------------------------------------------------------------ finishing
def _finalise(out: Path, plan: CachePlan) -> dict:
    manifest = read_manifest(out, require_complete=False)
    records, missing = [], []
    for k in range(plan.num_shards):
        rec = _done_record(out, k, plan.digest, verify=False)  # hashes were taken from the bytes written
        (records.append(rec) if rec else missing.append(k))
    if missing:
        raise CacheError(f"{len(missing)} shard(s) missing after every rank finished: {missing[:20]} -- run the same "
                         "command again to encode them")
    per_label: dict[str, int] = {}
    for rec in records:
        for y, n in rec["per_label"].items():
            per_label[y] = per_label.get(y, 0) + n
    skipped = [s for s in manifest["skipped"] if s["when"] == "probe"]
    seen = {s["path"] for s in skipped}
    for rec in records:
        for d in rec["dropped"]:
            if d["path"] not in seen:
                seen.add(d["path"])
                skipped.append({"path": d["path"], "reason": d["reason"], "when": "decode"})
    stored = sum(r["clips"] for r in records)
    manifest.update(
        complete=True, skipped=skipped,
        clips={"items": plan.num_items, "copies_per_item": plan.copies, "planned": plan.num_items * plan.copies,
               "stored": stored, "dropped_items": sorted(d["item"] for r in records for d in r["dropped"]),
               "per_label": dict(sorted(per_label.items(), key=lambda kv: int(kv[0])))},
        stats=combine_stats([r["stats"] for r in records], plan.latent_shape[0]),
        shards=[{k: r[k] for k in ("shard", "file", "items", "clips", "bytes", "sha256")} for r in records],
        finished=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    write_json(out / MANIFEST, manifest)
    return manifest


# ------------------------------------------------------------------------------------------------ entry point
def resolve_runtime(cfg: CacheConfig, state) -> tuple[torch.device, str]:
    """(device, encode precision) for this process."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but torch sees no CUDA device")
    device = torch.device("cpu") if cfg.device == "cpu" else state.device
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    return device, precision


def make_state(cfg: CacheConfig):
    """accelerate's PartialState: one process, or one rank of ``accelerate launch`` / ``torchrun`` (gloo on CPU)."""
    from accelerate import PartialState

    return PartialState(cpu=cfg.device == "cpu" or not torch.cuda.is_available())


def run_cache(vae, data_cfg: DataConfig, cfg: CacheConfig, out: str | Path, vae_source: str = "",
              state=None, show_progress: bool = True, log=print, dataset=None) -> dict:
    """Cache the latents of every clip ``data_cfg`` enumerates into ``out``; return the complete manifest.

    Run it on every rank of a launch (``state``: accelerate ``PartialState``; default: made here). The VAE is
    moved to the process's device. ``dataset``: an already built dataset of ``data_cfg`` with the clip length
    resolved (saves probing the videos a second time). Restarting with the same arguments finishes an interrupted cache; different
    arguments into the same folder raise :class:`CacheMismatchError`.
    """
    out = Path(out)
    state = state if state is not None else make_state(cfg)
    if state.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        hold_folder(out, "another --out")  # one cache job per folder; a second launch is refused by name
    try:
        return _run_cache(vae, data_cfg, cfg, out, vae_source, state, show_progress, log, dataset)
    finally:
        release_folder(out)


def _run_cache(vae, data_cfg: DataConfig, cfg: CacheConfig, out: Path, vae_source: str, state, show_progress: bool,
               log, dataset) -> dict:
    device, precision = resolve_runtime(cfg, state)
    plan = make_plan(vae, data_cfg, cfg, precision, dataset=dataset)
    main = state.is_main_process
    if main:
        _claim_folder(out, plan, vae_source)
    state.wait_for_everyone()
    _check_folder(out, plan)
    mine = plan.shards_of_rank(state.process_index, state.num_processes)
    t0 = time.perf_counter()
    todo = [k for k in mine if _done_record(out, k, plan.digest, cfg.verify_on_resume) is None]
    if main:
        log(f"[cache] {count(plan.num_items, 'item')} x {plan.copies} -> "
            f"{count(plan.num_items * plan.copies, 'clip')} of "
            f"{plan.data_cfg.num_frames} frames, latent {plan.latent_shape} {cfg.dtype}, {plan.shard_summary()}, "
            f"{count(state.num_processes, 'process')}, {device}, {precision}; "
            f"rank 0: {len(mine) - len(todo)} of {len(mine)} shards already done (checked in "
            f"{time.perf_counter() - t0:.1f} s)")
    for k in todo:
        sidecar_path(out, k).unlink(missing_ok=True)  # stale or broken: the shard is redone
    if todo:
        desc = "encode" if state.num_processes == 1 else f"encode (rank 0 of {state.num_processes})"
        _encode_shards(plan, todo, out, device, show_progress and main, desc)
    state.wait_for_everyone()
    if main:
        manifest = _finalise(out, plan)
        st = manifest["clips"]
        log(f"[cache] complete: {count(st['stored'], 'clip')} in {count(plan.num_shards, 'shard')} at {out}"
            + (f"; {len(manifest['skipped'])} video(s) skipped (listed in the manifest)" if manifest["skipped"] else ""))
    state.wait_for_everyone()
    return read_manifest(out)
