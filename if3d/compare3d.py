"""2D vs 3D on one dataset: every 3D face representation alone, the photo, the render, and the fusion models.

``python -m if3d.compare3d --data Dataset/fer2013 --out runs/compare3d`` answers 3DFER's question — how far do 3D
face data alone get, and how do they compare with 2D models? — with the toolkit's models under one protocol.
3DFER's reported finding on FER2013: the best 2D models pass 67 % accuracy, 3D representations stay below 57 %
(but train faster).

Protocol: the benchmark's ``official`` split (:mod:`if3d.crossval.protocols`): the dataset's own test split
(FER2013: PublicTest, our ``val``) is the test set; 25 % of the training split (seeded) is held out to choose
each model's epoch (early stopping on validation accuracy); each model's best checkpoint is tested once on the
test set. The models see the same samples: those with a render (``--skip-missing-renders``; MediaPipe finds a face
in 99 % of FER2013). Every model is a run directory of the one training engine (``<out>/runs/<dataset>/<model>/
run0``), resumable and skipped when finished, as in ``python -m if3d.crossval``.

- 3D-only models (``landmark_mlp``, ``landmark_graph``, ``voxel_cnn``, ``distance_cnn``, ``flame_mlp`` when the
  renders hold FLAME parameters) train with their own recipe to convergence: ``--epochs-3d`` (100) with early
  stopping after ``--patience-3d`` (15) epochs.
- Image models (``ddamfn`` photo only, ``ddamfn_render`` render only, the If3D fusions, ``ddamfn_landmarks``,
  ``if3d_landmarks``) train with the budget given: ``--epochs-2d`` (default 10), ``--patience-2d`` (5) and
  ``--args-2d "..."`` (e.g. ``--pretrained pretrained/MFN_msceleb.pth --batch-size 64``).

Written to ``--out``: ``comparison.csv`` (one row per model: test accuracy, balanced accuracy, macro F1, per-class
recall, parameters, epochs, training time, training images/s), ``comparison.md`` (the table with 3DFER's reported
figures beside ours) and ``per_class.png`` (test recall per class and model).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from if3d.atomic import atomic_write_text
from if3d.console import HelpFormatter, command_name, exit_status, writing_to

__all__ = ["DEFAULT_MODELS", "FACE3D_ONLY", "main"]

#: Models trained on 3D data alone, with the stream each reads.
FACE3D_ONLY = {"landmark_mlp": "landmark cloud [478, 3]", "landmark_graph": "landmark cloud on the mesh graph",
               "voxel_cnn": "voxel grid 32³", "distance_cnn": "distance map 162×162",
               "flame_mlp": "FLAME expression + jaw [53]"}
#: What every image model reads.
IMAGE_MODELS = {"ddamfn": "photo (2D)", "ddamfn_render": "render only", "if3d_gate": "photo + render (gate fusion)",
                "if3d_linear": "photo + render (linear fusion)", "if3d_attention": "photo + render (attention fusion)",
                "if3d_spp": "photo + render (SPP fusion)", "ddamfn_landmarks": "photo + landmarks",
                "if3d_landmarks": "photo + render + landmarks"}
DEFAULT_MODELS = ("landmark_mlp", "landmark_graph", "voxel_cnn", "distance_cnn", "flame_mlp", "ddamfn", "ddamfn_render",
                  "if3d_gate", "ddamfn_landmarks")
#: 3DFER's reported FER2013 figures (accuracy), cited beside ours.
REPORTED_3DFER = (("3DFER, best 2D models (reported)", "> 67 %"), ("3DFER, 3D representations (reported)", "< 57 %"))

EXIT_STATUS = {0: "every model finished", 1: "some models failed (each is named)", 2: "bad options or data",
               130: "interrupted (the same command continues: the model in progress resumes from its last.pth)"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("python -m if3d.compare3d"), allow_abbrev=False, formatter_class=HelpFormatter,
        description="2D vs 3D: each 3D face representation alone, the photo, the render and the fusion models on one "
                    "dataset, one protocol; comparison.csv, comparison.md, per_class.png. Unknown options are "
                    "training options of every model.",
        epilog=exit_status(EXIT_STATUS))
    p.add_argument("--data", required=True, metavar="ROOT", help="canonical dataset with renders (and their .npz)")
    p.add_argument("--out", required=True, metavar="DIR", help="comparison folder")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), metavar="NAME",
                   help=f"models to compare (default: {' '.join(DEFAULT_MODELS)}; flame_mlp only with SMIRK renders)")
    p.add_argument("--epochs-3d", type=int, default=100, help="3D-only models: most epochs (default 100)")
    p.add_argument("--patience-3d", type=int, default=15, help="3D-only models: early-stopping patience in epochs")
    p.add_argument("--epochs-2d", type=int, default=10, help="image models: epochs of the budget (default 10)")
    p.add_argument("--patience-2d", type=int, default=5, help="image models: early-stopping patience in epochs")
    p.add_argument("--args-2d", default="", metavar="OPTIONS",
                   help="more training options of the image models, quoted (e.g. \"--pretrained "
                        "pretrained/MFN_msceleb.pth --batch-size 64\")")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument("--report-only", action="store_true", help="rewrite the tables from the finished runs")
    return p


def _has_flame(root: Path) -> bool:
    import numpy as np

    for path in (root / "renders").rglob("*.npz"):
        with np.load(path, allow_pickle=False) as z:
            return "expression_params" in z.files
    return False


def _jobs(args: argparse.Namespace, models: Sequence[str], train_args: Sequence[str]):
    from if3d.crossval.protocols import load_split, make_splits, pooled_samples, write_split
    from if3d.crossval.runner import Job
    from if3d.crossval.views import build_view

    root = Path(args.data).resolve()
    name = root.name
    folder = Path(args.out) / "splits" / name / "official" / "run0"
    split = load_split(folder, 0)
    if split is None:
        split = make_splits(pooled_samples(root), "official", 1)[0]
        write_split(folder, split)
    view = build_view(root, split, folder / "data")
    jobs = []
    for model in models:
        if model in FACE3D_ONLY:
            budget = ["--epochs", str(args.epochs_3d), "--early-stopping-patience", str(args.patience_3d),
                      "--preset", model]
        else:
            budget = ["--epochs", str(args.epochs_2d), "--early-stopping-patience", str(args.patience_2d),
                      *shlex.split(args.args_2d)]
        jobs.append(Job(dataset=name, root=str(root), model=model, run=0, protocol="official", view=str(view),
                        run_dir=str(Path(args.out) / "runs" / name / model / "run0"),
                        train_args=("--skip-missing-renders", *budget, *train_args), threads=args.threads))
    return jobs


def _details(run_dir: Path, model: str) -> dict:
    """Parameters, training images/s and per-class test recall of a finished run."""
    import networks
    from networks.face3d._common import count_parameters

    info = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["run"]
    params = count_parameters(networks.create_model(model, **info["model_kwargs"]))
    with open(run_dir / "metrics.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    seen = sum(float(r["images_per_s"]) * float(r["epoch_time_s"]) for r in rows)
    time_s = sum(float(r["epoch_time_s"]) for r in rows)
    test = json.loads((run_dir / "test" / "metrics.json").read_text(encoding="utf-8"))
    recall = {c: v["recall"] for c, v in test["per_class"].items()}
    return {"parameters": params, "train_images_per_s": round(seen / time_s, 1) if time_s else 0.0,
            "per_class_recall": recall, "num_train": info["num_train_samples"]}


def _table(rows: list[dict], args: argparse.Namespace, wall_s: float | None) -> str:
    lines = ["# 2D vs 3D face data: expression recognition on one protocol", "",
             f"Dataset `{Path(args.data).name}`: test = its own test split, epoch chosen on 25 % of the training "
             "split held out; test metrics of the best-on-validation checkpoint.",
             f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
             + (f"; wall time {wall_s / 60:.1f} min." if wall_s is not None else "."),
             f"Command: `python -m if3d.compare3d {' '.join(sys.argv[1:])}`" if sys.argv[1:] else "", "",
             "| model | input | accuracy | balanced accuracy | macro F1 | parameters | epochs (best) | training time "
             "| training images/s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: -r.get("accuracy", -1)):
        kind = FACE3D_ONLY.get(r["model"], IMAGE_MODELS.get(r["model"], ""))
        if "error" in r:
            lines.append(f"| `{r['model']}` | {kind} | failed: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| `{r['model']}` | {kind} | {r['accuracy']:.4f} | {r['balanced_accuracy']:.4f} | "
                     f"{r['f1_macro']:.4f} | {r['parameters'] / 1e6:.2f} M | {r['epochs_run']} ({r['best_epoch']}) | "
                     f"{r['train_time_s'] / 60:.1f} min | {r['train_images_per_s']:.0f} |")
    for label, value in REPORTED_3DFER:
        lines.append(f"| {label} | | {value} | | | | | | |")
    best3d = max((r for r in rows if r["model"] in FACE3D_ONLY and "error" not in r), default=None,
                 key=lambda r: r["accuracy"])
    if best3d is not None:
        verdict = "above" if best3d["accuracy"] > 0.57 else "not above"
        lines += ["", f"Best 3D-only representation: `{best3d['model']}`, {best3d['accuracy']:.2%} test accuracy, "
                      f"{verdict} 3DFER's 57 %."]
    lines += ["", "![Test recall per class](per_class.png)", ""]
    return "\n".join(lines)


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    done = [r for r in rows if "per_class_recall" in r]
    if not done:
        return
    classes = list(done[0]["per_class_recall"])
    width = 0.8 / len(done)
    fig, ax = plt.subplots(figsize=(max(8, 1.2 * len(classes) + 2), 4.5))
    for i, r in enumerate(sorted(done, key=lambda r: -r["accuracy"])):
        values = [r["per_class_recall"].get(c, np.nan) for c in classes]
        hatch = "//" if r["model"] in FACE3D_ONLY else None
        ax.bar(np.arange(len(classes)) + i * width, values, width, label=f"{r['model']} ({r['accuracy']:.3f})",
               hatch=hatch)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes)
    ax.set_ylabel("test recall")
    ax.set_ylim(0, 1)
    ax.set_title("Per-class test recall (hatched: 3D data only; legend: accuracy)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    from if3d.atomic import atomic_write

    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    plt.close(fig)


def _write_outputs(out: Path, rows: list[dict], args: argparse.Namespace, wall_s: float | None) -> None:
    keys = ["model", "accuracy", "balanced_accuracy", "f1_macro", "parameters", "epochs_run", "best_epoch",
            "stopped_early", "train_time_s", "train_images_per_s", "num_train", "num_test", "error"]
    classes = next((list(r["per_class_recall"]) for r in rows if "per_class_recall" in r), [])
    lines = [",".join(keys + [f"recall_{c}" for c in classes])]
    for r in rows:
        rec = r.get("per_class_recall", {})
        lines.append(",".join([str(r.get(k, "")).replace(",", ";") for k in keys] + [str(rec.get(c, "")) for c in classes]))
    atomic_write_text(out / "comparison.csv", "\n".join(lines) + "\n")
    atomic_write_text(out / "comparison.md", _table(rows, args, wall_s))
    _plot(rows, out / "per_class.png")


def main(argv: Sequence[str] | None = None) -> int:
    args, train_args = get_args_parser().parse_known_args(argv)
    return writing_to(args.out, command_name("python -m if3d.compare3d"), lambda: _main(args, train_args))


def _main(args, train_args: list[str]) -> int:
    import networks

    unknown = [m for m in args.models if m not in networks.list_models()]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    root = Path(args.data)
    if not (root / "photos").is_dir():
        print(f"error: {root}: not a converted dataset (no photos/ folder; python -m if3d.data convert makes one)",
              file=sys.stderr)
        return 2
    if not args.report_only and not (root / "renders").is_dir():
        print(f"error: {root}: no renders/ folder; the 3D representations are read from the renders: python "
              f"Smirk_batch_Render.py --input {root / 'photos'} --out {root / 'renders'} --backend mediapipe",
              file=sys.stderr)
        return 2
    models = list(dict.fromkeys(args.models))
    if "flame_mlp" in models and not _has_flame(Path(args.data)):
        print(f"{args.data}: the renders hold no FLAME parameters (MediaPipe backend): flame_mlp left out "
              "(render with --backend smirk for it)", flush=True)
        models.remove("flame_mlp")
    out = Path(args.out)
    t0 = time.perf_counter()
    try:
        jobs = _jobs(args, models, train_args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from if3d.crossval.runner import run_job

    rows = []
    for job in jobs:
        if args.report_only and not job.result_path.is_file():
            continue
        print(f"== {job.model}", flush=True)
        row = run_job(job)
        if "error" not in row:
            row.update(_details(Path(job.run_dir), job.model))
        else:
            print(f"{job.model} failed: {row['error']}", file=sys.stderr, flush=True)
        rows.append(row)
        _write_outputs(out, rows, args, None)
        if row.get("error", "").startswith("TrainingInterrupted"):  # Ctrl-C / SIGTERM ends the whole comparison
            print(f"interrupted; run the same command again to continue ({job.model} resumes from its last.pth)",
                  file=sys.stderr, flush=True)
            return 130
    _write_outputs(out, rows, args, None if args.report_only else time.perf_counter() - t0)
    print(f"comparison: {out / 'comparison.md'}", flush=True)
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
