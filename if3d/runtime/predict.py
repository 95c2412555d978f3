"""The prediction loop shared by validation during training, the test script and the benchmarks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm import tqdm

from if3d.metrics import classification_metrics, va_metrics
from if3d.runtime.batches import BatchPreparer, forward_model, unwrap_model
from if3d.runtime.device import autocast_context
from if3d.runtime.distributed import DistInfo, ShardedEvalSampler, gather_results
from if3d.runtime.loaders import make_loader

__all__ = ["PREDICTION_KEYS", "predict", "predict_values", "summarize_predictions"]

#: Keys of :func:`predict`'s result.
PREDICTION_KEYS = ("index", "label", "prediction", "probabilities", "valence", "arousal", "has_va",
                   "valence_pred", "arousal_pred")


@torch.no_grad()
def predict(
    model: nn.Module,
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

    Args:
        model: in eval mode after the call; its output has ``logits`` [B, C] and optionally
            ``valence``/``arousal`` [B].
        dataset: sample dicts as :func:`if3d.data.source.open_split` gives them.
        prepare: turns a batch into inputs and targets (no augmentation is applied).
        batch_size, workers: per-rank loader settings.
        amp: ``off``/``bf16``/``fp16`` autocast.
        info: this process's place in the job.

    Returns (identical on every rank):
        ``{'index' [N] int64, 'label' [N] int64, 'prediction' [N] int64, 'probabilities' [N, C] float32,
        'valence' [N], 'arousal' [N] (targets, NaN when absent), 'has_va' [N] bool,
        'valence_pred' [N], 'arousal_pred' [N] (NaN when the model has no VA outputs)}``.
    """
    model.eval()
    sampler = ShardedEvalSampler(len(dataset), info.rank, info.world_size)
    loader = make_loader(dataset, list(sampler), batch_size, workers, info.device.type == "cuda", False)
    out: dict[str, list] = {k: [] for k in PREDICTION_KEYS}
    for batch in tqdm(loader, desc=desc, disable=not info.is_main, leave=False, dynamic_ncols=True,
                      mininterval=1.0):
        inputs, targets = prepare(batch, train=False)
        with autocast_context(info.device, amp):
            output = forward_model(model, inputs)
        logits = output.logits.float()
        n = logits.shape[0]
        out["index"].append(np.asarray(batch["index"]).astype(np.int64))
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


@torch.no_grad()
def predict_values(
    model: nn.Module,
    dataset: Dataset,
    prepare: BatchPreparer,
    *,
    outputs: Sequence[str],
    targets: Sequence[str],
    batch_size: int,
    workers: int,
    amp: str,
    info: DistInfo,
    desc: str = "eval",
) -> dict[str, np.ndarray]:
    """Collect named outputs and targets of every sample (for models that are not classifiers).

    The same loop as :func:`predict` (sharded over ranks, gathered back in dataset order), but what is kept
    is named: ``output.<name>`` for each of ``outputs`` and ``targets[<name>]`` of each batch.

    Returns (identical on every rank):
        ``{'index' [N] int64, '<output>_pred' [N, ...] float32 for each output, '<target>' [N, ...] for each
        target (float32, bool kept bool)}``.

    Raises:
        KeyError: the model's output or the batch lacks a named value (the message names it).
    """
    model.eval()
    sampler = ShardedEvalSampler(len(dataset), info.rank, info.world_size)
    loader = make_loader(dataset, list(sampler), batch_size, workers, info.device.type == "cuda", False)
    keys = ["index", *(f"{k}_pred" for k in outputs), *targets]
    out: dict[str, list] = {k: [] for k in keys}
    for batch in tqdm(loader, desc=desc, disable=not info.is_main, leave=False, dynamic_ncols=True,
                      mininterval=1.0):
        inputs, batch_targets = prepare(batch, train=False)
        with autocast_context(info.device, amp):
            output = forward_model(model, inputs)
        out["index"].append(np.asarray(batch["index"]).astype(np.int64))
        for k in outputs:
            value = getattr(output, k, None)
            if value is None:
                raise KeyError(f"the model's output has no {k!r} to validate")
            out[f"{k}_pred"].append(value.float().cpu().numpy())
        for k in targets:
            if k not in batch_targets:
                raise KeyError(f"the validation batch has no {k!r} target (it has {', '.join(sorted(batch_targets))})")
            v = batch_targets[k]
            out[k].append(v.cpu().numpy() if v.dtype == torch.bool else v.float().cpu().numpy())
    if out["index"]:
        local = {k: np.concatenate(v, axis=0) for k, v in out.items()}
    else:  # a rank with an empty shard
        local = {k: np.zeros((0,), dtype=np.int64 if k == "index" else np.float32) for k in keys}
    return gather_results(local, order_key="index")


def summarize_predictions(results: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict:
    """Classification metrics (:func:`if3d.metrics.classification_metrics`) of :func:`predict`'s result,
    plus ``valence``/``arousal`` metrics (:func:`if3d.metrics.va_metrics`) when the split has VA labels
    and the model VA outputs."""
    metrics = classification_metrics(results["label"], results["prediction"], class_names)
    has = np.asarray(results["has_va"], dtype=bool)
    if has.any() and np.isfinite(results["valence_pred"][has]).all():
        for k in ("valence", "arousal"):
            metrics[k] = va_metrics(results[f"{k}_pred"][has], results[k][has])
    return metrics
