"""What a cache job may be told: the cache settings, the clip-length rule, and ``key=value`` routing.

A cache job has two configs: the data config (``configs/data/*.yaml``, :class:`~tokenizer.data.DataConfig`) says
which clips, :class:`CacheConfig` says how they are stored and how fast they are encoded. On the command line a
bare ``key=value`` goes to whichever of the two has the key (their field names do not overlap); ``data.key=value``
and ``cache.key=value`` say it explicitly.

Clip length (the frame rule). The data config's ``num_frames`` is the clip length asked for; a VAE takes only some
counts (causal: ``1 + t_c k``, in-sequence: ``t_c k``). The cache uses the count the VAE takes that is nearest to
the one asked for, the longer one on a tie: 16 -> 17 for a causal 4x VAE (17 frames -> 5 latent frames, as
LeanVAE's Latte runs), 16 -> 16 for an in-sequence 4x VAE, 16 -> 16 at 8x in-sequence, 8 -> 9 causal 4x. With
``strict_frames=true`` a count the VAE does not take is an error instead. The manifest's data config holds the
count actually used.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

from ..config import ConfigError, check_at_least, check_choices, load_config

STORAGE_DTYPES = ("bf16", "fp16", "fp32")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class CacheConfig:
    """How latents are stored and how the encoding runs."""

    dtype: str = "bf16"  # storage dtype of the latents: bf16 | fp16 | fp32
    store_std: bool = True  # store the posterior std beside the mean (sampling happens at training time)
    flip_copies: bool = False  # also cache the horizontally flipped copy of every clip
    strict_frames: bool = False  # data num_frames must be a count the VAE takes (default: nearest valid count)
    shard_size_mb: float = 256.0  # target size of one shard file
    clips_per_shard: Optional[int] = None  # overrides shard_size_mb (small shards for tests and debugging)
    batch_size: int = 8  # clips per VAE call (a flip copy counts as a clip)
    num_workers: int = 4  # DataLoader workers decoding and resizing while the VAE encodes (at most the cores)
    prefetch_factor: int = 2  # batches each worker prepares ahead
    device: str = "auto"  # auto (the process's accelerator, else CPU) | cpu | cuda
    precision: str = "auto"  # encode precision: auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    channels_last: Optional[bool] = None  # channels-last-3d inputs and weights; null: on GPU only
    chunk_size: Optional[int] = None  # frames per encode chunk; null: one latent frame at a time, 0: whole clip
    init_seed: int = 0  # torch seed for a randomly initialised VAE (no --ckpt: smoke runs and tests only)
    verify_on_resume: bool = True  # re-hash existing shards on restart (false: trust their size)

    def __post_init__(self) -> None:
        check_choices(("dtype", self.dtype, STORAGE_DTYPES), ("precision", self.precision, PRECISIONS),
                      ("device", self.device, DEVICES))
        check_at_least(self, ("batch_size", "prefetch_factor"))
        check_at_least(self, ("num_workers",), low=0)
        if self.shard_size_mb <= 0:
            raise ConfigError(f"invalid value 'shard_size_mb={self.shard_size_mb}': must be > 0")
        check_at_least(self, ("clips_per_shard", "chunk_size"), optional=True)


def field_names(schema: type) -> set[str]:
    return {f.name for f in dataclasses.fields(schema)}


def split_overrides(overrides: Sequence[str], data_schema: type) -> tuple[list[str], list[str]]:
    """Route ``key=value`` items to (data overrides, cache overrides) by prefix or by which schema has the key."""
    data_keys, cache_keys = field_names(data_schema), field_names(CacheConfig)
    data, cache = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        key, value = item.split("=", 1)
        head = key.split(".", 1)[0]
        if head in ("data", "cache") and "." in key:
            (data if head == "data" else cache).append(f"{key.split('.', 1)[1]}={value}")
        elif head in cache_keys:
            cache.append(item)
        elif head in data_keys:
            data.append(item)
        else:
            raise ConfigError(f"unknown key '{key}' in override '{item}'\n"
                              f"  cache keys: {', '.join(sorted(cache_keys))}\n"
                              f"  data keys: {', '.join(sorted(data_keys))}")
    return data, cache


def load_cache_config(path: str | None = None, overrides: Sequence[str] = ()) -> CacheConfig:
    return load_config(CacheConfig, path, overrides)


def valid_frame_count(vae, wanted: int, strict: bool = False) -> int:
    """The clip length the cache uses for ``vae`` when ``wanted`` frames are asked for (module docstring rule)."""
    if vae.valid_num_frames(wanted):
        return wanted
    if strict:
        vae.check_frames(wanted)  # raises FrameCountError naming the counts the VAE takes
    t_c = vae.compression[0]
    below = [n for n in range(wanted - 1, 0, -1) if vae.valid_num_frames(n)][:1]
    above = next(n for n in range(wanted + 1, wanted + 2 * t_c + 2) if vae.valid_num_frames(n))
    if below and wanted - below[0] < above - wanted:
        return below[0]
    return above
