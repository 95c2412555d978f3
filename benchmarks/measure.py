"""One benchmark measurement, run in its own process by :mod:`benchmarks.run`.

``python -m benchmarks.measure '<json case>' ['<json case>' ...]`` runs each case in order and prints
one line ``BENCH_RESULT <json>`` per case. A separate process per configuration gives an honest peak
memory (``ru_maxrss`` of the process: torch's allocator is invisible to ``tracemalloc``) and keeps one
configuration's oneDNN primitive caches and thread pools from colouring the next.

Cases (``"task"``):

- ``model``: model only, synthetic tensors. ``mode="train"``: forward + loss (``if3d.losses.fer_loss``)
  + backward + optimizer step, exactly the engine's step without the data; ``mode="eval"``: forward
  under ``no_grad``. Fast-path switches: ``amp`` (off|bf16|fp16), ``channels_last``,
  ``optimizer_impl`` (default|foreach|fused), ``compile``.
- ``loader``: data loader img-pairs/s on a converted dataset, JPEG/PNG path (``PairedDataset`` +
  DataLoader workers) or cache path (memory-mapped batches), through the engine's own loader; also the
  batched paired augmentation on the loaded batches.
- ``e2e``: the engine's ``train_one_epoch`` with its real loader on a fixed subset, interleaved with
  model-only steps of the same model and optimizer, so the two are measured under the same conditions.

Every figure is img-pairs/s (one pair = photo + render; one photo for the photo-only DDAMFN) over
``repeats`` timed runs after ``warmup`` untimed steps: median, min, max and the runs.
"""

from __future__ import annotations

import json
import math
import os
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from if3d.train.allocator import tune_glibc_malloc  # noqa: E402  (after the sys.path set-up above)

RESULT_PREFIX = "BENCH_RESULT "


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

    threads = case.get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    if case.get("malloc_tuning") and not tune_glibc_malloc():
        raise RuntimeError("malloc_tuning asked for, but glibc's mallopt is not available here")


def _train_config(case: dict, **extra):
    """A :class:`~if3d.train.config.TrainConfig` for the case's model and fast path (preset of the model)."""
    from if3d.train.config import DEFAULT_PRESET, DEFAULT_PRESET_FOR_MODEL, config_from_preset, resolve_amp

    preset = DEFAULT_PRESET_FOR_MODEL.get(case["model"], DEFAULT_PRESET)
    device_type = "cuda" if str(case.get("device", "cpu")).startswith("cuda") else "cpu"
    return config_from_preset(
        preset,
        model=case["model"],
        batch_size=int(case["batch"]),
        image_size=int(case.get("size", 112)),
        device=case.get("device", "cpu"),
        amp=resolve_amp(case.get("amp", "off"), device_type),
        channels_last=bool(case.get("channels_last", False)),
        optimizer_impl=case.get("optimizer_impl", "default"),
        compile=bool(case.get("compile", False)),
        tune_allocator=bool(case.get("malloc_tuning", False)),
        **extra,
    )


class _ModelStep:
    """The engine's training or evaluation step on fixed synthetic tensors."""

    def __init__(self, case: dict, model=None, optimizer=None):
        import torch

        from if3d.losses import fer_loss
        from if3d.train.engine import autocast_context, build_optimizer, forward_model, model_kwargs_for
        from networks import create_model

        self.cfg = cfg = _train_config(case)
        self.device = device = torch.device(case.get("device", "cpu"))
        self.train = case.get("mode", "train") == "train"
        b, s = int(case["batch"]), int(case.get("size", 112))
        torch.manual_seed(0)
        if model is None:
            model = create_model(cfg.model, **model_kwargs_for(cfg, 8)).to(device)
            if cfg.channels_last:
                model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.streams = tuple(getattr(model, "input_streams", ("photo",)))
        g = torch.Generator().manual_seed(1)
        fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
        self.inputs = [torch.randn(b, 3, s, s, generator=g).to(device).contiguous(memory_format=fmt)
                       for _ in self.streams]
        self.label = torch.randint(0, 8, (b,), generator=g).to(device)
        self.has_va = (torch.arange(b) % 2 == 0).to(device)
        va = torch.rand(2, b, generator=g) * 2 - 1
        self.valence = torch.where(self.has_va.cpu(), va[0], float("nan")).to(device)
        self.arousal = torch.where(self.has_va.cpu(), va[1], float("nan")).to(device)
        self.weights = cfg.loss_weights()
        self.fer_loss, self.forward_model = fer_loss, forward_model
        self.autocast = lambda: autocast_context(device, cfg.amp)
        if self.train:
            model.train()
            self.optimizer = optimizer or build_optimizer(cfg, [p for p in model.parameters() if p.requires_grad],
                                                          device)
        else:
            model.eval()
            self.optimizer = None
        self.runner = torch.compile(model) if cfg.compile else model
        self.batch = b

    def __call__(self) -> None:
        import torch

        if not self.train:
            with torch.no_grad(), self.autocast():
                self.forward_model(self.runner, self.streams, self.inputs)
            return
        with self.autocast():
            out = self.forward_model(self.runner, self.streams, self.inputs)
        terms = self.fer_loss(out, self.label, self.valence, self.arousal, self.has_va, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        terms.total.backward()
        self.optimizer.step()


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


def _engine_loader(dataset, indices, batch: int, workers: int, device):
    from if3d.train.engine import _loader

    return _loader(dataset, indices, batch, workers, device.type == "cuda", drop_last=True)


def _open_dataset(case: dict, photo_only: bool):
    """The dataset the engine would train on (cache when ``case['path'] == 'cache'``, else JPEG/PNG)."""
    from if3d.train.engine import build_train_dataset

    cfg = _train_config(case, data=str(case["data"]), train_split=case.get("split", "train"),
                        cache="auto" if case["path"] == "cache" else "off",
                        skip_missing_renders=True, max_train_samples=case.get("max_samples"),
                        workers=int(case.get("workers", 0)))
    ds = build_train_dataset(cfg, "train", photo_only=photo_only)
    is_cache = hasattr(ds, "get_batch") or hasattr(getattr(ds, "base", None), "get_batch")
    if (case["path"] == "cache") != is_cache:
        raise RuntimeError(f"asked for the {case['path']} path but the engine opened {type(ds).__name__} "
                           f"(is the cache of {case['data']} built and current?)")
    return cfg, ds


def task_loader(case: dict) -> dict:
    """Data loader img-pairs/s (decode/gather + collation) and, for the cache, batched augmentation."""
    import torch

    from if3d.train.engine import BatchPreparer, epoch_indices

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    cfg, ds = _open_dataset(case, photo_only=False)
    b, n_batches, workers = int(case["batch"]), int(case["batches"]), int(case.get("workers", 0))
    runs, startup = [], []
    for r in range(int(case.get("repeats", 3))):
        order = epoch_indices(ds, r, 0, True)
        need = (n_batches + 1) * b
        order = (order * math.ceil(need / len(order)))[:need]
        t0 = time.perf_counter()
        it = iter(_engine_loader(ds, order, b, workers, device))
        next(it)  # worker start-up and the first batch
        t1 = time.perf_counter()
        n = sum(1 for _ in it)
        t2 = time.perf_counter()
        if n != n_batches:
            raise RuntimeError(f"loader gave {n} timed batches, expected {n_batches}")
        runs.append(n * b / (t2 - t1))
        startup.append(t1 - t0)
    out = {"img_pairs_per_s": stats(runs), "first_batch_s": stats(startup), "samples": len(ds),
           "dataset": type(getattr(ds, "base", ds)).__name__}
    if case.get("augment"):
        prepare = BatchPreparer(device, ("photo", "render"), bool(case.get("channels_last")), True, cfg.image_size)
        batch = next(iter(_engine_loader(ds, list(range(b)), b, 0, device)))
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


def task_e2e(case: dict) -> dict:
    """The engine's training loop with its real loader, interleaved with model-only steps (same model)."""
    import torch

    from if3d.train.distributed import DistInfo
    from if3d.train.engine import (
        BatchPreparer,
        _EpochState,
        _StopFlag,
        build_scheduler,
        epoch_indices,
        train_one_epoch,
    )

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    model_step = _ModelStep(case)  # the model, optimizer and synthetic batch
    photo_only = model_step.streams == ("photo",)
    cfg, ds = _open_dataset(case, photo_only)
    b, steps, workers = int(case["batch"]), int(case["steps"]), int(case.get("workers", 0))
    info = DistInfo(0, 1, 0, device, False)
    prepare = BatchPreparer(device, model_step.streams, cfg.channels_last, cfg.augment, cfg.image_size)
    scheduler, interval = build_scheduler(cfg, model_step.optimizer, max(1, len(ds) // b))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
    global_step = 0

    def engine_epoch(epoch: int, n_steps: int) -> float:
        nonlocal global_step
        order = epoch_indices(ds, epoch, cfg.seed, cfg.balanced_sampling)
        need = n_steps * b
        order = (order * math.ceil(need / len(order)))[:need]
        loader = _engine_loader(ds, order, b, workers, device)
        _sync(device)
        t = time.perf_counter()
        global_step, stopped = train_one_epoch(
            model=model_step.runner, streams=model_step.streams, loader=loader, prepare=prepare,
            optimizer=model_step.optimizer, scheduler=scheduler, scheduler_interval=interval, scaler=scaler,
            cfg=cfg, info=info, epoch=epoch, start_step=global_step, state=_EpochState.empty(), stop=_StopFlag(),
            writer=None, total_steps_in_epoch=n_steps)
        _sync(device)
        if stopped:
            raise RuntimeError("the engine stopped early")
        return n_steps * b / (time.perf_counter() - t)

    for _ in range(max(1, int(case.get("warmup", 1)))):
        model_step()
    engine_epoch(0, 1)
    e2e, model_only = [], []
    for r in range(int(case.get("repeats", 3))):
        e2e.append(engine_epoch(r + 1, steps))
        model_only.extend(_timed_runs(model_step, device, steps, 1, b))
    med_ratio = statistics.median(e / m for e, m in zip(e2e, model_only))
    return {
        "img_pairs_per_s": stats(e2e),
        "model_only_img_pairs_per_s": stats(model_only),
        "ratio_e2e_to_model_only": round(med_ratio, 4),
        "samples": len(ds),
        "dataset": type(getattr(ds, "base", ds)).__name__,
        "peak_rss_mib": round(maxrss_mib(), 1),
        "threads": torch.get_num_threads(),
    }


def task_optimizer(case: dict) -> dict:
    """The optimizer step alone on a model's trainable parameters with synthetic gradients, per
    implementation (``default`` for-loop, ``foreach``, ``fused``): milliseconds per step."""
    import torch

    from if3d.train.engine import build_optimizer, model_kwargs_for
    from networks import create_model

    _setup_threads(case)
    device = torch.device(case.get("device", "cpu"))
    out: dict[str, Any] = {}
    for impl in case.get("impls", ("default", "foreach", "fused")):
        cfg = _train_config({**case, "optimizer_impl": impl})
        torch.manual_seed(0)
        model = create_model(cfg.model, **model_kwargs_for(cfg, 8)).to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        for p in params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = build_optimizer(cfg, params, device)
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
