"""Training throughput of If3D's gate fusion: the original research code against this toolkit's ``if3d_gate``.

    python -m benchmarks.vs_original --original PATH [--steps 5] [--repeats 3] [--warmup 2] [--batch 32]
                                     [--compile] [--out benchmarks/vs_original.json]
                                     [--markdown benchmarks/RESULTS.md] [--smoke]

``PATH`` is a plain checkout of the original If3D repository (github.com/WangXiaoShawn/If3d, "If3D: Enhancing
Facial Expression Inference with 3D Face Representations via Intermediate Fusion"). Nothing of it is copied
here: its gate model class (:data:`ORIGINAL_CLASS` in :data:`ORIGINAL_MODULE`, which imports its
``networks/MixedFeatureNet.py``) is imported from ``PATH`` in a process of its own, with this repository off
``sys.path``, so that its ``networks`` package does not meet ours.

What is measured: img-pairs/s of training steps (one pair = one 112×112 photo + its render) on synthetic
tensors, batch 32 by default, no data loading — the median (min–max) of ``--repeats`` timed runs of
``--steps`` steps each, after ``--warmup`` untimed steps, every configuration in a fresh process. The ratio
is each configuration's median over the original's.

- ``original``: the original class built as its gate training script
  (``team_34_affectnet_Origin_Smirk_va_gate_alignment_train.py``) builds it — 8 classes, ``--num_head``
  default 4 — but with ``pretrained=False``: its MS-Celeb-1M file (``pretrained/MFN_msceleb.pth``, a pickled
  whole model) is not available here (the stored copy of the repository lacks its content), and the weights'
  values do not change a step's cost. The step is the
  script's, in fp32 eager NCHW: ``optimizer.zero_grad()``, forward of (photo, render), its loss (cross-entropy
  + valence/arousal MSE, 1 − Pearson and 1 − concordance correlation terms under weights drawn from
  ``np.random.rand(3)`` each step, + 0.1 × the mean pairwise MSE between the DDA heads of each stream + 0.1 ×
  the photo–render feature MSE the model returns; written here from that script, not copied),
  ``backward()``, ``torch.optim.AdamW(lr=5e-5)`` with torch's default implementation,
  ``CyclicLR(base_lr=1e-6, max_lr=1e-4, mode="triangular", cycle_momentum=False)`` stepped every iteration,
  and ``loss.item()``.
- ``ours_default``: ``if3d_gate`` as ``python -m if3d.train --model if3d_gate --batch-size 32`` configures it
  (:func:`if3d.train.cli.config_from_args`: preset ``fer_imagenet``, MobileNetV2 backbones, 2 heads), with the
  engine's CPU defaults (:func:`if3d.runtime.device.resolve_runtime`: channels_last, fused AdamW, glibc
  allocator tuning; ``compile="auto"`` stays eager for so short a run, see ``--compile``); one step is the
  engine's own :meth:`if3d.train.engine.Trainer.train_step` (forward, the model's criterion, the finiteness
  check, backward, optimizer and schedule step) on a pre-collated batch, with augmentation off (the
  original augments in its loader workers; data is not timed on either side). Random weights.
- ``ours_paper``: the same with ``--preset if3d`` (the paper's setting: MixedFeatureNet backbones, 4 heads,
  If3D's AdamW + CyclicLR recipe) — the like-for-like model.
- ``ours_paper_fp32_eager``: ``ours_paper`` in fp32 eager NCHW with torch's default AdamW, the original's
  execution settings: what the code alone changes.
- with ``--compile``: ``ours_default_compiled``, ``ours_paper_compiled`` (``--compile``: what a training run of
  ≥ 300 steps gets by default where a C++ compiler is present; compilation time is reported apart).

``--smoke`` runs every configuration with batch 2, one timed step and no warm-up, to check that the
benchmark works (< 1 min on an idle 2-core CPU); its figures mean nothing and no markdown is written.
Figures are only comparable when recorded on an idle machine (see ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

RESULT_PREFIX = "VS_ORIGINAL_RESULT "
ORIGINAL_MODULE = "networks.DDAM_smirkpic_fusion"
ORIGINAL_CLASS = "DDAMNet_Smirk_Spatial_Alignment_GateFusion"
#: The original gate training script's settings (``team_34_affectnet_Origin_Smirk_va_gate_alignment_train.py``):
#: ``--num_head`` default 4, ``--num_class`` 8, AdamW lr 5e-5, CyclicLR 1e-6 → 1e-4 triangular.
ORIGINAL_SETTINGS = {"num_class": 8, "num_head": 4, "lr": 5e-5, "cyclic_base_lr": 1e-6, "cyclic_max_lr": 1e-4}
#: CyclicLR's ``step_size_up`` = len(train_loader) // 2 in the original; any value costs the same per step.
CYCLIC_STEP_SIZE_UP = 1000
NUM_CLASSES = 8
BEGIN = "<!-- BEGIN GENERATED (python -m benchmarks.vs_original) -->"
END = "<!-- END GENERATED (python -m benchmarks.vs_original) -->"
#: The training command's options of each of our configurations (``python -m if3d.train ...``).
OUR_CONFIGS: dict[str, list[str]] = {
    "ours_default": [],
    "ours_paper": ["--preset", "if3d"],
    "ours_paper_fp32_eager": ["--preset", "if3d", "--amp", "off", "--no-channels-last", "--optimizer-impl",
                              "default", "--no-tune-allocator", "--no-compile"],
    "ours_default_compiled": ["--compile"],
    "ours_paper_compiled": ["--preset", "if3d", "--compile"],
}
CONFIG_ORDER = ("original", "ours_default", "ours_paper", "ours_paper_fp32_eager", "ours_default_compiled",
                "ours_paper_compiled")


# ----------------------------------------------------------------------------- in the measuring process


def _stats(values: list[float]) -> dict[str, Any]:
    import statistics

    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 4) for v in values]}


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _time_steps(step, case: dict) -> dict[str, Any]:
    """Run ``step`` (one training step of ``case['batch']`` pairs): the first step timed alone, the rest of
    the warm-up untimed, then ``repeats`` timed runs of ``steps`` steps; img-pairs/s per run."""
    import torch

    t = time.perf_counter()
    step()
    first = time.perf_counter() - t
    for _ in range(max(0, int(case["warmup"]) - 1)):
        step()
    runs = []
    for _ in range(int(case["repeats"])):
        t = time.perf_counter()
        for _ in range(int(case["steps"])):
            step()
        runs.append(int(case["steps"]) * int(case["batch"]) / (time.perf_counter() - t))
    out = {"img_pairs_per_s": _stats(runs), "first_step_s": round(first, 3), "peak_rss_mib": round(_peak_rss_mib(), 1),
           "threads": torch.get_num_threads()}
    if case.get("compiled"):  # compilation ≈ first step minus a steady one
        out["compile_s"] = round(max(0.0, first - int(case["batch"]) / out["img_pairs_per_s"]["median"]), 3)
    return out


def _synthetic_pairs(batch: int, size: int, seed: int = 0):
    """Photo and render tensors (normalised-like floats), expression labels, valence and arousal in [-1, 1]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, size, size, generator=g), torch.randn(batch, 3, size, size, generator=g),
            torch.randint(0, NUM_CLASSES, (batch,), generator=g), torch.rand(batch, generator=g) * 2 - 1,
            torch.rand(batch, generator=g) * 2 - 1)


def import_original(path: str | os.PathLike):
    """The original gate class, imported from the checkout ``path`` with this repository off ``sys.path``.

    The original's ``networks`` folder has no ``__init__.py``: a namespace package, which any regular
    ``networks`` package on ``sys.path`` (ours, installed) would shadow. So the package is bound to
    ``path/networks`` explicitly before its modules are imported.

    Raises:
        ImportError: ``path`` has no :data:`ORIGINAL_MODULE`, or it resolved elsewhere.
    """
    import importlib
    import importlib.machinery
    import importlib.util

    path = Path(path).resolve()
    ours = {str(REPO_ROOT), "", "."}
    sys.path[:] = [str(path)] + [p for p in sys.path if p not in ours and Path(p or ".").resolve() != REPO_ROOT]
    for name in [m for m in sys.modules if m == "networks" or m.startswith("networks.")]:
        del sys.modules[name]
    package = path / "networks"
    init = package / "__init__.py"
    spec = (importlib.util.spec_from_file_location("networks", init, submodule_search_locations=[str(package)])
            if init.is_file() else importlib.machinery.ModuleSpec("networks", None, is_package=True))
    spec.submodule_search_locations = [str(package)]
    sys.modules["networks"] = importlib.util.module_from_spec(spec)
    if spec.loader is not None:
        spec.loader.exec_module(sys.modules["networks"])
    module = importlib.import_module(ORIGINAL_MODULE)
    where = Path(module.__file__).resolve()
    if path not in where.parents:
        raise ImportError(f"{ORIGINAL_MODULE} came from {where}, not from {path}")
    return getattr(module, ORIGINAL_CLASS)


def _pearson(a, b):
    a, b = a - a.mean(), b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm())


def _concordance(truth, pred, pcc):
    """Concordance correlation as the original computes it: 2·var_t·var_p·pcc / (var_t + var_p + Δmean²), with
    unbiased variances where Lin's coefficient has standard deviations in the numerator (so it equals Lin's
    only at unit variance); kept as the original has it, since the step's cost is what is measured."""
    vt, vp = truth.var(), pred.var()
    return 2.0 * vt * vp * pcc / (vt + vp + (truth.mean() - pred.mean()) ** 2)


def _head_disagreement(heads):
    """Mean MSE over all pairs of DDA head maps (the original's attention loss; 0 with one head)."""
    import torch.nn.functional as F

    pairs = [(i, j) for i in range(len(heads)) for j in range(i + 1, len(heads))]
    return sum(F.mse_loss(heads[i], heads[j]) for i, j in pairs) / len(pairs) if pairs else 0.0


def original_loss(outputs, label, valence, arousal, rng):
    """The original gate training loss for the model's outputs
    ``(expression, photo_heads, render_heads, arousal, valence, feature_mse)``; ``rng`` draws the three
    weights of the valence/arousal terms as the original does every step (``np.random.rand(3)``)."""
    import torch.nn.functional as F

    expression, photo_heads, render_heads, arousal_pred, valence_pred, feature_mse = outputs
    alpha, beta, gamma = rng.random(3)
    total = alpha + beta + gamma
    mse = F.mse_loss(valence_pred, valence) + F.mse_loss(arousal_pred, arousal)
    pcc_v, pcc_a = _pearson(valence, valence_pred), _pearson(arousal, arousal_pred)
    ccc = (_concordance(valence, valence_pred, pcc_v) + _concordance(arousal, arousal_pred, pcc_a)) / 2
    design = (F.cross_entropy(expression, label) + alpha / total * mse + beta / total * (1 - (pcc_v + pcc_a) / 2)
              + gamma / total * (1 - ccc))
    return design + 0.1 * _head_disagreement(photo_heads) + 0.1 * _head_disagreement(render_heads) + 0.1 * feature_mse


def measure_original(case: dict) -> dict:
    """The original gate model's training step (see the module docstring)."""
    import numpy as np
    import torch

    cls = import_original(case["original"])
    torch.manual_seed(0)
    s = ORIGINAL_SETTINGS
    model = cls(num_class=s["num_class"], num_head=s["num_head"], pretrained=False)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"])
    scheduler = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=s["cyclic_base_lr"], max_lr=s["cyclic_max_lr"],
                                                  step_size_up=CYCLIC_STEP_SIZE_UP, mode="triangular",
                                                  cycle_momentum=False)
    photo, render, label, valence, arousal = _synthetic_pairs(int(case["batch"]), int(case["size"]))
    rng = np.random.default_rng(0)

    def step() -> None:
        optimizer.zero_grad()
        loss = original_loss(model(photo, render), label, valence, arousal, rng)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss.item()

    out = _time_steps(step, case)
    out.update(params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               model_class=f"{ORIGINAL_MODULE}.{ORIGINAL_CLASS}", weights="random (pretrained=False)",
               fast_path={"amp": "off", "channels_last": False, "optimizer_impl": "default", "compile": False,
                          "malloc_tuning": False})
    return out


class SyntheticPairs:
    """In-memory paired dataset of uint8 photos and renders with labels and valence/arousal, in the sample
    format of the toolkit's datasets (what :class:`if3d.runtime.BatchPreparer` takes)."""

    def __init__(self, n: int, size: int) -> None:
        import torch

        g = torch.Generator().manual_seed(0)
        self.photos = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.renders = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
        self.labels = torch.arange(n) % NUM_CLASSES
        self.va = torch.rand(n, 2, generator=g) * 2 - 1
        from if3d.classes import AFFECTNET8

        self.class_names = list(AFFECTNET8)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        import torch

        return {"photo": self.photos[i], "render": self.renders[i], "label": self.labels[i].clone(),
                "valence": self.va[i, 0].clone(), "arousal": self.va[i, 1].clone(), "has_va": torch.tensor(True),
                "index": torch.tensor(i)}


def our_config(options: list[str], batch: int, out: str):
    """The training configuration of ``python -m if3d.train --model if3d_gate --batch-size B <options>``
    (the command's own parser), random weights and augmentation off (see the module docstring)."""
    from if3d.train.cli import config_from_args

    cfg = config_from_args(["--model", "if3d_gate", "--data", "synthetic", "--batch-size", str(batch), "--epochs", "1",
                            "--no-augment", "--out", out, *options], default_model="if3d_gate")
    return cfg.replace(pretrained=None)


def measure_ours(case: dict) -> dict:
    """Our gate model's training step: the engine's :meth:`~if3d.train.engine.Trainer.train_step`."""
    import torch
    from torch.utils.data import default_collate

    from if3d.runtime.distributed import init_distributed
    from if3d.runtime.stop import StopRequest
    from if3d.train.engine import Trainer

    b = int(case["batch"])
    with tempfile.TemporaryDirectory(prefix="if3d_vs_original_") as tmp:
        cfg = our_config(OUR_CONFIGS[case["config"]], b, str(Path(tmp) / "run"))
        cfg = cfg.replace(image_size=int(case["size"]), device="cpu")
        data = SyntheticPairs(max(2 * b, NUM_CLASSES), int(case["size"]))
        trainer = Trainer(cfg, init_distributed("cpu"), train_dataset=data, val_dataset=data)
        batch = default_collate([data[i] for i in range(b)])
        stop = StopRequest("benchmark")  # never installed: never requested
        trainer.train_model.train()
        torch.manual_seed(0)
        out = _time_steps(lambda: trainer.train_step(batch, stop, 0), {**case, "compiled": trainer.cfg.runtime.compile})
        rt = trainer.cfg.runtime
        out.update(params_m=round(sum(p.numel() for p in trainer.model.parameters()) / 1e6, 3),
                   model_class=type(trainer.model).__name__, weights="random",
                   training_options=["--model", "if3d_gate", "--batch-size", str(b), *OUR_CONFIGS[case["config"]]],
                   backbone=getattr(trainer.model, "backbone_name", None), heads=trainer.model_kwargs.get("num_heads"),
                   preset=trainer.cfg.recipe.preset, optimizer=trainer.cfg.recipe.optimizer,
                   scheduler=trainer.cfg.recipe.scheduler,
                   fast_path={"amp": rt.amp, "channels_last": bool(rt.channels_last), "optimizer_impl": rt.optimizer_impl,
                              "compile": bool(rt.compile), "malloc_tuning": bool(rt.tune_allocator)},
                   compile_decision=trainer.compile_reason)
    return out


def worker(case: dict) -> int:
    """Measure one configuration in this process and print ``RESULT_PREFIX <json>``."""
    t = time.perf_counter()
    try:
        if case.get("threads"):
            import torch

            torch.set_num_threads(int(case["threads"]))
        if case["config"] == "original":
            result = measure_original(case)
        else:
            sys.path.insert(0, str(REPO_ROOT))
            result = measure_ours(case)
        rec = {"case": case, "result": result}
    except Exception as e:  # reported in the JSON; the other configurations go on
        rec = {"case": case, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8)}
    rec["wall_s"] = round(time.perf_counter() - t, 2)
    print(RESULT_PREFIX + json.dumps(rec), flush=True)
    return 0


# ----------------------------------------------------------------------------- the driver


def run_case(case: dict, timeout_s: float, log) -> dict:
    """One configuration in a fresh process (``python benchmarks/vs_original.py --worker``, so that the
    original's ``networks`` and ours never share a process); its record, or an error record."""
    env = dict(os.environ, TQDM_DISABLE="1")
    env.pop("PYTHONPATH", None)  # the worker puts exactly what it needs on sys.path
    log(f"  {case['config']} ...")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(case)]
    try:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        out, err, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        err, rc = f"timed out after {timeout_s:.0f} s", -1
    recs = [json.loads(line[len(RESULT_PREFIX):]) for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
    rec = recs[0] if recs else {"case": case, "error": f"measurement process exited with {rc}: {err[-2000:]}"}
    if "error" in rec:
        log(f"    ERROR: {rec['error'].splitlines()[0][:300]}")
    else:
        f = rec["result"]["img_pairs_per_s"]
        log(f"    {f['median']:.2f} ({f['min']:.2f}–{f['max']:.2f}) img-pairs/s")
    return rec


def build_report(records: list[dict], settings: dict, command: str, started: str, total_s: float,
                 load: tuple) -> dict:
    """The JSON report: environment, settings, one row per configuration with its ratio to the original."""
    from benchmarks import env

    base = next((r["result"]["img_pairs_per_s"]["median"] for r in records
                 if r["case"]["config"] == "original" and "error" not in r), None)
    rows = []
    for r in records:
        row = {"config": r["case"]["config"], "wall_s": r.get("wall_s")}
        if "error" in r:
            row["error"] = r["error"]
        else:
            row.update(r["result"])
            med = r["result"]["img_pairs_per_s"]["median"]
            row["ratio_vs_original"] = round(med / base, 3) if base else None
        rows.append(row)
    return {"benchmark": "vs_original", "command": command, "started": started, "total_s": round(total_s, 1),
            "mode": "smoke" if settings["smoke"] else "full", "settings": settings,
            "load_average_at_start": load[0], "load_average_at_end": load[1],
            "environment": env.environment(),
            "pretrained_note": "random weights on both sides: the original's MS-Celeb-1M file (pretrained/"
                               "MFN_msceleb.pth) is not available; weight values do not change a step's cost",
            "rows": rows}


def render_markdown(report: dict) -> str:
    """The generated block of RESULTS.md for a report of this benchmark."""
    from benchmarks.report import _fig, _table

    st, envr = report["settings"], report.get("environment", {})
    cpu, libs, git = envr.get("cpu", {}), envr.get("libraries", {}), envr.get("git", {})
    lines = [f"Run: `{report['command']}` — started {report['started']}, {report['total_s']} s; load average at "
             f"start {report['load_average_at_start']}, at end {report['load_average_at_end']}. {cpu.get('model')}, "
             f"{cpu.get('usable_cores')} usable cores; torch {libs.get('torch')}; git commit {git.get('commit')}"
             f"{' (with uncommitted changes)' if git.get('dirty') else ''}. Original: {st['original']} "
             f"({st.get('original_commit') or 'commit unknown'}).", "",
             f"Training step on synthetic tensors, batch {st['batch']}, {st['size']}×{st['size']} photo + render, "
             f"median (min–max) of {st['repeats']} runs of {st['steps']} steps after {st['warmup']} warm-up steps, "
             f"each configuration in a fresh process; {report['pretrained_note']}.", ""]
    body = []
    for r in report["rows"]:
        if "error" in r:
            body.append([r["config"], "", "", "", "error: " + r["error"][:100], "", "", ""])
            continue
        fp = r.get("fast_path", {})
        path = ", ".join(p for p in ("channels_last" if fp.get("channels_last") else "NCHW",
                                     f"opt={fp.get('optimizer_impl')}", "compile" if fp.get("compile") else "",
                                     "malloc tuning" if fp.get("malloc_tuning") else "") if p)
        model = (f"{r.get('backbone')}, {r.get('heads')} heads, preset {r.get('preset')}" if r["config"] != "original"
                 else "MixedFeatureNet, 4 heads, original script's AdamW + CyclicLR")
        body.append([r["config"], model, f"{r.get('params_m')} M", path, _fig(r["img_pairs_per_s"]),
                     r.get("ratio_vs_original", "—"), r.get("peak_rss_mib", "—"),
                     r.get("compile_s", r.get("first_step_s", "—"))])
    lines += _table(["config", "model", "parameters", "fast path", "img-pairs/s", "× original", "peak RSS MiB",
                     "first step s (compile s)"], body)
    return "\n".join(lines) + "\n"


def _git_commit(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=20, check=True).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--original", help="a plain checkout of the original If3D repository")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=112, help="image side (the original's model needs 112)")
    p.add_argument("--steps", type=int, default=5, help="steps per timed run")
    p.add_argument("--repeats", type=int, default=3, help="timed runs")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (the first is also timed alone)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--configs", nargs="+", choices=CONFIG_ORDER, default=None,
                   help="configurations to run (default: all but the compiled ones; with --compile, all)")
    p.add_argument("--compile", action="store_true", help="add our configurations compiled with torch.compile")
    p.add_argument("--timeout-s", type=float, default=3600, help="per configuration")
    p.add_argument("--out", default=str(REPO_ROOT / "benchmarks" / "vs_original.json"))
    p.add_argument("--markdown", default=str(REPO_ROOT / "benchmarks" / "RESULTS.md"),
                   help="write the generated block here ('' for none; never in --smoke mode)")
    p.add_argument("--smoke", action="store_true", help="batch 2, 1 step, no warm-up: checks that it works")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.worker:
        return worker(json.loads(args.worker))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from benchmarks import env
    from benchmarks.report import update_block
    from if3d.atomic import atomic_write_text

    if not args.original:
        print("error: --original PATH (a checkout of the original If3D repository) is required", file=sys.stderr)
        return 2
    original = Path(args.original).resolve()
    if not (original / (ORIGINAL_MODULE.replace(".", "/") + ".py")).is_file():
        print(f"error: {original} has no {ORIGINAL_MODULE.replace('.', '/')}.py; is it a checkout of the original "
              "If3D repository?", file=sys.stderr)
        return 2
    if args.smoke:
        args.batch, args.steps, args.repeats, args.warmup = 2, 1, 1, 1
    configs = args.configs or [c for c in CONFIG_ORDER if args.compile or not c.endswith("_compiled")]
    configs = [c for c in CONFIG_ORDER if c in configs]
    settings = {"original": str(original), "original_commit": _git_commit(original), "batch": args.batch,
                "size": args.size, "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup,
                "threads": args.threads, "configs": configs, "smoke": args.smoke}

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log("random weights on both sides: the original's MS-Celeb-1M file is not available "
        "(weight values do not change a step's cost)")
    started, load0, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), env.load_average(), time.perf_counter()
    records = []
    for c in configs:
        case = {"config": c, "original": str(original), "batch": args.batch, "size": args.size, "steps": args.steps,
                "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads}
        records.append(run_case(case, args.timeout_s, log))
    command = "python -m benchmarks.vs_original " + " ".join(sys.argv[1:] if argv is None else argv)
    report = build_report(records, settings, command, started, time.perf_counter() - t0, (load0, env.load_average()))
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out, text + "\n")
    if args.markdown and not args.smoke:
        update_block(args.markdown, BEGIN, END, render_markdown(report))
        log(f"updated {args.markdown}")
    print(text)
    errors = [r["config"] for r in report["rows"] if "error" in r]
    return 1 if errors else 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        # run as a file (the worker): keep this repository off sys.path; only the driver adds it
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
    sys.exit(main())
