"""Experiment trackers of the run directory: TensorBoard (default) or MLflow (``--tracker mlflow``).

:class:`~if3d.train.rundir.RunDirectory` writes ``config.json``, ``metrics.csv`` and the checkpoints itself and
hands the curves, the confusion matrices and the final checkpoint to one tracker:

- ``tensorboard``: ``<run>/tensorboard/`` event files, x-axis = optimizer step: ``train/loss_step`` and
  ``train/lr`` every 10th step, and per epoch ``train/<term>``, ``train/accuracy``, ``val/<metric>``, ``lr``,
  ``images_per_s``.
- ``mlflow``: one MLflow run per run directory in the experiment ``if3d`` of ``--tracking-uri`` (default
  ``sqlite:///<parent of --out>/mlflow.db``, a local database file, artifacts in ``<parent of --out>/mlartifacts``;
  any MLflow tracking URI works, e.g. ``http://host:5000``; a ``file:`` URI is MLflow's legacy file store,
  allowed when asked for). Logged: every resolved setting as a parameter (``<section>.<field>``) plus the
  model, the criterion and the sample counts; per epoch, with the epoch as step, the ``metrics.csv`` columns
  (``train_loss``, ``train_<term>``, ``train_accuracy``, ``val_accuracy``, ``val_balanced_accuracy``,
  ``val_f1_macro``, ``lr``, ``images_per_s``, ``epoch_time_s``); on every new best epoch the confusion matrix
  (``confusion_matrix/confusion_matrix_best.json`` with the class names, and both PNGs); at the end
  ``checkpoint/best.pth``, ``config.json`` and ``metrics.csv``, and the run's status (``FINISHED``, ``KILLED``
  when interrupted, ``FAILED`` on an error). The MLflow run id is kept in ``<run>/mlflow_run.json``, so
  ``--resume`` continues the same MLflow run (its epochs after the resumed one are logged again, over the old
  values, as ``metrics.csv`` is cut back).

MLflow is an optional dependency (``pip install -e ".[tracking]"``); asking for it without it installed is one
line naming the missing package.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from if3d.atomic import atomic_write_json

__all__ = ["TRACKERS", "MLflowTracker", "TensorBoardTracker", "Tracker", "check_tracking_store", "default_tracking_uri",
           "make_tracker"]

#: The choices of ``--tracker``.
TRACKERS = ("tensorboard", "mlflow")

#: MLflow experiment of the toolkit's runs.
EXPERIMENT = "if3d"


class Tracker:
    """What the run directory tells its tracker (every method does nothing by default)."""

    def log_step(self, step: int, loss: float, lr: float) -> None:
        """Per-step loss and learning rate (called every step)."""

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        """One epoch's scalars by ``metrics.csv`` column name."""

    def log_confusion(self, confusion: np.ndarray, class_names: Sequence[str], epoch: int,
                      images: Sequence[Path]) -> None:
        """The best epoch's validation confusion matrix (counts [C, C]) and its plots."""

    def close(self, files: Sequence[Path], error: BaseException | None) -> None:
        """End of the run: ``files`` that exist are the run's results; ``error`` is what stopped it, if anything."""


class TensorBoardTracker(Tracker):
    """``<run>/tensorboard/`` (module docstring); ``purge_step`` drops the events after a resumed step."""

    def __init__(self, folder: Path, step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder), purge_step=step if step else None)

    def log_step(self, step: int, loss: float, lr: float) -> None:
        if step % 10 == 0 or step == 1:
            self.writer.add_scalar("train/loss_step", loss, step)
            self.writer.add_scalar("train/lr", lr, step)

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in scalars.items():
            if key.startswith("train_"):
                self.writer.add_scalar(f"train/{key[len('train_'):]}", value, step)
            elif key.startswith("val_"):
                self.writer.add_scalar(f"val/{key[len('val_'):]}", value, step)
        self.writer.add_scalar("lr", scalars["lr"], step)
        self.writer.add_scalar("images_per_s", scalars["images_per_s"], step)
        self.writer.flush()

    def close(self, files: Sequence[Path], error: BaseException | None) -> None:
        self.writer.close()


def default_tracking_uri(run_dir: str | os.PathLike) -> str:
    """``sqlite:///<absolute parent of the run directory>/mlflow.db``: the local store of ``--tracker mlflow``.

    Raises:
        ValueError: the folder's path holds ``?`` or ``#``, which a URI would read as the start of a query or
            fragment (the database would land outside the folder); the message asks for ``--tracking-uri``.
    """
    folder = Path(run_dir).resolve().parent
    if any(c in str(folder) for c in "?#"):
        raise ValueError(f"{folder}: a '?' or '#' in the path cannot be part of the default MLflow store's URI "
                         "(sqlite:///<folder>/mlflow.db); give --tracking-uri, or an --out without them")
    return f"sqlite:///{folder / 'mlflow.db'}"


def check_tracking_store(uri: str) -> None:
    """Refuse, before anything is written, a local SQLite store that cannot be written (MLflow would retry it
    for about two minutes before failing). Other URIs are checked when the run starts.

    Raises:
        ValueError: one line naming the store and the problem.
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):].split("?", 1)[0])
    if db.exists():
        if not os.access(db, os.W_OK) or not os.access(db.parent, os.W_OK):
            raise ValueError(f"--tracking-uri {uri}: the MLflow database {db} cannot be written")
        return
    parent = db.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise ValueError(f"--tracking-uri {uri}: the MLflow database {db} cannot be created ({parent} is not a "
                         "writable folder)")


class MLflowTracker(Tracker):
    """One MLflow run per run directory (module docstring).

    Args:
        run_dir: the run directory (``mlflow_run.json`` is kept there).
        run_info: ``config.json``'s content (its ``config`` and ``run`` sections become parameters).
        tracking_uri: MLflow tracking URI, or None for :func:`default_tracking_uri`.
        resumed: the run continues an earlier one (``--resume``).

    Raises:
        ValueError: MLflow is not installed, or the tracking store cannot be reached (one line naming it).
    """

    def __init__(self, run_dir: Path, run_info: Mapping[str, Any], tracking_uri: str | None, resumed: bool) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ValueError("--tracker mlflow needs the mlflow package: pip install -e \".[tracking]\" "
                             f"(or pip install mlflow); {e}") from e
        uri = tracking_uri or default_tracking_uri(run_dir)
        if uri.startswith("file:"):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 refuses its legacy store otherwise
        self.uri = uri
        self.state_file = run_dir / "mlflow_run.json"
        try:
            self.client = MlflowClient(tracking_uri=uri)
            self.run_id = self._previous_run() if resumed else None
            if self.run_id is None:
                self.run_id = self._new_run(run_dir, run_info)
            else:
                self.client.update_run(self.run_id, status="RUNNING")
        except Exception as e:  # MLflow reports an unreachable or unwritable store in many types
            if isinstance(e, ValueError) and "mlflow package" in str(e):
                raise
            raise ValueError(f"--tracking-uri {uri}: cannot start an MLflow run ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from e
        atomic_write_json(self.state_file, {"tracking_uri": uri, "run_id": self.run_id})
        print(f"MLflow run {self.run_id} in {uri} (experiment {EXPERIMENT})", flush=True)

    def _previous_run(self) -> str | None:
        try:
            state = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if state.get("tracking_uri") != self.uri:
            return None
        try:
            return self.client.get_run(state["run_id"]).info.run_id
        except Exception:  # the run was deleted from the store: start a new one
            return None

    def _new_run(self, run_dir: Path, run_info: Mapping[str, Any]) -> str:
        experiment = self.client.get_experiment_by_name(EXPERIMENT)
        if experiment is not None:
            experiment_id = experiment.experiment_id
        elif self.uri.startswith(("sqlite:", "file:")) or "://" not in self.uri:
            store = Path(self.uri.split("///", 1)[-1]).parent if self.uri.startswith("sqlite:") else None
            location = (store / "mlartifacts" / EXPERIMENT).as_uri() if store is not None else None
            experiment_id = self.client.create_experiment(EXPERIMENT, artifact_location=location)
        else:
            experiment_id = self.client.create_experiment(EXPERIMENT)
        config = run_info.get("config", {})
        run = run_info.get("run", {})
        tags = {"if3d.run_dir": str(run_dir.resolve()), "if3d.model": str(config.get("model", {}).get("model"))}
        created = self.client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
        from mlflow.entities import Param

        params = {f"{section}.{key}": value for section, values in config.items() if isinstance(values, dict)
                  for key, value in values.items()}
        params.update({f"run.{k}": run.get(k) for k in ("device", "world_size", "steps_per_epoch",
                                                         "num_train_samples", "num_val_samples", "input_streams")})
        params["run.criterion"] = run.get("criterion")
        batch = [Param(k, _param_text(v)) for k, v in sorted(params.items())]
        for i in range(0, len(batch), 100):  # MLflow's limit per batch
            self.client.log_batch(created.info.run_id, params=batch[i : i + 100])
        return created.info.run_id

    def log_epoch(self, epoch: int, step: int, scalars: Mapping[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in scalars.items() if np.isfinite(v)]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_confusion(self, confusion: np.ndarray, class_names: Sequence[str], epoch: int,
                      images: Sequence[Path]) -> None:
        self.client.log_dict(self.run_id, {"epoch": epoch, "class_names": list(class_names),
                                           "confusion_matrix": np.asarray(confusion).astype(int).tolist()},
                             "confusion_matrix/confusion_matrix_best.json")
        for image in images:
            if image.is_file():
                self.client.log_artifact(self.run_id, str(image), "confusion_matrix")

    def close(self, files: Sequence[Path], error: BaseException | None) -> None:
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), "checkpoint" if path.suffix == ".pth" else None)
        if error is None:
            status = "FINISHED"
        else:
            interrupted = isinstance(error, KeyboardInterrupt) or type(error).__name__ == "TrainingInterrupted"
            status = "KILLED" if interrupted else "FAILED"
        self.client.set_terminated(self.run_id, status=status)


def _param_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 6000 else text[:5997] + "..."


def make_tracker(kind: str, run_dir: Path, run_info: Mapping[str, Any], step: int,
                 tracking_uri: str | None = None) -> Tracker:
    """The tracker ``kind`` (:data:`TRACKERS`) of a run directory that starts (or resumes at ``step``).

    Raises:
        ValueError: an unknown kind; MLflow missing or unreachable.
    """
    if kind == "tensorboard":
        return TensorBoardTracker(run_dir / "tensorboard", step)
    if kind == "mlflow":
        return MLflowTracker(run_dir, run_info, tracking_uri, resumed=step > 0)
    raise ValueError(f"--tracker must be one of {', '.join(TRACKERS)}, got {kind!r}")


def current_error() -> BaseException | None:
    """The exception being handled or propagated where this is called (in a ``finally`` block), or None."""
    return sys.exc_info()[1]
