"""Throughput and peak memory of the model zoo, each model at its paper's input size.

    python -m benchmarks.bench_zoo [--models lnsu_net poster ...] [--batch-size 32] [--repeats 5]
                                   [--device cpu|cuda] [--out benchmarks/zoo_results.json] [--smoke]

Every model registered from ``networks.zoo`` (or those named) runs in its own process (an honest peak
memory): the training step exactly as the engine takes it without the data — forward in training mode,
the model's own criterion, backward, an Adam step — and evaluation (forward under ``no_grad``), on
synthetic normalised faces of the model's ``backbone_spec.input_size`` (the paper's input side). Figures
are images/s (median, min, max over ``repeats`` timed runs after one untimed warm-up) and peak memory
(``ru_maxrss`` of the process on CPU, ``torch.cuda.max_memory_allocated`` on CUDA), with the device and
library versions. ``--smoke`` runs batch 2, one repeat: it checks that the benchmark works; its figures
mean nothing. Zoo models that look for their own weight files (POSTER's landmark network) are built
without them (random weights change no timing).
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

RESULT_PREFIX = "ZOO_RESULT "


def zoo_models() -> list[str]:
    """Registered models defined under ``networks.zoo``."""
    import networks
    from networks.registry import _MODELS

    return [m for m in networks.list_models() if _MODELS.get(m).__module__.startswith("networks.zoo")]


def _build(name: str, num_classes: int = 7):
    import inspect

    import networks
    from networks.registry import _MODELS

    kwargs: dict[str, Any] = {"num_classes": num_classes}
    if "landmark_weights" in inspect.signature(_MODELS.get(name)).parameters:
        kwargs["landmark_weights"] = False
    return networks.create_model(name, **kwargs)


def measure(name: str, batch_size: int, repeats: int, device: str) -> dict[str, Any]:
    """One model's training and evaluation throughput and peak memory (run in a fresh process)."""
    import torch

    import networks

    torch.manual_seed(0)
    dev = torch.device(device)
    model = _build(name).to(dev)
    side = model.backbone_spec.input_size
    criterion = networks.create_criterion(name)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    x = torch.randn(batch_size, 3, side, side, device=dev)
    batch = {"label": torch.randint(0, 7, (batch_size,), device=dev)}

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def train_step() -> None:
        loss = criterion(model(x), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        optimizer.step()

    @torch.no_grad()
    def eval_step() -> None:
        model(x)

    result: dict[str, Any] = {"model": name, "input_size": side, "batch_size": batch_size, "device": str(dev),
                              "parameters": sum(p.numel() for p in model.parameters())}
    for mode, step in (("eval", eval_step), ("train", train_step)):
        model.train(mode == "train")
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        step()  # warm-up
        sync()
        rates = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step()
            sync()
            rates.append(batch_size / (time.perf_counter() - t0))
        peak = (torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
        result[mode] = {"images_per_s": {"median": statistics.median(rates), "min": min(rates), "max": max(rates)},
                        "peak_memory_mib": round(peak, 1)}
    return result


def _versions() -> dict[str, str]:
    import timm
    import torch

    return {"torch": torch.__version__, "timm": timm.__version__, "python": sys.version.split()[0],
            "threads": str(torch.get_num_threads()), "cpu_count": str(os.cpu_count())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="zoo models to measure (default: every model of networks.zoo)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, help="also write the JSON report here (atomically)")
    p.add_argument("--smoke", action="store_true", help="batch 2, one repeat: checks that it runs")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one model in this process
    args = p.parse_args(argv)
    batch, repeats = (2, 1) if args.smoke else (args.batch_size, args.repeats)
    if args.one:
        print(RESULT_PREFIX + json.dumps(measure(args.one, batch, repeats, args.device)), flush=True)
        return 0
    models = args.models or zoo_models()
    results, failures = [], {}
    for name in models:
        cmd = [sys.executable, "-m", "benchmarks.bench_zoo", "--one", name, "--batch-size", str(batch),
               "--repeats", str(repeats), "--device", args.device]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
        if proc.returncode != 0 or not lines:
            failures[name] = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{name}: failed: {failures[name]}", file=sys.stderr, flush=True)
            continue
        res = json.loads(lines[-1][len(RESULT_PREFIX):])
        results.append(res)
        print(f"{name:>10} @ {res['input_size']}: train {res['train']['images_per_s']['median']:.1f} img/s, "
              f"eval {res['eval']['images_per_s']['median']:.1f} img/s, peak {res['train']['peak_memory_mib']:.0f} MiB",
              flush=True)
    report = {"smoke": args.smoke, "batch_size": batch, "repeats": repeats, "versions": _versions(),
              "results": results, "failures": failures}
    text = json.dumps(report, indent=2)
    if args.out:
        from if3d.atomic import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    print(text)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
