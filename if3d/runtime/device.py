"""Device and fast-path settings, resolved once for training, evaluation, benchmarks and analysis.

:class:`RuntimeConfig` holds what the user chose (``None``/``"auto"`` = the device's default);
:func:`resolve_runtime` turns it into concrete settings for the device the process runs on, from one
table, :data:`FAST_PATH_DEFAULTS`. ``benchmarks/RESULTS.md`` records the measurements behind the
defaults and the command that reproduces them. torch is imported where a function needs it, so the
training command line builds its parser (and answers ``--help``) without loading torch.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Annotated, Literal

from if3d.cli_types import Flag, OptionalValue

if TYPE_CHECKING:
    import torch

__all__ = [
    "AMP_CHOICES",
    "COMPILE_AUTO_MIN_STEPS",
    "FAST_PATH_DEFAULTS",
    "OPTIMIZER_IMPL_CHOICES",
    "FastPath",
    "RuntimeConfig",
    "autocast_context",
    "cpu_supports_bf16",
    "find_cxx",
    "optimizer_impl_kwargs",
    "resolve_amp",
    "resolve_compile",
    "resolve_runtime",
]

AMP_CHOICES = ("off", "bf16", "fp16", "auto")
OPTIMIZER_IMPL_CHOICES = ("default", "foreach", "fused")


@dataclass(frozen=True)
class FastPath:
    """Speed switches; each can be overridden on the command line.

    Attributes:
        amp: ``"off"``, ``"bf16"``, ``"fp16"`` or ``"auto"`` autocast (fp16 adds a GradScaler; CUDA only).
        channels_last: NHWC memory format for model and inputs.
        optimizer_impl: ``"fused"``, ``"foreach"`` or ``"default"`` (the optimizer's own choice).
        compile: wrap the model in ``torch.compile``; ``"auto"``: only for runs long enough to repay
            the compilation, when a C++ compiler is present (:func:`resolve_compile`).
        tune_allocator: keep freed memory in glibc's heap instead of unmapping it on every free
            (:func:`if3d.runtime.allocator.tune_glibc_malloc`; CPU only, Linux/glibc only).
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


@dataclass
class RuntimeConfig:
    """Hardware and fast-path settings of a run (a section of the training configuration).

    ``None`` means "the device's default" (:data:`FAST_PATH_DEFAULTS`); :func:`resolve_runtime` fills it in.
    """

    device: str = "auto"
    """auto, cpu, cuda or cuda:N"""
    amp: Annotated[str | None, OptionalValue("auto", AMP_CHOICES)] = None
    """autocast: off, bf16, fp16 (CUDA), or auto (bare --amp) = bf16 where supported; default: the device's"""
    channels_last: Flag = None
    """NHWC memory format (default: the device's, on for CPU and CUDA)"""
    optimizer_impl: Literal["default", "foreach", "fused"] | None = None
    """optimizer implementation (also --fused-optimizer / --foreach; default: the device's, fused)"""
    compile: Flag = None
    """torch.compile the model (default on CPU: only runs of >= 300 optimizer steps, when a C++ compiler is
    present; off on CUDA)"""
    tune_allocator: Flag = None
    """keep freed CPU memory in glibc's heap for reuse (default on for CPU runs)"""
    workers: int | None = None
    """data-loading worker processes (default: 0 on CPU, where decoding in the training process costs
    < 1 % of a step and workers compete with the compute threads; min(4, CPUs) on CUDA)"""


def find_cxx() -> str | None:
    """The C++ compiler torch.compile's CPU backend (Inductor) would use: ``$CXX``, else g++/c++/clang++."""
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
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "off"
    if amp == "fp16" and device_type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (use bf16 or off on CPU)")
    return amp


def resolve_runtime(runtime: RuntimeConfig, device: torch.device) -> RuntimeConfig:
    """Fill the settings left to the device default and check them.

    Args:
        runtime: the user's choices (``None``/``"auto"`` where not given).
        device: the device this process runs on.

    Returns:
        A copy with ``amp`` concrete (``off``/``bf16``/``fp16``), ``channels_last``, ``optimizer_impl``,
        ``tune_allocator`` (False off the CPU) and ``workers`` set; ``compile`` stays ``"auto"`` where that
        is the default, because the decision needs the run's length (:func:`resolve_compile`).

    Raises:
        ValueError: an unknown autocast mode or fp16 on a CPU.
    """
    d = FAST_PATH_DEFAULTS["cuda" if device.type == "cuda" else "cpu"]
    amp = runtime.amp if runtime.amp is not None else d.amp
    return replace(
        runtime,
        amp=resolve_amp(amp, device.type),
        channels_last=d.channels_last if runtime.channels_last is None else runtime.channels_last,
        optimizer_impl=d.optimizer_impl if runtime.optimizer_impl is None else runtime.optimizer_impl,
        compile=d.compile if runtime.compile is None else runtime.compile,
        tune_allocator=(d.tune_allocator if runtime.tune_allocator is None else runtime.tune_allocator)
        and device.type == "cpu",
        # CPU: loading in the training process (a 64-pair JPEG batch decodes in ~40 ms against a 5 s step);
        # worker processes would only take cycles from the two compute threads (benchmarks/RESULTS.md)
        workers=runtime.workers if runtime.workers is not None
        else (min(4, os.cpu_count() or 1) if device.type == "cuda" else 0),
    )


def optimizer_impl_kwargs(impl: str | None) -> dict[str, bool]:
    """Keyword arguments that select a torch optimizer's implementation: ``fused``, ``foreach`` or
    ``default``/None (the optimizer's own choice).

    Raises:
        ValueError: another value.
    """
    if impl == "fused":
        return {"fused": True}
    if impl == "foreach":
        return {"foreach": True}
    if impl in (None, "default"):
        return {}
    raise ValueError(f"optimizer_impl must be default, foreach or fused, got {impl!r}")


def autocast_context(device: torch.device, amp: str):
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"}; a null context for "off"."""
    if amp == "off":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
