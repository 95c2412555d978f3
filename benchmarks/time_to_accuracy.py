"""Time to accuracy of the default recipe: training minutes until a fixed PublicTest subset first reaches each
target accuracy.

    python -m benchmarks.time_to_accuracy --data Dataset/fer2013_full [--budget-min 30] [--targets 0.60 0.65]
        [--val-samples 1000] [--evals-per-epoch 2] [--label NAME] [training options ...]

What is trained: the recipe of ``examples/train_default_model.py`` (the shipped default model): photo-only
DDAMFN with 2 DDA heads on the ImageNet MobileNetV2 backbone, preset ``fer_imagenet``, 12 epochs, seed 0, no
torch.compile (:data:`DEFAULT_RECIPE`), by the training engine itself (:class:`if3d.train.engine.Trainer`,
subclassed here only to validate between epochs and to stop). Any further option is an option of the training
command (``python -m if3d.train --help``) and wins over the recipe's: variants to compare are such options,
e.g. ``--image-size 96``, ``--epochs 6`` (a shorter cosine schedule), ``--batch-size 64``,
``--max-train-samples 2000``.

What is measured:

- validation: accuracy on a fixed subset of the dataset's ``val`` split (FER2013 PublicTest in
  ``Dataset/fer2013_full``): ``--val-samples`` photos (default 1,000) drawn with ``--val-seed`` (default 0),
  the same whatever the training seed or options (:func:`if3d.data.source.subset_dataset`); evaluated
  ``--evals-per-epoch`` times per epoch (default 2: mid-epoch by this benchmark, at the epoch's end by the
  engine's own validation), as the engine validates (:func:`if3d.runtime.predict`, no flip averaging);
- training time: wall-clock minutes from the first training step, data loading included, with everything
  else excluded and reported apart — the evaluations, and the engine's end-of-epoch checkpoint writing that
  goes with them (``eval_s``), and the set-up before the first step (``setup_s``: model, weights, data);
- for each target: the training minutes, epoch and step of the first evaluation at or above it (``null`` when
  not reached within the budget).

The run stops when every target is reached (unless ``--keep-going``), when the training time reaches
``--budget-min``, or when the recipe's epochs end. Results: the run is added to ``--json`` (default
``benchmarks/time_to_accuracy.json``, one record per ``--label``, a rerun replaces its record) and the table of
all recorded runs is regenerated between this benchmark's markers in ``--markdown``
(``benchmarks/RESULTS.md``; ``''`` for none). Timings are only comparable on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from if3d.train.engine import Trainer, TrainingInterrupted  # noqa: E402

#: The training options of ``examples/train_default_model.py`` (its ``--val-split calib`` aside: this
#: benchmark validates on its own PublicTest subset). Options given on this command line replace these.
DEFAULT_RECIPE: list[tuple[str, str | None]] = [
    ("--model", "ddamfn"), ("--backbone", "mobilenetv2"), ("--pretrained", "imagenet"), ("--num-heads", "2"),
    ("--preset", "fer_imagenet"), ("--epochs", "12"), ("--seed", "0"), ("--no-compile", None),
]
BEGIN = "<!-- BEGIN GENERATED (python -m benchmarks.time_to_accuracy) -->"
END = "<!-- END GENERATED (python -m benchmarks.time_to_accuracy) -->"


def recipe_argv(data: str, out: str, extra: list[str]) -> list[str]:
    """The training command's options: :data:`DEFAULT_RECIPE` less the options ``extra`` gives (an option and
    its ``--no-`` form count as the same), then the data, the run directory and ``extra``."""
    def base(opt: str) -> str:
        return "--" + opt[5:] if opt.startswith("--no-") else opt

    given = {base(a.split("=", 1)[0]) for a in extra if a.startswith("--")}
    argv: list[str] = []
    for opt, value in DEFAULT_RECIPE:
        if base(opt) not in given:
            argv += [opt] if value is None else [opt, value]
    return [*argv, "--data", data, "--out", out, *extra]


class TimedTrainer(Trainer):
    """The engine's trainer with a stopwatch: validates on a fixed subset ``evals_per_epoch`` times per epoch
    and stops at the budget or when every target is reached. Everything else is the engine's."""

    def __init__(self, cfg, info, *, val_samples: int, val_seed: int, evals_per_epoch: int, budget_s: float,
                 targets: list[float], stop_when_reached: bool) -> None:
        self.val_samples, self.val_seed = val_samples, val_seed
        self.evals_per_epoch, self.budget_s = max(1, evals_per_epoch), budget_s
        self.targets, self.stop_when_reached = sorted(targets), stop_when_reached
        self.points: list[dict[str, Any]] = []
        self.reached: dict[float, dict[str, Any]] = {}
        self.eval_s = 0.0
        self.t_start: float | None = None
        self.stopped: str | None = None
        t = time.perf_counter()
        super().__init__(cfg, info)
        self.setup_s = time.perf_counter() - t

    # -- the engine's steps, extended

    def _open_data(self) -> None:
        """The fixed validation subset (independent of the training seed), then the engine's own opening."""
        from if3d.data.source import open_split

        d = self.cfg.data
        self.val_dataset = open_split(d.source("val"), image_size=d.image_size, streams=self.streams,
                                      skip_missing_renders=d.skip_missing_renders,
                                      num_classes=self.cfg.model.num_classes, cache=d.cache,
                                      max_samples=self.val_samples, seed=self.val_seed)
        super()._open_data()

    def train_one_epoch(self, epoch: int, stop) -> bool:
        if self.t_start is None:
            self.t_start = time.perf_counter()
        if self.stopped:
            return True
        return super().train_one_epoch(epoch, stop)

    def train_step(self, batch: dict, stop, epoch: int) -> dict[str, float]:
        totals = super().train_step(batch, stop, epoch)
        in_epoch = self.step - epoch * self.steps_per_epoch
        every = max(1, self.steps_per_epoch // self.evals_per_epoch)
        if in_epoch % every == 0 and in_epoch < self.steps_per_epoch:
            self._validate_now()  # the epoch's end is validated by end_epoch
        if not self.stopped and self.training_s() >= self.budget_s:
            self.stopped = "budget"
        if self.stopped and in_epoch < self.steps_per_epoch:
            if not self.points or self.points[-1]["step"] != self.step:
                self._validate_now()  # where the run stops
            totals["stop"] = 1.0  # the engine finishes this step, saves last.pth and stops
        return totals

    def end_epoch(self, epoch: int) -> None:
        t = time.perf_counter()
        super().end_epoch(epoch)
        self._record(self.last_val, time.perf_counter() - t)

    # -- measuring

    def training_s(self) -> float:
        """Training seconds so far: since the first step, less the evaluations."""
        return 0.0 if self.t_start is None else time.perf_counter() - self.t_start - self.eval_s

    def _validate_now(self) -> None:
        from if3d.runtime.predict import predict, summarize_predictions

        t = time.perf_counter()
        results = predict(self.model, self.val_dataset, self.prepare, batch_size=self.local_batch,
                          workers=self.cfg.runtime.workers, amp=self.cfg.runtime.amp, info=self.info,
                          desc=f"val at step {self.step}")
        val = summarize_predictions(results, self.class_names)
        self.train_model.train()
        self._record(val, time.perf_counter() - t)

    def _record(self, val: dict, eval_s: float) -> None:
        self.eval_s += eval_s
        point = {"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 3),
                 "train_min": round(self.training_s() / 60, 3), "accuracy": float(val["accuracy"]),
                 "balanced_accuracy": float(val["balanced_accuracy"]), "eval_s": round(eval_s, 2)}
        self.points.append(point)
        print(f"step {point['step']} (epoch {point['epoch']}): val accuracy {point['accuracy']:.4f} after "
              f"{point['train_min']:.2f} training min", flush=True)
        for target in self.targets:
            if target not in self.reached and point["accuracy"] >= target:
                self.reached[target] = {k: point[k] for k in ("train_min", "epoch", "step", "accuracy")}
        if self.stop_when_reached and len(self.reached) == len(self.targets) and not self.stopped:
            self.stopped = "targets reached"


def measure(args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Train with the timed trainer; the record of this run."""
    from if3d.outputs import exclusive_output
    from if3d.runtime.distributed import init_distributed
    from if3d.train.cli import config_from_args

    argv = recipe_argv(args.data, args.out_dir, extra)
    cfg = config_from_args(argv, default_model="ddamfn")
    with exclusive_output(cfg.run.out, "if3d-time-to-accuracy"):
        trainer = TimedTrainer(cfg, init_distributed(cfg.runtime.device), val_samples=args.val_samples,
                               val_seed=args.val_seed, evals_per_epoch=args.evals_per_epoch,
                               budget_s=args.budget_min * 60, targets=args.targets,
                               stop_when_reached=not args.keep_going)
        try:
            trainer.run()
        except TrainingInterrupted:
            if not trainer.stopped:  # Ctrl-C / SIGTERM, not this benchmark's stop
                raise
    stopped = trainer.stopped or "recipe's epochs done"
    return {
        "label": args.label or (" ".join(extra) if extra else "default recipe"),
        "started": args.started,
        "command": "python -m benchmarks.time_to_accuracy " + " ".join(args.argv),
        "training_options": argv,
        "model": cfg.model.model, "backbone": getattr(trainer.model, "backbone_name", None),
        "image_size": cfg.data.image_size, "batch_size": cfg.recipe.batch_size, "epochs": cfg.recipe.epochs,
        "train_samples": len(trainer.train_dataset), "steps_per_epoch": trainer.steps_per_epoch,
        "val": {"split": "val", "samples": len(trainer.val_dataset), "seed": args.val_seed,
                "evals_per_epoch": args.evals_per_epoch},
        "budget_min": args.budget_min, "stopped": stopped,
        "targets": {f"{t:.2f}": trainer.reached.get(t) for t in trainer.targets},
        "best_accuracy": max((p["accuracy"] for p in trainer.points), default=math.nan),
        "train_min": round(trainer.training_s() / 60, 3), "eval_min": round(trainer.eval_s / 60, 3),
        "setup_s": round(trainer.setup_s, 1), "threads": _threads(),
        "points": trainer.points,
    }


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def render_markdown(doc: dict) -> str:
    """The generated block of RESULTS.md: one row per recorded run."""
    from benchmarks.report import _table

    runs = doc.get("runs", [])
    targets = sorted({t for r in runs for t in r["targets"]})
    body = []
    for r in runs:
        cells = [f"{r['targets'][t]['train_min']:.1f} (ep. {r['targets'][t]['epoch']:g})" if r["targets"].get(t)
                 else "not reached" if t in r["targets"] else "—" for t in targets]
        body.append([r["label"], *cells, f"{r['best_accuracy']:.4f}", f"{r['train_min']:.1f}", f"{r['eval_min']:.1f}",
                     r["stopped"], r.get("load_average_at_start"), r.get("started"), (r.get("git") or "")[:10]])
    header = ["run", *[f"min to {t}" for t in targets], "best accuracy", "training min", "eval min", "stopped by",
              "load at start", "started", "commit"]
    lines = ["Training minutes (validation excluded) until the fixed PublicTest subset first reaches each accuracy; "
             "ep. = epoch of that evaluation.", "", *_table(header, body)]
    return "\n".join(lines) + "\n"


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="Other options go to the training command (python -m if3d.train --help).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", required=True, help="converted dataset with train and val splits")
    p.add_argument("--budget-min", type=float, default=30.0, help="training minutes at most")
    p.add_argument("--targets", type=float, nargs="+", default=[0.60, 0.65], help="validation accuracies")
    p.add_argument("--val-samples", type=int, default=1000, help="photos of the fixed val subset")
    p.add_argument("--val-seed", type=int, default=0, help="seed that draws the val subset")
    p.add_argument("--evals-per-epoch", type=int, default=2)
    p.add_argument("--keep-going", action="store_true", help="train on after every target is reached")
    p.add_argument("--label", default=None, help="name of this run in the results (default: its extra options)")
    p.add_argument("--out-dir", default="runs/time_to_accuracy", help="the training run's directory")
    p.add_argument("--json", default=str(REPO_ROOT / "benchmarks" / "time_to_accuracy.json"),
                   help="results file: this run is added (replacing a run of the same label); '' for none")
    p.add_argument("--markdown", default=str(REPO_ROOT / "benchmarks" / "RESULTS.md"),
                   help="regenerate this benchmark's table here ('' for none)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = get_args_parser().parse_known_args(argv)
    args.argv, args.started = argv, time.strftime("%Y-%m-%dT%H:%M:%S%z")
    from benchmarks import env
    from benchmarks.report import update_block
    from if3d.atomic import atomic_write_text

    load0 = env.load_average()
    rec = measure(args, extra)
    rec.update(load_average_at_start=load0, load_average_at_end=env.load_average(),
               git=env.git_info().get("commit"), environment=env.environment())
    summary = {k: rec[k] for k in ("label", "targets", "best_accuracy", "train_min", "eval_min", "setup_s",
                                   "stopped")}
    print(json.dumps(summary, indent=2))
    if args.json:
        path = Path(args.json)
        doc = json.loads(path.read_text()) if path.is_file() else {"benchmark": "time_to_accuracy", "runs": []}
        doc["runs"] = [r for r in doc["runs"] if r["label"] != rec["label"]] + [rec]
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
        if args.markdown:
            update_block(args.markdown, BEGIN, END, render_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
