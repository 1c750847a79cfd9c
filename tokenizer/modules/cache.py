"""Causal-cache memory for chunk-by-chunk (streaming) inference of a video VAE.

A long clip is encoded (or a long latent decoded) chunk by chunk. Every temporal convolution keeps the few input
frames that the next chunk's first outputs still need (``k_t - 1`` frames for a causal conv, the last frame for a
group causal conv, the unfinished stride window of a temporal downsampler). With per-frame normalisation and
per-frame attention nothing else in the network looks across time, so the chunked result equals the whole-clip
result up to float rounding, while memory stays bounded by the chunk length.

The memory is an explicit object passed down ``forward(x, cache)``; modules hold no hidden state. ``cache=None``
means "the whole clip at once".
"""
from __future__ import annotations

import torch
from torch import nn


class FrameCache:
    """Per-module memory of the last input frames seen, keyed by the module object."""

    def __init__(self):
        self._frames: dict[int, torch.Tensor] = {}
        self._seen: set[int] = set()

    def get(self, module: nn.Module) -> torch.Tensor | None:
        """The frames ``module`` stored after the previous chunk, or None on the first chunk."""
        return self._frames.get(id(module))

    def put(self, module: nn.Module, frames: torch.Tensor) -> None:
        """Keep ``frames`` (b c n h w) for ``module``'s next chunk, in storage of their own.

        ``frames`` is usually a slice of a larger tensor (the chunk's input, or history and input concatenated);
        storing the slice itself would keep that whole tensor alive until the next chunk. A copy holds exactly
        ``n`` frames.
        """
        self._frames[id(module)] = frames.clone(memory_format=torch.contiguous_format)
        self._seen.add(id(module))

    def nbytes(self) -> int:
        """Bytes held by the stored frames (each entry owns exactly its own storage)."""
        return sum(f.untyped_storage().nbytes() for f in self._frames.values())

    def entries(self) -> list[torch.Tensor]:
        return list(self._frames.values())

    def first_chunk(self, module: nn.Module) -> bool:
        """True until ``mark_seen`` (or ``put``) was called for ``module``."""
        return id(module) not in self._seen

    def mark_seen(self, module: nn.Module) -> None:
        self._seen.add(id(module))


def is_first_chunk(cache: FrameCache | None, module: nn.Module) -> bool:
    """Whole-clip calls (``cache=None``) and the first chunk of a streamed clip start the sequence."""
    return cache is None or cache.first_chunk(module)
