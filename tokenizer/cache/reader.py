"""Read a latent cache for diffusion training: normalised latents, labels and metadata, memory-mapped.

    from tokenizer.cache import LatentCacheDataset
    ds = LatentCacheDataset("caches/vcvae-ucf101", expect_fingerprint=vae.fingerprint(), normalize="stats")
    item = ds[0]      # {"latent": (C, T', H', W') float32, "label": int, "path": str, "start": int, ...}
    x = ds.normalizer.denormalize(x_generated)   # back to the VAE's latent space, then vae.decode(x)

Normalisation (per channel c, ``z`` the cached posterior mean or a sample from the posterior):

- ``"stats"``: ``(z - mean_c) / std_c`` with the manifest's float64 statistics (``std_sampled`` when sampling);
- ``"vae"``: ``(z - shift_factor) * scaling_factor``, the VAE's own constants (e.g. Flux's 0.1159 / 0.3611);
- ``"none"``: ``z`` as cached.

:class:`LatentNormalizer` holds the constants, applies the map and its exact inverse, and serialises to a dict so a
diffusion run can store the one it trained with. Shards are opened with safetensors' memory map and each item
copies only its own rows, so RAM does not grow with the size of the cache.
"""
from __future__ import annotations

import bisect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from torch.utils.data import Dataset

from .manifest import CacheError, check_fingerprint, read_manifest

NORMALIZE_MODES = ("stats", "vae", "none")


@dataclass
class LatentNormalizer:
    """Per-channel affine map ``x = (z - shift) / std`` and its inverse ``z = x * std + shift``."""

    mode: str
    shift: list[float]
    std: list[float]
    source: dict = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, manifest: dict, mode: str = "stats", sample: bool = False) -> "LatentNormalizer":
        if mode not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {', '.join(NORMALIZE_MODES)}, got {mode!r}")
        ident = manifest["identity"]
        c = ident["latent_shape"][0]
        source = {"vae": ident["vae"]["name"], "fingerprint": ident["vae"]["fingerprint"]}
        if mode == "none":
            return cls(mode, [0.0] * c, [1.0] * c, source)
        if mode == "vae":
            vae = ident["vae"]
            return cls.from_vae_factors(c, vae["shift_factor"], vae["scaling_factor"], source)
        stats = manifest["stats"]
        key = "std_sampled" if sample and "std_sampled" in stats else "std"
        if sample and key != "std_sampled":
            raise CacheError("sample=True needs the posterior std, but this cache stores the mean only")
        if "mean" not in stats:
            raise CacheError("the cache holds no clips, so it has no statistics to normalise with")
        return cls(mode, list(stats["mean"]), [max(s, 1e-12) for s in stats[key]], dict(source, std=key))

    @classmethod
    def from_vae_factors(cls, channels: int, shift_factor: float, scaling_factor: float,
                         source: dict | None = None) -> "LatentNormalizer":
        """The VAE's own normalisation, as diffusers applies it: ``x = (z - shift_factor) * scaling_factor``."""
        return cls("vae", [shift_factor] * channels, [1.0 / scaling_factor] * channels, dict(source or {}))

    def _affine(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, 1, 1, 1)  # channel axis 4th from the end: (C, T, H, W) or (B, C, T, H, W)
        shift = torch.tensor(self.shift, dtype=torch.float64).view(shape).to(z.device, z.dtype)
        std = torch.tensor(self.std, dtype=torch.float64).view(shape).to(z.device, z.dtype)
        return shift, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latent -> diffusion space. z: (C, T, H, W) or (B, C, T, H, W)."""
        shift, std = self._affine(z)
        return (z - shift) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Diffusion space -> VAE latent (the inverse of :meth:`normalize`), ready for ``vae.decode``."""
        shift, std = self._affine(x)
        return x * std + shift

    def to_dict(self) -> dict:
        return {"mode": self.mode, "shift": self.shift, "std": self.std, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> "LatentNormalizer":
        return cls(d["mode"], list(d["shift"]), list(d["std"]), dict(d.get("source", {})))


class LatentCacheDataset(Dataset):
    """Items ``{"latent": (C, T', H', W') float32, "label", "index", "item", "flip", "path", "start", "clip"}``.

    ``expect_fingerprint``: the SHA-256 weights fingerprint (``vae.fingerprint()``) of the VAE that will decode
    the generated latents; a cache made with other weights is refused. ``sample``: draw ``z = mu + sigma * eps``
    per item, seeded by ``(seed, epoch, index)`` (call :meth:`set_epoch`), instead of returning the mean.
    """

    def __init__(self, cache_dir: str | Path, expect_fingerprint: str | None = None, normalize: str = "stats",
                 sample: bool = False, seed: int = 0):
        self.cache_dir = Path(cache_dir)
        self.manifest = read_manifest(self.cache_dir)
        check_fingerprint(self.manifest, expect_fingerprint, str(self.cache_dir))
        if sample and not self.manifest["identity"]["storage"]["store_std"]:
            raise CacheError(f"sample=True needs the posterior std, but {cache_dir} stores the mean only "
                             "(made with store_std=false)")
        self.normalizer = LatentNormalizer.from_manifest(self.manifest, normalize, sample)
        self.sample, self.seed, self.epoch = sample, seed, 0
        self.files = [str(self.cache_dir / s["file"]) for s in self.manifest["shards"]]
        self.offsets = np.cumsum([0] + [s["clips"] for s in self.manifest["shards"]]).tolist()
        self.paths = [v["path"] for v in self.manifest["videos"]]
        self._handles: dict[int, object] = {}
        self._pid = None
        self._reported: set[int] = set()  # clips whose non-finite latents were reported (once each, per process)

    # ----------------------------------------------------------------------------------------------- metadata
    def __len__(self) -> int:
        return self.offsets[-1]

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return tuple(self.manifest["identity"]["latent_shape"])

    @property
    def fingerprint(self) -> str:
        return self.manifest["identity"]["vae"]["fingerprint"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def labels(self) -> torch.Tensor:
        """Every clip's label, (N,) int64 (read from the shards' small label columns)."""
        return torch.cat([self._shard(k).get_tensor("label") for k in range(len(self.files))]) if self.files \
            else torch.empty(0, dtype=torch.int64)

    # ------------------------------------------------------------------------------------------------ reading
    def _shard(self, k: int):
        if self._pid != os.getpid():  # handles do not survive a fork into DataLoader workers: reopen per process
            self._handles, self._pid = {}, os.getpid()
        if k not in self._handles:
            try:
                self._handles[k] = safe_open(self.files[k], framework="pt")  # memory-mapped, nothing read yet
            except Exception as err:  # missing, truncated, not safetensors: SafetensorError / OSError
                raise self._shard_error(k, err) from None
        return self._handles[k]

    def _shard_error(self, k: int, err: Exception) -> CacheError:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return CacheError(f"cache shard {self.files[k]} cannot be read ({reason}); check the cache with "
                          f"`python -m tokenizer.cache --verify --out {self.cache_dir}` and re-run the cache job to "
                          "rewrite bad shards")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_pid"] = {}, None
        return state

    def locate(self, index: int) -> tuple[int, int]:
        """(shard, row) of clip ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for a cache of {len(self)} clips")
        k = bisect.bisect_right(self.offsets, index) - 1
        return k, index - self.offsets[k]

    def raw(self, index: int) -> dict:
        """Row ``index`` as stored: ``mean`` (and ``std``) in the storage dtype plus the int64 columns."""
        k, row = self.locate(index)
        f = self._shard(k)
        names = ("mean", "std", "label", "item", "flip", "video", "start", "clip")
        try:
            return {n: f.get_slice(n)[row:row + 1][0] for n in names if n in f.keys()}  # copies this row only
        except Exception as err:  # rows past a truncation, a damaged header
            raise self._shard_error(k, err) from None

    def __getitem__(self, index: int) -> dict:
        r = self.raw(index)
        z = r["mean"].float()  # (C, T', H', W')
        if index not in self._reported and not torch.isfinite(z).all():
            self._reported.add(index)  # once per clip: the trainer's NaN guard skips the steps it poisons
            k, row = self.locate(index)
            warnings.warn(f"cache {self.cache_dir}: clip {index} (shard {Path(self.files[k]).name} row {row}, "
                          f"{self.paths[int(r['video'])]} from frame {int(r['start'])}) holds "
                          f"{int((~torch.isfinite(z)).sum())} non-finite latent values; check the cache with "
                          "--verify", stacklevel=2)
        if self.sample:
            g = torch.Generator().manual_seed(int(np.random.SeedSequence([self.seed, self.epoch, index])
                                                  .generate_state(1)[0]))
            z = z + r["std"].float() * torch.randn(z.shape, generator=g)  # z = mu + sigma * eps (DeCo-VAE eq. 2)
        return {"latent": self.normalizer.normalize(z), "label": int(r["label"]), "index": index,
                "item": int(r["item"]), "flip": bool(r["flip"]), "path": self.paths[int(r["video"])],
                "start": int(r["start"]), "clip": int(r["clip"])}


class VideoVariants(Dataset):
    """One item per video and epoch: each epoch draws one of the video's cached variants (its windows x flips).

    Latte's loader reads every video once per epoch with a new random window and a random horizontal flip. A cache
    made with ``clips_per_video=K`` (K seeded windows) and ``hflip=true`` (both orientations) holds 2K variants of
    each video; this view draws one of them per (seed, epoch, video) -- uniformly, so with equal strata the start
    of the window is uniform over the video and the flip a fair coin -- and :meth:`set_epoch` (called by the
    training stream before every epoch) moves the draw on. Item ``i`` is video ``i`` of the cache's video table
    that has at least one stored clip; a resumed run draws exactly what an uninterrupted one draws.
    """

    RNG_VARIANT = 0x76617269  # 'vari': independent of the cache reader's posterior draws

    def __init__(self, cache: LatentCacheDataset, seed: int = 0):
        self.cache, self.seed, self.epoch = cache, int(seed), 0
        videos = torch.cat([cache._shard(k).get_tensor("video") for k in range(len(cache.files))]) if cache.files \
            else torch.empty(0, dtype=torch.int64)  # (N,) video of every stored row
        order = torch.argsort(videos, stable=True)  # rows grouped by video, in row order within a video
        ids, counts = torch.unique_consecutive(videos[order], return_counts=True)
        self.video_ids = ids.tolist()
        self.rows: list[list[int]] = [g.tolist() for g in order.split(counts.tolist())]

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def normalizer(self) -> LatentNormalizer:
        return self.cache.normalizer

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.cache.latent_shape

    @property
    def num_classes(self) -> int:
        return self.cache.num_classes

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.cache.set_epoch(epoch)

    def variant(self, index: int, epoch: int | None = None) -> int:
        """The cache row that video ``index`` shows in ``epoch`` (default: the current one)."""
        rows = self.rows[index]
        epoch = self.epoch if epoch is None else int(epoch)
        pick = np.random.default_rng([self.seed, epoch, index, self.RNG_VARIANT]).integers(len(rows))
        return rows[int(pick)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} videos")
        return self.cache[self.variant(index)]
