"""Distributed training helpers: ``torchrun`` set-up, an evaluation sampler that shards without
duplicates, and gathering per-sample results across ranks.

Launch with ``torchrun --nproc_per_node=N affectnet_gate_fusion_train.py ...`` (add
``--nnodes``/``--node_rank``/``--master_addr`` for several machines). ``torchrun`` sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; without them everything runs in one process.
The backend is NCCL on CUDA and gloo on CPU.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in the job.

    Attributes:
        rank: global rank (0 in a single-process run).
        world_size: number of processes.
        local_rank: rank on this machine (selects the CUDA device).
        device: the torch device of this process.
        distributed: True when a process group was initialised.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``"auto"`` → ``cuda:<local_rank>`` when CUDA is available, else ``cpu``; other strings as given.

    Raises:
        ValueError: a CUDA device was requested but CUDA is not available.
    """
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: CUDA is not available on this machine")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Initialise the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun a bare
            ``"cuda"`` becomes ``cuda:LOCAL_RANK``.
        timeout_s: collective timeout.

    Returns:
        :class:`DistInfo` for this process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size <= 1:
        return DistInfo(0, 1, 0, dev, False)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, dev, True)


def cleanup_distributed() -> None:
    """Destroy the process group if one was initialised."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class ShardedEvalSampler(Sampler[int]):
    """Evaluation sampler: rank ``r`` of ``W`` gets indices ``r, r+W, r+2W, ...`` of ``range(n)``.

    Unlike ``DistributedSampler`` it never pads the last shard with duplicates, so shards may
    differ in length by one; :func:`gather_results` puts the samples back in dataset order.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.num_samples, self.rank, self.world_size = num_samples, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples, self.world_size))


def gather_results(results: Mapping[str, np.ndarray], order_key: str = "index") -> dict[str, np.ndarray]:
    """Concatenate per-sample arrays from every rank and sort them by ``results[order_key]``.

    Args:
        results: equal-length arrays of this rank's samples (first dimension = sample), one of
            them the dataset index under ``order_key``. A rank without samples may give zero-length
            arrays of any shape and dtype: only non-empty ranks' arrays are concatenated.
        order_key: the key whose values define the global order; must be unique across ranks
            (true for :class:`ShardedEvalSampler` shards).

    Returns:
        The same keys with every rank's samples, ordered by ``order_key`` (on every rank).
        Without a process group the input is only sorted.

    Raises:
        RuntimeError: duplicate indices across ranks (the shards overlap).
    """
    local = {k: np.asarray(v) for k, v in results.items()}
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
        # A rank with an empty shard cannot know the others' trailing shapes or dtypes (an [N, 12] AU
        # output, a bool target): its zero-length placeholders take no part in the concatenation.
        merged = {k: np.concatenate([p[k] for p in parts if len(p[k])] or [local[k]], axis=0) for k in local}
    else:
        merged = local
    order = np.argsort(merged[order_key], kind="stable")
    merged = {k: v[order] for k, v in merged.items()}
    idx = merged[order_key]
    if idx.size > 1 and np.any(idx[1:] == idx[:-1]):
        raise RuntimeError("gather_results: the same sample was evaluated on more than one rank")
    return merged


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (identity without a process group); returns a new tensor."""
    out = values.clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def broadcast_object(obj, src: int = 0):
    """Send a picklable object from rank ``src`` to every rank (identity without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def all_reduce_named(values: Mapping[str, torch.Tensor | float]) -> dict[str, float]:
    """Sum named scalars over ranks in one collective (and one device sync); returns Python floats.

    Args:
        values: name → 0-d tensor (any device) or number. The order of the names must be the same on
            every rank (it is, when every rank builds the dict the same way).
    """
    names = list(values)
    device = next((v.device for v in values.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    vec = torch.stack([v.detach().float().reshape(()) if isinstance(v, torch.Tensor)
                       else torch.tensor(float(v), device=device) for v in values.values()])
    return dict(zip(names, all_reduce_sum(vec).tolist(), strict=True))


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics …) to every rank (no-op without a group).

    DDP broadcasts buffers at the start of each training forward, after which every rank updates its own
    running statistics with its own batch; so after the last training step the ranks' statistics differ.
    Calling this before validation makes every rank evaluate the model that rank 0 saves.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for buf in module.buffers():
            dist.broadcast(buf.data, src=src)
