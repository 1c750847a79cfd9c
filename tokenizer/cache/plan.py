"""The plan of a cache job: which clips, in which shard, on which rank, and the identity that fixes the bytes.

Items are the dataset's clips in its fixed enumeration (item ``i`` = clip ``i % clips_per_video`` of usable video
``i // clips_per_video``): with ``offset=random`` and ``clips_per_video=K``, K seeded random windows per video, one per
equal stratum of the possible starts. A data config with ``hflip=true`` stores every clip and its mirror
(``flip_copies``): a video's cached variants are its K windows x 2 orientations, from which Latte training draws one
per epoch (``data.variants=one_per_video``) as Latte's loader draws a new window and flip at every read.

Shard ``k`` holds items ``[k * items_per_shard, (k + 1) * items_per_shard)`` and is encoded by rank
``k % world_size`` in batches that never cross a shard boundary, so the clips of a shard, and its bytes given the
same kernels (on CPU: the same thread count per process), depend neither on the number of processes nor on where
a killed run stopped.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass

import torch

from ..config import ConfigError, to_dict
from ..data import DataConfig, VideoClipDataset, build_dataset
from .config import CacheConfig, valid_frame_count
from .manifest import identity_digest

STORAGE_TORCH = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# data-config keys that change speed, never content: left out of the identity so that a restart may change them
DATA_RUNTIME_KEYS = ("decode_threads", "probe_workers", "read_retries")  # the cache never substitutes videos


@dataclass
class CachePlan:
    vae: torch.nn.Module
    data_cfg: DataConfig  # with num_frames resolved by the VAE's frame rule
    cfg: CacheConfig
    dataset: VideoClipDataset
    precision: str  # resolved encode precision (fp32 | bf16 | fp16)
    copies: int  # 1, or 2 with flip copies
    items_per_shard: int
    num_shards: int
    latent_shape: tuple[int, int, int, int]  # (C, T', H', W') of one clip
    identity: dict
    digest: str

    @property
    def num_items(self) -> int:
        return len(self.dataset)

    @property
    def storage_dtype(self) -> torch.dtype:
        return STORAGE_TORCH[self.cfg.dtype]

    def shard_items(self, k: int) -> range:
        return range(k * self.items_per_shard, min((k + 1) * self.items_per_shard, self.num_items))

    def shard_summary(self) -> str:
        """The shards as counted, e.g. '1 shard of 8 clips', '3 shards of 64 clips (the last 7)'."""
        sizes = [len(self.shard_items(k)) * self.copies for k in (0, self.num_shards - 1)]
        text = f"{count(self.num_shards, 'shard')} of {count(sizes[0], 'clip')}"
        return text + (f" (the last {sizes[1]})" if sizes[1] != sizes[0] else "")

    def shards_of_rank(self, rank: int, world_size: int) -> list[int]:
        return list(range(rank, self.num_shards, world_size))

    def batches(self, shards: list[int]) -> list[tuple[int, list[int]]]:
        """(shard, item indices) per VAE call: ``batch_size`` clips (flip copies included), within one shard."""
        step = max(1, self.cfg.batch_size // self.copies)
        out = []
        for k in shards:
            items = self.shard_items(k)
            out += [(k, list(items[j:j + step])) for j in range(0, len(items), step)]
        return out

    def video_table(self) -> list[dict]:
        return [{"path": v.path, "label": v.label, "frames": v.num_frames} for v in self.dataset.videos]


def _videos_sha256(dataset: VideoClipDataset) -> str:
    root = str(dataset.root) if dataset.root is not None else ""
    rows = [[os.path.relpath(v.path, root) if root else v.path, v.label, v.num_frames] for v in dataset.videos]
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def make_plan(vae, data_cfg: DataConfig, cfg: CacheConfig, precision: str, dataset=None) -> CachePlan:
    """Resolve the clip length, probe the dataset, size the shards and compute the identity."""
    if data_cfg.hflip:
        # a random flip per read becomes both orientations stored; training draws one per epoch
        # (diffusion data.variants=one_per_video), so the clips stay fixed and the cache deterministic
        cfg = dataclasses.replace(cfg, flip_copies=True)
    num_frames = valid_frame_count(vae, data_cfg.num_frames, cfg.strict_frames)
    spatial = vae.compression[1]
    if data_cfg.resolution % spatial:
        raise ConfigError(f"resolution={data_cfg.resolution} is not a multiple of {vae.name}'s spatial compression "
                          f"{spatial}")
    if cfg.chunk_size is not None and cfg.chunk_size % vae.compression[0]:
        raise ConfigError(f"chunk_size={cfg.chunk_size} must be a multiple of {vae.name}'s temporal compression "
                          f"{vae.compression[0]}")
    data_cfg = dataclasses.replace(data_cfg, num_frames=num_frames, hflip=False)
    if dataset is not None and dataset.cfg != data_cfg:
        raise ConfigError(f"the dataset given was built from another data config than the cache's:\n  dataset: "
                          f"{to_dict(dataset.cfg)}\n  cache: {to_dict(data_cfg)}")
    dataset = dataset if dataset is not None else build_dataset(data_cfg)
    latent_shape = tuple(vae.latent_shape(num_frames, data_cfg.resolution, data_cfg.resolution))
    copies = 2 if cfg.flip_copies else 1
    elem = torch.finfo(STORAGE_TORCH[cfg.dtype]).bits // 8
    clip_bytes = math.prod(latent_shape) * elem * (2 if cfg.store_std else 1)
    clips_per_shard = cfg.clips_per_shard or max(1, int(cfg.shard_size_mb * 2 ** 20 // clip_bytes))
    items_per_shard = max(1, clips_per_shard // copies)
    num_shards = math.ceil(len(dataset) / items_per_shard)
    data_identity = {k: v for k, v in to_dict(data_cfg).items() if k not in DATA_RUNTIME_KEYS}
    for key, default in (("frame_indices", "stride"), ("time_range", None)):  # defaults are left out: caches made
        if key in data_identity and data_identity[key] == default:         # before the option keep their identity
            del data_identity[key]                                          # (and can be resumed)
    identity = {
        "vae": {"name": vae.name, "config": to_dict(vae.config), "fingerprint": vae.fingerprint(),
                "frame_rule": vae.frame_rule, "compression": list(vae.compression),
                "latent_channels": vae.latent_channels, "scaling_factor": vae.scaling_factor,
                "shift_factor": vae.shift_factor},
        "data": data_identity,
        "storage": {"dtype": cfg.dtype, "store_std": cfg.store_std, "flip_copies": cfg.flip_copies,
                    "items_per_shard": items_per_shard, "precision": precision},
        "dataset": {"items": len(dataset), "videos": len(dataset.videos), "videos_sha256": _videos_sha256(dataset)},
        "num_frames": num_frames,
        "latent_shape": list(latent_shape),
    }
    return CachePlan(vae=vae, data_cfg=data_cfg, cfg=cfg, dataset=dataset, precision=precision, copies=copies,
                     items_per_shard=items_per_shard, num_shards=num_shards, latent_shape=latent_shape,
                     identity=identity, digest=identity_digest(identity))


def count(n: int, noun: str) -> str:
    """'1 clip', '2 clips', '2 processes'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}{'es' if noun.endswith('s') else 's'}"
