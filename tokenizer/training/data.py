"""Resumable, shardable streams of training batches.

The order of the data is a pure function of (seed, epoch): epoch ``e`` visits the dataset in the permutation
drawn from ``derive_seed(seed, e)``. A global batch is the next ``batch_size * world_size`` indices of that
permutation; process ``r`` takes its ``r``-th slice. The stream's whole state is a :class:`DataPosition`
(epoch, samples consumed in that epoch by all processes), so a resumed run continues with exactly the batches
an uninterrupted run would have seen, on any number of DataLoader workers. Items draw their own randomness from
(seed, index, epoch) inside the dataset (``tokenizer.data``), which is told the epoch through ``set_epoch``.

:class:`BucketedStream` serves batches of different shapes (resolution, frame count): one stream per bucket,
and at every step one bucket chosen from (seed, step), the same on every process.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.workers import loader_workers
from .state import derive_seed


@dataclasses.dataclass
class DataPosition:
    """Where a stream stands: the epoch, and how many samples of it (all processes together) were consumed."""

    epoch: int = 0
    consumed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DataPosition":
        return cls(epoch=int(d["epoch"]), consumed=int(d["consumed"]))


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """The order in which epoch ``epoch`` visits ``n`` items."""
    g = torch.Generator().manual_seed(derive_seed(seed, epoch))
    return torch.randperm(n, generator=g).tolist()


class ClipStream:
    """An endless stream of per-process batches (drop-last epochs), resumable from a :class:`DataPosition`.

    Args:
        dataset: a map-style dataset (``tokenizer.data.build_dataset``); ``set_epoch(e)`` is called if it has one.
        batch_size: per process.
        seed: the data-order seed.
        rank, world_size: this process and the number of processes.
        num_workers: DataLoader workers (0 = load in this process).
        shuffle: False visits items in index order every epoch (evaluation-like streams).
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 num_workers: int = 0, shuffle: bool = True, collate_fn: Callable | None = None,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.collate_fn = collate_fn
        self.pin_memory = pin_memory
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = len(dataset) // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"the dataset has {len(dataset)} items, fewer than one global batch "
                             f"({batch_size} per process x {world_size} processes); use a smaller batch or more data")
        self.position = DataPosition()
        self._iter = None

    def _batches_of_epoch(self) -> list[list[int]]:
        """This process's index lists for the rest of the current epoch."""
        n = len(self.dataset)
        order = epoch_permutation(n, self.seed, self.position.epoch) if self.shuffle else list(range(n))
        end = self.steps_per_epoch * self.global_batch
        out = []
        for start in range(self.position.consumed, end, self.global_batch):
            lo = start + self.rank * self.batch_size
            out.append(order[lo:lo + self.batch_size])
        return out

    def _open(self) -> None:
        set_epoch = getattr(self.dataset, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(self.position.epoch)  # before the workers fork, so they see it
        loader = DataLoader(self.dataset, batch_sampler=self._batches_of_epoch(),
                            num_workers=loader_workers(self.num_workers),
                            collate_fn=self.collate_fn, pin_memory=self.pin_memory,
                            # a private generator: creating the iterator must not draw from the global RNG,
                            # or a resumed run would see different random numbers than an uninterrupted one
                            generator=torch.Generator().manual_seed(derive_seed(self.seed, self.position.epoch)),
                            worker_init_fn=_seed_worker)
        self._iter = iter(loader)

    def next(self) -> Any:
        """This process's next batch; advances the position by one global batch."""
        if self.position.consumed >= self.steps_per_epoch * self.global_batch:
            self.position = DataPosition(self.position.epoch + 1, 0)
            self._iter = None
        if self._iter is None:
            self._open()
        batch = next(self._iter)
        self.position = DataPosition(self.position.epoch, self.position.consumed + self.global_batch)
        return batch

    def state_dict(self) -> dict:
        return self.position.to_dict()

    def load_state_dict(self, d: dict) -> None:
        self.position = DataPosition.from_dict(d)
        self._iter = None


def _seed_worker(worker_id: int) -> None:
    # Items take their randomness from (seed, index, epoch); seeding the worker's global generators as well
    # keeps any library that draws from them deterministic too.
    import random

    import numpy as np

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


class BucketedStream:
    """Several :class:`ClipStream` s of different clip shapes; each step draws one bucket from (seed, step).

    Every process draws the same bucket (the choice depends on nothing else), so the processes of a
    data-parallel step always hold batches of one shape.
    """

    def __init__(self, streams: Sequence[ClipStream], seed: int, weights: Sequence[float] | None = None,
                 names: Sequence[str] | None = None):
        if not streams:
            raise ValueError("BucketedStream needs at least one stream")
        self.streams = list(streams)
        self.seed = seed
        w = torch.tensor(list(weights) if weights is not None else [1.0] * len(streams), dtype=torch.float64)
        if len(w) != len(streams) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"bucket weights must be {len(streams)} non-negative numbers with a positive sum")
        self.weights = w / w.sum()
        self.names = list(names) if names is not None else [str(i) for i in range(len(streams))]

    def bucket_for_step(self, step: int) -> int:
        """The bucket of step ``step`` (0-based), a pure function of (seed, step)."""
        if len(self.streams) == 1:
            return 0
        g = torch.Generator().manual_seed(derive_seed(self.seed, step, 0x6275636B))  # 'buck'
        return int(torch.multinomial(self.weights, 1, generator=g))

    def next(self, step: int) -> tuple[int, Any]:
        """(bucket index, this process's batch) for step ``step``."""
        b = self.bucket_for_step(step)
        return b, self.streams[b].next()

    def state_dict(self) -> dict:
        return {"buckets": [s.state_dict() for s in self.streams]}

    def load_state_dict(self, d: dict) -> None:
        if len(d["buckets"]) != len(self.streams):
            raise ValueError(f"the checkpoint has {len(d['buckets'])} data buckets, this config {len(self.streams)}")
        for s, p in zip(self.streams, d["buckets"]):
            s.load_state_dict(p)
