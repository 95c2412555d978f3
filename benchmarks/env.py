"""What the benchmark ran on: hardware (CPU model, cores, ISA flags, GPU), library versions, git commit."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]

#: CPU flags that decide which fast paths exist (oneDNN picks its kernels from them).
CPU_FLAGS_OF_INTEREST = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_fp16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8",
)


def cpu_info() -> dict[str, Any]:
    """CPU model, logical cores, usable cores (affinity), flags of interest, memory (GiB)."""
    model, flags, family = "unknown", set(), {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model == "unknown":
                    model = value.strip()
                elif key in ("cpu family", "model") and key not in family:
                    family[key] = value.strip()
                elif key == "flags" and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    mem_gib = None
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_gib = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "model": model,
        "family": family.get("cpu family"),
        "model_number": family.get("model"),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable,
        "flags": {flag: flag in flags for flag in CPU_FLAGS_OF_INTEREST},
        "memory_gib": mem_gib,
        "machine": platform.machine(),
    }


def gpu_info() -> dict[str, Any] | None:
    """Name, memory and compute capability of each CUDA device, or ``None`` without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    devices = []
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        devices.append({"name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                        "capability": f"{p.major}.{p.minor}", "bf16": torch.cuda.is_bf16_supported()})
    return {"count": len(devices), "devices": devices, "cuda": torch.version.cuda}


def library_versions() -> dict[str, Any]:
    """Versions of Python and of the libraries that decide speed (torch and its backends)."""
    import numpy
    import torch

    out: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "numpy": numpy.__version__}
    for name in ("torchvision", "timm", "PIL", "cv2"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", "unknown")
        except ImportError:
            out[name] = None
    out["mkldnn_available"] = torch.backends.mkldnn.is_available()
    config = torch.__config__.show()
    out["onednn"] = next((line.split("DNN", 1)[1].split("(")[0].strip() for line in config.splitlines()
                          if "MKL-DNN" in line or "oneDNN" in line), None)
    out["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    out["default_num_threads"] = torch.get_num_threads()
    out["default_num_interop_threads"] = torch.get_num_interop_threads()
    out["parallel_backend"] = next(
        (line.split(":", 1)[1].strip() for line in torch.__config__.parallel_info().splitlines()
         if line.startswith("ATen parallel backend")), None)
    out["env"] = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "ONEDNN_MAX_CPU_ISA",
                                             "DNNL_MAX_CPU_ISA", "KMP_AFFINITY", "OMP_PROC_BIND")
                  if k in os.environ}
    return out


def git_info() -> dict[str, Any]:
    """Commit hash and whether the working tree has uncommitted changes (``None`` outside git)."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=20, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def environment() -> dict[str, Any]:
    """The ``environment`` section of the benchmark report."""
    return {"cpu": cpu_info(), "gpu": gpu_info(), "libraries": library_versions(), "git": git_info(),
            "platform": platform.platform()}


def load_average() -> list[float] | None:
    """1, 5 and 15 minute load averages (a busy machine makes every figure slower)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None
