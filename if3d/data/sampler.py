"""Class-balanced sampling (inverse class frequency) that also works under DistributedDataParallel.

DDAMFN and If3D train with an ``ImbalancedDatasetSampler``: each sample is drawn with probability
proportional to ``1 / count(its class)`` (so every class is drawn equally often on average), with
replacement, ``len(dataset)`` draws per epoch. :class:`ClassBalancedSampler` does the same with a seeded,
per-epoch deterministic draw, and under DDP each rank takes a disjoint shard of one global draw (the
same global draw on every rank, as ``torch.utils.data.DistributedSampler`` shards a permutation).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler


def inverse_frequency_weights(labels: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Per-sample weights ``1 / count(label)`` (float64 [N]), as DDAMFN's ``ImbalancedDatasetSampler``.

    Raises:
        ValueError: ``labels`` is empty or has negative values.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if labels.size == 0:
        raise ValueError("labels is empty")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got {labels.min()}")
    counts = np.bincount(labels)
    return torch.from_numpy(1.0 / counts[labels].astype(np.float64))


def _dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class ClassBalancedSampler(Sampler[int]):
    """Draw dataset indices with probability proportional to the inverse frequency of their class.

    Args:
        labels: int labels of all samples (``dataset.labels``), [N].
        num_samples: total draws per epoch over all ranks (default ``N``, as DDAMFN).
        seed: base seed; epoch ``e`` uses ``seed + e`` (call :meth:`set_epoch` each epoch).
        rank, world_size: this process's shard; default from ``torch.distributed`` when it is
            initialised, else 0 and 1.
        replacement: draw with replacement (DDAMFN/If3D); without, ``num_samples`` must be <= N and
            every index appears at most once per epoch (a class-weighted permutation).

    The global draw is padded (by wrapping around) to a multiple of ``world_size``; rank ``r`` takes
    positions ``r, r + world_size, ...``, so the shards are disjoint and together cover the global draw.
    ``len(sampler)`` is the per-rank count ``ceil(num_samples / world_size)``.

    Raises:
        ValueError: bad ``num_samples``, ``rank`` or ``world_size``.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray,
        num_samples: int | None = None,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        replacement: bool = True,
    ) -> None:
        self.weights = inverse_frequency_weights(labels)
        n = len(self.weights)
        self.num_samples = int(num_samples) if num_samples is not None else n
        if self.num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {self.num_samples}")
        if not replacement and self.num_samples > n:
            raise ValueError(f"without replacement num_samples ({self.num_samples}) must be <= {n}")
        d_rank, d_world = _dist_rank_world()
        self.world_size = int(world_size) if world_size is not None else d_world
        self.rank = int(rank) if rank is not None else d_rank
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")
        self.seed = int(seed)
        self.replacement = bool(replacement)
        self.epoch = 0
        self.num_per_rank = -(-self.num_samples // self.world_size)
        self.total_size = self.num_per_rank * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Use the draw of ``epoch`` (the same on every rank) on the next iteration."""
        self.epoch = int(epoch)

    def global_indices(self) -> torch.Tensor:
        """int64 [total_size]: the padded global draw of the current epoch (identical on all ranks)."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        idx = torch.multinomial(self.weights, self.num_samples, self.replacement, generator=g)
        if self.total_size > self.num_samples:
            idx = idx.repeat(-(-self.total_size // self.num_samples))[: self.total_size]
        return idx

    def __iter__(self) -> Iterator[int]:
        shard = self.global_indices()[self.rank : self.total_size : self.world_size]
        return iter(shard.tolist())

    def __len__(self) -> int:
        return self.num_per_rank
