"""The one training engine of the toolkit: every fusion strategy and the photo-only DDAMFN baseline.

Modelled on torchvision's ``references/classification/train.py``: :func:`train_one_epoch`,
:func:`evaluate` and :func:`fit` (the ``main``); the four ``affectnet_*_fusion_train.py`` scripts
only choose the model, through :mod:`if3d.train.cli`.

Run directory (``cfg.out``)::

    config.json            every resolved setting, git commit, library versions, dataset sizes
    metrics.csv            one row per epoch (train loss terms, val accuracy / balanced accuracy /
                           macro F1, learning rate, images/s)
    tensorboard/           TensorBoard event files
    last.pth, best.pth     checkpoints in our format (if3d.checkpoint), resumable to the step
    confusion_matrix_best.png, confusion_matrix_best_normalized.png   best epoch's validation

Determinism and resumption: the order of the training samples of epoch ``e`` is a function of
``(seed, e)`` only, and the random state used by step ``s`` (augmentation, dropout) is reseeded
from ``(seed, rank, s)``; so a run interrupted at any step and resumed with ``--resume`` skips the
batches already done and reaches the same weights as an uninterrupted run (on CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler
from tqdm import tqdm

from if3d.atomic import atomic_copy, atomic_write_json, atomic_write_text
from if3d.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    make_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from if3d.classes import AFFECTNET8, class_names_for
from if3d.losses import fer_loss
from if3d.metrics import classification_metrics, va_metrics
from if3d.plots import plot_confusion_matrix
from if3d.train.allocator import release_free_heap, tune_glibc_malloc
from if3d.train.config import (
    FAST_PATH_DEFAULTS,
    FINAL_CHECKPOINT_NAMES,
    TrainConfig,
    resolve_amp,
    resolve_compile,
)
from if3d.train.distributed import (
    DistInfo,
    ShardedEvalSampler,
    all_reduce_sum,
    barrier,
    cleanup_distributed,
    gather_results,
    init_distributed,
)

METRICS_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_ce",
    "train_attention",
    "train_alignment",
    "train_va",
    "train_accuracy",
    "val_accuracy",
    "val_balanced_accuracy",
    "val_f1_macro",
    "images_per_s",
    "epoch_time_s",
)
_TERMS = ("loss", "ce", "attention", "alignment", "va")


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (Ctrl-C / SIGTERM / ``interrupt_after_steps``) after saving last.pth."""


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint was left untouched."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        out: the run directory.
        best_accuracy: best validation accuracy (``-1`` when no epoch finished).
        best_epoch: 1-based epoch of the best accuracy (0 when none).
        epochs_done: completed epochs.
        step: completed optimizer steps.
        last_val: validation metrics of the last epoch (``{}`` when none).
    """

    out: Path
    best_accuracy: float
    best_epoch: int
    epochs_done: int
    step: int
    last_val: dict


# ============================================================================ data


class _Subset(Dataset):
    """A fixed subset of a dataset that keeps ``labels``, ``class_names`` and ``report``.

    ``index`` of a sample is its position in the subset; :meth:`sample_path` names its photo.
    Batch reads (``ds[list]``) are passed on when the base dataset supports them (the cache).
    """

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(base.labels)[self.indices]
        self.class_names = list(base.class_names)
        self.report = getattr(base, "report", None)
        self.supports_batches = _supports_batches(base)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i):
        if isinstance(i, (list, tuple, np.ndarray, torch.Tensor)):
            pos = np.asarray(i, dtype=np.int64).reshape(-1)
            batch = dict(self.base[self.indices[pos].tolist()])
            batch["index"] = torch.from_numpy(pos.copy())
            return batch
        sample = dict(self.base[int(self.indices[i])])
        sample["index"] = int(i)
        return sample

    def sample_path(self, i: int) -> str:
        return _sample_path(self.base, int(self.indices[i]))


def _supports_batches(dataset: Dataset) -> bool:
    """True when ``dataset[list_of_indices]`` returns a collated batch (the memory-mapped cache)."""
    return bool(getattr(dataset, "supports_batches", False)) or hasattr(dataset, "get_batch")


def _sample_path(dataset: Dataset, i: int) -> str:
    """A readable identifier of sample ``i``: its photo path when the dataset exposes it."""
    if hasattr(dataset, "sample_path"):
        return str(dataset.sample_path(i))
    if hasattr(dataset, "photo_path"):
        return str(dataset.photo_path(i))
    rel = getattr(dataset, "photo_relpaths", None)
    if rel is not None:
        return str(rel[i])
    return str(i)


def subset_dataset(dataset: Dataset, max_samples: int | None, seed: int) -> Dataset:
    """The first ``max_samples`` of a seeded permutation of ``dataset`` (kept in dataset order).

    Returns ``dataset`` itself when ``max_samples`` is None or not smaller than its length.
    """
    n = len(dataset)
    if max_samples is None or max_samples >= n:
        return dataset
    if max_samples < 1:
        raise ValueError(f"max samples must be >= 1, got {max_samples}")
    rng = np.random.default_rng(seed)
    return _Subset(dataset, np.sort(rng.permutation(n)[:max_samples]))


def _split_paths(cfg: TrainConfig, role: str) -> dict[str, Any]:
    """Photo root, render root and annotation CSV of the train or val role of ``cfg``."""
    from if3d.data import layout

    if cfg.data is not None:
        root = Path(cfg.data)
        split = cfg.train_split if role == "train" else resolve_val_split(cfg)
        ann = layout.annotations_path(root, split)
        return {
            "split": split,
            "photo_root": layout.photos_dir(root, split),
            "render_root": layout.renders_dir(root, split),
            "annotations_csv": ann if ann.is_file() else None,
            "classes_root": root,
        }
    photos = getattr(cfg, f"{role}_photos")
    if photos is None:
        raise ValueError(f"no {role} data: give --data ROOT or --{role}-photos (and --{role}-renders)")
    renders = getattr(cfg, f"{role}_renders")
    ann = getattr(cfg, f"{role}_annotations")
    return {"split": role, "photo_root": Path(photos), "render_root": Path(renders) if renders else None,
            "annotations_csv": Path(ann) if ann else None, "classes_root": None}


def resolve_val_split(cfg: TrainConfig) -> str:
    """The validation split of a canonical dataset: ``cfg.val_split``, else ``val`` when present, else ``test``.

    Raises:
        FileNotFoundError: no candidate split exists under ``<data>/photos``.
    """
    from if3d.data import layout

    if cfg.val_split is not None:
        return cfg.val_split
    for split in ("val", "test"):
        if layout.photos_dir(cfg.data, split).is_dir():
            return split
    raise FileNotFoundError(
        f"{cfg.data}: no photos/val or photos/test split for validation; give --val-split NAME"
    )


def build_train_dataset(cfg: TrainConfig, role: str, *, photo_only: bool = False) -> Dataset:
    """THE hook that turns the run's data settings into a dataset (train or validation role).

    Returns a dataset of sample dicts ``photo`` uint8 [3,S,S], ``render`` uint8 [3,S,S] (unless
    ``photo_only``), ``label`` int64, ``valence``/``arousal`` float32 (NaN when absent),
    ``has_va`` bool, ``index`` int, with ``.labels`` and ``.class_names``. The pre-decoded cache
    (``if3d.data.cache``) is used when ``cfg.cache`` allows it and one exists for the split;
    otherwise the JPEG/PNG :class:`~if3d.data.dataset.PairedDataset`. ``max_*_samples`` is
    applied here.

    Args:
        cfg: the run configuration.
        role: ``"train"`` or ``"val"``.
        photo_only: the model reads photos only (the render tree still filters the samples when
            given, so a baseline sees exactly the fusion models' samples).
    """
    if role not in ("train", "val"):
        raise ValueError(f"role must be 'train' or 'val', got {role!r}")
    paths = _split_paths(cfg, role)
    dataset = _open_cached(cfg, paths, photo_only) if cfg.cache != "off" else None
    if dataset is None:
        dataset = _open_paired(cfg, paths, photo_only)
    limit = cfg.max_train_samples if role == "train" else cfg.max_val_samples
    return subset_dataset(dataset, limit, cfg.seed + (0 if role == "train" else 1))


def _open_paired(cfg: TrainConfig, paths: Mapping[str, Any], photo_only: bool) -> Dataset:
    """:class:`~if3d.data.dataset.PairedDataset` of one split (JPEG/PNG files)."""
    from if3d.data.dataset import PairedDataset
    from if3d.data.layout import read_classes

    kwargs: dict[str, Any] = {"image_size": cfg.image_size, "skip_missing_renders": cfg.skip_missing_renders}
    names = read_classes(paths["classes_root"]) if paths["classes_root"] is not None else list(AFFECTNET8)
    if cfg.num_classes is not None and cfg.num_classes < len(names):
        kwargs["num_classes"] = cfg.num_classes  # e.g. 7 drops Contempt (counted as excluded_class)
    render_root = paths["render_root"]

    def open_split(with_renders: bool) -> Dataset:
        if cfg.data is not None:
            return PairedDataset(cfg.data, paths["split"], require_renders=with_renders, **kwargs)
        return PairedDataset.from_paths(paths["photo_root"], render_root if with_renders else None,
                                        paths["annotations_csv"], require_renders=with_renders, **kwargs)

    if not photo_only:
        if render_root is None:
            raise ValueError(f"{cfg.model} needs renders: give --data ROOT with renders/ or --{{train,val}}-renders")
        return open_split(True)
    dataset = open_split(False)
    if cfg.skip_missing_renders and render_root is not None and Path(render_root).is_dir():
        # The photo-only baseline sees exactly the fusion models' samples: photos that have a render.
        paired = open_split(True)
        keep = np.flatnonzero(np.isin(dataset.paths, paired.paths))
        if keep.size < len(dataset):
            print(f"{paths['photo_root']}: {len(dataset) - keep.size} photos without a render left out "
                  "(--skip-missing-renders), as for the fusion models", flush=True)
            subset = _Subset(dataset, keep)
            subset.report = paired.report
            return subset
    return dataset


def _open_cached(cfg: TrainConfig, paths: Mapping[str, Any], photo_only: bool) -> Dataset | None:
    """The pre-decoded cache of the split (``if3d.data.cache``) when one exists and is current, else None.

    Only canonical datasets (``--data``) have caches. The photo-only baseline reads the paired
    cache when there is one (same samples as the fusion models), else a photo-only cache.

    Raises:
        if3d.data.cache.StaleCacheError: a cache exists but its source files changed (rebuild it).
    """
    if cfg.data is None:
        return None
    try:
        from if3d.data.cache import open_cache_if_valid
    except ImportError:
        return None
    renders_exist = paths["render_root"] is not None and Path(paths["render_root"]).is_dir()
    candidates = [(False, {"skip_missing_renders": True} if cfg.skip_missing_renders else {})]
    if photo_only and not (cfg.skip_missing_renders and renders_exist):
        candidates.append((True, {}))  # no render filter to reproduce: a photo-only cache will do
    for cache_photo_only, dataset_kwargs in candidates:
        ds = open_cache_if_valid(cfg.data, paths["split"], cfg.image_size, photo_only=cache_photo_only,
                                 dataset_kwargs=dataset_kwargs)
        if ds is None:
            continue
        print(f"using the pre-decoded cache {ds.path} for split {paths['split']}", flush=True)
        if cfg.num_classes is not None and len(ds.class_names) > cfg.num_classes:
            keep = np.flatnonzero(np.asarray(ds.labels) < cfg.num_classes)
            ds = _Subset(ds, keep)
            ds.class_names = ds.class_names[: cfg.num_classes]
        return ds
    return None


class _EpochSampler(Sampler[int]):
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

    ``balanced``: class-balanced sampling with replacement (:class:`~if3d.data.sampler.
    ClassBalancedSampler`, DDP-aware); otherwise a seeded shuffle sharded over ranks.
    """
    if balanced:
        from if3d.data.sampler import ClassBalancedSampler

        sampler = ClassBalancedSampler(
            np.asarray(dataset.labels), seed=seed, rank=rank, world_size=world_size
        )
        sampler.set_epoch(epoch)
        return [int(i) for i in sampler]
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=g).tolist()
    per_rank = len(order) // world_size
    return order[rank * per_rank : (rank + 1) * per_rank]


def _worker_init(_: int) -> None:
    # Ctrl-C is handled by the main process (it saves a checkpoint); workers must not die on it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _TrimmingDataLoader(DataLoader):
    """A DataLoader that returns the process's free heap to the OS before it forks workers.

    With the allocator tuning (:mod:`if3d.train.allocator`) the training process keeps its freed
    activations (~12 GB for a fusion model at batch 64); workers forked from it would share those
    pages copy-on-write and the next step would copy them all. Non-persistent workers are forked at
    every ``iter()``, so the release happens there.
    """

    def __iter__(self):
        if self.num_workers > 0:
            release_free_heap()
        return super().__iter__()


def _loader(dataset: Dataset, indices: Sequence[int], batch_size: int, workers: int, pin: bool,
            drop_last: bool) -> DataLoader:
    if _supports_batches(dataset):  # one gather per batch from the memory-mapped cache
        return _TrimmingDataLoader(
            dataset,
            batch_size=None,
            sampler=BatchSampler(_EpochSampler(indices), batch_size, drop_last),
            num_workers=workers,
            pin_memory=pin,
            worker_init_fn=_worker_init if workers > 0 else None,
        )
    return _TrimmingDataLoader(
        dataset,
        batch_size=batch_size,
        sampler=_EpochSampler(indices),
        num_workers=workers,
        pin_memory=pin,
        drop_last=drop_last,
        worker_init_fn=_worker_init if workers > 0 else None,
        persistent_workers=False,
    )


# ============================================================================ batches


class BatchPreparer:
    """Moves a collated batch to the device and turns uint8 images into normalised model inputs.

    Training batches go through the batched paired augmentation
    (:class:`~if3d.data.transforms.PairedAugment`: the same geometry for photo and render,
    erasing on the photo only; it returns normalised float) on the training device;
    evaluation batches are only normalised (:func:`~if3d.data.transforms.normalize`).
    """

    def __init__(self, device: torch.device, streams: Sequence[str], channels_last: bool,
                 augment: bool, image_size: int) -> None:
        from if3d.data.transforms import PairedAugment, normalize

        self.device = device
        self.streams = tuple(streams)
        self.channels_last = channels_last
        self.normalize = normalize
        self.augment = PairedAugment(image_size=image_size).train() if augment else None

    def __call__(self, batch: Mapping[str, Any], train: bool) -> tuple[tuple[torch.Tensor, ...], dict]:
        """Returns ``(inputs, targets)``: inputs ``(photo,)`` or ``(photo, render)`` float [B,3,S,S];
        targets ``label`` [B] int64, ``valence``/``arousal`` [B] float32, ``has_va`` [B] bool."""
        nb = self.device.type == "cuda"
        photo = batch["photo"].to(self.device, non_blocking=nb)
        render = batch["render"].to(self.device, non_blocking=nb) if "render" in self.streams else None
        if train and self.augment is not None:
            if render is None:
                inputs = [self.augment(photo)]
            else:
                inputs = list(self.augment(photo, render))
        else:
            inputs = [self.normalize(photo)] + ([self.normalize(render)] if render is not None else [])
        if self.channels_last:
            inputs = [x.contiguous(memory_format=torch.channels_last) for x in inputs]
        targets = {
            "label": batch["label"].to(self.device, non_blocking=nb),
            "valence": batch["valence"].to(self.device, non_blocking=nb),
            "arousal": batch["arousal"].to(self.device, non_blocking=nb),
            "has_va": batch["has_va"].to(self.device, non_blocking=nb),
        }
        return tuple(inputs), targets


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"}; a null context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ============================================================================ model / optimisation


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DDP and ``torch.compile`` wrappers."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_kwargs_for(cfg: TrainConfig, num_classes: int) -> dict[str, Any]:
    """Builder keyword arguments of ``networks.create_model(cfg.model, ...)``."""
    kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
    if cfg.num_heads is not None:
        kwargs["num_heads"] = int(cfg.num_heads)
    if cfg.faithful:
        kwargs["faithful"] = True
    return kwargs


def build_optimizer(cfg: TrainConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """Adam or AdamW with the fused / foreach implementation chosen by ``cfg.optimizer_impl``."""
    impl: dict[str, Any] = {}
    if cfg.optimizer_impl == "fused":
        impl["fused"] = True
    elif cfg.optimizer_impl == "foreach":
        impl["foreach"] = True
    elif cfg.optimizer_impl not in (None, "default"):
        raise ValueError(f"optimizer_impl must be default, foreach or fused, got {cfg.optimizer_impl!r}")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **impl)
    raise ValueError(f"optimizer must be adam or adamw, got {cfg.optimizer!r}")


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule and when it is stepped (``"step"`` or ``"epoch"``).

    Returns:
        (scheduler or None, interval).
    """
    if cfg.scheduler == "cyclic":
        up = cfg.cyclic_step_size_up or max(1, steps_per_epoch // 2)
        sched = torch.optim.lr_scheduler.CyclicLR(
            optimizer,
            base_lr=cfg.cyclic_base_lr,
            max_lr=cfg.cyclic_max_lr,
            step_size_up=up,
            mode=cfg.cyclic_mode,
            cycle_momentum=False,
        )
        return sched, "step"
    if cfg.scheduler == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.exp_gamma), "epoch"
    if cfg.scheduler == "none":
        return None, "epoch"
    raise ValueError(f"scheduler must be cyclic, exponential or none, got {cfg.scheduler!r}")


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + 12_345) % (2**63 - 1)


def _reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may draw from the global state
    random.seed(seed)


# ============================================================================ one epoch / evaluation


def forward_model(model: nn.Module, streams: Sequence[str], inputs: Sequence[torch.Tensor]):
    """``model(photo)`` or ``model(photo, render)`` according to the model's ``input_streams``."""
    return model(*inputs[: len(streams)])


@dataclass
class _EpochState:
    """Running sums of the epoch in progress (saved in mid-epoch checkpoints)."""

    sums: dict[str, float]
    correct: float = 0.0
    samples: float = 0.0
    time_s: float = 0.0

    @classmethod
    def empty(cls) -> _EpochState:
        return cls(sums=dict.fromkeys(_TERMS, 0.0))

    def to_dict(self) -> dict:
        return {"sums": dict(self.sums), "correct": self.correct, "samples": self.samples, "time_s": self.time_s}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> _EpochState:
        if not d:
            return cls.empty()
        return cls(sums={k: float(d["sums"].get(k, 0.0)) for k in _TERMS}, correct=float(d["correct"]),
                   samples=float(d["samples"]), time_s=float(d["time_s"]))


class _StopFlag:
    """Set by SIGINT/SIGTERM; checked after every optimizer step."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass

    def uninstall(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum, _frame) -> None:
        if self.requested:  # second Ctrl-C: give up immediately
            raise KeyboardInterrupt
        self.requested = True
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing this step and saving a resumable checkpoint "
              "(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)


def train_one_epoch(
    *,
    model: nn.Module,
    streams: Sequence[str],
    loader: DataLoader,
    prepare: BatchPreparer,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scheduler_interval: str,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    info: DistInfo,
    epoch: int,
    start_step: int,
    state: _EpochState,
    stop: _StopFlag,
    writer=None,
    total_steps_in_epoch: int,
) -> tuple[int, bool]:
    """Train over ``loader`` (the not-yet-done batches of ``epoch``), updating ``state`` in place.

    Every step: reseed from (seed, rank, step), augment, forward under autocast, loss
    (:func:`if3d.losses.fer_loss`), non-finite check (all ranks agree), backward, optimizer
    step, per-iteration scheduler step.

    Returns:
        (global step after the last completed batch, True when a stop was requested).

    Raises:
        NonFiniteLossError: a NaN/inf loss on any rank (nothing is saved).
    """
    model.train()
    weights = cfg.loss_weights()
    step = start_step
    done_in_epoch = total_steps_in_epoch - len(loader)
    bar = tqdm(
        total=total_steps_in_epoch,
        initial=done_in_epoch,
        desc=f"epoch {epoch + 1}/{cfg.epochs}",
        disable=not info.is_main,
        dynamic_ncols=True,
        leave=False,
        mininterval=1.0,
    )
    t_last = time.perf_counter()
    try:
        for batch in loader:
            _reseed(_step_seed(cfg.seed, info.rank, step))
            inputs, targets = prepare(batch, train=True)
            bsz = inputs[0].shape[0]
            with autocast_context(info.device, cfg.amp):
                output = forward_model(model, streams, inputs)
            terms = fer_loss(output, targets["label"], targets["valence"], targets["arousal"],
                             targets["has_va"], weights)
            correct = (output.logits.detach().argmax(1) == targets["label"]).sum()
            # one device sync and (under DDP) one collective per step
            vec = torch.stack([*(t.float() * bsz for t in terms.detached().values()),
                               correct.float(), torch.tensor(float(bsz), device=correct.device),
                               torch.tensor(float(stop.requested), device=correct.device)])
            vec = all_reduce_sum(vec).tolist()
            if not all(math.isfinite(v) for v in vec[: len(_TERMS)]):
                n = vec[len(_TERMS) + 1]
                detail = ", ".join(f"{k}={v / n:.4g}" for k, v in zip(_TERMS, vec, strict=False))
                raise NonFiniteLossError(
                    f"non-finite loss at epoch {epoch + 1}, step {step + 1} ({detail}); training stopped "
                    "and the last good checkpoint was left as it was. Try a lower --lr, --amp off, "
                    "or check the data of this batch."
                )
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(terms.total).backward()
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and scheduler_interval == "step":
                scheduler.step()
            step += 1

            n_global = vec[len(_TERMS) + 1]
            for k, v in zip(_TERMS, vec, strict=False):
                state.sums[k] += v
            state.correct += vec[len(_TERMS)]
            state.samples += n_global
            now = time.perf_counter()
            dt = now - t_last
            t_last = now
            state.time_s += dt
            bar.update(1)
            bar.set_postfix(loss=f"{vec[0] / n_global:.4f}", img_s=f"{n_global / max(dt, 1e-9):.1f}",
                            refresh=False)
            if writer is not None and (step % 10 == 0 or step == 1):
                writer.add_scalar("train/loss_step", vec[0] / n_global, step)
                writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], step)
            stop_now = vec[-1] > 0 or (cfg.interrupt_after_steps is not None and step >= cfg.interrupt_after_steps)
            if stop_now:
                return step, True
    finally:
        bar.close()
    return step, False


@torch.no_grad()
def evaluate(
    model: nn.Module,
    streams: Sequence[str],
    dataset: Dataset,
    prepare: BatchPreparer,
    *,
    batch_size: int,
    workers: int,
    amp: str,
    info: DistInfo,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Predict every sample of ``dataset`` (sharded over ranks, gathered back in dataset order).

    Returns (identical on every rank):
        ``{'index' [N] int64, 'label' [N] int64, 'prediction' [N] int64, 'probabilities' [N, C] float32,
        'valence' [N], 'arousal' [N] (targets, NaN when absent), 'has_va' [N] bool,
        'valence_pred' [N], 'arousal_pred' [N] (NaN when the model has no VA outputs)}``.
    """
    model.eval()
    sampler = ShardedEvalSampler(len(dataset), info.rank, info.world_size)
    loader = _loader(dataset, list(sampler), batch_size, workers, info.device.type == "cuda", False)
    out: dict[str, list] = {k: [] for k in ("index", "label", "prediction", "probabilities", "valence",
                                            "arousal", "has_va", "valence_pred", "arousal_pred")}
    for batch in tqdm(loader, desc=desc, disable=not info.is_main, leave=False, dynamic_ncols=True,
                      mininterval=1.0):
        inputs, targets = prepare(batch, train=False)
        with autocast_context(info.device, amp):
            output = forward_model(model, streams, inputs)
        logits = output.logits.float()
        n = logits.shape[0]
        out["index"].append(batch["index"].numpy().astype(np.int64))
        out["label"].append(targets["label"].cpu().numpy())
        out["prediction"].append(logits.argmax(1).cpu().numpy())
        out["probabilities"].append(torch.softmax(logits, 1).cpu().numpy().astype(np.float32))
        out["valence"].append(targets["valence"].float().cpu().numpy())
        out["arousal"].append(targets["arousal"].float().cpu().numpy())
        out["has_va"].append(targets["has_va"].cpu().numpy().astype(bool))
        for k in ("valence", "arousal"):
            pred = getattr(output, k, None)
            out[f"{k}_pred"].append(
                pred.float().cpu().numpy() if pred is not None else np.full(n, np.nan, np.float32)
            )
    if out["index"]:
        local = {k: np.concatenate(v, axis=0) for k, v in out.items()}
    else:  # a rank with an empty shard
        c = int(getattr(unwrap_model(model), "num_classes", 0))
        local = {k: np.zeros((0, c) if k == "probabilities" else (0,),
                             dtype=bool if k == "has_va" else np.float32) for k in out}
        for k in ("index", "label", "prediction"):
            local[k] = local[k].astype(np.int64)
    return gather_results(local, order_key="index")


def summarize_predictions(results: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict:
    """Classification metrics, and valence/arousal metrics when labels and VA outputs exist."""
    metrics = classification_metrics(results["label"], results["prediction"], class_names)
    has = np.asarray(results["has_va"], dtype=bool)
    if has.any() and np.isfinite(results["valence_pred"][has]).all():
        for k in ("valence", "arousal"):
            metrics[k] = va_metrics(results[f"{k}_pred"][has], results[k][has])
    return metrics


# ============================================================================ run directory


def _git_commit() -> dict[str, Any]:
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def library_versions() -> dict[str, Any]:
    """Versions of Python, torch, CUDA/cuDNN and the main libraries (None when not installed)."""
    import importlib.metadata as md

    out: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("if3d", "torch", "torchvision", "numpy", "scikit-learn", "timm", "pillow", "tensorboard"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def _read_metrics_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _write_metrics_rows(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in METRICS_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def _fmt(v: float) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


# ============================================================================ fit


def resolve_runtime(cfg: TrainConfig, device: torch.device) -> TrainConfig:
    """Fill the fast-path settings left to the device default (``None``/``"auto"``) and check them."""
    d = FAST_PATH_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    amp = cfg.amp if cfg.amp is not None else d.amp
    return replace(
        cfg,
        amp=resolve_amp(amp, device.type),
        channels_last=d.channels_last if cfg.channels_last is None else cfg.channels_last,
        optimizer_impl=d.optimizer_impl if cfg.optimizer_impl is None else cfg.optimizer_impl,
        compile=d.compile if cfg.compile is None else cfg.compile,
        tune_allocator=(d.tune_allocator if cfg.tune_allocator is None else cfg.tune_allocator)
        and device.type == "cpu",
        # CPU: loading in the training process (a 64-pair JPEG batch decodes in ~40 ms against a 5 s step);
        # worker processes would only take cycles from the two compute threads (benchmarks/RESULTS.md)
        workers=cfg.workers if cfg.workers is not None
        else (min(4, os.cpu_count() or 1) if device.type == "cuda" else 0),
    )


def _class_names_for(dataset: Dataset, num_classes: int) -> list[str]:
    return class_names_for(num_classes, getattr(dataset, "class_names", None))


def fit(cfg: TrainConfig, *, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None) -> FitResult:
    """Train ``cfg.model`` as configured; the whole run (torchvision's ``main``).

    Args:
        cfg: the run configuration (see :class:`~if3d.train.config.TrainConfig`).
        train_dataset, val_dataset: datasets to use instead of :func:`build_train_dataset`
            (tests, custom data); same sample dict and ``labels``/``class_names`` attributes.

    Returns:
        :class:`FitResult`.

    Raises:
        TrainingInterrupted: stopped by SIGINT/SIGTERM or ``interrupt_after_steps`` after writing a
            resumable ``last.pth``.
        NonFiniteLossError: NaN/inf loss; checkpoints untouched.
        ValueError, FileNotFoundError: bad settings or data (the message says which).
    """
    from networks import create_model

    info = init_distributed(cfg.device)
    try:
        return _fit(cfg, info, train_dataset, val_dataset, create_model)
    finally:
        cleanup_distributed()


def _fit(cfg: TrainConfig, info: DistInfo, train_dataset, val_dataset, create_model) -> FitResult:
    cfg = resolve_runtime(cfg, info.device)
    if cfg.tune_allocator and not tune_glibc_malloc():
        if info.is_main:
            print("allocator tuning skipped: this C library has no glibc mallopt", flush=True)
        cfg = replace(cfg, tune_allocator=False)
    if cfg.data is not None and cfg.val_split is None and val_dataset is None:
        cfg = replace(cfg, val_split=resolve_val_split(cfg))
    out = Path(cfg.out)
    resume_ckpt = None
    if cfg.resume:
        rpath = Path(cfg.resume)
        if rpath.is_dir():
            rpath = rpath / "last.pth"
        resume_ckpt = load_checkpoint(rpath)
        if resume_ckpt["model_name"] != cfg.model:
            raise ValueError(f"--resume {rpath}: checkpoint is a {resume_ckpt['model_name']} run, not {cfg.model}")
    _reseed(cfg.seed + info.rank)

    # ---- model (built first: its input streams decide whether renders are read)
    probe_streams = _model_streams(create_model, cfg)
    photo_only = probe_streams == ("photo",)
    if train_dataset is None:
        train_dataset = build_train_dataset(cfg, "train", photo_only=photo_only)
    if val_dataset is None:
        val_dataset = build_train_dataset(cfg, "val", photo_only=photo_only)
    if len(train_dataset) == 0 or len(val_dataset) == 0:
        raise ValueError(f"empty dataset: {len(train_dataset)} training and {len(val_dataset)} validation samples")
    labels = np.asarray(train_dataset.labels)
    num_classes = cfg.num_classes or len(train_dataset.class_names)
    top = int(max(labels.max(), np.asarray(val_dataset.labels).max()))
    if top >= num_classes:
        raise ValueError(f"labels go up to {top} but the model has {num_classes} classes (--num-classes)")
    class_names = _class_names_for(train_dataset, num_classes)
    if resume_ckpt is not None:
        model_kwargs = dict(resume_ckpt["model_kwargs"])
    else:
        model_kwargs = model_kwargs_for(cfg, num_classes)
    model = create_model(cfg.model, **model_kwargs)
    streams = tuple(getattr(model, "input_streams", ("photo",)))
    load_report = None
    if cfg.pretrained and resume_ckpt is None:
        from networks.weights import load_weights

        load_report = load_weights(model, cfg.pretrained)
        if info.is_main:
            print(f"pretrained weights: {load_report}", flush=True)
    model.to(info.device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)

    world_batch = cfg.batch_size
    if world_batch % info.world_size:
        raise ValueError(f"--batch-size {world_batch} is not divisible by the {info.world_size} ranks")
    local_batch = world_batch // info.world_size
    per_rank = len(epoch_indices(train_dataset, 0, cfg.seed, cfg.balanced_sampling, info.rank, info.world_size))
    steps_per_epoch = per_rank // local_batch
    if steps_per_epoch < 1:
        raise ValueError(
            f"{len(train_dataset)} training samples give no full batch of {local_batch} per rank; "
            "lower --batch-size or use more data"
        )

    optimizer = build_optimizer(cfg, model.parameters(), info.device)
    scheduler, sched_interval = build_scheduler(cfg, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.amp == "fp16")

    step, epochs_done = 0, 0
    best = {"accuracy": -1.0, "epoch": 0}
    state = _EpochState.empty()
    last_val: dict = {}
    if resume_ckpt is not None:
        unwrap_model(model).load_state_dict(resume_ckpt["model"])
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        if scheduler is not None and resume_ckpt["scheduler"]:
            scheduler.load_state_dict(resume_ckpt["scheduler"])
        if resume_ckpt["scaler"]:
            scaler.load_state_dict(resume_ckpt["scaler"])
        step = int(resume_ckpt["step"])
        epochs_done = int(resume_ckpt["epoch"])
        m = resume_ckpt["metrics"]
        best = dict(m.get("best", best))
        state = _EpochState.from_dict(m.get("epoch_state"))
        last_val = dict(m.get("val", {}))
        if info.world_size == int(resume_ckpt["config"].get("_world_size", info.world_size)):
            restore_rng_state(resume_ckpt["rng"])
        if not 0 <= step - epochs_done * steps_per_epoch < steps_per_epoch:
            raise ValueError(
                f"--resume: checkpoint step {step} / epoch {epochs_done} does not match {steps_per_epoch} "
                "steps per epoch; the data, batch size or number of ranks changed"
            )
        if info.is_main:
            print(f"resuming {cfg.resume} at epoch {epochs_done + 1}, step {step}", flush=True)

    train_model: nn.Module = model
    if info.distributed:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )
    auto_compile = cfg.compile == "auto"  # resolve_runtime has replaced None by the device default
    do_compile, compile_reason = resolve_compile(cfg.compile, info.device.type,
                                                 cfg.epochs * steps_per_epoch - step)
    cfg = replace(cfg, compile=do_compile)
    if info.is_main and (do_compile or auto_compile):
        print(f"torch.compile {compile_reason}" + (" (the first step compiles for a few minutes)"
                                                  if do_compile else ""), flush=True)
    if do_compile:
        if auto_compile:
            # chosen for the user: a model the compiler cannot handle trains eagerly instead of failing
            from torch._dynamo import config as dynamo_config

            dynamo_config.suppress_errors = True
        train_model = torch.compile(train_model)

    prepare = BatchPreparer(info.device, streams, cfg.channels_last, cfg.augment, cfg.image_size)

    # ---- run directory
    writer = None
    metrics_path = out / "metrics.csv"
    run_info = {
        "config": cfg.to_dict(),
        "run": {
            "device": str(info.device),
            "world_size": info.world_size,
            "batch_size_per_rank": local_batch,
            "steps_per_epoch": steps_per_epoch,
            "compile": compile_reason,
            "model_kwargs": model_kwargs,
            "input_streams": list(streams),
            "class_names": class_names,
            "num_train_samples": len(train_dataset),
            "num_val_samples": len(val_dataset),
            "train_data_report": _report_dict(train_dataset),
            "val_data_report": _report_dict(val_dataset),
            "pretrained_report": str(load_report) if load_report is not None else None,
            "git": _git_commit(),
            "versions": library_versions(),
            "command": sys.argv,
        },
    }
    ckpt_config = {**cfg.to_dict(), "_world_size": info.world_size}

    def checkpoint(epoch_count: int, metrics: dict) -> dict:
        return make_checkpoint(
            model_name=cfg.model,
            model_kwargs=model_kwargs,
            model_state=unwrap_model(model).state_dict(),
            class_names=class_names,
            optimizer_state=optimizer.state_dict(),
            scheduler_state=scheduler.state_dict() if scheduler is not None else None,
            scaler_state=scaler.state_dict() if scaler.is_enabled() else None,
            epoch=epoch_count,
            step=step,
            rng=capture_rng_state(),
            config=ckpt_config,
            metrics=metrics,
        )

    # Ctrl-C / SIGTERM from here on: finish the step, save a resumable last.pth, exit 130.
    stop = _StopFlag()
    stop.install()
    try:
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_json(out / "config.json", run_info)
            rows = [r for r in _read_metrics_rows(metrics_path) if int(r["epoch"]) <= epochs_done]
            _write_metrics_rows(metrics_path, rows)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=step if step else None)
        barrier()

        for epoch in range(epochs_done, cfg.epochs):
            order = epoch_indices(train_dataset, epoch, cfg.seed, cfg.balanced_sampling, info.rank,
                                  info.world_size)[: steps_per_epoch * local_batch]
            skip = step - epoch * steps_per_epoch
            loader = _loader(train_dataset, order[skip * local_batch :], local_batch, cfg.workers,
                             info.device.type == "cuda", drop_last=True)
            if stop.requested:
                stopped = True
            else:
                step, stopped = train_one_epoch(
                    model=train_model, streams=streams, loader=loader, prepare=prepare, optimizer=optimizer,
                    scheduler=scheduler, scheduler_interval=sched_interval, scaler=scaler, cfg=cfg, info=info,
                    epoch=epoch, start_step=step, state=state, stop=stop, writer=writer,
                    total_steps_in_epoch=steps_per_epoch,
                )
            if stopped and step < (epoch + 1) * steps_per_epoch:
                if info.is_main:
                    save_checkpoint(checkpoint(epoch, {"best": best, "val": last_val,
                                                       "epoch_state": state.to_dict()}), out / "last.pth")
                barrier()
                raise TrainingInterrupted(
                    f"training interrupted at epoch {epoch + 1}, step {step}; resumable checkpoint "
                    f"{out / 'last.pth'} (continue with --resume {out / 'last.pth'})"
                )
            lr_now = optimizer.param_groups[0]["lr"]
            if scheduler is not None and sched_interval == "epoch":
                scheduler.step()

            # the plain module: no DDP collectives in a loop whose shards may differ by one batch
            results = evaluate(model, streams, val_dataset, prepare, batch_size=local_batch,
                               workers=cfg.workers, amp=cfg.amp, info=info, desc=f"val {epoch + 1}")
            epochs_done = epoch + 1
            n = max(state.samples, 1.0)
            if info.is_main:
                val = summarize_predictions(results, class_names)
                improved = val["accuracy"] > best["accuracy"]
                if improved:
                    best = {"accuracy": val["accuracy"], "epoch": epochs_done}
                last_val = {k: val[k] for k in ("accuracy", "balanced_accuracy", "f1_macro",
                                                "precision_macro", "recall_macro")}
                row = {
                    "epoch": epochs_done,
                    "step": step,
                    "lr": _fmt(lr_now),
                    **{("train_loss" if k == "loss" else f"train_{k}"): _fmt(state.sums[k] / n) for k in _TERMS},
                    "train_accuracy": _fmt(state.correct / n),
                    "val_accuracy": _fmt(val["accuracy"]),
                    "val_balanced_accuracy": _fmt(val["balanced_accuracy"]),
                    "val_f1_macro": _fmt(val["f1_macro"]),
                    "images_per_s": _fmt(state.samples / max(state.time_s, 1e-9)),
                    "epoch_time_s": _fmt(state.time_s),
                }
                state = _EpochState.empty()
                ck = checkpoint(epochs_done, {"best": best, "val": last_val, "epoch_state": None})
                save_checkpoint(ck, out / "last.pth")
                if improved:
                    atomic_copy(out / "last.pth", out / "best.pth")
                    acc = val["accuracy"]
                    plot_confusion_matrix(val["confusion_matrix"], class_names, out / "confusion_matrix_best.png",
                                          title=f"{cfg.model}, epoch {epochs_done} (validation)", accuracy=acc)
                    plot_confusion_matrix(val["confusion_matrix"], class_names,
                                          out / "confusion_matrix_best_normalized.png", normalize=True,
                                          title=f"{cfg.model}, epoch {epochs_done} (validation, row-normalised)",
                                          accuracy=acc)
                rows = _read_metrics_rows(metrics_path)
                rows.append(row)
                _write_metrics_rows(metrics_path, rows)
                if writer is not None:
                    for k in _TERMS:
                        col = "train_loss" if k == "loss" else f"train_{k}"
                        writer.add_scalar(f"train/{k}", float(row[col]), step)
                    writer.add_scalar("train/accuracy", float(row["train_accuracy"]), step)
                    for k in ("accuracy", "balanced_accuracy", "f1_macro"):
                        writer.add_scalar(f"val/{k}", val[k], step)
                    writer.add_scalar("lr", lr_now, step)
                    writer.add_scalar("images_per_s", float(row["images_per_s"]), step)
                    writer.flush()
                print(f"epoch {epochs_done}/{cfg.epochs}: loss {float(row['train_loss']):.4f}, "
                      f"val accuracy {val['accuracy']:.4f}, balanced {val['balanced_accuracy']:.4f}, "
                      f"macro F1 {val['f1_macro']:.4f}, {float(row['images_per_s']):.1f} img/s"
                      f"{' (best)' if improved else ''}", flush=True)
            else:
                state = _EpochState.empty()
            barrier()
            asked = cfg.interrupt_after_steps is not None and step >= cfg.interrupt_after_steps
            if epochs_done < cfg.epochs and (stop.requested or asked):
                raise TrainingInterrupted(
                    f"training interrupted after epoch {epochs_done}, step {step}; resumable checkpoint "
                    f"{out / 'last.pth'} (continue with --resume {out / 'last.pth'})"
                )
    finally:
        stop.uninstall()
        if writer is not None:
            writer.close()

    if info.is_main and cfg.final_checkpoint and (out / "best.pth").is_file():
        name = FINAL_CHECKPOINT_NAMES.get(cfg.model, f"{cfg.model}.pth")
        dst = atomic_copy(out / "best.pth", Path(cfg.final_checkpoint) / name)
        print(f"final checkpoint: {dst}", flush=True)
    return FitResult(out=out, best_accuracy=float(best["accuracy"]), best_epoch=int(best["epoch"]),
                     epochs_done=epochs_done, step=step, last_val=last_val)


def _report_dict(dataset: Dataset) -> Any:
    rep = getattr(dataset, "report", None)
    if rep is None or isinstance(rep, (dict, list, str)):
        return rep
    return rep.to_dict(max_paths=20) if hasattr(rep, "to_dict") else str(rep)


def _model_streams(create_model, cfg: TrainConfig) -> tuple[str, ...]:
    """Input streams of ``cfg.model`` (``("photo",)`` or ``("photo", "render")``), from a probe instance."""
    probe = create_model(cfg.model, **model_kwargs_for(cfg, cfg.num_classes or len(AFFECTNET8)))
    return tuple(getattr(probe, "input_streams", ("photo",)))


