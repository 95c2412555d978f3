"""One run of the benchmark — train a model on a run's view, test its best-on-validation checkpoint —
and the executors that run many (sequentially here, as Ray tasks on a local or existing cluster).

A run is finished when its ``result.json`` exists (written atomically after the test); a run with a
``last.pth`` but no result is resumed with ``--resume``; so a killed sweep continues where it stopped
and a re-run skips finished runs. Every run sets its own seed (the run index) and, when asked, its
number of CPU threads, so the local and the Ray executor give the same numbers on the same machine.
"""

from __future__ import annotations

import csv
import json
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from if3d.atomic import atomic_write_json

__all__ = ["DEFAULT_TRAINING", "Job", "import_modules", "run_job", "run_local", "run_ray", "training_argv"]

#: FER-crossval's training protocol, before the user's own training options (which override it):
#: up to 100 epochs, early stopping with patience 20 on validation accuracy, cosine schedule.
DEFAULT_TRAINING = ("--epochs", "100", "--early-stopping-patience", "20", "--scheduler", "cosine",
                    "--select-metric", "accuracy")


@dataclass(frozen=True)
class Job:
    """One (dataset, model, run) of a sweep.

    Attributes:
        dataset: the dataset's name in the tables.
        root: the pooled canonical dataset.
        model: registered model name.
        run: run index (also the training seed).
        protocol: split protocol name.
        view: the run's dataset view (:func:`if3d.crossval.views.build_view`).
        run_dir: the engine's run directory of this job.
        train_args: training options of the user (after :data:`DEFAULT_TRAINING`).
        threads: torch CPU threads of the run (None: torch's default).
        imports: modules (dotted names or ``.py`` files) imported before the run, e.g. where the user
            registers their own models; Ray workers import them too.
    """

    dataset: str
    root: str
    model: str
    run: int
    protocol: str
    view: str
    run_dir: str
    train_args: tuple[str, ...] = ()
    threads: int | None = None
    imports: tuple[str, ...] = ()

    @property
    def result_path(self) -> Path:
        return Path(self.run_dir) / "result.json"


def training_argv(job: Job) -> list[str]:
    """The training command line of a job (a fresh run, or ``--resume`` when its last.pth exists)."""
    run_dir = Path(job.run_dir)
    if (run_dir / "last.pth").is_file():
        return ["--resume", str(run_dir)]
    return ["--model", job.model, "--data", job.view, "--val-split", "val", "--out", str(run_dir),
            "--seed", str(job.run), *DEFAULT_TRAINING, *job.train_args]


def import_modules(names: Sequence[str]) -> None:
    """Import each module (a dotted name, or the path of a ``.py`` file) once; registrations happen on import.

    Raises:
        ImportError: a module cannot be imported (the message names it).
    """
    import importlib
    import importlib.util
    import sys

    for name in names:
        if name.endswith(".py"):
            path = Path(name).resolve()
            key = f"_if3d_user_{path.stem}_{abs(hash(str(path)))}"
            if key in sys.modules:
                continue
            spec = importlib.util.spec_from_file_location(key, path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ImportError(f"--import {name}: not a Python file")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module
            sys.path.insert(0, str(path.parent))  # its own sibling imports
            spec.loader.exec_module(module)
        else:
            importlib.import_module(name)


def _train_time(run_dir: Path) -> float:
    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0.0
    with open(path, newline="", encoding="utf-8") as f:
        return sum(float(r["epoch_time_s"] or 0) for r in csv.DictReader(f))


def run_job(job: Job) -> dict[str, Any]:
    """Train, test and record one job; returns its result row (see :mod:`if3d.crossval.results`).

    A finished job (``result.json`` present) is not run again. Errors are returned as a row with an
    ``error`` field (no ``result.json`` is written, so a re-run tries again).
    """
    if job.result_path.is_file():
        return json.loads(job.result_path.read_text(encoding="utf-8"))
    t0 = time.perf_counter()
    try:
        import torch

        from if3d.evaluate import evaluate_checkpoint
        from if3d.train.cli import config_from_args
        from if3d.train.engine import fit
        from if3d.train.rundir import git_commit

        import_modules(job.imports)
        if job.threads:
            torch.set_num_threads(job.threads)
        cfg = config_from_args(training_argv(job))
        fitted = fit(cfg)
        run_dir = Path(job.run_dir)
        test = evaluate_checkpoint(run_dir / "best.pth", data=job.view, split="test", out=run_dir / "test",
                                   image_size=cfg.data.image_size, workers=0, device=cfg.runtime.device,
                                   skip_missing_renders=cfg.data.skip_missing_renders, verbose=False)
        row = {
            **{k: v for k, v in asdict(job).items() if k in ("dataset", "model", "run", "protocol")},
            "seed": cfg.run.seed,
            "accuracy": test["accuracy"],
            "balanced_accuracy": test["balanced_accuracy"],
            "f1_macro": test["f1_macro"],
            "val_accuracy_best": fitted.best_accuracy,
            "best_epoch": fitted.best_epoch,
            "epochs_run": fitted.epochs_done,
            "stopped_early": fitted.stopped_early,
            "num_test": test["num_samples"],
            "train_time_s": round(_train_time(run_dir), 2),
            "wall_time_s": round(time.perf_counter() - t0, 2),
            "commit": git_commit()["commit"],
        }
        atomic_write_json(job.result_path, row)
        return row
    except (Exception, SystemExit) as e:  # one failed run must not end the sweep; it is reported
        return {"dataset": job.dataset, "model": job.model, "run": job.run, "protocol": job.protocol,
                "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6),
                "wall_time_s": round(time.perf_counter() - t0, 2)}


def run_local(jobs: Sequence[Job], log: Callable[[str], None] = print) -> list[dict]:
    """Run the jobs one after the other in this process."""
    rows = []
    for i, job in enumerate(jobs, 1):
        done = job.result_path.is_file()
        log(f"[{i}/{len(jobs)}] {job.dataset} {job.model} run {job.run}" + (" (done before)" if done else ""))
        rows.append(run_job(job))
    return rows


def run_ray(jobs: Sequence[Job], address: str | None = None, cpus_per_run: float = 1, gpus_per_run: float = 0,
            log: Callable[[str], None] = print) -> list[dict]:
    """Run the jobs as Ray tasks, ``cpus_per_run`` CPUs and ``gpus_per_run`` GPUs each.

    Args:
        address: an existing cluster (``ray://head:10001`` or ``auto`` inside a cluster); None starts a
            local Ray instance on this machine.

    Raises:
        ImportError: Ray is not installed (``pip install -e ".[cluster]"``).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    try:
        remote = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run, max_retries=0)(run_job)
        refs = {remote.remote(job): job for job in jobs}
        rows: dict[Job, dict] = {}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            job = refs[ready[0]]
            rows[job] = ray.get(ready[0])
            log(f"[{len(rows)}/{len(jobs)}] {job.dataset} {job.model} run {job.run} finished")
        return [rows[job] for job in jobs]
    finally:
        if started:
            ray.shutdown()
