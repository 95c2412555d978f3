"""The test script's logic (``affectnet_fusion_test.py``): evaluate any supported checkpoint on a split.

Loads the checkpoint through ``networks.weights.build_model_from_checkpoint`` — our own
(``best.pth``/``last.pth``, ``FinalCheckPoints/<Strategy>.pth``), If3D's original
``FinalCheckPoints/{Linear,Attention,Gate,SPP}Fusion.pth`` (strategy, classes and heads inferred
from the weights) or a DDAMFN checkpoint — runs it on the split and writes to the output folder:

    metrics.json                     accuracy, balanced_accuracy, precision/recall/f1 (macro, weighted),
                                     per_class, confusion_matrix, and valence/arousal (RMSE, PCC, CCC,
                                     SAGR) when the split has VA labels and the model VA outputs; the
                                     checkpoint, model, split, class names, data report and
                                     ``excluded_samples`` (samples of classes the model does not have)
    predictions.csv                  one row per sample: path, label, prediction, class probabilities,
                                     valence/arousal targets and predictions
    confusion_matrix.png             counts (seaborn), accuracy in the title
    confusion_matrix_normalized.png  rows normalised to 1 (per-class recall on the diagonal)
    reliability_diagram.png          accuracy against confidence in 15 bins, before and after the checkpoint's
                                     temperature

``metrics.json`` also holds the calibration of the probabilities (:func:`if3d.metrics.calibration_metrics`):
``nll``, ``brier`` and ``ece`` (15 bins) of the probabilities as the checkpoint gives them (its temperature
applied, when it has one: ``python -m if3d.calibration`` fits it on a held-out split), ``uncalibrated``
(the same at temperature 1), ``temperature`` and ``flip_average`` (whether the logits of each photo and its
mirror image were averaged, the checkpoint's documented default unless ``--flip-average`` /
``--no-flip-average`` says otherwise). ``--checkpoint default`` is the model that ships with the toolkit.

Class names are compared, never assumed: the dataset's labels (its ``classes.json``, canonical
AffectNet-8 order for explicit folders) are mapped onto the checkpoint's classes by name (any common
spelling, :func:`if3d.classes.canonical_label`). Classes in a different order are remapped; samples of
classes the model does not have (Contempt under a 7-class model) are left out and counted in
``metrics.json`` (``excluded_samples``) with a warning; a dataset that shares no class with the model
is refused. Checkpoints without class names (the original If3D/DDAMFN files) use the first C
AffectNet-8 names.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import math
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from if3d.atomic import atomic_write_json, atomic_write_text
from if3d.classes import canonical_label, class_names_for
from if3d.console import HelpFormatter, exit_status
from if3d.outputs import exclusive_output

if TYPE_CHECKING:  # torch, the data pipeline, the runtime and the plots load when a job runs, not for --help
    import torch

DEFAULT_OUT_ROOT = "FusionConfusionMatrix"

EXIT_STATUS = {0: "done", 2: "bad options, data, checkpoint or output folder (the message names it)"}


def checkpoint_class_names(metadata: Mapping[str, Any], num_classes: int) -> list[str]:
    """Class names stored in one of our checkpoints (its load report's metadata), else the first
    ``num_classes`` AffectNet-8 names."""
    names = metadata.get("class_names")
    if isinstance(names, list) and len(names) == num_classes:
        return [str(n) for n in names]
    return class_names_for(num_classes)


def _class_key(name: str) -> Any:
    try:
        return canonical_label(name)
    except KeyError:
        return name.strip().lower()


def label_mapping(data_names: Sequence[str], model_names: Sequence[str]) -> dict[int, int]:
    """Dataset label → model class index, matching class names in any common spelling.

    Dataset classes the model does not have are absent from the mapping.

    Raises:
        ValueError: no dataset class matches a model class (the message lists both).
    """
    model_index = {_class_key(n): j for j, n in enumerate(model_names)}
    mapping = {i: model_index[_class_key(n)] for i, n in enumerate(data_names) if _class_key(n) in model_index}
    if not mapping:
        raise ValueError(f"the dataset's classes ({', '.join(data_names)}) share no class with the "
                         f"checkpoint's ({', '.join(model_names)})")
    return mapping


def _num_classes(model: torch.nn.Module, streams: Sequence[str], image_size: int) -> int:
    import torch

    n = getattr(model, "num_classes", None)
    if isinstance(n, int):
        return n
    with torch.no_grad():
        x = torch.zeros(1, 3, image_size, image_size)
        return int(model(*([x] * len(streams))).logits.shape[1])


def default_out_dir(checkpoint: str | os.PathLike, split: str) -> Path:
    """``FusionConfusionMatrix/<name>_<split>``; ``<name>`` is the file stem, prefixed by the run folder
    for the generic ``best``/``last`` names (``runs/gate/best.pth`` → ``gate_best``)."""
    p = Path(checkpoint)
    name = p.stem if p.stem not in ("best", "last") else f"{p.parent.name}_{p.stem}"
    return Path(DEFAULT_OUT_ROOT) / f"{name}_{split}"


def default_split(data: str | os.PathLike) -> str:
    """The held-out split of a canonical dataset (images or clips): ``test`` when it exists, else ``val``.

    Raises:
        FileNotFoundError: neither exists.
    """
    from if3d.data.layout import split_exists

    for split in ("test", "val"):
        if split_exists(data, split):
            return split
    raise FileNotFoundError(f"{data}: no test or val split (photos/ or clips/); give --split NAME")


def write_predictions_csv(path: Path, results: dict, class_names: Sequence[str], paths: Sequence[str]) -> None:
    """Write ``predictions.csv`` (atomic): one row per sample, in dataset order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["index", "path", "label", "label_name", "prediction", "prediction_name",
                *[f"prob_{c}" for c in class_names], "valence", "arousal", "valence_pred", "arousal_pred"])

    def num(v: float) -> str:
        return "" if not math.isfinite(float(v)) else f"{float(v):.6g}"

    for i in range(len(results["index"])):
        lab, pred = int(results["label"][i]), int(results["prediction"][i])
        w.writerow([int(results["index"][i]), paths[i], lab, class_names[lab], pred, class_names[pred],
                    *[f"{p:.6f}" for p in results["probabilities"][i]],
                    num(results["valence"][i]), num(results["arousal"][i]),
                    num(results["valence_pred"][i]), num(results["arousal_pred"][i])])
    atomic_write_text(path, buf.getvalue())


def _prepare_out_dir(out_dir: Path) -> None:
    """Create the output folder before any work, so an unusable ``--out`` fails at once."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"--out {out_dir} is a file, not a folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the output folder {out_dir}: {e.strerror or e}") from e
    if not os.access(out_dir, os.W_OK):
        raise PermissionError(f"the output folder {out_dir} is not writable")


def _remap_results(results: dict, mapping: Mapping[int, int], data_names: Sequence[str]) -> tuple[dict, dict]:
    """Dataset labels → model indices; samples of classes outside ``mapping`` removed and counted by name."""
    labels = np.asarray(results["label"])
    keep = np.isin(labels, list(mapping))
    excluded = {data_names[int(c)]: int((labels == c).sum()) for c in np.unique(labels[~keep])}
    kept = {k: np.asarray(v)[keep] for k, v in results.items()}
    lut = np.full(max(len(data_names), int(labels.max(initial=0)) + 1), -1, dtype=np.int64)
    for i, j in mapping.items():
        lut[i] = j
    kept["label"] = lut[kept["label"]]
    return kept, excluded


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    split: str | None = None,
    photos: str | None = None,
    renders: str | None = None,
    annotations: str | None = None,
    out: str | os.PathLike | None = None,
    batch_size: int = 64,
    workers: int = 0,
    device: str = "auto",
    amp: str | None = None,
    channels_last: bool | None = None,
    tune_allocator: bool | None = None,
    image_size: int = 112,
    skip_missing_renders: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
    flip_average: bool | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on one split and write metrics, predictions and confusion matrices.

    Args:
        checkpoint: any file ``networks.weights.build_model_from_checkpoint`` reads.
        data: canonical dataset root (with ``split``, default :func:`default_split`), or else
            ``photos``/``renders``/``annotations`` explicit paths of one split.
        out: output folder (default :func:`default_out_dir`).
        amp, channels_last, tune_allocator: as for training (None: the device's default; the
            allocator tuning, :func:`if3d.runtime.allocator.tune_glibc_malloc`, applies to CPU runs only).
        skip_missing_renders: skip (and count) photos without a render.
        max_samples: seeded random subset of the split.
        flip_average: average the logits of each photo and its mirror image (None: the checkpoint's default).

    Returns:
        The metrics dict (also in ``<out>/metrics.json``), plus ``'checkpoint'``, ``'model'``,
        ``'split'``, ``'class_names'``, ``'excluded_samples'`` and ``'data_report'`` entries.

    Raises:
        FileNotFoundError, FileExistsError, PermissionError, ValueError: missing files, an unusable
            output folder (or one another toolkit command is writing: :class:`if3d.outputs.OutputError`), bad
            options, or a dataset that shares no class with the model (the message says which).
    """
    from if3d.data.source import SplitSource, open_split
    from if3d.runtime import (
        BatchPreparer,
        cleanup_distributed,
        init_distributed,
        model_streams,
        predict,
        summarize_predictions,
    )

    if (data is None) == (photos is None):
        raise ValueError("give either data (a canonical dataset root) or photos (explicit paths)")
    if data is not None and split is None:
        split = default_split(data)
        if verbose:
            print(f"evaluating split {split!r} of {data} (--split to choose another)", flush=True)
    source = SplitSource.from_root(data, split) if data is not None else SplitSource.from_paths(photos, renders,
                                                                                                 annotations)
    out_dir = Path(out) if out is not None else default_out_dir(checkpoint, source.split)
    info = init_distributed(device)
    lock = contextlib.ExitStack()
    try:
        if info.is_main:
            lock.enter_context(exclusive_output(out_dir, "if3d-test"))  # one writer per output folder
            _prepare_out_dir(out_dir)
        model, report, class_names, runtime = _load_model(checkpoint, info, amp=amp, channels_last=channels_last,
                                                          tune_allocator=tune_allocator, image_size=image_size)
        if flip_average is not None:
            from networks.inference import InferencePolicy

            old = getattr(model, "inference_policy", None) or InferencePolicy()
            model.inference_policy = InferencePolicy(temperature=old.temperature, flip_average=flip_average)
        streams = model_streams(model)
        dataset = open_split(source, image_size=image_size, streams=streams,
                             skip_missing_renders=skip_missing_renders, max_samples=max_samples, seed=seed + 1)
        data_names = list(dataset.class_names)
        mapping = label_mapping(data_names, class_names)
        prepare = BatchPreparer.for_model(model, info.device, runtime.channels_last, augment=False,
                                          image_size=image_size)
        results = predict(model, dataset, prepare, batch_size=batch_size, workers=workers, amp=runtime.amp,
                          info=info, desc="test")
        results, excluded = _remap_results(results, mapping, data_names)
        if excluded and verbose and info.is_main:
            print(f"warning: {sum(excluded.values())} samples of classes the checkpoint does not have were left "
                  f"out: {excluded}", file=sys.stderr, flush=True)
        if len(results["label"]) == 0:
            raise ValueError("no sample of the split belongs to a class of the checkpoint")
        metrics = summarize_predictions(results, class_names)
        metrics.update(_calibration(results, model))
        if info.is_main:
            where = f"{Path(data).resolve().name} {split}" if data is not None else None
            metrics = _write_outputs(metrics, results, dataset, out_dir, checkpoint, model, report, streams,
                                     split if data is not None else str(photos), class_names, excluded, where)
            if verbose:
                print(format_metrics(metrics), flush=True)
        return metrics
    finally:
        cleanup_distributed()
        lock.close()


def _calibration(results: Mapping[str, np.ndarray], model: torch.nn.Module) -> dict[str, Any]:
    """``nll``, ``brier``, ``ece`` with the model's temperature, ``uncalibrated`` (temperature 1), the temperature,
    the flip averaging, and the reliability bins of both (for the diagram)."""
    from if3d.metrics import calibration_metrics, reliability_bins, rescale_temperature

    policy = getattr(model, "inference_policy", None)
    temperature = float(policy.temperature) if policy is not None else 1.0
    probs, labels = results["probabilities"], results["label"]
    raw = rescale_temperature(probs, 1.0 / temperature) if temperature != 1.0 else probs
    return {**calibration_metrics(probs, labels), "uncalibrated": calibration_metrics(raw, labels),
            "temperature": temperature, "flip_average": bool(policy is not None and policy.flip_average),
            "reliability": reliability_bins(probs, labels), "reliability_uncalibrated": reliability_bins(raw, labels)}


def _load_model(checkpoint, info, *, amp, channels_last, tune_allocator, image_size):
    """The checkpoint's model on the device in eval mode, its load report, class names and runtime settings."""
    import torch

    from if3d.runtime import RuntimeConfig, model_streams, resolve_runtime
    from if3d.runtime.allocator import tune_glibc_malloc
    from networks.weights import build_model_from_checkpoint

    model, report = build_model_from_checkpoint(checkpoint)
    num_classes = _num_classes(model, model_streams(model), image_size)
    class_names = checkpoint_class_names(getattr(report, "metadata", {}), num_classes)
    runtime = resolve_runtime(RuntimeConfig(device=str(info.device), amp=amp, channels_last=channels_last,
                                            tune_allocator=tune_allocator), info.device)
    if runtime.tune_allocator:
        tune_glibc_malloc()
    model = model.to(info.device).eval()
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, report, class_names, runtime


def _write_outputs(metrics, results, dataset, out_dir: Path, checkpoint, model, report, streams, split_label,
                   class_names, excluded, where: str | None = None) -> dict:
    from if3d.data.source import dataset_report, sample_path
    from if3d.plots import plot_confusion_matrix, plot_reliability_diagram

    model_label = _model_label(model, report)
    metrics = {
        **metrics,
        "checkpoint": str(checkpoint),
        "checkpoint_format": getattr(report, "source", None),
        "model": model_label,
        "input_streams": list(streams),
        "split": split_label,
        "class_names": class_names,
        "excluded_samples": excluded,
        "data_report": dataset_report(dataset),
    }
    atomic_write_json(out_dir / "metrics.json", _finite_or_none(metrics))
    paths = [sample_path(dataset, int(i)) for i in results["index"]]
    write_predictions_csv(out_dir / "predictions.csv", results, class_names, paths)
    acc = metrics["accuracy"]
    title = f"{model_label} on {where or split_label}"  # the model and the dataset, e.g. "ddamfn on fer2013 val"
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, out_dir / "confusion_matrix.png",
                          title=title, accuracy=acc)
    plot_confusion_matrix(metrics["confusion_matrix"], class_names, out_dir / "confusion_matrix_normalized.png",
                          normalize=True, title=f"{title} (row-normalised)", accuracy=acc)
    t = metrics["temperature"]
    plot_reliability_diagram(metrics["reliability"], out_dir / "reliability_diagram.png", ece=metrics["ece"],
                             title=f"{title}, temperature {t:.3f}",
                             before=metrics["reliability_uncalibrated"] if t != 1.0 else None)
    metrics["out"] = str(out_dir)
    return metrics


def _model_label(model: torch.nn.Module, report: Any) -> str:
    name = getattr(report, "metadata", {}).get("model_name")
    if isinstance(name, str):
        return name
    strategy = getattr(model, "strategy", None)
    return f"{type(model).__name__}({strategy})" if strategy else type(model).__name__


def _finite_or_none(obj: Any) -> Any:
    """NaN/inf → None so metrics.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def format_metrics(m: dict) -> str:
    """A readable summary of :func:`evaluate_checkpoint`'s metrics (what the script prints)."""
    lines = [
        f"checkpoint {m.get('checkpoint')} ({m.get('model')}) on {m.get('split')}: {m['num_samples']} samples",
        f"  accuracy           {m['accuracy']:.4f}",
        f"  balanced accuracy  {m['balanced_accuracy']:.4f}",
        f"  precision / recall / F1 (macro)     {m['precision_macro']:.4f} / {m['recall_macro']:.4f} / "
        f"{m['f1_macro']:.4f}",
        f"  precision / recall / F1 (weighted)  {m['precision_weighted']:.4f} / {m['recall_weighted']:.4f} / "
        f"{m['f1_weighted']:.4f}",
        f"  {'class':<10} {'precision':>9} {'recall':>7} {'F1':>7} {'support':>8}",
    ]
    for name, c in m["per_class"].items():
        lines.append(f"  {name:<10} {c['precision']:>9.4f} {c['recall']:>7.4f} {c['f1']:>7.4f} {c['support']:>8d}")
    for k in ("valence", "arousal"):
        if k in m:
            v = m[k]
            lines.append(f"  {k:<8} RMSE {v['rmse']:.4f}  PCC {v['pcc']:.4f}  CCC {v['ccc']:.4f}  "
                         f"SAGR {v['sagr']:.4f}  ({v['num_samples']} samples)")
    if "nll" in m:
        u = m["uncalibrated"]
        lines.append(f"  calibration        NLL {m['nll']:.4f}  Brier {m['brier']:.4f}  ECE {m['ece']:.4f}  "
                     f"(temperature {m['temperature']:.3f}; at temperature 1: NLL {u['nll']:.4f}  Brier "
                     f"{u['brier']:.4f}  ECE {u['ece']:.4f}){'; flip-averaged' if m.get('flip_average') else ''}")
    if m.get("excluded_samples"):
        lines.append(f"  left out (classes the checkpoint does not have): {m['excluded_samples']}")
    if "out" in m:
        lines.append(f"  written to {m['out']}/ (metrics.json, predictions.csv, confusion_matrix*.png, "
                     "reliability_diagram.png)")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Evaluate a checkpoint (ours, If3D's FinalCheckPoints or DDAMFN's) on a dataset split.",
        epilog=exit_status(EXIT_STATUS), formatter_class=HelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="checkpoint file, or 'default': the expression model that ships with the toolkit")
    p.add_argument("--data", metavar="ROOT", help="canonical dataset root")
    p.add_argument("--split", help="split of --data (default: test when it exists, else val)")
    p.add_argument("--photos", "--test-photos", dest="photos", metavar="DIR",
                   help="explicit photos <DIR>/<label>/<file> (instead of --data)")
    p.add_argument("--renders", "--test-renders", dest="renders", metavar="DIR", help="explicit renders")
    p.add_argument("--annotations", "--test-annotations", dest="annotations", metavar="CSV",
                   help="explicit valence/arousal CSV")
    p.add_argument("--out", metavar="DIR", help=f"output folder (default {DEFAULT_OUT_ROOT}/<checkpoint>_<split>)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="data loader worker processes (default: the CPU cores, at most 4)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--amp", nargs="?", const="auto", choices=("off", "bf16", "fp16", "auto"),
                   help="autocast (default: the device's fast-path default)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory format (default: the device's fast-path default)")
    p.add_argument("--tune-allocator", action=argparse.BooleanOptionalAction, default=None,
                   help="keep freed CPU memory in glibc's heap for reuse (default on for CPU runs)")
    p.add_argument("--image-size", type=int, default=112, help="side of the model's input images in pixels")
    p.add_argument("--skip-missing-renders", action="store_true", help="skip (and count) photos without a render")
    p.add_argument("--max-samples", type=int, metavar="N", help="seeded random subset of the split")
    p.add_argument("--seed", type=int, default=0, help="seed of the --max-samples subset")
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                   help="average the logits of each photo and its mirror image (default: the checkpoint's)")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``affectnet_fusion_test.py``; exits with the status."""
    sys.exit(run(argv))


def run(argv: Sequence[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if (args.data is None) == (args.photos is None):
        print("error: give --data ROOT (with --split) or --photos DIR (explicit paths)", file=sys.stderr)
        return 2
    bad = [f"--{k.replace('_', '-')} must be >= 1, got {v}" for k, v in
           (("batch_size", args.batch_size), ("image_size", args.image_size), ("max_samples", args.max_samples))
           if v is not None and v < 1]
    if args.workers < 0:
        bad.append(f"--workers must be >= 0, got {args.workers}")
    if bad:
        print(f"error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    try:
        evaluate_checkpoint(
            args.checkpoint, data=args.data, split=args.split, photos=args.photos, renders=args.renders,
            annotations=args.annotations, out=args.out, batch_size=args.batch_size, workers=args.workers,
            device=args.device, amp=args.amp, channels_last=args.channels_last,
            tune_allocator=args.tune_allocator, image_size=args.image_size,
            skip_missing_renders=args.skip_missing_renders, max_samples=args.max_samples, seed=args.seed,
            flip_average=args.flip_average,
        )
    except (OSError, ValueError, KeyError, RuntimeError, pickle.UnpicklingError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr, flush=True)
        return 2
    return 0


__all__ = ["evaluate_checkpoint", "format_metrics", "get_args_parser", "label_mapping", "main", "run"]
