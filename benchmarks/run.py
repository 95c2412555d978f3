"""The If3D benchmark: one command, one JSON report (printed and written to a file).

    python -m benchmarks.run [--smoke] [--out benchmarks/results.json] [--markdown benchmarks/RESULTS.md]
                             [--compile] [--skip SECTION ...] [--default-override JSON] [--pretrained PATH]

Sections (each figure in img-pairs/s — one pair = photo + render, one photo for the photo-only
DDAMFN — as the median, min and max of several timed runs):

- ``model``: model only, synthetic tensors, batch 64 at 112×112: the training step (forward, the model's
  criterion, backward, AdamW step) and evaluation (forward) of the four If3D strategies and the DDAMFN
  baseline, fp32 eager vs the default fast path for the device (``if3d.runtime.device.FAST_PATH_DEFAULTS``
  as :func:`~if3d.runtime.device.resolve_runtime` resolves it), plus each fast-path switch alone on the
  gate model (channels_last, bf16 autocast, bf16 + channels_last, glibc allocator tuning, the candidate
  CPU path; torch.compile with ``--compile``, compile time reported separately), and the AdamW step alone
  per implementation (for-loop, foreach, fused). Each configuration runs in a fresh process, evaluation
  then training; peak memory: ``ru_maxrss`` after each mode (CPU), ``torch.cuda.max_memory_allocated``
  (CUDA).
- ``loader``: data loader throughput on real converted data (a fixed FER2013 subset with MediaPipe
  renders, :mod:`benchmarks.data`), opened and loaded as training does (``if3d.data.source.open_split``,
  ``if3d.runtime.make_loader``): JPEG/PNG decoding through ``PairedDataset`` with 0 and 2 DataLoader
  workers vs the memory-mapped cache; and the batched paired augmentation (``if3d.runtime.BatchPreparer``).
- ``e2e``: the training command (``python -m if3d.train``, the real engine and loader) on the fixed subset,
  cache and JPEG paths, its second epoch's throughput against model-only steps of the same model and
  fast path timed between its runs (same machine conditions): the loader must never be the bottleneck
  (target ratio ≥ 0.9 on the cache).
- ``accuracy``: the gate model trained by the training command a few epochs on the FER2013 subset, fp32
  eager vs the default fast path, same seed, plus the fast path with a second seed as the noise scale;
  each trained model is evaluated the same way (``if3d.evaluate.evaluate_checkpoint``, fp32 eager) on the
  run's validation split so that predictions can be compared one by one.
- ``render``: ``benchmarks/bench_render.py`` (MediaPipe backend end to end, 1 and 2 workers).

CUDA: every model/e2e case is repeated on ``cuda`` when a GPU is visible; otherwise the report says that
no GPU was available. ``--smoke`` runs every section tiny (batch 2, one repeat, a few images) to check
that the benchmark works; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import env  # noqa: E402
from benchmarks.measure import RESULT_PREFIX, fast_path_options, subprocess_env  # noqa: E402
from if3d.atomic import atomic_write_text  # noqa: E402

REPORT_VERSION = 1
MODELS = ("if3d_linear", "if3d_attention", "if3d_gate", "if3d_spp", "ddamfn")
STRATEGY = {"if3d_linear": "linear", "if3d_attention": "attention", "if3d_gate": "gate", "if3d_spp": "spp",
            "ddamfn": "ddamfn (photo-only baseline)"}
FP32_EAGER = {"amp": "off", "channels_last": False, "optimizer_impl": "default", "compile": False,
              "malloc_tuning": False}
#: Fast-path switches measured one at a time (and bf16 with channels_last together) against fp32 eager,
#: on the ablation models. The optimizer implementations are measured on their own (``optimizer``
#: section: the step of a 73 M-parameter AdamW is a small, separable part of a training step).
ABLATIONS = {
    "channels_last": {**FP32_EAGER, "channels_last": True},
    "bf16": {**FP32_EAGER, "amp": "bf16"},
    "bf16_channels_last": {**FP32_EAGER, "amp": "bf16", "channels_last": True},
    "malloc_tuning": {**FP32_EAGER, "malloc_tuning": True},
    # the CPU fast path these measurements point to (reported under both names once it is the default)
    "channels_last_fused_malloc": {**FP32_EAGER, "channels_last": True, "optimizer_impl": "fused",
                                   "malloc_tuning": True},
}
SECTIONS = ("model", "loader", "e2e", "accuracy", "render")


#: ``--default-override``: settings that replace the default CPU fast path in this run (to measure
#: a candidate default before adopting it); recorded in the report.
DEFAULT_OVERRIDE: dict[str, Any] = {}


def default_fast_path(device: str) -> dict[str, Any]:
    """The default fast path on ``device`` ("cpu"/"cuda") as training resolves it:
    :func:`~if3d.runtime.device.resolve_runtime` of an empty :class:`~if3d.runtime.device.RuntimeConfig`
    (``amp="auto"`` made concrete) and, for ``compile="auto"``, :func:`~if3d.runtime.device.resolve_compile`
    for a run long enough to compile (the runs this benchmark stands for); with :data:`DEFAULT_OVERRIDE`
    applied on CPU."""
    import torch

    from if3d.runtime.device import COMPILE_AUTO_MIN_STEPS, RuntimeConfig, resolve_compile, resolve_runtime

    dev = torch.device("cuda" if device.startswith("cuda") else "cpu")
    rt = resolve_runtime(RuntimeConfig(), dev)
    resolved = {"amp": rt.amp, "channels_last": bool(rt.channels_last), "optimizer_impl": rt.optimizer_impl,
                "compile": resolve_compile(rt.compile, dev.type, COMPILE_AUTO_MIN_STEPS)[0],
                "malloc_tuning": bool(rt.tune_allocator)}
    return {**resolved, **(DEFAULT_OVERRIDE if dev.type == "cpu" else {})}


# ----------------------------------------------------------------------------- running cases


def run_cases(cases: list[dict], *, one_process_each: bool, log, timeout_s: float = 1800) -> list[dict]:
    """Run measurement cases in fresh processes (``python -m benchmarks.measure``); returns their records."""
    groups = [[c] for c in cases] if one_process_each else ([cases] if cases else [])
    records: list[dict] = []
    envvars = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                   TQDM_DISABLE="1")
    for group in groups:
        label = ", ".join(_label(c) for c in group) if len(group) < 4 else f"{len(group)} cases"
        log(f"  running {label} ...")
        t = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", *[json.dumps(c) for c in group]],
                                  cwd=REPO_ROOT, env=envvars, capture_output=True, text=True, timeout=timeout_s)
            out, err, rc = proc.stdout, proc.stderr, proc.returncode
        except subprocess.TimeoutExpired as e:
            out, err, rc = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), \
                f"timed out after {timeout_s} s", -1
        got = [json.loads(line[len(RESULT_PREFIX):]) for line in out.splitlines() if line.startswith(RESULT_PREFIX)]
        done = {json.dumps(r["case"], sort_keys=True) for r in got}
        for c in group:
            if json.dumps(c, sort_keys=True) not in done:
                got.append({"case": c, "error": f"measurement process exited with {rc}: {err[-2000:]}"})
        for r in got:
            if "error" in r:
                log(f"    ERROR {_label(r['case'])}: {r['error'].splitlines()[0][:300]}")
            else:
                log(f"    {_label(r['case'])}: {_headline(r['result'])}")
        log(f"    ({time.perf_counter() - t:.0f} s)")
        records += got
    return records


def _label(case: dict) -> str:
    parts = [case["task"], case.get("model", ""), "+".join(case.get("modes", [])) or case.get("mode", ""),
             case.get("config", ""),
             case.get("path", ""), f"w{case['workers']}" if "workers" in case else "", case.get("device", "")]
    return " ".join(p for p in parts if p)


def _headline(result: dict) -> str:
    if "eval" in result and "train" in result:
        return f"eval {_headline(result['eval'])}; train {_headline(result['train'])}"
    impls = [k for k in ("default", "foreach", "fused") if k in result]
    if impls:
        return ", ".join(f"{k} {result[k]['step_ms']['median']:.0f} ms/step" for k in impls)
    m = result.get("img_pairs_per_s", {}).get("median")
    extra = ""
    if "ratio_e2e_to_model_only" in result:
        extra = f", model only {result['model_only_img_pairs_per_s']['median']:.2f}, ratio {result['ratio_e2e_to_model_only']:.3f}"
    if "augment_img_pairs_per_s" in result:
        extra = f", augmentation {result['augment_img_pairs_per_s']['median']:.1f}"
    return f"{m:.2f} img-pairs/s{extra}" if m is not None else json.dumps(result)[:200]


# ----------------------------------------------------------------------------- plans


def model_cases(settings: dict, devices: list[str], models: tuple[str, ...], ablation_models: tuple[str, ...],
                with_compile: bool) -> list[dict]:
    """Model-only cases: every model fp32 eager vs the default fast path; each switch alone on the
    ablation models. One process per configuration measures evaluation, then training, on the same
    model. Configurations that coincide in a mode (evaluation ignores the optimizer) are measured once
    and reported under every name (``also_eval`` / ``also_train``)."""
    cases = []
    for device in devices:
        default = default_fast_path(device)
        for model in models:
            configs = {"fp32_eager": FP32_EAGER, "default": default}
            if default.get("compile"):
                # what runs too short for compile="auto" get
                configs["default_eager"] = {**default, "compile": False}
            if model in ablation_models:
                configs.update(ABLATIONS)
                if with_compile and not default.get("compile"):
                    configs["compile"] = {**default, "compile": True}
            owner: dict[tuple[str, str], dict] = {}
            for name, fp in configs.items():
                case = {"task": "model", "model": model, "config": name, "device": device, **fp, "modes": [],
                        "also_eval": [], "also_train": [],
                        "eval_settings": dict(settings["eval"]), "train_settings": dict(settings["train"])}
                for mode in ("eval", "train"):
                    key = json.dumps({**fp, "optimizer_impl": fp["optimizer_impl"] if mode == "train" else "-"},
                                     sort_keys=True)
                    if (mode, key) in owner:
                        owner[(mode, key)][f"also_{mode}"].append(name)
                    else:
                        owner[(mode, key)] = case
                        case["modes"].append(mode)
                        if fp.get("compile"):
                            case[f"{mode}_settings"]["warmup"] += 1  # recompilation on the second call
                if case["modes"]:
                    cases.append(case)
    return cases


def collect_model(records: list[dict]) -> list[dict]:
    """Model section rows (one per model, mode, device and configuration name) with the speed-up over
    fp32 eager of the same model, mode and device."""
    rows = []
    for r in records:
        c = r["case"]
        for mode in c["modes"]:
            res = r.get("result", {})
            res = res.get(mode, {}) if len(c["modes"]) > 1 else res
            for name in [c["config"], *c.get(f"also_{mode}", [])]:
                row = {"model": c["model"], "strategy": STRATEGY[c["model"]], "mode": mode, "device": c["device"],
                       "config": name, "amp": c["amp"], "channels_last": c["channels_last"],
                       "optimizer_impl": c["optimizer_impl"] if mode == "train" else None,
                       "compile": c["compile"], "malloc_tuning": c.get("malloc_tuning", False),
                       "batch": c[f"{mode}_settings"]["batch"], **res}
                if "error" in r:
                    row["error"] = r["error"]
                rows.append(row)
    order = {m: i for i, m in enumerate(MODELS)}
    rows.sort(key=lambda x: (x["device"], order.get(x["model"], 99), x["mode"] != "train"))
    base = {(x["model"], x["mode"], x["device"]): x for x in rows if x["config"] == "fp32_eager" and "error" not in x}
    for x in rows:
        b = base.get((x["model"], x["mode"], x["device"]))
        if b is not None and "error" not in x:
            x["speedup_vs_fp32_eager"] = round(x["img_pairs_per_s"]["median"] / b["img_pairs_per_s"]["median"], 3)
    return rows


# ----------------------------------------------------------------------------- accuracy


def accuracy_train_command(data_root: str, settings: dict, fp: dict, seed: int,
                           out: str | os.PathLike) -> list[str]:
    """The training command of one accuracy run: the model with the recipe preset of ``settings``
    (default ``if3d``) on the benchmark subset, CPU, in-process loading, the fast path ``fp``."""
    cmd = [sys.executable, "-m", "if3d.train", "--model", settings["model"],
           "--preset", settings.get("preset") or "if3d", "--data", str(data_root),
           "--epochs", str(settings["epochs"]), "--batch-size", str(settings["batch"]), "--seed", str(seed),
           "--out", str(out), "--skip-missing-renders", "--workers", "0", "--device", "cpu",
           *fast_path_options(fp)]
    optional = {"--max-train-samples": settings.get("max_train"), "--max-val-samples": settings.get("max_val"),
                "--lr": settings.get("lr"), "--pretrained": settings.get("pretrained")}
    for option, value in optional.items():
        if value is not None:
            cmd += [option, str(value)]
    return cmd


def accuracy_result(run_dir: Path, data_root: str, settings: dict, seed: int) -> dict[str, Any]:
    """What one accuracy run reached: its ``metrics.csv`` curves, and the predictions of its final weights
    (``last.pth``) on the run's validation samples, all computed the same way (fp32 eager, by
    :func:`if3d.evaluate.evaluate_checkpoint`) so that two runs can be compared prediction by prediction.

    Raises:
        RuntimeError: the evaluation saw other samples than the run's validation.
    """
    from if3d.evaluate import evaluate_checkpoint

    with (run_dir / "metrics.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    info = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))
    val_samples = int(info["run"]["num_val_samples"])
    eval_dir = run_dir / "evaluation"
    # the validation subset of the run: same split, same size, same seed (training draws it with seed + 1,
    # as evaluate_checkpoint does); what it prints (data notes, progress bar) stays out of the benchmark's
    # stdout (the JSON report) and log
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        evaluate_checkpoint(run_dir / "last.pth", data=data_root, split=info["config"]["data"]["val_split"],
                            out=eval_dir, batch_size=64, workers=0, device="cpu", amp="off", channels_last=False,
                            tune_allocator=False, skip_missing_renders=True, max_samples=settings.get("max_val"),
                            seed=seed, verbose=False)
    with (eval_dir / "predictions.csv").open(encoding="utf-8") as f:
        preds = list(csv.DictReader(f))
    if len(preds) != val_samples:
        raise RuntimeError(f"the evaluation predicted {len(preds)} samples, the run validated {val_samples}")
    last = rows[-1]
    return {
        "val_predictions": [int(r["prediction"]) for r in preds], "val_labels": [int(r["label"]) for r in preds],
        "val_accuracy": float(last["val_accuracy"]), "val_balanced_accuracy": float(last["val_balanced_accuracy"]),
        "val_f1_macro": float(last["val_f1_macro"]), "train_loss": float(last["train_loss"]),
        "train_loss_per_epoch": [float(r["train_loss"]) for r in rows],
        "val_accuracy_per_epoch": [float(r["val_accuracy"]) for r in rows],
        "train_img_pairs_per_s": sum(float(r["images_per_s"]) for r in rows) / len(rows),
        "best_accuracy": max(float(r["val_accuracy"]) for r in rows), "epochs": len(rows),
        "val_samples": val_samples, "compile_decision": info["run"].get("compile"),
    }


def run_accuracy(data_root: str, settings: dict, log) -> dict:
    """Train the gate model with fp32 eager and with the default fast path (same seed) and compare.

    Each run is the training command (:func:`accuracy_train_command`) in a subprocess, then
    :func:`accuracy_result` on its run directory."""
    runs = []
    default = default_fast_path("cpu")
    plan = [("fp32_eager", FP32_EAGER, settings["seed"]), ("default", default, settings["seed"])]
    if settings.get("noise_seed") is not None:
        plan.append(("default", default, settings["noise_seed"]))
    with tempfile.TemporaryDirectory(prefix="if3d_bench_acc_") as tmp:
        for name, fp, seed in plan:
            run_dir = Path(tmp) / f"{name}_{seed}"
            log(f"  training {settings['model']} {name} seed {seed} ({settings['epochs']} epochs) ...")
            t = time.perf_counter()
            proc = subprocess.run(accuracy_train_command(data_root, settings, fp, seed, run_dir), cwd=REPO_ROOT,
                                  capture_output=True, text=True, env=subprocess_env())
            fit_s = time.perf_counter() - t
            try:
                if proc.returncode != 0:
                    raise RuntimeError(f"the training command exited with {proc.returncode}: {proc.stderr[-2000:]}")
                res = accuracy_result(run_dir, data_root, settings, seed)
            except Exception as e:  # recorded in the report; the other runs go on
                wall = time.perf_counter() - t
                runs.append({"config": name, "seed": seed, "error": f"{type(e).__name__}: {e}",
                             "wall_s": round(wall, 1)})
                log(f"    ERROR: {str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__}")
                continue
            wall = time.perf_counter() - t
            res.update(config=name, seed=seed, fit_s=round(fit_s, 1), wall_s=round(wall, 1),
                       **{k: fp[k] for k in FP32_EAGER})
            runs.append(res)
            log(f"    val accuracy {res['val_accuracy']:.4f}, balanced {res['val_balanced_accuracy']:.4f}, "
                f"final train loss {res['train_loss']:.4f}, {res['train_img_pairs_per_s']:.2f} img-pairs/s "
                f"({wall:.0f} s)")
    ok = [r for r in runs if "error" not in r]

    def agreement(a: dict, b: dict) -> float | None:
        """Share of validation samples on which two trained models predict the same class."""
        pa, pb = a.get("val_predictions") or [], b.get("val_predictions") or []
        if not pa or len(pa) != len(pb) or a.get("val_labels") != b.get("val_labels"):
            return None
        return round(sum(x == y for x, y in zip(pa, pb)) / len(pa), 4)

    out: dict[str, Any] = {"settings": settings, "runs": runs}
    if len(ok) >= 2 and ok[0]["config"] == "fp32_eager" and ok[1]["config"] == "default" and ok[1]["seed"] == ok[0]["seed"]:
        a, b = ok[0], ok[1]
        n = a["val_samples"]
        p = a["val_accuracy"]
        se = (p * (1 - p) / n) ** 0.5 * 2 ** 0.5  # standard error of a difference of two accuracies on n samples
        out["delta_val_accuracy_default_minus_fp32"] = round(b["val_accuracy"] - a["val_accuracy"], 4)
        out["delta_balanced_accuracy_default_minus_fp32"] = round(
            b["val_balanced_accuracy"] - a["val_balanced_accuracy"], 4)
        out["binomial_se_of_difference"] = round(se, 4)
        out["prediction_agreement_default_vs_fp32"] = agreement(a, b)
        if len(ok) >= 3:
            out["seed_noise_val_accuracy"] = round(abs(ok[2]["val_accuracy"] - b["val_accuracy"]), 4)
            out["prediction_agreement_seed0_vs_seed1"] = agreement(b, ok[2])
        noise = max(2 * se, out.get("seed_noise_val_accuracy", 0.0))
        out["within_noise"] = abs(out["delta_val_accuracy_default_minus_fp32"]) <= noise
        out["noise_threshold"] = round(noise, 4)
        out["speedup_default_vs_fp32_training"] = round(b["train_img_pairs_per_s"] / a["train_img_pairs_per_s"], 3)
    for r in ok:  # the predictions were compared above; the report keeps how many classes each model predicts
        r["predicted_classes"] = len(set(r.pop("val_predictions", None) or []))
        r.pop("val_labels", None)
    return out


# ----------------------------------------------------------------------------- targets


def evaluate_targets(report: dict) -> dict:
    """The targets (``benchmarks/RESULTS.md``), measured in this run: met or missed, by how much."""
    t: dict[str, Any] = {}
    e2e = [r for r in report.get("e2e", []) if r.get("path") == "cache" and "error" not in r and r["device"] == "cpu"]
    if e2e:
        worst = min(e2e, key=lambda r: r["ratio_e2e_to_model_only"])
        t["cpu_e2e_cache_vs_model_only"] = {
            "target": 0.9, "per_model": {r["model"]: r["ratio_e2e_to_model_only"] for r in e2e},
            "worst": worst["ratio_e2e_to_model_only"], "met": worst["ratio_e2e_to_model_only"] >= 0.9}
    rows = [r for r in report.get("model", []) if r["device"] == "cpu" and r["mode"] == "train"
            and r["config"] == "default" and "speedup_vs_fp32_eager" in r]
    target_rows = [r for r in rows if r["model"] in ("if3d_gate", "if3d_spp")]
    eager_rows = [r for r in report.get("model", []) if r["device"] == "cpu" and r["mode"] == "train"
                  and r["config"] == "default_eager" and "speedup_vs_fp32_eager" in r]
    t["cpu_default_vs_fp32_eager_training"] = {
        "target": 1.5, "default_fast_path": report.get("default_fast_path", {}).get("cpu"),
        "per_model": {r["model"]: r["speedup_vs_fp32_eager"] for r in rows},
        "met_gate_and_spp": (all(r["speedup_vs_fp32_eager"] >= 1.5 for r in target_rows) if target_rows else None)}
    if eager_rows:  # the default of runs too short for compile="auto"
        t["cpu_default_vs_fp32_eager_training"]["per_model_short_runs_eager"] = {
            r["model"]: r["speedup_vs_fp32_eager"] for r in eager_rows}
    acc = report.get("accuracy")
    if isinstance(acc, dict) and "within_noise" in acc:
        t["accuracy_unchanged_within_noise"] = {
            "delta_val_accuracy": acc["delta_val_accuracy_default_minus_fp32"],
            "noise_threshold": acc["noise_threshold"], "met": acc["within_noise"]}
    gpu_rows = [r for r in report.get("e2e", []) if r["device"].startswith("cuda") and "error" not in r]
    if gpu_rows:
        t["gpu_e2e_bf16_channels_last_vs_fp32_eager"] = {
            "target": 3.0, "per_model": {f"{r['model']}:{r['config']}": r["img_pairs_per_s"]["median"]
                                         for r in gpu_rows}}
    else:
        t["gpu"] = "no CUDA device in this run: the GPU target was not measured"
    return t


# ----------------------------------------------------------------------------- main


PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "batch": 64, "repeats": 3, "models": MODELS, "ablation_models": ("if3d_gate",),
        "optimizer_model": "if3d_gate", "n_train": 1024, "n_val": 512, "render_workers": 2, "loader_batches": 16,
        # e2e: each training-command run does 2 epochs of e2e_steps; the first warms up, so it needs the
        # steps the model-only figures leave untimed (oneDNN primitives, first-touch memory, recompilation)
        "e2e_models": ("ddamfn", "if3d_gate"), "e2e_jpeg_models": ("if3d_gate",), "e2e_jpeg_workers": (0, 2),
        "e2e_steps": 2,
        "accuracy": {"model": "if3d_gate", "epochs": 2, "batch": 32, "max_train": 256, "max_val": 256,
                     "seed": 0, "noise_seed": 1},
        "render_args": ["--size", "112", "--workers", "1", "2", "--repeats", "3", "--limit", "300"],
    },
    "smoke": {
        "batch": 2, "repeats": 1, "models": ("ddamfn", "if3d_linear"), "ablation_models": ("ddamfn",),
        "optimizer_model": "ddamfn", "n_train": 24, "n_val": 12, "render_workers": 1, "loader_batches": 2,
        # JPEG end to end with in-process loading only (the loader section checks 2 workers): keeps CI short
        "e2e_models": ("ddamfn",), "e2e_jpeg_models": ("ddamfn",), "e2e_jpeg_workers": (0,), "e2e_steps": 1,
        "accuracy": {"model": "ddamfn", "epochs": 1, "batch": 4, "max_train": 8, "max_val": 8, "seed": 0,
                     "noise_seed": None},
        "render_args": ["--smoke"],
    },
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results.json",
                   help="where to write the JSON report (default benchmarks/results.json)")
    p.add_argument("--markdown", type=Path, default=None,
                   help="update the generated tables of this Markdown file (default: benchmarks/RESULTS.md in "
                   "full mode, none with --smoke)")
    p.add_argument("--smoke", action="store_true", help="everything tiny, to check that the benchmark works")
    p.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections to leave out")
    p.add_argument("--models", nargs="+", default=None, choices=MODELS, help="models of the model section")
    p.add_argument("--compile", action="store_true",
                   help="also measure torch.compile on the gate model (≈ +4 min) when the default does not compile "
                   "already (no C++ compiler)")
    p.add_argument("--device", nargs="+", default=None, help="devices (default: cpu, plus cuda when present)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    p.add_argument("--work-dir", type=Path, default=None, help="where the benchmark dataset is prepared "
                   "(default runs/benchmarks; a temporary folder with --smoke)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 3; smoke 1)")
    p.add_argument("--pretrained", default=None, metavar="PATH",
                   help="MFN_msceleb.pth (or any supported checkpoint) for the accuracy section; without it the gate "
                   "model is trained from scratch and stays near chance in the affordable budget")
    p.add_argument("--default-override", type=json.loads, default=None, metavar="JSON",
                   help='measure a candidate default CPU fast path instead of the current one, e.g. '
                   '\'{"channels_last": true, "optimizer_impl": "fused", "malloc_tuning": true}\'')
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.0f} s] {msg}", file=sys.stderr, flush=True)

    import torch

    smoke = args.smoke
    if args.default_override:
        unknown = set(args.default_override) - set(FP32_EAGER)
        if unknown:
            raise SystemExit(f"--default-override: unknown keys {sorted(unknown)}; known: {sorted(FP32_EAGER)}")
        DEFAULT_OVERRIDE.update(args.default_override)
    if smoke:
        DEFAULT_OVERRIDE.setdefault("compile", False)  # minutes of compilation would make CI's smoke run slow
    plan = dict(PLANS["smoke" if smoke else "full"])
    if args.repeats:
        plan["repeats"] = args.repeats
    if args.models:
        plan["models"] = tuple(args.models)
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    threads = {"threads": args.threads} if args.threads else {}
    base = {"size": 112, "repeats": plan["repeats"], "batch": plan["batch"], "steps": 1, **threads}
    # two untimed training steps: the first creates oneDNN primitives, the second still pays for first-touch
    # memory (its figures are 30-50 % off in quiet runs); torch.compile gets a third (recompilation)
    settings = {"train": {**base, "warmup": 1 if smoke else 2}, "eval": {**base, "warmup": 1}}
    models = plan["models"]
    ablation_models = tuple(m for m in plan["ablation_models"] if m in models)
    report: dict[str, Any] = {
        "report_version": REPORT_VERSION,
        "mode": "smoke" if smoke else "full",
        "command": " ".join(["python -m benchmarks.run", *(argv if argv is not None else sys.argv[1:])]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "load_average_at_start": env.load_average(),
        "environment": env.environment(),
        "devices": devices,
        "cuda_note": None if any(d.startswith("cuda") for d in devices)
        else "no CUDA device was available in this run; GPU figures are absent",
        "unit": "img-pairs/s (photo+render pairs; photos for the photo-only ddamfn); median, min, max of timed runs",
        "settings": {"plan": plan, "model_case": base},
        "default_fast_path": {d: default_fast_path(d) for d in devices},
        "default_override": dict(DEFAULT_OVERRIDE) or None,
        "model": [], "optimizer": [], "loader": [], "e2e": [], "accuracy": None, "render": None, "dataset": None,
        "sections_s": {},
    }

    def section(name: str):
        log(f"--- {name}")
        return time.perf_counter()

    # ---- model only (synthetic tensors)
    if "model" not in args.skip:
        t = section(f"model-only throughput (synthetic tensors, batch {plan['batch']})")
        cases = model_cases(settings, devices, models, ablation_models, args.compile and not smoke)
        report["model"] = collect_model(run_cases(cases, one_process_each=not smoke, log=log))
        opt_cases = [{"task": "optimizer", "model": plan["optimizer_model"], "device": d, "batch": plan["batch"],
                      "repeats": plan["repeats"], "steps": 1 if smoke else 3, **threads} for d in devices]
        for r in run_cases(opt_cases, one_process_each=not smoke, log=log):
            report["optimizer"].append({"model": r["case"]["model"], "device": r["case"]["device"],
                                        **r.get("result", {}), **({"error": r["error"]} if "error" in r else {})})
        report["sections_s"]["model"] = round(time.perf_counter() - t, 1)

    # ---- real data: the FER2013 subset, converted, rendered, cached
    tmp_work = None
    data_info = None
    if {"loader", "e2e", "accuracy"} - set(args.skip):
        from benchmarks.data import prepare

        work = args.work_dir
        if work is None:
            work = Path(tmp_work := tempfile.mkdtemp(prefix="if3d_bench_")) if smoke else REPO_ROOT / "runs" / "benchmarks"
        t = section(f"benchmark dataset (FER2013 subset) under {work}")
        try:
            data_info = prepare(work, n_train=plan["n_train"], n_val=plan["n_val"],
                                render_workers=plan["render_workers"], log=log)
            report["dataset"] = data_info
        except Exception as e:
            report["dataset"] = {"error": f"{type(e).__name__}: {e}"}
            log(f"  ERROR preparing the dataset: {e}")
        report["sections_s"]["dataset"] = round(time.perf_counter() - t, 1)

    if data_info is not None and "loader" not in args.skip:
        t = section("data loader throughput (real data)")
        lb = {"batch": plan["batch"], "batches": plan["loader_batches"], "repeats": plan["repeats"],
              "model": "if3d_gate", "data": data_info["root"], "device": "cpu", **threads}
        cases = [{"task": "loader", "path": "jpeg", "workers": 0, **lb},
                 {"task": "loader", "path": "jpeg", "workers": 2, **lb},
                 {"task": "loader", "path": "cache", "workers": 0, "augment": True, **lb}]
        for r in run_cases(cases, one_process_each=not smoke, log=log):
            c = r["case"]
            report["loader"].append({"path": c["path"], "workers": c["workers"], "batch": c["batch"],
                                     **r.get("result", {}), **({"error": r["error"]} if "error" in r else {})})
        report["sections_s"]["loader"] = round(time.perf_counter() - t, 1)

    if data_info is not None and "e2e" not in args.skip:
        t = section("end-to-end training (the training command, real loader) vs model only")
        cases = []
        for device in devices:
            default = default_fast_path(device)
            for model in plan["e2e_models"]:
                common = {"task": "e2e", "model": model, "device": device, "data": data_info["root"],
                          "batch": plan["batch"], "steps": plan["e2e_steps"], "repeats": plan["repeats"],
                          "warmup": 1 if smoke else 2, **threads}
                cases.append({**common, "path": "cache", "workers": 0, "config": "default", **default})
                if model in plan["e2e_jpeg_models"]:
                    # the CPU default (loading in the training process) against 2 worker processes;
                    # eager, to keep the run short (these two compare loaders, not models)
                    jpeg_fp, jpeg_name = ({**default, "compile": False}, "default_eager") if default.get(
                        "compile") else (default, "default")
                    for workers in plan["e2e_jpeg_workers"]:
                        cases.append({**common, "path": "jpeg", "workers": workers, "config": jpeg_name, **jpeg_fp})
                if device.startswith("cuda"):
                    cases.append({**common, "path": "cache", "workers": 0, "config": "fp32_eager", **FP32_EAGER})
        for r in run_cases(cases, one_process_each=not smoke, log=log, timeout_s=3600):
            c = r["case"]
            report["e2e"].append({"model": c["model"], "strategy": STRATEGY[c["model"]], "device": c["device"],
                                  "config": c["config"], "path": c["path"], "workers": c["workers"],
                                  "batch": c["batch"], "amp": c["amp"], "channels_last": c["channels_last"],
                                  "optimizer_impl": c["optimizer_impl"], "compile": c["compile"],
                                  "malloc_tuning": c.get("malloc_tuning", False), **r.get("result", {}),
                                  **({"error": r["error"]} if "error" in r else {})})
        report["sections_s"]["e2e"] = round(time.perf_counter() - t, 1)

    if data_info is not None and "accuracy" not in args.skip:
        t = section("accuracy: fp32 eager vs the default fast path (the training command on the FER2013 subset)")
        report["accuracy"] = run_accuracy(data_info["root"], {**plan["accuracy"], "preset": "if3d", "lr": None,
                                                              "pretrained": args.pretrained}, log)
        report["sections_s"]["accuracy"] = round(time.perf_counter() - t, 1)

    if "render" not in args.skip:
        t = section("render throughput (benchmarks/bench_render.py)")
        report["render"] = run_render(plan["render_args"], log)
        report["sections_s"]["render"] = round(time.perf_counter() - t, 1)

    if tmp_work is not None:
        shutil.rmtree(tmp_work, ignore_errors=True)
    report["targets"] = evaluate_targets(report)
    report["load_average_at_end"] = env.load_average()
    report["total_s"] = round(time.perf_counter() - t_start, 1)
    text = json.dumps(report, indent=2)
    print(text)
    atomic_write_text(args.out, text + "\n")
    log(f"report written to {args.out}")
    markdown = args.markdown if args.markdown is not None else (None if smoke else REPO_ROOT / "benchmarks" / "RESULTS.md")
    if markdown is not None:
        from benchmarks.report import update_markdown

        update_markdown(markdown, report)
        log(f"tables updated in {markdown}")
    return 0


def run_render(render_args: list[str], log) -> dict:
    """``benchmarks/bench_render.py`` (the render target) with its JSON output."""
    with tempfile.TemporaryDirectory(prefix="if3d_bench_render_") as tmp:
        out_json = Path(tmp) / "render.json"
        cmd = [sys.executable, str(REPO_ROOT / "benchmarks" / "bench_render.py"), "--json", str(out_json), *render_args]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
        if proc.returncode == 0 and out_json.is_file():
            result = json.loads(out_json.read_text())
            for w, res in result.get("results", {}).items():
                log(f"    {w} worker(s): {res['images_per_s']['median']:.1f} img/s")
            return result
        log(f"    ERROR: {proc.stderr.strip()[-300:]}")
        return {"error": f"bench_render.py exited with {proc.returncode}: {proc.stderr[-2000:]}"}


if __name__ == "__main__":
    sys.exit(main())
