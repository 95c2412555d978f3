"""The run directory of a training run: everything the engine writes, each file atomically.

Layout (``--out``)::

    config.json            "config": every resolved setting by section; "run": device, world size, steps
                           per epoch, model arguments, class names, sample counts and data reports,
                           pretrained-weight report, git commit, library versions, command line
    metrics.csv            one row per epoch: epoch, step, lr (at the epoch's end), lr_mean, lr_max,
                           train_loss, train_<term> for each term of the model's criterion, train_accuracy,
                           val_accuracy, val_balanced_accuracy, val_f1_macro, images_per_s, epoch_time_s
    tensorboard/           the same curves (train/<term>, val/<metric>, lr), x-axis = optimizer step
                           (``--tracker tensorboard``, the default)
    mlflow_run.json        ``--tracker mlflow``: the MLflow tracking URI and run id (parameters, per-epoch
                           metrics, confusion matrices, best.pth go to that run; :mod:`if3d.train.tracking`)
    last.pth               checkpoint in our format (if3d.checkpoint) with optimizer, schedule and RNG state,
                           resumable to the step
    best.pth               weights of the best validation epoch (same format, no optimizer state: for
                           evaluation, fine-tuning and --final-checkpoint)
    confusion_matrix_best.png, confusion_matrix_best_normalized.png   best epoch's validation
"""

from __future__ import annotations

import csv
import io
import platform
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from if3d.atomic import atomic_copy, atomic_write_json, atomic_write_text, remove_stale_temporaries
from if3d.checkpoint import save_checkpoint
from if3d.plots import plot_confusion_matrix
from if3d.train.tracking import Tracker, current_error, make_tracker

__all__ = ["RunDirectory", "RunWriteError", "git_commit", "library_versions", "metrics_columns"]

#: validation metrics of an expression classifier; a regression model's criterion names its own
#: (``networks.validation.ValidationSpec.metrics``)
VAL_METRICS = ("accuracy", "balanced_accuracy", "f1_macro")


class RunWriteError(OSError):
    """A file of the run directory could not be written (full disk, read-only folder); the previous
    version of the file is intact."""


def metrics_columns(terms: Sequence[str], val_metrics: Sequence[str] = VAL_METRICS) -> tuple[str, ...]:
    """The ``metrics.csv`` header for a criterion with these term names and these validation metrics."""
    return ("epoch", "step", "lr", "lr_mean", "lr_max", "train_loss", *(f"train_{t}" for t in terms),
            "train_accuracy", *(f"val_{m}" for m in val_metrics), "images_per_s", "epoch_time_s")


def git_commit() -> dict[str, Any]:
    """``{"commit": sha, "dirty": bool}`` of the toolkit's checkout (None values outside git)."""
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
    for pkg in ("if3d", "torch", "torchvision", "numpy", "scikit-learn", "timm", "pillow", "tensorboard", "mlflow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["cuda"] = torch.version.cuda
    out["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return out


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


class RunDirectory:
    """Writes one run's directory (the layout is in the module docstring). Only the main rank writes.

    Args:
        path: the run directory.
        terms: the criterion's term names (the ``train_<term>`` columns).
        is_main: this process writes (rank 0); on other ranks every method is a no-op.
        val_metrics: the validation metrics (the ``val_<metric>`` columns; an expression classifier's by
            default).
    """

    def __init__(self, path: str | Path, terms: Sequence[str], is_main: bool = True,
                 val_metrics: Sequence[str] = VAL_METRICS) -> None:
        self.path = Path(path)
        self.val_metrics = tuple(val_metrics)
        self.columns = metrics_columns(terms, self.val_metrics)
        self.terms = tuple(terms)
        self.is_main = is_main
        self.tracker: Tracker | None = None

    @property
    def last(self) -> Path:
        return self.path / "last.pth"

    @property
    def best(self) -> Path:
        return self.path / "best.pth"

    @property
    def metrics_csv(self) -> Path:
        return self.path / "metrics.csv"

    def open(self, run_info: Mapping[str, Any], epochs_done: int, step: int) -> None:
        """Start (or resume) writing: ``config.json``, ``metrics.csv`` cut back to ``epochs_done`` rows,
        leftovers of an interrupted save removed, the tracker started: TensorBoard from ``step`` (later events
        purged) or the MLflow run (``run_info["config"]["run"]["tracker"]`` and ``["tracking_uri"]``).

        Raises:
            RunWriteError: the folder cannot be written.
            ValueError: ``--tracker mlflow`` without MLflow installed, or an unreachable tracking URI.
        """
        if not self.is_main:
            return
        run = dict(run_info.get("config", {}).get("run", {}))
        if (run.get("tracker") or "tensorboard") == "mlflow":  # refused before anything is written
            from if3d.train.tracking import check_tracking_store, default_tracking_uri

            check_tracking_store(run.get("tracking_uri") or default_tracking_uri(self.path))
        fresh = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            removed = remove_stale_temporaries(self.path)
            if removed:
                print(f"{self.path}: removed {len(removed)} temporary file(s) of an interrupted save", flush=True)
            atomic_write_json(self.path / "config.json", run_info)
            rows = [r for r in self._read_rows() if int(r["epoch"]) <= epochs_done]
            self._write_rows(rows)
        except OSError as e:
            raise RunWriteError(f"cannot write the run directory {self.path}: {e}") from e
        try:
            self.tracker = make_tracker(run.get("tracker") or "tensorboard", self.path, run_info, step,
                                        run.get("tracking_uri"))
        except ValueError:
            # a run that never started leaves no config.json and header-only metrics.csv behind
            if fresh:
                import shutil

                shutil.rmtree(self.path, ignore_errors=True)
            elif epochs_done == 0 and not self.last.is_file():
                for name in ("config.json", self.metrics_csv.name):
                    (self.path / name).unlink(missing_ok=True)
            raise

    def close(self) -> None:
        """Stop the tracker; called in the engine's ``finally``, so the exception that ends the run, if any, is
        what :func:`~if3d.train.tracking.current_error` sees (MLflow: the run's status)."""
        if self.tracker is not None:
            tracker, self.tracker = self.tracker, None
            files = [self.best, self.path / "config.json", self.metrics_csv]
            tracker.close(files, current_error())

    # ---------------------------------------------------------------------------------- logging

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """The tracker's per-step curves (TensorBoard: every 10th step and the first; MLflow: none)."""
        if self.tracker is not None:
            self.tracker.log_step(step, loss, lr)

    def log_epoch(self, epoch: int, step: int, lr: float, meters, val: Mapping[str, Any]) -> dict[str, str]:
        """Append the epoch's row to ``metrics.csv`` and its scalars to the tracker; returns the row.

        Args:
            meters: the epoch's :class:`~if3d.train.meters.EpochMeters`.
            val: validation metrics (``accuracy``, ``balanced_accuracy``, ``f1_macro`` …).
        """
        row = {
            "epoch": epoch, "step": step, "lr": _fmt(lr), "lr_mean": _fmt(meters.lr_mean),
            "lr_max": _fmt(meters.lr_max), "train_loss": _fmt(meters.mean("loss")),
            **{f"train_{t}": _fmt(meters.mean(t)) for t in self.terms},
            "train_accuracy": _fmt(meters.accuracy),
            **{f"val_{k}": _fmt(float(val[k])) for k in self.val_metrics},
            "images_per_s": _fmt(meters.images_per_s), "epoch_time_s": _fmt(meters.time_s),
        }
        if not self.is_main:
            return row
        self._write_rows([*self._read_rows(), row])
        if self.tracker is not None:
            scalars = {"train_loss": meters.mean("loss"), **{f"train_{t}": meters.mean(t) for t in self.terms},
                       "train_accuracy": meters.accuracy,
                       **{f"val_{k}": float(val[k]) for k in self.val_metrics},
                       "lr": lr, "lr_mean": meters.lr_mean, "lr_max": meters.lr_max,
                       "images_per_s": meters.images_per_s, "epoch_time_s": meters.time_s}
            self.tracker.log_epoch(epoch, step, {k: float(v) for k, v in scalars.items()})
        return row

    def _read_rows(self) -> list[dict]:
        if not self.metrics_csv.is_file():
            return []
        with open(self.metrics_csv, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))

    def _write_rows(self, rows: Sequence[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=self.columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in self.columns})
        atomic_write_text(self.metrics_csv, buf.getvalue())

    # ---------------------------------------------------------------------------------- checkpoints

    def save(self, checkpoint: Mapping[str, Any], path: Path) -> None:
        """Write a checkpoint atomically.

        Raises:
            RunWriteError: it could not be written (full disk …); the previous file is intact.
        """
        if not self.is_main:
            return
        try:
            save_checkpoint(checkpoint, path)
        except (OSError, RuntimeError) as e:  # torch.save reports a full disk as RuntimeError
            raise RunWriteError(f"cannot write {path}: {e} (is the disk full or the folder read-only?); "
                                "the previous version of the file is intact") from e

    def plot_best(self, confusion: np.ndarray, class_names: Sequence[str], model: str, data: str, epoch: int,
                  accuracy: float) -> None:
        """The best epoch's validation confusion matrices (counts and row-normalised)."""
        if not self.is_main:
            return
        title = f"{model} on {data}, epoch {epoch} (validation)"
        plot_confusion_matrix(confusion, class_names, self.path / "confusion_matrix_best.png", title=title,
                              accuracy=accuracy)
        plot_confusion_matrix(confusion, class_names, self.path / "confusion_matrix_best_normalized.png",
                              normalize=True, title=f"{title}, row-normalised", accuracy=accuracy)
        if self.tracker is not None:
            self.tracker.log_confusion(confusion, class_names, epoch, [self.path / "confusion_matrix_best.png",
                                                                      self.path / "confusion_matrix_best_normalized.png"])

    def copy_final(self, folder: str | Path, name: str) -> Path | None:
        """Copy ``best.pth`` to ``<folder>/<name>`` (``--final-checkpoint``); None when there is no best."""
        if not (self.is_main and self.best.is_file()):
            return None
        try:
            return atomic_copy(self.best, Path(folder) / name)
        except OSError as e:
            raise RunWriteError(f"cannot write {Path(folder) / name}: {e}") from e
