"""Foreign weight layouts that a model file teaches :mod:`networks.weights` to recognise.

:func:`networks.load_weights` classifies a file by its keys (``"mfn_module"``, ``"ddamfn"``, ``"if3d"``,
``"state_dict"`` …, see :mod:`networks.weights`). A model that loads the checkpoints of its authors'
repository, or a backbone that loads a published pretraining file, registers the layout here, beside its
own definition (timm's filter functions, our registries): a :class:`WeightFormat` names the source, says how
to recognise a state dict of that layout, and — when such a file holds a whole model — which registered
model it is and with which builder arguments, so that the test script can evaluate the authors' file
directly. The model's ``remap_state_dict(state_dict, source)`` then translates the keys (protocol in
docs/INTERFACES.md).

Registered formats are tried before the built-in ones, in registration order; a detector must therefore
be specific (check the whole top-level key set, or a key only that layout has).

Some pretraining files are plain Python pickles of ``{name: numpy array}`` (VGGFace2's
``resnet50_ft_weight.pkl`` family, read by GSDNet); :func:`read_numpy_state_pickle` reads them through the
toolkit's allow-list unpickler, so no code of the file runs.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from networks.safe_pickle import AllowListUnpickler, UnsafePickleError, numpy_multiarray

__all__ = [
    "WeightFormat",
    "list_weight_formats",
    "read_numpy_state_pickle",
    "register_weight_format",
    "top_level_keys",
    "weight_format",
    "weight_format_of",
]


@dataclass(frozen=True)
class WeightFormat:
    """A foreign state-dict layout.

    Attributes:
        source: the name ``remap_state_dict(state_dict, source)`` receives (e.g. ``"dan"``).
        detect: ``state_dict -> bool``; True only for this layout (keys as in the file, ``module.`` stripped).
        description: what such a file is, for messages (e.g. "a DAN checkpoint (github.com/yaoing/DAN)").
        model: the registered model a file of this layout holds entirely, or None for partial files
            (a pretrained backbone).
        model_kwargs: ``state_dict -> builder keyword arguments`` of ``model`` (classes, heads …).
    """

    source: str
    detect: Callable[[Mapping[str, Tensor]], bool] = field(compare=False)
    description: str
    model: str | None = None
    model_kwargs: Callable[[Mapping[str, Tensor]], dict[str, Any]] | None = field(default=None, compare=False)


_BUILTIN_SOURCES = ("mfn_module", "ddamfn", "if3d", "if3d-toolkit", "state_dict", "smirk")
_FORMATS: dict[str, WeightFormat] = {}


def register_weight_format(fmt: WeightFormat) -> WeightFormat:
    """Register a foreign layout (call it in the model's or backbone's own file).

    Raises:
        ValueError: the source name is taken (by a registered or a built-in format).
    """
    if fmt.source in _FORMATS or fmt.source in _BUILTIN_SOURCES:
        raise ValueError(f"weight format {fmt.source!r} is registered twice")
    _FORMATS[fmt.source] = fmt
    return fmt


def list_weight_formats() -> list[str]:
    """Registered source names, in the order they are tried."""
    return list(_FORMATS)


def weight_format(source: str) -> WeightFormat | None:
    """The registered :class:`WeightFormat` of ``source``, or None (a built-in or unknown source)."""
    return _FORMATS.get(source)


def weight_format_of(state_dict: Mapping[str, Tensor]) -> WeightFormat | None:
    """The first registered format whose detector accepts ``state_dict``, or None."""
    for fmt in _FORMATS.values():
        if fmt.detect(state_dict):
            return fmt
    return None


def top_level_keys(state_dict: Mapping[str, Any]) -> set[str]:
    """``{"conv1", "layer1", …}``: the first dotted component of every key."""
    return {k.split(".", 1)[0] for k in state_dict}


# ------------------------------------------------------------------------------ numpy pickles


def _numpy_globals() -> dict[str, Any]:
    import numpy as np

    multiarray = numpy_multiarray()
    allowed: dict[str, Any] = {}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}._reconstruct"] = multiarray._reconstruct
        allowed[f"{module}.scalar"] = multiarray.scalar
    allowed["numpy.ndarray"] = np.ndarray
    allowed["numpy.dtype"] = np.dtype
    allowed["_codecs.encode"] = _latin1_bytes  # how Python 3's protocol 2 pickles the bytes of an array
    return allowed


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {type(text).__name__}, {encoding!r}")
    return text.encode("latin1")


class _NumpyPickle(AllowListUnpickler):
    description = "numpy arrays, dtypes and scalars only"
    persistent_load = AllowListUnpickler.refuse_persistent


def read_numpy_state_pickle(path: str | Path) -> dict[str, Tensor] | None:
    """Read a plain pickle of ``{name: numpy array}`` (Python 2 or 3) as a state dict, running no code.

    Only numpy's array reconstruction, ``ndarray``, ``dtype`` and scalars are resolved; any other global is
    refused.

    Args:
        path: the file.

    Returns:
        ``{name: tensor}`` (float arrays as they are, copies of the file's data), or None when the file's
        first pickled object is not such a dict (e.g. a legacy ``torch.save`` file, whose first object is a
        magic number), so the caller can try another reader.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (nothing was called).
        ValueError: an entry is an object array (it could hold anything), naming the entry.
    """
    import numpy as np

    path = Path(path)
    unpickler = _NumpyPickle.configured(str(path), allowed=_numpy_globals())
    with open(path, "rb") as f:
        try:
            obj = unpickler(f, encoding="latin1").load()
        except UnsafePickleError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError):
            return None
    if not isinstance(obj, Mapping) or not obj:
        return None
    if not all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        return None
    out: dict[str, Tensor] = {}
    for key, arr in obj.items():
        if arr.dtype == object:
            raise ValueError(f"{path}: entry {key!r} is a numpy object array, not numbers")
        out[key] = torch.from_numpy(np.array(arr, copy=True))
    return out
