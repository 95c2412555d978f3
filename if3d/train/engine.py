"""The one training engine of the toolkit: every registered model, with the criterion it declares.

Modelled on torchvision's ``references/classification/train.py``: :func:`fit` is the ``main``, a
:class:`Trainer` runs it in named steps (settings → model → data → optimisation → resume → loop), and
:meth:`Trainer.train_one_epoch` / the shared prediction loop (:func:`if3d.runtime.predict`) do the
work. The run directory is :mod:`if3d.train.rundir`; the configuration :mod:`if3d.train.config`.

The loss is the model's own: ``networks.create_criterion(model_name)`` returns a module that gives
named terms; the engine sums them, checks them, and logs each by name. A model with new losses needs
no change here. So is its validation: an expression classifier is validated by accuracy, balanced
accuracy and macro F1 of ``output.logits``; a model whose criterion declares a
:class:`networks.validation.ValidationSpec` (a regression model: no class labels, no logits) by the metrics
the spec computes from the outputs and targets it names, with ``best.pth`` chosen by its ``select`` metric.

Determinism and resumption: the order of the training samples of epoch ``e`` is a function of
``(seed, e)`` only, and the random state used by step ``s`` (augmentation, dropout) is reseeded
from ``(seed, rank, s)``; so a run interrupted at any step and resumed with ``--resume`` skips the
batches already done and reaches the same weights as an uninterrupted one (on CPU, bit for bit).
"""

from __future__ import annotations

import contextlib
import math
import random
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset
from tqdm import tqdm

import networks
from if3d.checkpoint import capture_rng_state, load_checkpoint, make_checkpoint, restore_rng_state
from if3d.classes import class_names_for
from if3d.data.source import dataset_report, open_split
from if3d.io.report import DataError
from if3d.outputs import exclusive_output
from if3d.runtime.allocator import tune_glibc_malloc
from if3d.runtime.batches import BatchPreparer, forward_model, unwrap_model
from if3d.runtime.device import autocast_context, optimizer_impl_kwargs, resolve_compile, resolve_runtime
from if3d.runtime.distributed import (
    DistInfo,
    all_reduce_named,
    barrier,
    broadcast_buffers,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)
from if3d.runtime.loaders import epoch_indices, make_loader
from if3d.runtime.predict import predict, predict_values, summarize_predictions
from if3d.runtime.stop import StopRequest
from if3d.train.config import (
    DEFAULT_PRESET,
    PRESET_MODELS,
    TrainConfig,
    has_packaged_weights,
    takes_preset_models,
)
from if3d.train.meters import EpochMeters
from if3d.train.rundir import RunDirectory, git_commit, library_versions
from networks.warmstart import calibrate_passthrough_norms, warm_start

__all__ = [
    "DataReadError",
    "FitResult",
    "NonFiniteLossError",
    "Trainer",
    "TrainingInterrupted",
    "build_optimizer",
    "build_scheduler",
    "fit",
    "random_start_note",
]


class TrainingInterrupted(RuntimeError):
    """Training stopped on request (Ctrl-C / SIGTERM / ``interrupt_after_steps``) after saving last.pth."""


class NonFiniteLossError(RuntimeError):
    """The loss or the weights became NaN or infinite; nothing non-finite was written, the last good
    checkpoint was left untouched."""


class DataReadError(RuntimeError):
    """A training sample could not be read in the middle of the run; a resumable last.pth was saved first."""


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        out: the run directory.
        best_accuracy: validation accuracy of the best epoch (``-1`` when no epoch finished).
        best_epoch: 1-based best epoch by the selection metric (``--select-metric``; 0 when none).
        best_value: the selection metric at the best epoch.
        best_metric: the selection metric's name (``accuracy`` …, or a regression model's, e.g. ``icc_mean``).
        stopped_early: the run ended by early stopping (no improvement for ``--early-stopping-patience``).
        epochs_done: completed epochs.
        step: completed optimizer steps.
        last_val: validation metrics of the last epoch (``{}`` when none).
    """

    out: Path
    best_accuracy: float
    best_epoch: int
    best_value: float
    stopped_early: bool
    epochs_done: int
    step: int
    last_val: dict
    best_metric: str = "accuracy"


# ============================================================================ optimisation


def param_groups(model: nn.Module, backbone_lr_scale: float) -> list[dict[str, Any]]:
    """The model's trainable parameters in two groups: the backbone(s) (the model's ``backbone_prefixes``,
    default ``backbone.``), whose learning rate is the recipe's times ``backbone_lr_scale``, and the rest
    (heads, fusion, classifier) at the recipe's rate. With a scale of 1, one group.

    Returns:
        ``[{"params": [...], "lr_scale": s}, ...]`` (empty groups left out).
    """
    trainable = [(n, p) for n, p in unwrap_model(model).named_parameters() if p.requires_grad]
    if backbone_lr_scale == 1.0:
        return [{"params": [p for _, p in trainable], "lr_scale": 1.0}]
    prefixes = tuple(getattr(unwrap_model(model), "backbone_prefixes", ("backbone.",)))
    backbone = [p for n, p in trainable if n.startswith(prefixes)]
    rest = [p for n, p in trainable if not n.startswith(prefixes)]
    return [g for g in ({"params": backbone, "lr_scale": backbone_lr_scale}, {"params": rest, "lr_scale": 1.0})
            if g["params"]]


def build_optimizer(cfg: TrainConfig, params, device: torch.device) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (with momentum) of the recipe, with the fused / foreach implementation of the
    runtime settings.

    Args:
        params: parameters, or groups from :func:`param_groups` (each group's ``lr_scale`` multiplies the
            recipe's learning rate).

    Raises:
        ValueError: an unknown optimizer or implementation.
    """
    params = list(params)
    if params and isinstance(params[0], dict):
        params = [{**g, "lr": cfg.recipe.lr * g.get("lr_scale", 1.0)} for g in params]
    r, impl = cfg.recipe, optimizer_impl_kwargs(cfg.runtime.optimizer_impl)
    if r.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=r.lr, weight_decay=r.weight_decay, **impl)
    if r.optimizer == "adam":
        return torch.optim.Adam(params, lr=r.lr, weight_decay=r.weight_decay, **impl)
    if r.optimizer == "sgd":
        return torch.optim.SGD(params, lr=r.lr, momentum=r.momentum, weight_decay=r.weight_decay, **impl)
    raise ValueError(f"optimizer must be adam, adamw or sgd, got {r.optimizer!r}")


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The learning-rate schedule of the recipe and when it is stepped.

    ``cyclic``: If3D's CyclicLR, per step. ``exponential``: DDAMFN's ExponentialLR, per epoch. ``step``:
    StepLR, per epoch (Emotion-FAN's). ``cosine``: cosine annealing from the recipe's ``lr`` to 0 over all
    steps of the run (per step; FER-crossval's schedule). ``warmup_steps`` > 0 puts a linear warm-up from
    1 % of the rate in front of a per-step schedule (cosine, cyclic or none).

    Returns:
        ``(scheduler or None, "step" | "epoch")``.

    Raises:
        ValueError: an unknown schedule, or a warm-up before a per-epoch schedule (exponential, step).
    """
    r = cfg.recipe
    total = r.epochs * steps_per_epoch
    if r.scheduler == "cyclic":
        up = r.cyclic_step_size_up or max(1, steps_per_epoch // 2)
        scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        sched = torch.optim.lr_scheduler.CyclicLR(optimizer, base_lr=[r.cyclic_base_lr * s for s in scales],
                                                  max_lr=[r.cyclic_max_lr * s for s in scales],
                                                  step_size_up=up, mode=r.cyclic_mode, cycle_momentum=False)
        interval = "step"
    elif r.scheduler == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total - r.warmup_steps))
        interval = "step"
    elif r.scheduler == "exponential":
        sched, interval = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=r.exp_gamma), "epoch"
    elif r.scheduler == "step":
        sched = torch.optim.lr_scheduler.StepLR(optimizer, step_size=r.step_size, gamma=r.step_gamma)
        interval = "epoch"
    elif r.scheduler == "none":
        sched, interval = None, "step"
    else:
        raise ValueError(f"scheduler must be cyclic, exponential, step, cosine or none, got {r.scheduler!r}")
    if r.warmup_steps <= 0:
        return sched, "epoch" if sched is None else interval
    if interval == "epoch":
        raise ValueError("--warmup-steps works with the per-step schedules (cosine, cyclic, none), not "
                         "exponential or step")
    warmup = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.01, total_iters=r.warmup_steps)
    if sched is None:
        return warmup, "step"
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, sched], milestones=[r.warmup_steps]), "step"


def _step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7_919 + step * 104_729 + 12_345) % (2**63 - 1)


def _reseed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - third-party code may draw from the global state
    random.seed(seed)


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of the model's floating-point parameters and buffers that hold NaN or infinity."""
    return [k for k, v in unwrap_model(model).state_dict().items()
            if v.is_floating_point() and not bool(torch.isfinite(v).all())]


# ============================================================================ the run


def fit(cfg: TrainConfig, *, train_dataset: Dataset | None = None, val_dataset: Dataset | None = None) -> FitResult:
    """Train ``cfg.model.model`` as configured; the whole run (torchvision's ``main``).

    Args:
        cfg: the run configuration (:class:`~if3d.train.config.TrainConfig`).
        train_dataset, val_dataset: datasets to use instead of opening ``cfg.data`` (tests, custom
            data); the same sample dicts and ``labels``/``class_names`` attributes.

    Returns:
        :class:`FitResult`.

    Raises:
        TrainingInterrupted: stopped by SIGINT/SIGTERM or ``interrupt_after_steps`` after writing a
            resumable ``last.pth``.
        NonFiniteLossError: NaN/inf loss or weights; nothing non-finite was written.
        DataReadError: an unreadable training sample mid-run, after writing a resumable ``last.pth``.
        if3d.train.rundir.RunWriteError: the run directory cannot be written.
        if3d.outputs.OutputError: another toolkit command is writing the same ``cfg.run.out``.
        ValueError, FileNotFoundError: bad settings or data (the message says which).
    """
    info = init_distributed(cfg.runtime.device)
    try:
        # the main process owns the run directory; a second training given the same --out is refused
        with exclusive_output(cfg.run.out, "if3d-train") if info.is_main else contextlib.nullcontext():
            return Trainer(cfg, info, train_dataset, val_dataset).run()
    finally:
        cleanup_distributed()



WARM_START_CALIBRATION_BATCHES = 8
"""Training batches whose statistics a warm start's pass-through BatchNorm layers take before the first step
(:meth:`Trainer._calibrate_warm_start`)."""

IMPROVED_ATTENTION_WEIGHT = 0.01
"""Default weight of the DDA attention loss outside the papers' settings (see :func:`papers_attention_setting`).

Measured on FER2013 from an ImageNet MobileNetV2 start (docs/RESULTS.md, "Choosing the ImageNet backbone"): the two DDA
heads begin nearly identical, so DDAMFN's term (pairs / Σ MSE ≈ 120 at the start) weighted 0.1 was
72–85 % of the loss over the first epoch and cost 3 points of accuracy; weighted 0.01 it was 25–37 %
and cost nothing measurable. From random weights it was 88 % (fusions on FER2013, 5 epochs)."""


def papers_attention_setting(model: str, model_kwargs: dict) -> bool:
    """Whether a model is trained as in the papers, with DDAMFN's attention-loss weight 0.1: DDAMFN on
    MixedFeatureNet, or an If3D model built with ``faithful=True``. Every other model with DDA heads (the
    improved If3D models, any other backbone) defaults to :data:`IMPROVED_ATTENTION_WEIGHT`;
    ``--loss-attention`` (or a preset that sets it) always wins."""
    if model_kwargs.get("faithful"):
        return True
    return model == "ddamfn" and model_kwargs.get("backbone", "mixedfeaturenet") == "mixedfeaturenet"


def random_start_note(model_name: str, model: nn.Module) -> str | None:
    """The line a run prints when ``model`` (built on a registered backbone) starts from random weights, with
    the options that start it from trained ones; None for a model without a registered backbone (the 3D-only
    models, POSTER's own streams), whose starting weights are its own."""
    backbone = getattr(model, "backbone_name", None)
    if backbone is None:
        return None
    if has_packaged_weights(backbone):
        return (f"note: {model_name} starts from random weights; --pretrained imagenet starts its {backbone} "
                "backbone from ImageNet, --pretrained PATH from a weight file")
    imagenet = PRESET_MODELS[DEFAULT_PRESET]["backbone"]
    switch = (f", --backbone {imagenet} --pretrained imagenet from ImageNet" if takes_preset_models(model_name)
              else "")
    return (f"note: {model_name} starts from random weights ({backbone} has no packaged weights); "
            f"--pretrained PATH starts from a weight file{switch}")


class Trainer:
    """One training run. The constructor prepares everything (each step a method below, in order);
    :meth:`run` trains and validates epoch by epoch and writes the run directory.

    Attributes (after construction): ``cfg`` (resolved), ``model``, ``train_model`` (compiled / DDP
    wrapped), ``criterion``, ``train_dataset``, ``val_dataset``, ``class_names``, ``optimizer``,
    ``scheduler``, ``scaler``, ``steps_per_epoch``, ``local_batch``, ``step``, ``epochs_done``,
    ``best``, ``meters``, ``rundir``.
    """

    def __init__(self, cfg: TrainConfig, info: DistInfo, train_dataset: Dataset | None = None,
                 val_dataset: Dataset | None = None) -> None:
        self.info = info
        self.cfg = cfg
        self.train_dataset, self.val_dataset = train_dataset, val_dataset
        self._resolve_settings()
        self._load_resume_checkpoint()
        self._build_model()
        self._open_data()
        self._build_optimization()
        self._restore_state()
        self.prepare = BatchPreparer.for_model(self.model, info.device, self.cfg.runtime.channels_last,
                                               self.cfg.data.augment, self.cfg.data.image_size,
                                               augment_preset=self.cfg.recipe.augment_preset)
        self._calibrate_warm_start()
        self._wrap_for_training()
        self.rundir = RunDirectory(self.cfg.run.out, self.criterion.terms, info.is_main,
                                   **({"val_metrics": self.validation.metrics} if self.validation is not None else {}))

    # ---------------------------------------------------------------------------- setup steps

    def _resolve_settings(self) -> None:
        """Device defaults of the fast paths, the allocator tuning, the validation split."""
        cfg = self.cfg.validate()
        runtime = resolve_runtime(cfg.runtime, self.info.device)
        if runtime.tune_allocator and not tune_glibc_malloc():
            self._say("allocator tuning skipped: this C library has no glibc mallopt")
            runtime = replace(runtime, tune_allocator=False)
        cfg = replace(cfg, runtime=runtime)
        if cfg.data.data is not None and cfg.data.val_split is None and self.val_dataset is None:
            cfg = cfg.replace(val_split=cfg.data.source("val").split)
        self.cfg = cfg
        _reseed(cfg.run.seed + self.info.rank)

    def _load_resume_checkpoint(self) -> None:
        self.resume_ckpt = None
        if self.cfg.run.resume:
            path = Path(self.cfg.run.resume)
            path = path / "last.pth" if path.is_dir() else path
            self.resume_ckpt = load_checkpoint(path)
            if self.resume_ckpt["model_name"] != self.cfg.model.model:
                raise ValueError(f"--resume {path}: checkpoint is a {self.resume_ckpt['model_name']} run, "
                                 f"not {self.cfg.model.model}")

    def _build_model(self) -> None:
        """Class names, the model (with its criterion and any pretrained weights), on the device."""
        cfg, info = self.cfg, self.info
        if self.train_dataset is not None:
            names = list(self.train_dataset.class_names)
        else:
            names = cfg.data.source("train").class_names()
        num_classes = cfg.model.num_classes or len(names)
        self.class_names = class_names_for(num_classes, names)
        self.model_kwargs = (dict(self.resume_ckpt["model_kwargs"]) if self.resume_ckpt is not None
                             else cfg.model.builder_kwargs(num_classes))
        try:
            self.model = networks.create_model(cfg.model.model, **self.model_kwargs)
        except TypeError as e:  # an option the model does not take (e.g. --faithful for ddamfn)
            raise ValueError(f"--model {cfg.model.model} does not take these settings "
                             f"({', '.join(sorted(self.model_kwargs))}): {e}") from e
        smoothing = {"label_smoothing": cfg.recipe.label_smoothing} if cfg.recipe.label_smoothing else {}
        try:
            self.criterion = networks.create_criterion(cfg.model.model, cfg.recipe.criterion_weights(), **smoothing)
        except TypeError as e:  # a criterion without a cross-entropy term to smooth
            raise ValueError(f"the criterion of {cfg.model.model} does not take --label-smoothing: {e}") from e
        if ("attention" in self.criterion.weights and "attention" not in cfg.recipe.criterion_weights()
                and not papers_attention_setting(cfg.model.model, self.model_kwargs)):
            self.criterion.weights["attention"] = IMPROVED_ATTENTION_WEIGHT
        self.validation = getattr(self.criterion, "validation", None)  # None: an expression classifier
        self.load_report = None
        if cfg.model.pretrained and self.resume_ckpt is None:
            self.load_report = networks.load_weights(self.model, cfg.model.pretrained)
            self._say(f"pretrained weights: {self.load_report}")
        self.warm_report = None
        if (cfg.model.init_photo or cfg.model.init_render) and self.resume_ckpt is None:
            self.warm_report = warm_start(self.model, cfg.model.init_photo, cfg.model.init_render, self.class_names)
            self._say(str(self.warm_report))
        elif self.resume_ckpt is None and not cfg.model.pretrained:
            note = random_start_note(cfg.model.model, self.model)
            if note:
                self._say(note)
        self.model.to(info.device)
        if cfg.runtime.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.streams = tuple(getattr(self.model, "input_streams", ("photo",)))

    def _open_data(self) -> None:
        """The training and validation datasets (the model's streams decide whether renders are read)."""
        cfg = self.cfg
        d = cfg.data
        for role in ("train", "val"):
            if getattr(self, f"{role}_dataset") is None:
                ds = open_split(d.source(role), image_size=d.image_size, streams=self.streams,
                                skip_missing_renders=d.skip_missing_renders, num_classes=cfg.model.num_classes,
                                cache=d.cache,
                                max_samples=d.max_train_samples if role == "train" else d.max_val_samples,
                                seed=cfg.run.seed + (0 if role == "train" else 1))
                setattr(self, f"{role}_dataset", ds)
        if len(self.train_dataset) == 0 or len(self.val_dataset) == 0:
            raise ValueError(f"empty dataset: {len(self.train_dataset)} training and {len(self.val_dataset)} "
                             "validation samples")
        if self.validation is not None:  # a regression model: no class labels to check
            self.single_class = False
            if cfg.recipe.balanced_sampling and getattr(self.train_dataset, "labels", None) is None:
                raise ValueError(f"the {cfg.model.model} data has no class labels to balance; train with "
                                 "--no-balanced-sampling (the model's own preset has it)")
            return
        labels = np.asarray(self.train_dataset.labels)
        top = int(max(labels.max(), np.asarray(self.val_dataset.labels).max()))
        if top >= len(self.class_names):
            raise ValueError(f"labels go up to {top} but the model has {len(self.class_names)} classes (--num-classes)")
        present = np.unique(labels)
        self.single_class = present.size < 2
        if self.single_class:
            self._say(f"warning: every training sample has the label {self.class_names[int(present[0])]!r}; "
                      "the model can only learn to predict that class", err=True)

    def _build_optimization(self) -> None:
        """Optimizer, schedule, AMP scaler, batch per rank and steps per epoch."""
        cfg, info = self.cfg, self.info
        if cfg.recipe.batch_size % info.world_size:
            raise ValueError(f"--batch-size {cfg.recipe.batch_size} is not divisible by the {info.world_size} ranks")
        self.local_batch = cfg.recipe.batch_size // info.world_size
        per_rank = len(epoch_indices(self.train_dataset, 0, cfg.run.seed, cfg.recipe.balanced_sampling, info.rank,
                                     info.world_size))
        self.steps_per_epoch = per_rank // self.local_batch
        if self.steps_per_epoch < 1:
            raise ValueError(f"{len(self.train_dataset)} training samples give no full batch of {self.local_batch} "
                             "per rank; lower --batch-size or use more data")
        self.optimizer = build_optimizer(cfg, param_groups(self.model, cfg.recipe.backbone_lr_scale), info.device)
        self.scheduler, self.sched_interval = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=cfg.runtime.amp == "fp16")
        self.step, self.epochs_done = 0, 0
        self.best = {"metric": cfg.recipe.select_metric, "value": -1.0, "accuracy": -1.0, "epoch": 0}
        self.stopped_early = False
        self.meters = EpochMeters.empty(("loss", *self.criterion.terms))
        self.last_val: dict = {}

    def _restore_state(self) -> None:
        """Everything a resumed run continues from: weights, optimizer, schedule, step, meters, RNG."""
        ck = self.resume_ckpt
        if ck is None:
            return
        unwrap_model(self.model).load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        if self.scheduler is not None and ck["scheduler"]:
            self.scheduler.load_state_dict(ck["scheduler"])
        if ck["scaler"]:
            self.scaler.load_state_dict(ck["scaler"])
        self.step, self.epochs_done = int(ck["step"]), int(ck["epoch"])
        m = ck["metrics"]
        self.best = {**self.best, **m.get("best", {})}
        self.best.setdefault("value", self.best["accuracy"])  # checkpoints of earlier versions: accuracy only
        self.stopped_early = bool(m.get("stopped_early", False))
        self.meters = EpochMeters.from_dict(m.get("epoch_state"), self.meters.names)
        self.last_val = dict(m.get("val", {}))
        saved_world = ck["config"].get("_world_size", self.info.world_size)
        if self.info.world_size == int(saved_world):
            restore_rng_state(ck["rng"])
        if not 0 <= self.step - self.epochs_done * self.steps_per_epoch < self.steps_per_epoch:
            raise ValueError(
                f"--resume: checkpoint step {self.step} / epoch {self.epochs_done} does not match "
                f"{self.steps_per_epoch} steps per epoch; the data, batch size or number of ranks changed"
            )
        self._say(f"resuming {self.cfg.run.resume} at epoch {self.epochs_done + 1}, step {self.step}")

    def _calibrate_warm_start(self) -> None:
        """A warm start's identity BatchNorm layers get the statistics of the first training batches (before
        DDP wraps the model, which then broadcasts rank 0's values): networks.warmstart.calibrate_passthrough_norms."""
        report = self.warm_report
        if report is None or not report.norms:
            return
        cfg, info = self.cfg, self.info
        count = min(WARM_START_CALIBRATION_BATCHES, self.steps_per_epoch) * self.local_batch
        order = epoch_indices(self.train_dataset, 0, cfg.run.seed, cfg.recipe.balanced_sampling, info.rank,
                              info.world_size)[:count]
        loader = make_loader(self.train_dataset, order, self.local_batch, cfg.runtime.workers,
                             info.device.type == "cuda", drop_last=True)
        with autocast_context(info.device, cfg.runtime.amp):
            samples = calibrate_passthrough_norms(
                self.model, (self.prepare(batch, train=True)[0] for batch in loader), report.norms)
        self._say(f"warm start: statistics of {len(report.norms)} pass-through BatchNorm layers measured on "
                  f"{samples} training samples")

    def _wrap_for_training(self) -> None:
        """DDP across ranks, and ``torch.compile`` when asked or when ``auto`` decides it pays."""
        cfg, info = self.cfg, self.info
        self.train_model: nn.Module = self.model
        if info.distributed:
            self.train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[info.device.index] if info.device.type == "cuda" else None)
        auto = cfg.runtime.compile is None or cfg.runtime.compile == "auto"
        remaining = cfg.recipe.epochs * self.steps_per_epoch - self.step
        do_compile, self.compile_reason = resolve_compile(cfg.runtime.compile, info.device.type, remaining)
        self.cfg = replace(cfg, runtime=replace(cfg.runtime, compile=do_compile))
        if do_compile or auto:
            self._say(f"torch.compile {self.compile_reason}"
                      + (" (the first step compiles for a few minutes)" if do_compile else ""))
        if do_compile:
            if auto:
                # chosen for the user: a model the compiler cannot handle trains eagerly instead of failing
                from torch._dynamo import config as dynamo_config

                dynamo_config.suppress_errors = True
            self.train_model = torch.compile(self.train_model)

    # ---------------------------------------------------------------------------- records

    def run_info(self) -> dict[str, Any]:
        """``config.json``: the resolved configuration and the facts of this run."""
        return {
            "config": self.cfg.to_dict(),
            "run": {
                "device": str(self.info.device),
                "world_size": self.info.world_size,
                "batch_size_per_rank": self.local_batch,
                "steps_per_epoch": self.steps_per_epoch,
                "compile": self.compile_reason,
                "model_kwargs": self.model_kwargs,
                "criterion": {"name": networks.model_info(self.cfg.model.model).criterion,
                              "weights": dict(self.criterion.weights)},
                "input_streams": list(self.streams),
                "class_names": self.class_names,
                "num_train_samples": len(self.train_dataset),
                "num_val_samples": len(self.val_dataset),
                "train_data_report": dataset_report(self.train_dataset),
                "val_data_report": dataset_report(self.val_dataset),
                "single_class_training_set": self.single_class,
                "backbone": getattr(self.model, "backbone_name", None),
                "pretrained_file": self.load_report.path if self.load_report is not None else None,
                "pretrained_report": str(self.load_report) if self.load_report is not None else None,
                "warm_start_report": str(self.warm_report) if self.warm_report is not None else None,
                "git": git_commit(),
                "versions": library_versions(),
                "command": sys.argv,
            },
        }

    def checkpoint(self, epochs: int, metrics: dict, weights_only: bool = False) -> dict:
        """A checkpoint of the current state (``weights_only``: without optimizer, schedule and scaler,
        for ``best.pth``, which is for evaluation and fine-tuning, not for resuming).

        Raises:
            NonFiniteLossError: a weight is NaN or infinite (such a model is never written).
        """
        self._require_finite_weights(epochs)
        return make_checkpoint(
            model_name=self.cfg.model.model,
            model_kwargs=self.model_kwargs,
            model_state=unwrap_model(self.model).state_dict(),
            class_names=self.class_names,
            optimizer_state=None if weights_only else self.optimizer.state_dict(),
            scheduler_state=None if weights_only or self.scheduler is None else self.scheduler.state_dict(),
            scaler_state=self.scaler.state_dict() if self.scaler.is_enabled() and not weights_only else None,
            epoch=epochs,
            step=self.step,
            rng=capture_rng_state(),
            config={**self.cfg.to_dict(), "_world_size": self.info.world_size},
            metrics=metrics,
        )

    def _require_finite_weights(self, epochs: int) -> None:
        bad = non_finite_tensors(self.model)
        if bad:
            raise NonFiniteLossError(
                f"{len(bad)} weight tensors hold NaN or infinity at epoch {epochs}, step {self.step} "
                f"(first: {bad[0]}); nothing was saved and the last good checkpoint was left as it was. "
                "Try a lower --lr or --amp off.")

    def _save_last(self, epochs: int, epoch_state: dict | None) -> None:
        ck = self.checkpoint(epochs, {"best": self.best, "val": self.last_val, "epoch_state": epoch_state,
                                      "stopped_early": self.stopped_early})
        self.rundir.save(ck, self.rundir.last)

    # ---------------------------------------------------------------------------- the loop

    def run(self) -> FitResult:
        """Train the remaining epochs; validate, log and save after each. See :func:`fit` for errors."""
        cfg, info = self.cfg, self.info
        stop = StopRequest("finishing this step and saving a resumable checkpoint")
        stop.install()  # Ctrl-C / SIGTERM from here on: finish the step, save a resumable last.pth, exit 130
        try:
            self.rundir.open(self.run_info(), self.epochs_done, self.step)
            barrier()
            for epoch in range(self.epochs_done, cfg.recipe.epochs):
                if self.stopped_early:
                    break
                stopped = stop.requested or self.train_one_epoch(epoch, stop)
                if stopped and self.step < (epoch + 1) * self.steps_per_epoch:
                    self._save_last(epoch, self.meters.to_dict())
                    barrier()
                    raise TrainingInterrupted(
                        f"training interrupted at epoch {epoch + 1}, step {self.step}; resumable checkpoint "
                        f"{self.rundir.last} (continue with --resume {self.rundir.last})")
                self.end_epoch(epoch)
                barrier()
                asked = cfg.run.interrupt_after_steps is not None and self.step >= cfg.run.interrupt_after_steps
                if self.epochs_done < cfg.recipe.epochs and (stop.requested or asked):
                    raise TrainingInterrupted(
                        f"training interrupted after epoch {self.epochs_done}, step {self.step}; resumable "
                        f"checkpoint {self.rundir.last} (continue with --resume {self.rundir.last})")
        finally:
            stop.uninstall()
            self.rundir.close()
        if info.is_main and cfg.run.final_checkpoint:
            name = networks.model_info(cfg.model.model).final_checkpoint_name
            dst = self.rundir.copy_final(cfg.run.final_checkpoint, name)
            if dst is not None:
                self._say(f"final checkpoint: {dst}")
        return FitResult(out=self.rundir.path, best_accuracy=float(self.best["accuracy"]),
                         best_epoch=int(self.best["epoch"]), best_value=float(self.best["value"]),
                         best_metric=str(self.best.get("metric", "accuracy")),
                         stopped_early=self.stopped_early, epochs_done=self.epochs_done, step=self.step,
                         last_val=self.last_val)

    def train_one_epoch(self, epoch: int, stop: StopRequest) -> bool:
        """Train the not-yet-done batches of ``epoch``, updating :attr:`meters`.

        Every step: reseed from (seed, rank, step), augment, forward under autocast, the criterion's
        terms, non-finite check (all ranks agree), backward, optimizer step, per-iteration schedule.

        Returns:
            True when a stop was requested (Ctrl-C, SIGTERM, ``interrupt_after_steps``).

        Raises:
            NonFiniteLossError: a NaN/inf loss on any rank (nothing is saved).
            DataReadError: a sample could not be read (a resumable last.pth is saved first).
        """
        cfg, info = self.cfg, self.info
        order = epoch_indices(self.train_dataset, epoch, cfg.run.seed, cfg.recipe.balanced_sampling, info.rank,
                              info.world_size)[: self.steps_per_epoch * self.local_batch]
        skip = self.step - epoch * self.steps_per_epoch
        loader = make_loader(self.train_dataset, order[skip * self.local_batch :], self.local_batch,
                             cfg.runtime.workers, info.device.type == "cuda", drop_last=True)
        self.train_model.train()
        bar = tqdm(total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{cfg.recipe.epochs}",
                   disable=not info.is_main, dynamic_ncols=True, leave=False, mininterval=1.0)
        batches = iter(loader)
        try:
            while True:
                t0 = time.perf_counter()
                batch = self._next_batch(batches, epoch)
                if batch is None:
                    return False
                lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
                totals = self.train_step(batch, stop, epoch)
                dt = time.perf_counter() - t0
                n = totals["samples"]
                self.meters.update(totals, totals["correct"], n, dt, lr)
                bar.update(1)
                bar.set_postfix(loss=f"{totals['loss'] / n:.4f}", img_s=f"{n / max(dt, 1e-9):.1f}", refresh=False)
                self.rundir.log_step(self.step, totals["loss"] / n, lr)
                limit = cfg.run.interrupt_after_steps
                if totals["stop"] > 0 or (limit is not None and self.step >= limit):
                    return True
        finally:
            bar.close()

    def _next_batch(self, batches, epoch: int):
        """The next batch, None at the end; an unreadable sample saves a resumable last.pth and stops."""
        try:
            return next(batches)
        except StopIteration:
            return None
        except (DataError, OSError) as e:
            self._save_last(epoch, self.meters.to_dict())
            raise DataReadError(
                f"a training sample could not be read at epoch {epoch + 1}, step {self.step + 1}: {e}; "
                f"resumable checkpoint {self.rundir.last} saved (fix or remove the file, then continue with "
                f"--resume {self.rundir.last})") from e

    def train_step(self, batch: dict, stop: StopRequest, epoch: int) -> dict[str, float]:
        """One optimizer step on ``batch``; returns the step's totals summed over ranks: ``loss`` and each
        term × batch size, ``correct``, ``samples`` and ``stop`` (> 0 when any rank was asked to stop)."""
        cfg, info = self.cfg, self.info
        _reseed(_step_seed(cfg.run.seed, info.rank, self.step))
        inputs, targets = self.prepare(batch, train=True)
        bsz = inputs[0].shape[0]
        with autocast_context(info.device, cfg.runtime.amp):
            output = forward_model(self.train_model, inputs)
        loss = self.criterion(output, targets)
        correct = ((output.logits.detach().argmax(1) == targets["label"]).sum() if self.validation is None
                   else float("nan"))  # a regression model has no training accuracy
        # one device sync and (under DDP) one collective per step
        totals = all_reduce_named({**{k: v * bsz for k, v in loss.detached().items()}, "correct": correct,
                                   "samples": float(bsz), "stop": float(stop.requested)})
        if not all(math.isfinite(totals[k]) for k in self.meters.names):
            detail = ", ".join(f"{k}={totals[k] / totals['samples']:.4g}" for k in self.meters.names)
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch + 1}, step {self.step + 1} ({detail}); training stopped "
                "and the last good checkpoint was left as it was. Try a lower --lr, --amp off, "
                "or check the data of this batch.")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None and self.sched_interval == "step":
            self.scheduler.step()
        self.step += 1
        return totals

    def end_epoch(self, epoch: int) -> None:
        """Validate, log the epoch, save ``last.pth`` (and ``best.pth`` when validation improved)."""
        cfg, info = self.cfg, self.info
        lr_now = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None and self.sched_interval == "epoch":
            self.scheduler.step()
        self._require_finite_weights(epoch + 1)
        broadcast_buffers(self.model)  # every rank validates the model rank 0 saves
        # the plain module: no DDP collectives in a loop whose shards may differ by one batch
        spec = self.validation
        kwargs = dict(batch_size=self.local_batch, workers=cfg.runtime.workers, amp=cfg.runtime.amp, info=info,
                      desc=f"val {epoch + 1}")
        results = (predict(self.model, self.val_dataset, self.prepare, **kwargs) if spec is None else
                   predict_values(self.model, self.val_dataset, self.prepare, outputs=spec.outputs,
                                  targets=spec.targets, **kwargs))
        self.epochs_done = epoch + 1
        if info.is_main:
            val = summarize_predictions(results, self.class_names) if spec is None else \
                spec.summarize(results, self.class_names)
            metric = cfg.recipe.select_metric if spec is None else spec.select
            value = float(val[metric])
            # the first epoch is the best so far even when its metric is undefined (NaN)
            improved = self.best["epoch"] == 0 or (math.isfinite(value) and not value <= self.best["value"])
            if improved:
                self.best = {"metric": metric, "value": value, "accuracy": float(val.get("accuracy", math.nan)),
                             "epoch": self.epochs_done}
            patience = cfg.recipe.early_stopping_patience
            self.stopped_early = patience is not None and self.epochs_done - self.best["epoch"] >= patience
            keys = ("accuracy", "balanced_accuracy", "f1_macro", "precision_macro", "recall_macro") if spec is None \
                else (*spec.metrics, *(k for k in val if isinstance(val[k], dict)))
            self.last_val = {k: val[k] for k in keys}
            row = self.rundir.log_epoch(self.epochs_done, self.step, lr_now, self.meters, val)
            self._save_last(self.epochs_done, None)
            if improved:
                metrics = {"best": self.best, "val": self.last_val, "epoch_state": None, "stopped_early": False}
                self.rundir.save(self.checkpoint(self.epochs_done, metrics, weights_only=True), self.rundir.best)
                if "confusion_matrix" in val:
                    data = Path(cfg.data.data or cfg.data.val_photos or "data").name
                    self.rundir.plot_best(val["confusion_matrix"], self.class_names, cfg.model.model,
                                          f"{data}/{cfg.data.val_split or 'val'}", self.epochs_done, val["accuracy"])
            scores = (f"val accuracy {val['accuracy']:.4f}, balanced {val['balanced_accuracy']:.4f}, "
                      f"macro F1 {val['f1_macro']:.4f}") if spec is None else \
                ", ".join(f"val {k} {float(val[k]):.4f}" for k in spec.metrics)
            print(f"epoch {self.epochs_done}/{cfg.recipe.epochs}: loss {float(row['train_loss']):.4f}, {scores}, "
                  f"{float(row['images_per_s']):.1f} img/s{' (best)' if improved else ''}", flush=True)
        self.stopped_early = bool(broadcast_object(self.stopped_early))
        if self.stopped_early:
            self._say(f"early stopping: no better validation {cfg.recipe.select_metric} for "
                      f"{cfg.recipe.early_stopping_patience} epochs; best epoch {self.best['epoch']}")
        self.meters = EpochMeters.empty(self.meters.names)

    def _say(self, message: str, err: bool = False) -> None:
        if self.info.is_main:
            print(message, file=sys.stderr if err else sys.stdout, flush=True)
