"""Plain pickles of ``{name: numpy array}`` as state dicts, read without running any code of the file.

Some pretraining files are not ``torch.save`` files but Python pickles of numpy arrays: VGGFace2's ResNet-50
weights (``resnet50_ft_weight.pkl``, ``vgg_msceleb_resnet50_ft_weight.pkl``), which GSDNet fine-tunes, were
written by Python 2. :func:`read_numpy_state_pickle` reads them through the toolkit's allow-list unpickler
(:class:`~networks.safe_pickle.AllowListUnpickler`): only numpy's array reconstruction, ``ndarray``,
``dtype``, scalars and the latin-1 bytes of Python 3's protocol 2 are resolved; anything else is refused
before it is called. :func:`networks.weights.read_checkpoint` offers a file to it when torch's weights-only
loader refuses a file that is not a zip archive.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from networks.safe_pickle import AllowListUnpickler, UnsafePickleError, numpy_multiarray

__all__ = ["read_numpy_state_pickle"]


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
        ``{name: tensor}`` (float arrays as they are, copies of the file's data), or None when the file is a
        zip archive (a ``torch.save`` file) or its first pickled object is not such a dict (e.g. a legacy
        ``torch.save`` file, whose first object is a magic number), so the caller can try another reader.

    Raises:
        UnsafePickleError: the pickle names a global outside the allow-list (nothing was called).
        ValueError: an entry is an object array (it could hold anything), naming the entry.
    """
    import numpy as np

    path = Path(path)
    if zipfile.is_zipfile(path):
        return None
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
