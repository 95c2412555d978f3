"""Our ``weights_only``-safe checkpoint format: building, atomic saving and checked loading.

Checkpoints are written through :func:`if3d.atomic.atomic_torch_save`, so a reader (or a crash)
never sees a half-written file: the previous version stays intact until the new one is complete.

Our checkpoint format (see ``docs/INTERFACES.md``)::

    {'format': 'if3d-toolkit', 'format_version': 1, 'model_name', 'model_kwargs', 'model',
     'class_names', 'optimizer', 'scheduler', 'scaler', 'epoch', 'step', 'rng', 'config', 'metrics'}

holds only tensors and plain Python values (no numpy arrays, no pickled classes), so it loads
with ``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from if3d.atomic import atomic_torch_save

FORMAT_NAME = "if3d-toolkit"
FORMAT_VERSION = 1
REQUIRED_KEYS = (
    "format",
    "format_version",
    "model_name",
    "model_kwargs",
    "model",
    "class_names",
    "optimizer",
    "scheduler",
    "scaler",
    "epoch",
    "step",
    "rng",
    "config",
    "metrics",
)


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable or not in our format."""


# --------------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The random generator states of torch (CPU and every CUDA device), numpy and Python.

    Returns a dict of tensors and plain Python values only (numpy's key array becomes an int64
    tensor), so it survives ``torch.load(weights_only=True)``::

        {'torch': ByteTensor, 'cuda': [ByteTensor per device], 'numpy': {...}, 'python': tuple}
    """
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()  # noqa: NPY002 - the global legacy state is what we save
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_name),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_gauss),
        },
        "python": random.getstate(),
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Restore generator states captured by :func:`capture_rng_state`.

    CUDA states are restored only for the devices present now (a checkpoint written on a
    machine with more GPUs restores the first ones).
    """
    torch.set_rng_state(state["torch"].cpu())
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():
        n = min(len(cuda_states), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda_states[i].cpu(), i)
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002 - restores the global legacy state
        (
            npst["name"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["cached_gaussian"],
        )
    )
    py = state["python"]
    # weights_only loading turns the inner tuple into a list; random.setstate needs tuples.
    random.setstate((py[0], tuple(py[1]), py[2]))


# --------------------------------------------------------------------------- checkpoints


def make_checkpoint(
    *,
    model_name: str,
    model_kwargs: Mapping[str, Any],
    model_state: Mapping[str, torch.Tensor],
    class_names: list[str] | tuple[str, ...],
    optimizer_state: Mapping[str, Any] | None = None,
    scheduler_state: Mapping[str, Any] | None = None,
    scaler_state: Mapping[str, Any] | None = None,
    epoch: int = 0,
    step: int = 0,
    rng: Mapping[str, Any] | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a checkpoint dict in our format (see the module docstring).

    Args:
        model_state: the *unwrapped* model's ``state_dict()`` (no ``module.``/``_orig_mod.``
            prefixes); tensors are moved to CPU.
        epoch: number of completed epochs.
        step: number of completed optimizer steps since the start of training.
    """
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_name": str(model_name),
        "model_kwargs": dict(model_kwargs),
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "class_names": [str(c) for c in class_names],
        "optimizer": optimizer_state,
        "scheduler": scheduler_state,
        "scaler": scaler_state,
        "epoch": int(epoch),
        "step": int(step),
        "rng": rng if rng is not None else capture_rng_state(),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
    }


def save_checkpoint(checkpoint: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write a checkpoint made by :func:`make_checkpoint` atomically."""
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"refusing to write {path}: checkpoint lacks keys {missing}")
    return atomic_torch_save(dict(checkpoint), path)


def is_toolkit_checkpoint(obj: Any) -> bool:
    """True when ``obj`` (a loaded file) is in our checkpoint format."""
    return isinstance(obj, Mapping) and obj.get("format") == FORMAT_NAME


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one of our checkpoints with ``weights_only=True`` (no pickled code runs).

    Raises:
        CheckpointError: the file is absent, cannot be read safely, is not in our format, or is
            of a newer format version; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # re-raised with the file name
        raise CheckpointError(f"cannot read checkpoint {path} safely (weights_only=True): {e}") from e
    if not is_toolkit_checkpoint(obj):
        raise CheckpointError(
            f"{path} is not an if3d-toolkit checkpoint (no 'format': {FORMAT_NAME!r}); "
            "foreign weights (DDAMFN, If3D, MFN_msceleb) go through networks.weights.load_weights"
        )
    if int(obj.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {obj['format_version']}, newer than this toolkit's "
            f"{FORMAT_VERSION}; update the toolkit"
        )
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise CheckpointError(f"{path} lacks checkpoint keys {missing}")
    return obj
