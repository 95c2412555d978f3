"""Calibrate a trained classifier: fit its temperature on a held-out split and write a checkpoint that
carries it (``python -m if3d.calibration``).

    python -m if3d.calibration --checkpoint runs/default_model/best.pth --data Dataset/fer2013_full \\
        --split calib --flip-average --out runs/default_model/calibrated.pth [--half]

Temperature scaling (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017,
section 4.2): one scalar ``T > 0`` minimising the negative log-likelihood of ``softmax(z / T)`` on a split
that neither the training nor the reported split touches (the converters write one with
``--calibration-fraction``). Dividing the logits by ``T`` never changes the predicted class, so accuracy
is unchanged; only the confidence moves.

The written checkpoint is the input checkpoint without its optimizer state, plus:

- ``inference``: ``{"temperature": T, "flip_average": bool}`` (:class:`networks.inference.InferencePolicy`),
  applied wherever the toolkit predicts with the checkpoint (the test script, the analysis, the video
  commands);
- ``calibration``: the split it was fitted on, its size, accuracy, and NLL / Brier / ECE before and after;
- ``provenance``: the training seed and recipe (from the checkpoint's configuration) and a SHA-256
  fingerprint of the training split's files (:func:`split_fingerprint`), when that split is on disk.

``--half`` stores the weights as float16 (half the file; they load into float32 models). Exit status: 0
done; 2 bad options, an unreadable checkpoint or dataset, an output that cannot be written (one line
naming the file); 130 interrupted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["calibrate_checkpoint", "get_args_parser", "main", "run", "split_fingerprint"]


def split_fingerprint(root: str | os.PathLike, split: str) -> dict[str, Any]:
    """SHA-256 over every photo of a split of a canonical dataset: its ``<label>/<file>`` path and its bytes,
    in sorted order; the same files under the same labels give the same digest on any machine.

    Returns:
        ``{"split", "files", "sha256"}``.

    Raises:
        FileNotFoundError: the split has no photo folder.
    """
    from if3d.data.layout import photos_dir

    folder = photos_dir(root, split)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no photos of split {split!r}")
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return {"split": split, "files": len(files), "sha256": h.hexdigest()}


def calibrate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | os.PathLike,
    split: str,
    out: str | os.PathLike,
    flip_average: bool | None = None,
    half: bool = False,
    batch_size: int = 64,
    verbose: bool = True,
) -> dict[str, Any]:
    """Fit the temperature of ``checkpoint`` on ``split`` of ``data`` and write the calibrated checkpoint.

    Args:
        checkpoint: one of the toolkit's checkpoints (``best.pth``, ``last.pth``, or an earlier calibrated one,
            whose temperature is replaced).
        data, split: a canonical dataset root and the held-out split to fit on.
        out: the calibrated checkpoint to write (atomically); never the input file.
        flip_average: average the logits of each photo and its mirror image (None: the checkpoint's setting).
        half: store the weights as float16.

    Returns:
        The ``calibration`` entry written into the checkpoint.

    Raises:
        ValueError: ``out`` is the input file, or the checkpoint is not one of the toolkit's.
        plus those of :func:`if3d.evaluate.evaluate_checkpoint`'s loading and of writing ``out``.
    """
    import numpy as np
    import torch

    from if3d.atomic import atomic_torch_save
    from if3d.checkpoint import load_checkpoint
    from if3d.data.source import SplitSource, open_split
    from if3d.evaluate import _remap_results, label_mapping
    from if3d.metrics import calibration_metrics, fit_temperature, rescale_temperature
    from if3d.runtime import (
        BatchPreparer,
        RuntimeConfig,
        cleanup_distributed,
        init_distributed,
        model_streams,
        predict,
        resolve_runtime,
    )
    from networks.inference import InferencePolicy, resolve_checkpoint
    from networks.weights import build_model_from_checkpoint

    src = resolve_checkpoint(checkpoint)
    out = Path(out)
    if out.exists() and out.resolve() == src.resolve():
        raise ValueError(f"{out}: the calibrated checkpoint must not overwrite its input")
    if src.suffix.lower() == ".onnx":
        raise ValueError(f"{src}: an exported ONNX model is calibrated through its PyTorch checkpoint: calibrate that, "
                         "then export it again (python -m if3d.export)")
    ckpt = load_checkpoint(src)
    model, _ = build_model_from_checkpoint(src)
    old = getattr(model, "inference_policy", None) or InferencePolicy()
    flip = old.flip_average if flip_average is None else bool(flip_average)
    model.inference_policy = InferencePolicy(temperature=1.0, flip_average=flip)
    info = init_distributed("cpu" if not torch.cuda.is_available() else "auto")
    try:
        runtime = resolve_runtime(RuntimeConfig(device=str(info.device)), info.device)
        model = model.to(info.device).eval()
        spec = getattr(model, "backbone_spec", None)
        size = int(spec.input_size) if spec is not None else 112
        dataset = open_split(SplitSource.from_root(data, split), image_size=size, streams=model_streams(model))
        prepare = BatchPreparer.for_model(model, info.device, runtime.channels_last, augment=False, image_size=size)
        results = predict(model, dataset, prepare, batch_size=batch_size, workers=0, amp=runtime.amp, info=info,
                          desc="calibration split")
    finally:
        cleanup_distributed()
    names = [str(c) for c in ckpt["class_names"]]
    data_names = list(dataset.class_names)
    kept, excluded = _remap_results(results, label_mapping(data_names, names), data_names)
    if len(kept["label"]) == 0:
        raise ValueError(f"{data} {split}: no photo of a class of the checkpoint ({', '.join(names)})")
    probs, labels = kept["probabilities"].astype(np.float64), kept["label"]
    temperature = fit_temperature(np.log(np.clip(probs, 1e-300, None)), labels)
    after = rescale_temperature(probs, temperature)
    entry = {
        "data": str(Path(data).resolve().name), "split": split, "samples": int(len(labels)),
        "left_out_other_classes": int(sum(excluded.values())), "temperature": temperature, "flip_average": flip,
        "accuracy": float((probs.argmax(1) == labels).mean()),
        "before": calibration_metrics(probs, labels), "after": calibration_metrics(after, labels),
        "method": "temperature scaling (Guo et al. 2017), NLL minimised over log T on the calibration split",
        "classes": names,
    }
    provenance: dict[str, Any] = dict(ckpt.get("provenance") or {})
    config = ckpt.get("config") or {}
    run_cfg, recipe, data_cfg = config.get("run") or {}, config.get("recipe") or {}, config.get("data") or {}
    provenance.setdefault("seed", run_cfg.get("seed"))
    provenance.setdefault("recipe", recipe)
    provenance.setdefault("model", config.get("model"))
    train_root, train_split = data_cfg.get("data"), data_cfg.get("train_split", "train")
    if "training_data" not in provenance and train_root and Path(train_root).is_dir():
        provenance["training_data"] = {"root": Path(train_root).name, **split_fingerprint(train_root, train_split)}
    model_state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in ckpt["model"].items()}
    written = {**ckpt, "model": model_state, "optimizer": None, "scheduler": None, "scaler": None,
               "inference": InferencePolicy(temperature=temperature, flip_average=flip).to_dict(),
               "calibration": entry, "provenance": provenance, "weights_dtype": "float16" if half else "float32"}
    atomic_torch_save(written, out)
    if verbose:
        b, a = entry["before"], entry["after"]
        print(f"temperature {temperature:.4f} fitted on {entry['samples']} photos of {data} {split} "
              f"(accuracy {entry['accuracy']:.4f}{', flip-averaged' if flip else ''}): NLL {b['nll']:.4f} -> "
              f"{a['nll']:.4f}, ECE {b['ece']:.4f} -> {a['ece']:.4f}, Brier {b['brier']:.4f} -> {a['brier']:.4f}\n"
              f"written {out} ({out.stat().st_size / 2**20:.1f} MiB{', float16 weights' if half else ''})", flush=True)
    return entry


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m if3d.calibration",
        description="Fit a classifier's temperature on a held-out split (temperature scaling) and write a "
                    "checkpoint that carries it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="exit status: 0 done; 2 bad options, an unreadable checkpoint or dataset, or an output that cannot "
               "be written (one line naming the file); 130 interrupted",
    )
    p.add_argument("--checkpoint", required=True, help="the toolkit checkpoint to calibrate ('default': the shipped "
                   "model)")
    p.add_argument("--data", required=True, help="canonical dataset root")
    p.add_argument("--split", default="calib", help="the held-out split to fit on (never the reported one)")
    p.add_argument("--out", required=True, help="the calibrated checkpoint to write")
    p.add_argument("--flip-average", action=argparse.BooleanOptionalAction, default=None,
                   help="average the logits of each photo and its mirror image (default: the checkpoint's)")
    p.add_argument("--half", action="store_true", help="store the weights as float16")
    p.add_argument("--batch-size", type=int, default=64)
    return p


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = get_args_parser().parse_args(argv)
    if args.batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    from if3d.console import one_line_errors

    return one_line_errors(lambda: calibrate_checkpoint(
        args.checkpoint, data=args.data, split=args.split, out=args.out, flip_average=args.flip_average,
        half=args.half, batch_size=args.batch_size) and 0, interrupted="interrupted; nothing was written")


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


if __name__ == "__main__":
    main()
