"""``python -m if3d.crossval``: the repeated-run benchmark of every model on every dataset.

::

    python -m if3d.crossval --data Dataset/ckplus Dataset/fer2013 --models ddamfn if3d_gate --runs 10 \\
        --out runs/crossval [--protocol {shufflesplit,official,subject}] [--executor {local,ray}] \\
        [--compare ddamfn if3d_gate] [any training option, e.g. --epochs 30 --batch-size 64]

Writes ``<out>/splits/<dataset>/<protocol>/run<k>/{train,val,test}.txt`` (and the run's dataset view),
``<out>/runs/<dataset>/<model>/run<k>/`` (the engine's run directory, ``result.json``, ``test/``),
``<out>/results.csv``, ``<out>/summary.md`` and ``<out>/<dataset>_accuracy.png``. Options this command
does not know are training options, given to every run after the protocol's defaults
(``if3d.crossval.runner.DEFAULT_TRAINING``). Re-running the command skips finished runs and resumes
interrupted ones. Exit status: 0 every run finished, 1 some runs failed (listed), 2 bad options or data.

A sweep folder belongs to one setting: ``<out>/sweep.json`` records the protocol, the number of runs and the
training options of the sweep that made it, and a command with other settings on the same ``--out`` is
refused with one line saying what differs (another ``--out`` starts a separate sweep); datasets and models
may be added. Reports (also ``--report-only``) hold exactly the requested datasets × models × runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from if3d.atomic import atomic_write_text
from if3d.console import HelpFormatter, command_name, exit_status, writing_to
from if3d.crossval.protocols import PROTOCOLS, load_split, make_splits, pooled_samples, write_split
from if3d.crossval.results import plot_runs, summary_markdown, write_results
from if3d.crossval.runner import DEFAULT_TRAINING, Job, import_modules, run_local, run_ray
from if3d.crossval.views import build_view

#: Training options that the sweep sets itself for every run.
_OWNED = ("--data", "--model", "--out", "--seed", "--resume", "--train-split", "--val-split", "--train-photos",
          "--val-photos")

EXIT_STATUS = {0: "every run finished", 1: "some runs failed (each is listed; the same command runs them again)",
               2: "bad options or data"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("python -m if3d.crossval"), allow_abbrev=False, formatter_class=HelpFormatter,
        description="Repeated-run benchmark: every model on every dataset over the same seeded splits; "
                    "results.csv, summary.md (mean ± std) and plots. Unknown options are training options.",
        epilog=exit_status(EXIT_STATUS))
    p.add_argument("--data", nargs="+", required=True, metavar="ROOT", help="canonical dataset roots")
    p.add_argument("--models", nargs="+", required=True, metavar="NAME", help="registered models")
    p.add_argument("--runs", type=int, default=10, help="runs (folds for the subject protocol; default 10)")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder")
    p.add_argument("--protocol", choices=PROTOCOLS, default="shufflesplit",
                   help="split protocol (default shufflesplit, FER-crossval's)")
    p.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="local: one run after another here; ray: Ray tasks on a local or existing cluster")
    p.add_argument("--ray-address", help="an existing Ray cluster (e.g. ray://head:10001, or auto); default: "
                   "start a local Ray instance")
    p.add_argument("--cpus-per-run", type=float, default=1.0, help="Ray: CPUs reserved per run (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="Ray: GPUs per run (default 0)")
    p.add_argument("--threads", type=int, help="torch CPU threads per run (default: torch's; set it to get the "
                   "same numbers from both executors)")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="a module (dotted name or .py file) to import first, e.g. one that registers your own "
                        "models; repeatable; Ray workers import it too")
    p.add_argument("--compare", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="paired comparison of two models in summary.md (repeatable; default: every pair)")
    p.add_argument("--report-only", action="store_true", help="rewrite results.csv, summary.md and plots from "
                   "the finished runs, train nothing")
    return p


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


SWEEP_FILE = "sweep.json"
#: training options that control how a run is carried out, not what it computes
_RUN_CONTROL = ("--interrupt-after-steps",)


def sweep_settings(args: argparse.Namespace, train_args: Sequence[str]) -> dict:
    """What a sweep's numbers depend on beyond its datasets and models: protocol, runs, training options."""
    kept, skip = [], False
    for a in train_args:
        if skip:
            skip = False
            continue
        if a in _RUN_CONTROL:
            skip = True
            continue
        if a.split("=", 1)[0] in _RUN_CONTROL:
            continue
        kept.append(a)
    return {"protocol": args.protocol, "runs": int(args.runs), "training_options": kept}


def check_sweep(out: Path, settings: dict) -> str | None:
    """None when ``out`` holds no sweep or one with ``settings``; else one sentence saying what differs."""
    import json

    path = out / SWEEP_FILE
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"{path}: unreadable sweep settings ({e})"
    diffs = [f"{k} {old.get(k)!r} there, {v!r} here" for k, v in settings.items() if old.get(k) != v]
    if not diffs:
        return None
    return (f"{out} holds a sweep with other settings ({'; '.join(diffs)}); its runs cannot be reused or "
            "reported as these: give another --out for a separate sweep, or the same settings")


def plan(args: argparse.Namespace, train_args: Sequence[str]) -> list[Job]:
    """Write every run's split and view, and list the jobs (dataset-major, then model, then run).

    Raises:
        ValueError, FileNotFoundError: a dataset the protocol cannot split, or bad names.
    """
    import networks

    imports = tuple(str(Path(m).resolve()) if m.endswith(".py") else m for m in args.imports)
    import_modules(imports)
    unknown = [m for m in args.models if m not in networks.list_models()]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(networks.list_models())}")
    names = [Path(r).resolve().name for r in args.data]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset folder names must differ (they name the table rows): {names}")
    out = Path(args.out)
    jobs: list[Job] = []
    for root, name in zip(args.data, names, strict=True):
        splits = None
        for k in range(args.runs):
            folder = out / "splits" / name / args.protocol / f"run{k}"
            split = load_split(folder, k)
            if split is None:
                splits = splits or make_splits(pooled_samples(root), args.protocol, args.runs)
                split = splits[k]
                write_split(folder, split)
            view = build_view(root, split, folder / "data")
            jobs += [Job(dataset=name, root=str(root), model=m, run=k, protocol=args.protocol, view=str(view),
                         run_dir=str(out / "runs" / name / m / f"run{k}"), train_args=tuple(train_args),
                         threads=args.threads, imports=imports) for m in args.models]
    return jobs


def _collect(out: Path, args: argparse.Namespace) -> list[dict]:
    """The finished runs of the requested datasets × models × runs (nothing else the folder holds)."""
    import json

    datasets = {Path(r).resolve().name for r in args.data}
    rows = []
    for d in sorted(datasets):
        for m in dict.fromkeys(args.models):
            for k in range(args.runs):
                p = out / "runs" / d / m / f"run{k}" / "result.json"
                if p.is_file():
                    rows.append(json.loads(p.read_text(encoding="utf-8")))
    return rows


def report(out: Path, args: argparse.Namespace, train_args: Sequence[str], wall_s: float | None = None) -> Path:
    """Write results.csv, summary.md and the plots from every finished run under ``out``."""
    df = write_results(_collect(out, args), out / "results.csv")
    models = sorted(df["model"].unique())
    pairs = [tuple(p) for p in args.compare] or [(a, b) for i, a in enumerate(models) for b in models[i + 1:]]
    header = [
        "# Benchmark summary",
        "",
        f"Protocol `{args.protocol}`, {args.runs} runs per dataset and model; test metrics of the "
        "best-on-validation checkpoint of each run.",
        f"Training options: `{' '.join([*DEFAULT_TRAINING, *train_args])}`.",
        f"Hardware: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        + (f"; sweep wall time {wall_s / 60:.1f} min." if wall_s is not None else "."),
        f"Command: `python -m if3d.crossval {' '.join(sys.argv[1:])}`" if sys.argv[1:] else "",
    ]
    atomic_write_text(out / "summary.md", summary_markdown(df, pairs, header))
    if len(df):
        plot_runs(df, out)
    return out / "summary.md"


def main(argv: Sequence[str] | None = None) -> int:
    args, train_args = get_args_parser().parse_known_args(argv)
    return writing_to(args.out, command_name("python -m if3d.crossval"), lambda: _main(args, train_args))


def _main(args, train_args: list[str]) -> int:
    train_args = [a for a in train_args if a != "--"]
    owned = [a for a in train_args if a.split("=")[0] in _OWNED]
    if owned:
        return _fail(f"{', '.join(owned)}: the sweep sets these itself (use --data ROOT ... and --models)")
    if args.runs < 1:
        return _fail(f"--runs must be >= 1, got {args.runs}")
    for opt, values in (("--models", args.models), ("--data", [Path(r).resolve() for r in args.data])):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:
            return _fail(f"{opt} names {', '.join(twice)} more than once")
    out = Path(args.out)
    settings = sweep_settings(args, train_args)
    differs = check_sweep(out, settings)
    if differs:
        return _fail(differs)
    if args.report_only:
        if not (out / "runs").is_dir():
            return _fail(f"{out}: no sweep to report (no {out / 'runs'} folder)")
        print(f"summary: {report(out, args, train_args)}")
        return 0
    t0 = time.perf_counter()
    try:
        # the training options are checked before anything (splits, views) is written
        from if3d.train.cli import config_from_args

        import_modules(tuple(str(Path(m).resolve()) if m.endswith(".py") else m for m in args.imports))
        config_from_args(["--model", args.models[0], "--data", str(args.data[0]), "--val-split", "val", "--out",
                          str(out / "runs" / "options-check"), "--seed", "0", *DEFAULT_TRAINING, *train_args])
        jobs = plan(args, train_args)
    except SystemExit as e:
        return int(e.code or 2)
    except (ValueError, FileNotFoundError, OSError, ImportError) as e:
        return _fail(str(e))
    try:
        if not (out / SWEEP_FILE).is_file():
            from if3d.atomic import atomic_write_json

            atomic_write_json(out / SWEEP_FILE, settings)
    except OSError as e:
        return _fail(f"{out}: cannot write the sweep settings ({e})")
    print(f"{len(jobs)} runs: {len(args.data)} dataset(s) × {len(args.models)} model(s) × {args.runs} runs "
          f"({args.protocol}); executor {args.executor}", flush=True)
    if args.executor == "ray":
        rows = run_ray(jobs, args.ray_address, args.cpus_per_run, args.gpus_per_run)
    else:
        rows = run_local(jobs)
    failed = [r for r in rows if "error" in r]
    summary = report(out, args, train_args, time.perf_counter() - t0)
    print(f"summary: {summary}", flush=True)
    for r in failed:
        print(f"failed: {r['dataset']} {r['model']} run {r['run']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
