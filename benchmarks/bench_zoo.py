"""Throughput and peak memory of the zoo models: training step and evaluation, each at its paper's input size.

    python -m benchmarks.bench_zoo [--models dan ada_df ...] [--batch-size 32] [--image-size S]
                                   [--steps 5] [--repeats 3] [--warmup 2] [--device cpu|cuda] [--threads N]
                                   [--out benchmarks/zoo_results.json] [--smoke]

For each model (default: every model of :mod:`networks.zoo`, :data:`networks.zoo.ZOO_MODELS`), in a fresh
process so that its peak memory is its own:

- ``train``: model-only training steps on synthetic normalised faces and labels — forward, the model's own
  criterion (``networks.create_criterion``), backward, and a step of the optimizer its recipe names (Adam or
  AdamW with the recipe's learning rate and weight decay); the engine's step without data loading and
  augmentation, fp32, eager;
- ``eval``: forward passes under ``torch.no_grad`` in evaluation mode.

Figures: images/s as the median (min, max) of ``repeats`` timed runs of ``steps`` steps after ``warmup``
untimed steps; peak memory as the process's peak resident set (CPU: ``ru_maxrss``, which includes the
Python process and the model) or ``torch.cuda.max_memory_allocated`` (CUDA), after each mode. The input side
is the model's ``backbone_spec.input_size`` (its paper's; the training command's default is 112) unless
``--image-size`` is given. Models that read streams other than images (landmarks …) are skipped with the
reason. Timings mean something only on an otherwise idle machine: the load averages at the start and the
end are in the report.

``--smoke`` runs every model with batch 2 at 64×64, one step, one repeat: it checks that the benchmark
works; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import env  # noqa: E402  (after the sys.path set-up above)

RESULT_PREFIX = "ZOO_RESULT "
IMAGE_STREAMS = ("photo", "render")


def _figures(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 3) for v in values]}


def _peak_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device, steps: int, repeats: int, warmup: int, images_per_step: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(images_per_step * steps / (time.perf_counter() - start))
    return rates


def measure(name: str, batch: int, image_size: int | None, steps: int, repeats: int, warmup: int,
            device_name: str, threads: int | None = None) -> dict[str, Any]:
    """Measure one model in this process (see the module docstring); returns the result row."""
    import torch

    import networks

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    torch.manual_seed(0)
    info = networks.model_info(name)
    num_classes = 8
    model = networks.create_model(name, num_classes=num_classes).to(device)
    streams = tuple(getattr(model, "input_streams", ("photo",)))
    row: dict[str, Any] = {"model": name, "batch_size": batch, "device": str(device),
                           "threads": torch.get_num_threads()}
    others = [s for s in streams if s not in IMAGE_STREAMS]
    if others:
        row["skipped"] = f"reads the non-image stream(s) {', '.join(others)}, which this benchmark does not synthesise"
        return row
    spec = getattr(model, "backbone_spec", None)
    side = image_size or (spec.input_size if spec is not None else 112)
    row.update({"image_size": side, "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                "criterion": info.criterion})
    inputs = [torch.randn(batch, 3, side, side, device=device) for _ in streams]
    labels = torch.randint(0, num_classes, (batch,), device=device)
    criterion = networks.create_criterion(name)
    recipe = dict(info.recipe or {})
    opt_cls = torch.optim.AdamW if recipe.get("optimizer", "adamw") == "adamw" else torch.optim.Adam
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = opt_cls(params, lr=float(recipe.get("lr", 1e-4)), weight_decay=float(recipe.get("weight_decay", 0.0)))

    def train_step() -> None:
        out = model(*inputs)
        loss = criterion(out, {"label": labels})
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step() -> None:
        model(*inputs)

    model.train()
    row["train_images_per_s"] = _figures(_timed(train_step, device, steps, repeats, warmup, batch))
    row["train_peak_mib"] = round(_peak_mib(device), 1)
    model.eval()
    row["eval_images_per_s"] = _figures(_timed(eval_step, device, steps, repeats, warmup, batch))
    row["eval_peak_mib"] = round(_peak_mib(device), 1)
    return row


def _run_isolated(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_zoo", "--one", name, "--batch-size", str(args.batch_size),
           "--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
           "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.image_size:
        cmd += ["--image-size", str(args.image_size)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"model": name, "error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}


def markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (one row per model)."""
    threads = sorted({r["threads"] for r in report["results"] if "threads" in r})
    lines = [f"Zoo models, {report['mode']} run: batch {report['batch_size']}, {report['steps']} steps × "
             f"{report['repeats']} repeats after {report['warmup']} warm-up, {report['device']}, threads "
             f"{'/'.join(map(str, threads)) or '?'}; load average {report['load_average_start']} → "
             f"{report['load_average_end']}.", "",
             "| model | input | params (M) | train img/s | eval img/s | peak MiB after train / after eval |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        if "train_images_per_s" not in r:
            lines.append(f"| `{r['model']}` | — | — | — | — | {r.get('skipped') or r.get('error')} |")
            continue
        t, e = r["train_images_per_s"], r["eval_images_per_s"]
        lines.append(f"| `{r['model']}` | {r['image_size']} | {r['parameters_m']:.2f} | {t['median']:.2f} "
                     f"({t['min']:.2f}–{t['max']:.2f}) | {e['median']:.2f} ({e['min']:.2f}–{e['max']:.2f}) | "
                     f"{r['train_peak_mib']:.0f} / {r['eval_peak_mib']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", help="registered models (default: every zoo model)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=None, help="input side (default: each model's paper size)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the JSON report here as well")
    p.add_argument("--smoke", action="store_true", help="batch 2 at 64x64, one step: checks that it works")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = p.parse_args(argv)
    for opt in ("batch_size", "steps", "repeats"):
        if getattr(args, opt) < 1:
            p.error(f"--{opt.replace('_', '-')} must be >= 1")
    if args.one:
        print(RESULT_PREFIX + json.dumps(measure(args.one, args.batch_size, args.image_size, args.steps, args.repeats,
                                                 args.warmup, args.device, args.threads)), flush=True)
        return 0
    if args.smoke:
        args.batch_size, args.image_size, args.steps, args.repeats, args.warmup = 2, 64, 1, 1, 0
    import networks
    from networks.zoo import ZOO_MODELS

    models = args.models or list(ZOO_MODELS)
    unknown = [m for m in models if m not in networks.list_models()]
    if unknown:
        p.error(f"unknown model(s) {', '.join(unknown)}; registered: {', '.join(networks.list_models())}")
    report: dict[str, Any] = {"mode": "smoke" if args.smoke else "full", "batch_size": args.batch_size,
                              "device": args.device, "steps": args.steps, "repeats": args.repeats,
                              "warmup": args.warmup, "environment": env.environment(),
                              "load_average_start": env.load_average(), "command": sys.argv}
    started = time.perf_counter()
    report["results"] = [_run_isolated(m, args) for m in models]
    report["load_average_end"] = env.load_average()
    report["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(report, indent=2)
    if args.out:
        from if3d.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    print(markdown(report), file=sys.stderr)
    return 1 if any("error" in r for r in report["results"]) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
