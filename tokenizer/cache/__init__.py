"""The latent cache: a VAE's posteriors of every clip of a dataset, in verified, resumable safetensors shards.

Written by ``python -m tokenizer.cache`` (``scripts/cache_latents.sh``), read by diffusion::

    from tokenizer.cache import LatentCacheDataset, read_manifest
    ds = LatentCacheDataset("caches/plain-ucf101", expect_fingerprint=vae.fingerprint(), normalize="stats")

The format is described in :mod:`tokenizer.cache.manifest`, the job in :mod:`tokenizer.cache.writer`.
"""
from .config import CacheConfig, load_cache_config, split_overrides, valid_frame_count
from .manifest import CacheError, CacheMismatchError, check_fingerprint, read_manifest, verify_cache
from .plan import CachePlan, make_plan
from .reader import NORMALIZE_MODES, LatentCacheDataset, LatentNormalizer, VideoVariants
from .vae import cache_vae, seeded_preset
from .writer import run_cache

__all__ = ["CacheConfig", "load_cache_config", "split_overrides", "valid_frame_count", "CacheError",
           "CacheMismatchError", "check_fingerprint", "read_manifest", "verify_cache", "CachePlan", "make_plan",
           "LatentCacheDataset", "LatentNormalizer", "VideoVariants", "NORMALIZE_MODES", "run_cache", "cache_vae",
           "seeded_preset"]
