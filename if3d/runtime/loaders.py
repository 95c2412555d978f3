"""Data loaders of the training and evaluation loops: the epoch order, the sampler that replays it
(minus the batches already done), and a DataLoader that is safe to fork from a tuned-allocator process.

Determinism: the order of the training samples of epoch ``e`` is a function of ``(seed, e, rank)`` only
(:func:`epoch_indices`), so a run resumed in the middle of an epoch skips exactly the batches it had done.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from if3d.data.source import supports_batches
from if3d.runtime.allocator import release_free_heap

__all__ = ["EpochSampler", "TrimmingDataLoader", "epoch_indices", "make_loader"]


class EpochSampler(Sampler[int]):
    """Yields a fixed list of indices (one epoch's order, possibly with a done prefix removed)."""

    def __init__(self, indices: Sequence[int]) -> None:
        self.indices = [int(i) for i in indices]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def epoch_indices(
    dataset: Dataset, epoch: int, seed: int, balanced: bool, rank: int = 0, world_size: int = 1
) -> list[int]:
    """The training sample order of ``epoch`` on this rank: a function of (seed, epoch, rank) only.

    Args:
        dataset: with ``labels`` (int array [N]) when ``balanced``.
        epoch: 0-based epoch.
        seed: the run's seed.
        balanced: class-balanced sampling with replacement (:class:`~if3d.data.sampler.
            ClassBalancedSampler`, DDP-aware); otherwise a seeded shuffle sharded over ranks.
        rank, world_size: this process's place in a DDP job.

    Returns:
        Sample indices of this rank for the epoch (equal counts on every rank).
    """
    if balanced:
        from if3d.data.sampler import ClassBalancedSampler

        sampler = ClassBalancedSampler(np.asarray(dataset.labels), seed=seed, rank=rank, world_size=world_size)
        sampler.set_epoch(epoch)
        return [int(i) for i in sampler]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    per_rank = len(order) // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def _worker_init(_: int) -> None:
    # Ctrl-C is handled by the main process (it saves a checkpoint); workers must not die on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class TrimmingDataLoader(DataLoader):
    """A DataLoader that returns the process's free heap to the OS before it forks workers.

    With the allocator tuning (:mod:`if3d.runtime.allocator`) the training process keeps its freed
    activations (~12 GB for a fusion model at batch 64); workers forked from it would share those
    pages copy-on-write and the next step would copy them all. Non-persistent workers are forked at
    every ``iter()``, so the release happens there.
    """

    def __iter__(self):
        if self.num_workers > 0:
            release_free_heap()
        return super().__iter__()


def make_loader(dataset: Dataset, indices: Sequence[int], batch_size: int, workers: int, pin: bool,
                drop_last: bool) -> DataLoader:
    """A loader over ``indices`` of ``dataset`` in that order, collated batches of ``batch_size``.

    Datasets that read whole batches at once (the memory-mapped cache, :func:`~if3d.data.source.
    supports_batches`) get one gather per batch instead of one read per sample.
    """
    if supports_batches(dataset):
        return TrimmingDataLoader(
            dataset,
            batch_size=None,
            sampler=BatchSampler(EpochSampler(indices), batch_size, drop_last),
            num_workers=workers,
            pin_memory=pin,
            worker_init_fn=_worker_init if workers > 0 else None,
        )
    return TrimmingDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(indices),
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=False,
    )
