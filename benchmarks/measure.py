"""One benchmark measurement, run in its own process by :mod:`benchmarks.run`.

``python -m benchmarks.measure '<json case>' ['<json case>' ...]`` runs each case in order and prints
one line ``BENCH_RESULT <json>`` per case. A separate process per configuration gives an honest peak
memory (``ru_maxrss`` of the process: torch's allocator is invisible to ``tracemalloc``) and keeps one
configuration's oneDNN primitive caches and thread pools from colouring the next.

Cases (``"task"``):

- ``model``: model only, synthetic tensors. ``mode="train"``: forward + the model's own criterion
  (``networks.create_criterion``) + backward + AdamW step, the training step without the data;
  ``mode="eval"``: forward under ``no_grad``. Fast-path switches: ``amp`` (off|bf16|fp16),
  ``channels_last``, ``optimizer_impl`` (default|foreach|fused), ``compile``, ``malloc_tuning``.
- ``loader``: data loader img-pairs/s on a converted dataset, JPEG/PNG path (``PairedDataset`` +
  DataLoader workers) or cache path (memory-mapped batches), opened and loaded as training does
  (:func:`if3d.data.source.open_split`, :func:`if3d.runtime.make_loader`); also the batched paired
  augmentation on the loaded batches (:class:`if3d.runtime.BatchPreparer`).
- ``e2e``: the training command (``python -m if3d.train``) with its real loader on a fixed subset, run
  as a subprocess, interleaved with model-only steps of the same model in this process, so that the two
  are measured under the same conditions.
- ``optimizer``: the AdamW step alone, per implementation.

Every figure is img-pairs/s (one pair = photo + render; one photo for the photo-only DDAMFN) over
``repeats`` timed runs after ``warmup`` untimed steps: median, min, max and the runs.
"""

from __future__ import annotations

import csv
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RESULT_PREFIX = "BENCH_RESULT "

#: Classes of the models built here (AffectNet-8).
NUM_CLASSES = 8
#: The optimizer of every model-only training step and optimizer measurement: torch's AdamW with these
#: settings, whatever optimizer a model's recipe preset names, so that models and fast paths compare on
#: one optimizer (the end-to-end runs pass the same settings to the training command).
ADAMW_LR = 1e-4
ADAMW_WEIGHT_DECAY = 0.01


# ----------------------------------------------------------------------------- helpers


def stats(values: list[float]) -> dict[str, Any]:
    """``{"median", "min", "max", "runs"}`` of a list of figures (NaN-free)."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals),
            "runs": [round(v, 4) for v in vals]}


def maxrss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _setup_threads(case: dict) -> None:
    """Process-wide settings of a case: torch threads and, when asked, the glibc allocator tuning."""
    import torch

    from if3d.runtime.allocator import tune_glibc_malloc

    threads = case.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    if case.get("malloc_tuning") and not tune_glibc_malloc():
        raise RuntimeError("malloc_tuning asked for, but glibc's mallopt is not available here")


def runtime_config(case: dict):
    """The :class:`~if3d.runtime.device.RuntimeConfig` of a case's device and fast path (every switch
    concrete: ``amp`` through :func:`~if3d.runtime.device.resolve_amp`, the others as the case says)."""
    from if3d.runtime.device import RuntimeConfig, resolve_amp

    device = str(case.get("device", "cpu"))
    return RuntimeConfig(
        device=device,
        amp=resolve_amp(case.get("amp", "off"), "cuda" if device.startswith("cuda") else "cpu"),
        channels_last=bool(case.get("channels_last", False)),
        optimizer_impl=case.get("optimizer_impl", "default"),
        compile=bool(case.get("compile", False)),
        tune_allocator=bool(case.get("malloc_tuning", False)),
        workers=int(case.get("workers", 0)),
    )


def make_adamw(params, impl: str | None):
    """Torch's AdamW (lr :data:`ADAMW_LR`, weight decay :data:`ADAMW_WEIGHT_DECAY`) with the
    ``default``/``foreach``/``fused`` implementation (:func:`~if3d.runtime.device.optimizer_impl_kwargs`)."""
    import torch

    from if3d.runtime.device import optimizer_impl_kwargs

    return torch.optim.AdamW(params, lr=ADAMW_LR, weight_decay=ADAMW_WEIGHT_DECAY, **optimizer_impl_kwargs(impl))


def fast_path_options(fp: dict) -> list[str]:
    """Options of the training command for a fast path (``amp``, ``channels_last``, ``optimizer_impl``,
    ``compile``, ``malloc_tuning``), each given explicitly so no device default or ``compile="auto"``
    decision intervenes."""
    return ["--amp", str(fp.get("amp", "off")),
            "--channels-last" if fp.get("channels_last") else "--no-channels-last",
            "--optimizer-impl", str(fp.get("optimizer_impl", "default")),
            "--compile" if fp.get("compile") else "--no-compile",
            "--tune-allocator" if fp.get("malloc_tuning") else "--no-tune-allocator"]


def subprocess_env(threads: int | None = None) -> dict[str, str]:
    """Environment of a training-command subprocess: the repository importable, no progress bars, and
    ``OMP_NUM_THREADS`` (torch's default thread count) when ``threads`` is given."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               TQDM_DISABLE="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(int(threads))
    return env


class _ModelStep:
    """A model's training or evaluation step on fixed synthetic tensors (no data loading).

    Training: forward under the case's autocast, the model's own criterion
    (``networks.create_criterion(model)``, default weights) on the targets ``label``, ``valence``,
    ``arousal``, ``has_va`` (VA on every second sample), backward and an optimizer step. The model-only
    step uses torch's AdamW for every model (:func:`make_adamw`), whatever optimizer the model's recipe
    preset names. Evaluation: forward under ``no_grad``.
    """

    def __init__(self, case: dict, model=None):
        import torch

        import networks
        from if3d.runtime.batches import forward_model, model_streams
        from if3d.runtime.device import autocast_context

        self.runtime = rt = runtime_config(case)
        self.device = device = torch.device(rt.device)
        self.train = case.get("mode", "train") == "train"
        b, s = int(case["batch"]), int(case.get("size", 112))
        torch.manual_seed(0)
        if model is None:
            model = networks.create_model(case["model"], num_classes=NUM_CLASSES).to(device)
            if rt.channels_last:
                model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.streams = model_streams(model)
        g = torch.Generator().manual_seed(1)
        fmt = torch.channels_last if rt.channels_last else torch.contiguous_format
        self.inputs = [torch.randn(b, 3, s, s, generator=g).to(device).contiguous(memory_format=fmt)
                       for _ in self.streams]
        has_va = torch.arange(b) % 2 == 0
        va = torch.rand(2, b, generator=g) * 2 - 1
        self.targets = {
            "label": torch.randint(0, NUM_CLASSES, (b,), generator=g).to(device),
            "valence": torch.where(has_va, va[0], float("nan")).to(device),
            "arousal": torch.where(has_va, va[1], float("nan")).to(device),
            "has_va": has_va.to(device),
        }
        self.criterion = networks.create_criterion(case["model"]).to(device)
        self.forward_model = forward_model
        self.autocast = lambda: autocast_context(device, rt.amp)
        if self.train:
            model.train()
            self.optimizer = make_adamw([p for p in model.parameters() if p.requires_grad], rt.optimizer_impl)
        else:
            model.eval()
            self.optimizer = None
        self.runner = torch.compile(model) if rt.compile else model
        self.batch = b

    def __call__(self) -> None:
        import torch

        if not self.train:
            with torch.no_grad(), self.autocast():
                self.forward_model(self.runner, self.inputs)
            return
        with self.autocast():
            out = self.forward_model(self.runner, self.inputs)
        loss = self.criterion(out, self.targets)
        self.optimizer.zero_grad(set_to_none=True)
        loss.total.backward()
        self.optimizer.step()

    def release_memory(self) -> None:
        """Drop the gradients and hand the free heap back to the OS (when the allocator tuning keeps it),
        so that a training subprocess started next does not share the machine with this process's
        retained activations. The next step faults the memory in again: run one untimed step after."""
        import gc

        from if3d.runtime.allocator import release_free_heap

        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        gc.collect()
        release_free_heap()


def _timed_runs(step, device, steps: int, repeats: int, pairs_per_step: int) -> list[float]:
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        out.append(steps * pairs_per_step / (time.perf_counter() - t))
    return out


# ----------------------------------------------------------------------------- tasks


def task_model(case: dict) -> dict:
    """Model-only throughput (synthetic tensors) and peak memory of one configuration.

    ``case["modes"]`` (default ``[case["mode"]]``) lists ``"eval"`` and/or ``"train"``; they run in that
    order on the same model, evaluation first, so the peak RSS recorded after each mode is that mode's own
    peak (``ru_maxrss`` only grows). Returns ``{mode: figures, ...}`` for several modes, the figures
    themselves for one.
    """
    import torch

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    modes = list(case.get("modes") or [case.get("mode", "train")])
    rss_before = maxrss_mib()
    model, out = None, {}
    for mode in sorted(modes, key=lambda m: m != "eval"):
        mcase = {**case, "mode": mode, **(case.get(f"{mode}_settings") or {})}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = _ModelStep(mcase, model=model)
        model = step.model
        _sync(device)
        t = time.perf_counter()
        step()  # first step: oneDNN primitive creation, torch.compile compilation
        _sync(device)
        first_step_s = time.perf_counter() - t
        for _ in range(max(0, int(mcase.get("warmup", 1)) - 1)):
            step()
        runs = _timed_runs(step, device, int(mcase.get("steps", 1)), int(mcase.get("repeats", 3)), step.batch)
        res = {
            "img_pairs_per_s": stats(runs),
            "first_step_s": round(first_step_s, 3),
            "peak_rss_mib": round(maxrss_mib(), 1),
            "rss_before_model_mib": round(rss_before, 1),
            "params_m": round(sum(p.numel() for p in step.model.parameters()) / 1e6, 3),
            "threads": torch.get_num_threads(),
        }
        if mcase.get("compile"):
            # compilation time = first step minus a steady step
            res["compile_s"] = round(max(0.0, first_step_s - step.batch / res["img_pairs_per_s"]["median"]), 3)
        if device.type == "cuda":
            res["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        out[mode] = res
        del step
    return out if len(modes) > 1 else out[modes[0]]


def _open_dataset(case: dict, streams, max_samples: int | None = None):
    """The training split as training opens it for a model that reads ``streams``
    (:func:`~if3d.data.source.open_split`: the cache when ``case['path'] == 'cache'``, else JPEG/PNG),
    checked to be the path the case asks for."""
    from if3d.data.source import SplitSource, open_split, supports_batches

    ds = open_split(SplitSource.from_root(case["data"], case.get("split", "train")),
                    image_size=int(case.get("size", 112)), streams=tuple(streams), skip_missing_renders=True,
                    cache="auto" if case["path"] == "cache" else "off",
                    max_samples=max_samples if max_samples is not None else case.get("max_samples"))
    if (case["path"] == "cache") != supports_batches(ds):
        raise RuntimeError(f"asked for the {case['path']} path but open_split gave {type(ds).__name__} "
                           f"(is the cache of {case['data']} built and current?)")
    return ds


def _dataset_name(ds) -> str:
    return type(getattr(ds, "base", ds)).__name__


def task_loader(case: dict) -> dict:
    """Data loader img-pairs/s (decode/gather + collation) and, for the cache, batched augmentation."""
    import torch

    import networks
    from if3d.data.source import IMAGE_STREAMS
    from if3d.runtime.batches import BatchPreparer
    from if3d.runtime.loaders import epoch_indices, make_loader

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    ds = _open_dataset(case, streams=IMAGE_STREAMS)  # photo + render, what the fusion models read
    b, n_batches, workers = int(case["batch"]), int(case["batches"]), int(case.get("workers", 0))
    pin = device.type == "cuda"
    runs, startup = [], []
    for r in range(int(case.get("repeats", 3))):
        order = epoch_indices(ds, r, 0, True)
        need = (n_batches + 1) * b
        order = (order * math.ceil(need / len(order)))[:need]
        t0 = time.perf_counter()
        it = iter(make_loader(ds, order, b, workers, pin, drop_last=True))
        next(it)  # worker start-up and the first batch
        t1 = time.perf_counter()
        n = sum(1 for _ in it)
        t2 = time.perf_counter()
        if n != n_batches:
            raise RuntimeError(f"loader gave {n} timed batches, expected {n_batches}")
        runs.append(n * b / (t2 - t1))
        startup.append(t1 - t0)
    out = {"img_pairs_per_s": stats(runs), "first_batch_s": stats(startup), "samples": len(ds),
           "dataset": _dataset_name(ds)}
    if case.get("augment"):
        # built on the meta device (no memory): the preparer only reads its streams and normalisation
        with torch.device("meta"):
            model = networks.create_model(case["model"], num_classes=NUM_CLASSES)
        prepare = BatchPreparer.for_model(model, device, bool(case.get("channels_last")), True,
                                          int(case.get("size", 112)))
        batch = next(iter(make_loader(ds, list(range(b)), b, 0, pin, drop_last=True)))
        prepare(batch, train=True)
        aug = []
        for _ in range(int(case.get("repeats", 3))):
            t = time.perf_counter()
            for _ in range(n_batches):
                prepare(batch, train=True)
            _sync(device)
            aug.append(n_batches * b / (time.perf_counter() - t))
        out["augment_img_pairs_per_s"] = stats(aug)
    out["peak_rss_mib"] = round(maxrss_mib(), 1)
    return out


def train_command(case: dict, out: str | os.PathLike, steps: int) -> list[str]:
    """The training command of an end-to-end case: 2 epochs of exactly ``steps`` batches of the case's
    batch on a seeded ``steps × batch`` subset of the training split, validation on one batch, the case's
    data path (``--cache auto|off``), workers, device and fast path, and the AdamW of :func:`make_adamw`. The
    model is the one the model-only cases build (``create_model(name)``: MixedFeatureNet, the paper's heads),
    trained under its paper's preset (``if3d`` or ``ddamfn``)."""
    import networks

    b = int(case["batch"])
    paper = networks.model_info(case["model"]).default_preset
    return [sys.executable, "-m", "if3d.train", *(["--preset", paper] if paper else []),
            "--model", case["model"], "--data", str(case["data"]), "--train-split", case.get("split", "train"),
            "--epochs", "2", "--batch-size", str(b), "--max-train-samples", str(steps * b),
            "--max-val-samples", str(b), "--balanced-sampling", "--skip-missing-renders",
            "--image-size", str(int(case.get("size", 112))),
            "--cache", "auto" if case["path"] == "cache" else "off", "--workers", str(int(case.get("workers", 0))),
            "--device", str(case.get("device", "cpu")), "--seed", "0", "--out", str(out),
            "--optimizer", "adamw", "--lr", str(ADAMW_LR), "--weight-decay", str(ADAMW_WEIGHT_DECAY),
            *fast_path_options(case)]


def _engine_run(case: dict, out: Path, steps: int, timeout_s: float) -> dict[str, Any]:
    """Run the training command of ``case`` once; its second epoch's throughput (the first warms up)."""
    t = time.perf_counter()
    proc = subprocess.run(train_command(case, out, steps), cwd=REPO_ROOT, env=subprocess_env(case.get("threads")),
                          capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"the training command exited with {proc.returncode}: {proc.stderr[-1500:]}")
    with (out / "metrics.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    run = json.loads((out / "config.json").read_text(encoding="utf-8"))["run"]
    if len(rows) != 2 or int(run["steps_per_epoch"]) != steps:
        raise RuntimeError(f"the training command ran {len(rows)} epochs of {run['steps_per_epoch']} steps, "
                           f"expected 2 of {steps}")
    return {"images_per_s": float(rows[-1]["images_per_s"]),
            "first_epoch_images_per_s": float(rows[0]["images_per_s"]),
            "num_train_samples": int(run["num_train_samples"]), "compile_decision": run.get("compile"),
            "wall_s": wall}


def task_e2e(case: dict) -> dict:
    """The training command end to end against model-only steps of the same model, interleaved.

    Each repeat runs ``python -m if3d.train`` (:func:`train_command`) in a subprocess for 2 epochs of
    ``steps`` batches and takes the second epoch's ``images_per_s`` from its ``metrics.csv`` (the first
    epoch is the warm-up: oneDNN primitives, first-touch memory, compilation); then times ``steps``
    model-only steps (:class:`_ModelStep`, same batch and fast path) in this process. The ratio is the
    median of the per-repeat ratios, so both sides of each ratio see the same machine conditions.
    """
    import torch

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    b, steps, repeats = int(case["batch"]), int(case["steps"]), int(case.get("repeats", 3))
    model_step = _ModelStep(case)
    ds = _open_dataset(case, streams=model_step.streams, max_samples=steps * b)
    if len(ds) < steps * b:
        raise RuntimeError(f"{len(ds)} training samples give fewer than {steps} batches of {b}")
    for _ in range(max(1, int(case.get("warmup", 1))) + (1 if case.get("compile") else 0)):
        model_step()  # with compile, one more: the second call recompiles
    e2e, first_epoch, model_only, walls, decisions = [], [], [], [], set()
    with tempfile.TemporaryDirectory(prefix="if3d_bench_e2e_") as tmp:
        for r in range(repeats):
            model_step.release_memory()
            run = _engine_run(case, Path(tmp) / f"run{r}", steps, float(case.get("timeout_s", 1800)))
            e2e.append(run["images_per_s"])
            first_epoch.append(run["first_epoch_images_per_s"])
            walls.append(run["wall_s"])
            decisions.add(run["compile_decision"])
            model_step()  # faults the released memory in again
            model_only.extend(_timed_runs(model_step, device, steps, 1, b))
    med_ratio = statistics.median(e / m for e, m in zip(e2e, model_only))
    return {
        "img_pairs_per_s": stats(e2e),
        "model_only_img_pairs_per_s": stats(model_only),
        "ratio_e2e_to_model_only": round(med_ratio, 4),
        "first_epoch_img_pairs_per_s": stats(first_epoch),
        "engine_wall_s": stats(walls),
        "engine_compile_decision": sorted(str(d) for d in decisions),
        "steps_per_epoch": steps,
        "samples": len(ds),
        "dataset": _dataset_name(ds),
        "peak_rss_mib": round(maxrss_mib(), 1),
        "engine_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0, 1),
        "threads": torch.get_num_threads(),
    }


def task_optimizer(case: dict) -> dict:
    """The optimizer step alone on a model's trainable parameters with synthetic gradients, per
    implementation (``default`` for-loop, ``foreach``, ``fused``) of AdamW (:func:`make_adamw`):
    milliseconds per step."""
    import torch

    import networks

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    out: dict[str, Any] = {}
    for impl in case.get("impls", ("default", "foreach", "fused")):
        torch.manual_seed(0)
        model = networks.create_model(case["model"], num_classes=NUM_CLASSES).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = make_adamw(params, impl)
        opt.step()
        runs = []
        for _ in range(int(case.get("repeats", 3))):
            _sync(device)
            t = time.perf_counter()
            for _ in range(int(case.get("steps", 3))):
                opt.step()
            _sync(device)
            runs.append((time.perf_counter() - t) / int(case.get("steps", 3)) * 1000.0)
        out[impl] = {"step_ms": stats(runs)}
        out["params_m"] = round(sum(p.numel() for p in params) / 1e6, 3)
        del model, params, opt
    return out


TASKS = {"model": task_model, "loader": task_loader, "e2e": task_e2e, "optimizer": task_optimizer}


def run_case(case: dict) -> dict:
    """Run one case; returns ``{"case": case, "result": ...}`` or ``{"case": case, "error": ...}``."""
    t = time.perf_counter()
    try:
        result = TASKS[case["task"]](case)
        return {"case": case, "result": result, "wall_s": round(time.perf_counter() - t, 2)}
    except Exception as e:  # reported in the JSON, the other cases go on
        return {"case": case, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=8),
                "wall_s": round(time.perf_counter() - t, 2)}


def main(argv: list[str]) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")
    for arg in argv:
        out = run_case(json.loads(arg))
        print(RESULT_PREFIX + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
