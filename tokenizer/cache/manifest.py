"""The cache's on-disk format: a folder with ``manifest.json`` and ``shards/NNNNN.safetensors`` (+ ``.json``).

``manifest.json`` (written atomically; first at the start of a job with ``"complete": false``, rewritten when the
last shard is in):

- ``identity``: everything that decides the bytes of the cache -- the VAE (registry name, config, SHA-256
  weights fingerprint, frame rule, compression, latent scale/shift), the resolved data config, the storage
  settings (dtype, std stored or not, flip copies, items per shard, encode precision), a SHA-256 over the usable
  videos (path relative to the data root, label, frame count), the number of dataset items, the clip length and
  the latent shape ``(C, T', H', W')``. A restart into the same folder must have the same identity.
- ``videos`` (the table that the shards' ``video`` column indexes: path, label, frames), ``class_names``,
  ``skipped`` (unreadable videos with the reason, found when probing or when decoding), ``vae_source``.
- when complete: ``shards`` (file, items covered, clips stored, bytes, SHA-256), ``clips`` (counts, per label)
  and ``stats`` (per-channel mean / std of the stored posterior means over every clip and latent position,
  accumulated in float64; ``std_sampled`` adds the mean posterior variance: the std of z ~ N(mu, sigma^2)).

A shard ``shards/NNNNN.safetensors`` holds the dataset items ``[k * items_per_shard, (k + 1) * items_per_shard)``,
in order, each followed by its flip copy when ``flip_copies``: tensors ``mean`` and ``std`` ``(n, C, T', H', W')``
in the storage dtype, and int64 ``(n,)`` columns ``label``, ``item`` (dataset index), ``flip`` (0/1), ``video``
(row of the manifest's ``videos``), ``start`` (first source frame), ``clip`` (clip number in its video). Its
metadata (key ``vidtok_cache``) carries the identity digest and the shard number. Beside it ``NNNNN.json`` (written after the shard) records its SHA-256, size,
counts, per-channel float64 sums and the clips that were dropped because their video failed to decode. A shard
counts as done only when both exist and the hash matches.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ..config import flatten
from ..io import sha256_file

FORMAT = "vidtok-latent-cache"
VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
SHARD_METADATA_KEY = "vidtok_cache"  # JSON {"format", "identity", "shard"} in each shard's safetensors metadata
SHARD_TENSORS = ("mean", "std", "label", "item", "flip", "video", "start", "clip")


class CacheError(RuntimeError):
    """A cache folder that cannot be used as asked: not a cache, incomplete, corrupt."""


class CacheMismatchError(CacheError):
    """A cache made with another VAE, data config or storage setting than the caller's."""


def shard_path(cache_dir: str | Path, k: int) -> Path:
    return Path(cache_dir) / SHARD_DIR / f"{k:05d}.safetensors"


def sidecar_path(cache_dir: str | Path, k: int) -> Path:
    return Path(cache_dir) / SHARD_DIR / f"{k:05d}.json"


def identity_digest(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()


def _short(value: Any, limit: int = 100) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def identity_diff(cached: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ, as lines ``key: cache has X, this run has Y``."""
    a, b = flatten(json.loads(json.dumps(cached, default=str))), flatten(json.loads(json.dumps(current, default=str)))
    return [f"{key}: cache has {_short(a.get(key, '<absent>'))}, this run has {_short(b.get(key, '<absent>'))}"
            for key in sorted(set(a) | set(b)) if a.get(key, "<absent>") != b.get(key, "<absent>")]


def read_manifest(cache_dir: str | Path, require_complete: bool = True) -> dict:
    """The manifest of a cache folder; :class:`CacheError` if it is missing, foreign or (by default) incomplete."""
    path = Path(cache_dir) / MANIFEST
    if not path.is_file():
        raise CacheError(f"{cache_dir} is not a latent cache: no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CacheError(f"{path} is not valid JSON: {err}") from None
    if manifest.get("format") != FORMAT:
        raise CacheError(f"{path} is not a {FORMAT} manifest (format={manifest.get('format')!r})")
    if manifest.get("version") != VERSION:
        raise CacheError(f"{path}: format version {manifest.get('version')}, this reader knows {VERSION}")
    if require_complete and not manifest.get("complete"):
        raise CacheError(f"the cache in {cache_dir} is incomplete: run the same cache command again to finish it")
    return manifest


def check_fingerprint(manifest: dict, expect_fingerprint: str | None, where: str = "") -> None:
    """Refuse a cache whose VAE weights are not the ones the caller will decode with."""
    if expect_fingerprint is None:
        return
    vae = manifest["identity"]["vae"]
    if vae["fingerprint"] != expect_fingerprint:
        raise CacheMismatchError(f"the latent cache{' in ' + where if where else ''} was made with VAE "
                                 f"'{vae['name']}' of weights fingerprint {vae['fingerprint']}, but the caller "
                                 f"expects fingerprint {expect_fingerprint}: its latents do not belong to this VAE")


# ----------------------------------------------------------------------------------------------- statistics
def combine_stats(records: list[dict], channels: int) -> dict:
    """Per-channel mean / std from per-shard float64 sums (``count``, ``sum``, ``sumsq``, ``var_sum``).

    mean = S / N, var = SS / N - mean^2 (population variance); ``std_sampled`` = sqrt(var + V / N) where V sums the
    posterior variances: the std of latents sampled z = mu + sigma * eps over the whole cache.
    """
    n = sum(r["count"] for r in records)
    s = [math.fsum(r["sum"][c] for r in records) for c in range(channels)]
    ss = [math.fsum(r["sumsq"][c] for r in records) for c in range(channels)]
    out: dict[str, Any] = {"count_per_channel": n, "dtype": "float64", "over": "clips x latent frames x height x width"}
    if n == 0:
        return out
    mean = [x / n for x in s]
    var = [max(q / n - m * m, 0.0) for q, m in zip(ss, mean)]
    out.update(mean=mean, std=[math.sqrt(v) for v in var])
    if all("var_sum" in r for r in records):
        vs = [math.fsum(r["var_sum"][c] for r in records) for c in range(channels)]
        out["std_sampled"] = [math.sqrt(v + w / n) for v, w in zip(var, vs)]
    return out


# --------------------------------------------------------------------------------------------- verification
def verify_cache(cache_dir: str | Path, progress=None) -> list[str]:
    """Check every shard of a complete cache against the manifest; return the problems found (empty: all good).

    Each shard must exist, have the recorded size and SHA-256, and carry the cache's identity digest and the
    recorded number of clips. ``progress(k, ok)`` is called after each shard.
    """
    from safetensors import safe_open

    cache_dir = Path(cache_dir)
    manifest = read_manifest(cache_dir)
    digest = identity_digest(manifest["identity"])
    problems = []
    for rec in manifest["shards"]:
        path = cache_dir / rec["file"]
        issue = ""
        if not path.is_file():
            issue = "missing"
        elif path.stat().st_size != rec["bytes"]:
            issue = f"size {path.stat().st_size} bytes, manifest says {rec['bytes']}"
        elif sha256_file(path) != rec["sha256"]:
            issue = "SHA-256 differs from the manifest (corrupted or replaced)"
        else:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get(SHARD_METADATA_KEY, "{}"))
                rows = f.get_slice("label").get_shape()[0]
            if meta.get("identity") != digest or meta.get("shard") != rec["shard"]:
                issue = "belongs to another cache (identity digest differs)"
            elif rows != rec["clips"]:
                issue = f"{rows} clips, manifest says {rec['clips']}"
        if issue:
            problems.append(f"{rec['file']}: {issue}")
        if progress is not None:
            progress(rec["shard"], not issue)
    expected = {rec["file"] for rec in manifest["shards"]}
    for extra in sorted((cache_dir / SHARD_DIR).glob("*.safetensors")):
        if f"{SHARD_DIR}/{extra.name}" not in expected:
            problems.append(f"{SHARD_DIR}/{extra.name}: not listed in the manifest")
    return problems
