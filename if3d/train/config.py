"""Training configuration as data: the recipe presets, per-device fast-path defaults, and the
fully resolved :class:`TrainConfig` the engine runs (and writes to ``config.json``).

Presets (facts from the original training scripts):

- ``if3d`` — If3D's ``affectnet_*_fusion_train`` scripts: AdamW (lr 5e-5, torch's default
  weight decay 0.01), ``CyclicLR(base_lr=1e-6, max_lr=1e-4, step_size_up=len(train_loader)//2,
  mode='triangular', cycle_momentum=False)`` stepped every iteration (one full triangle per
  epoch; the optimizer's 5e-5 is only nominal, CyclicLR starts at base_lr), batch 128,
  class-balanced sampling (inverse class frequency, with replacement), 100 epochs.
  If3D also stepped the scheduler once more after each validation; we do not.
- ``ddamfn`` — DDAMFN's ``affectnet_train.py``: Adam (lr 1e-4, weight decay 0),
  ``ExponentialLR(gamma=0.6)`` stepped once per epoch, batch 256, class-balanced sampling,
  40 epochs.

Both use the loss ``CE + 0.1·attention (per stream) + 0.1·alignment + VA`` (:mod:`if3d.losses`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import torch

from if3d.losses import LossWeights

# ----------------------------------------------------------------------------- strategies

#: Training-script strategy name → registered model name (``networks.create_model``).
STRATEGY_MODELS: dict[str, str] = {
    "linear": "if3d_linear",
    "attention": "if3d_attention",
    "gate": "if3d_gate",
    "spp": "if3d_spp",
    "ddamfn": "ddamfn",
}

#: Registered model name → file name of its final checkpoint in ``FinalCheckPoints/`` (If3D's names).
FINAL_CHECKPOINT_NAMES: dict[str, str] = {
    "if3d_linear": "LinearFusion.pth",
    "if3d_attention": "AttentionFusion.pth",
    "if3d_gate": "GateFusion.pth",
    "if3d_spp": "SPPFusion.pth",
    "ddamfn": "DDAMFN.pth",
}

#: The preset each model uses when ``--preset`` is not given.
DEFAULT_PRESET_FOR_MODEL: dict[str, str] = {"ddamfn": "ddamfn"}
DEFAULT_PRESET = "if3d"


# ----------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Recipe:
    """An optimisation recipe (a named preset).

    Attributes:
        name: preset name.
        optimizer: ``"adamw"`` or ``"adam"``.
        lr: the optimizer's learning rate (with ``scheduler="cyclic"`` only nominal: the rate
            follows the cycle between ``cyclic_base_lr`` and ``cyclic_max_lr``).
        weight_decay: optimizer weight decay.
        scheduler: ``"cyclic"`` (stepped per iteration), ``"exponential"`` (per epoch) or ``"none"``.
        cyclic_base_lr, cyclic_max_lr: CyclicLR bounds.
        cyclic_mode: CyclicLR mode (``"triangular"``, ``"triangular2"``, ``"exp_range"``).
        cyclic_step_size_up: iterations of the rising half-cycle; ``None`` = half an epoch
            (``steps_per_epoch // 2``, at least 1), as in If3D.
        exp_gamma: ExponentialLR decay per epoch.
        batch_size: global batch size (split evenly over DDP ranks).
        epochs: training epochs.
        balanced_sampling: class-balanced sampling of the training split.
        loss: loss term weights.
    """

    name: str
    optimizer: str
    lr: float
    weight_decay: float
    scheduler: str
    batch_size: int
    epochs: int
    balanced_sampling: bool = True
    cyclic_base_lr: float = 1e-6
    cyclic_max_lr: float = 1e-4
    cyclic_mode: str = "triangular"
    cyclic_step_size_up: int | None = None
    exp_gamma: float = 0.6
    loss: LossWeights = field(default_factory=LossWeights)


PRESETS: dict[str, Recipe] = {
    "if3d": Recipe(
        name="if3d",
        optimizer="adamw",
        lr=5e-5,
        weight_decay=0.01,
        scheduler="cyclic",
        batch_size=128,
        epochs=100,
        cyclic_base_lr=1e-6,
        cyclic_max_lr=1e-4,
        cyclic_mode="triangular",
    ),
    "ddamfn": Recipe(
        name="ddamfn",
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        scheduler="exponential",
        batch_size=256,
        epochs=40,
        exp_gamma=0.6,
    ),
}


# ----------------------------------------------------------------------------- fast paths


@dataclass(frozen=True)
class FastPath:
    """Speed switches of the engine (issue 7 item 3); each can be overridden on the command line.

    Attributes:
        amp: ``"off"``, ``"bf16"`` or ``"fp16"`` autocast (fp16 adds a GradScaler; CUDA only).
        channels_last: NHWC memory format for model and inputs.
        optimizer_impl: ``"fused"``, ``"foreach"`` or ``"default"`` (the optimizer's own choice).
        compile: wrap the model in ``torch.compile``; ``"auto"``: only for runs long enough to repay
            the compilation, when a C++ compiler is present (:func:`resolve_compile`).
        tune_allocator: keep freed memory in glibc's heap instead of unmapping it on every free
            (:func:`if3d.train.allocator.tune_glibc_malloc`; CPU only, Linux/glibc only).
    """

    amp: str = "off"
    channels_last: bool = False
    optimizer_impl: str = "default"
    compile: bool | str = False
    tune_allocator: bool = False


#: THE place to change the per-device defaults; ``benchmarks/RESULTS.md`` records why they are what
#: they are. ``amp="auto"`` on CUDA means bf16 where the GPU supports it, else fp16. On the CPU the
#: default stays fp32 (bf16 autocast trains slower than fp32 on AVX512-BF16 CPUs without AMX: oneDNN's
#: bf16 depthwise weight gradients are slower there) and gains its speed from the NHWC depthwise kernels,
#: the fused AdamW step and the allocator tuning (≈ 1.5× over fp32 eager), and from torch.compile
#: (≈ 2×) in runs long enough to repay its minutes of compilation. On CUDA compile stays opt-in (not
#: measured on a GPU yet).
FAST_PATH_DEFAULTS: dict[str, FastPath] = {
    "cuda": FastPath(amp="auto", channels_last=True, optimizer_impl="fused", compile=False, tune_allocator=False),
    "cpu": FastPath(amp="off", channels_last=True, optimizer_impl="fused", compile="auto", tune_allocator=True),
}

#: ``compile="auto"`` compiles a CPU run with at least this many optimizer steps still to do. Compiling a
#: fusion model costs ≈ 2 min (training graph) + ≈ 40 s (evaluation graph) on a 2-core CPU and saves
#: ≈ 1.4 s per 64-pair step (gate: 4.9 → 3.5 s), so it pays for itself after ≈ 120 steps of 64 pairs or
#: ≈ 60 steps at the If3D batch of 128; 300 leaves a wide margin (benchmarks/RESULTS.md).
COMPILE_AUTO_MIN_STEPS = 300


def find_cxx() -> str | None:
    """The C++ compiler torch.compile's CPU backend (Inductor) would use: ``$CXX``, else g++/c++/clang++."""
    import shutil

    found = (shutil.which(name) for name in (os.environ.get("CXX"), "g++", "c++", "clang++") if name)
    return next((path for path in found if path), None)


def resolve_compile(compile: bool | str | None, device_type: str, remaining_steps: int) -> tuple[bool, str]:
    """Decide whether a run is compiled, and say why (the reason goes to the log and ``config.json``).

    Args:
        compile: True / False (the user's choice, kept), ``"auto"`` or None (the device default).
        device_type: ``"cpu"`` or ``"cuda"``.
        remaining_steps: optimizer steps the run still has to do (on this rank).

    Returns:
        ``(compile, reason)``.

    Raises:
        ValueError: a value other than a bool, ``"auto"`` or None.
    """
    if compile is None:
        compile = FAST_PATH_DEFAULTS["cuda" if device_type == "cuda" else "cpu"].compile
    if isinstance(compile, bool):
        return compile, "on (asked for)" if compile else "off"
    if compile != "auto":
        raise ValueError(f"compile must be true, false or 'auto', got {compile!r}")
    if device_type == "cuda":
        return False, "auto: off on CUDA (pass --compile to use it)"
    if remaining_steps < COMPILE_AUTO_MIN_STEPS:
        return False, (f"auto: off, {remaining_steps} optimizer steps are too few to repay the compilation "
                       f"(≥ {COMPILE_AUTO_MIN_STEPS}; --compile forces it)")
    cxx = find_cxx()
    if cxx is None:
        return False, "auto: off, no C++ compiler found for torch.compile's CPU backend (install g++)"
    return True, f"auto: on, {remaining_steps} optimizer steps ≥ {COMPILE_AUTO_MIN_STEPS} and {cxx} found"

AMP_CHOICES = ("off", "bf16", "fp16", "auto")
OPTIMIZER_IMPL_CHOICES = ("default", "foreach", "fused")


def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 arithmetic (AVX512-BF16 or AMX), per ``/proc/cpuinfo``."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_amp(amp: str, device_type: str) -> str:
    """Turn ``"auto"`` into a concrete autocast mode for the device and check the choice.

    ``auto``: bf16 on CUDA GPUs that support it, fp16 on older CUDA GPUs, bf16 on CPUs with
    native bf16, off otherwise.

    Raises:
        ValueError: unknown mode, or fp16 requested on a CPU.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp must be one of {AMP_CHOICES}, got {amp!r}")
    if amp == "auto":
        if device_type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "off"
    if amp == "fp16" and device_type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (use bf16 or off on CPU)")
    return amp


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainConfig:
    """Every setting of one training run, fully resolved (no ``None`` meaning "preset default"
    except where documented). Written to ``<out>/config.json`` and into every checkpoint.

    Data: either ``data`` (canonical layout root, with ``train_split``/``val_split``) or the
    explicit If3D-style paths ``train_photos``, ``train_renders``, ``train_annotations``,
    ``val_photos``, ``val_renders``, ``val_annotations``.
    """

    model: str = "if3d_linear"
    preset: str = DEFAULT_PRESET
    # data
    data: str | None = None
    train_split: str = "train"
    val_split: str | None = None
    train_photos: str | None = None
    train_renders: str | None = None
    train_annotations: str | None = None
    val_photos: str | None = None
    val_renders: str | None = None
    val_annotations: str | None = None
    image_size: int = 112
    skip_missing_renders: bool = False
    max_train_samples: int | None = None
    max_val_samples: int | None = None
    cache: str = "auto"
    augment: bool = True
    # model
    num_classes: int | None = None
    num_heads: int | None = None
    faithful: bool = False
    pretrained: str | None = None
    # recipe
    epochs: int = 100
    batch_size: int = 128
    lr: float = 5e-5
    weight_decay: float = 0.01
    optimizer: str = "adamw"
    scheduler: str = "cyclic"
    cyclic_base_lr: float = 1e-6
    cyclic_max_lr: float = 1e-4
    cyclic_mode: str = "triangular"
    cyclic_step_size_up: int | None = None
    exp_gamma: float = 0.6
    balanced_sampling: bool = True
    loss_attention: float = 0.1
    loss_alignment: float = 0.1
    loss_va: float = 1.0
    # hardware and fast paths
    device: str = "auto"
    amp: str | None = None  # None: FAST_PATH_DEFAULTS of the device
    channels_last: bool | None = None
    optimizer_impl: str | None = None
    compile: bool | str | None = None  # None: the device default; "auto": see resolve_compile
    tune_allocator: bool | None = None
    workers: int | None = None  # None: 0 on CPU, min(4, CPUs) on CUDA (see resolve_runtime)
    # run
    seed: int = 0
    out: str = "runs/run"
    resume: str | None = None
    final_checkpoint: str | None = None
    interrupt_after_steps: int | None = None

    def loss_weights(self) -> LossWeights:
        return LossWeights(attention=self.loss_attention, alignment=self.loss_alignment, va=self.loss_va)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict` output (unknown keys, e.g. from a newer version, are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def config_from_preset(preset: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` with the recipe of ``preset`` and the given overrides.

    Overrides whose value is ``None`` are ignored (they mean "preset default").

    Raises:
        KeyError: unknown preset (the message lists the presets).
        TypeError: unknown override name.
    """
    if preset not in PRESETS:
        raise KeyError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    r = PRESETS[preset]
    cfg = TrainConfig(
        preset=preset,
        epochs=r.epochs,
        batch_size=r.batch_size,
        lr=r.lr,
        weight_decay=r.weight_decay,
        optimizer=r.optimizer,
        scheduler=r.scheduler,
        cyclic_base_lr=r.cyclic_base_lr,
        cyclic_max_lr=r.cyclic_max_lr,
        cyclic_mode=r.cyclic_mode,
        cyclic_step_size_up=r.cyclic_step_size_up,
        exp_gamma=r.exp_gamma,
        balanced_sampling=r.balanced_sampling,
        loss_attention=r.loss.attention,
        loss_alignment=r.loss.alignment,
        loss_va=r.loss.va,
    )
    names = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unknown TrainConfig fields: {', '.join(unknown)}")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
