"""Reading FLAME's model file and SMIRK's FLAME asset files without running code from them.

``generic_model.pkl`` (FLAME 2020) is a Python 2 pickle whose arrays are ``chumpy`` objects
(``chumpy.ch.Ch``; SMPL-family files also hold ``chumpy.reordering`` / ``chumpy.ch_ops`` nodes) and
whose ``J_regressor`` is a ``scipy.sparse`` matrix. :func:`read_flame_pickle` reads it without chumpy:
the allow-list unpickler (:class:`networks.safe_pickle.AllowListUnpickler`) maps every ``chumpy.*``
class onto an inert stand-in that only records its pickled state, evaluates the few node kinds that
hold data (``Ch`` → its array ``x``; ``Select``, ``transpose``, ``Reshape``), and refuses every class
outside an allow-list (numpy arrays/dtypes, scipy sparse matrices, ``set``), so loading the file runs
no code from it. :func:`load_flame_model` checks every array's shape; :func:`load_flame_assets`
reads SMIRK's masks, landmark embeddings and eyelid blendshapes (``../shared/assets/smirk/``).
"""

from __future__ import annotations

import codecs
import importlib
import io
import os
import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from networks.safe_pickle import AllowListUnpickler, numpy_multiarray

NUM_VERTICES = 5023
NUM_FACES = 9976
NUM_JOINTS = 5
"""FLAME joints: 0 global (root), 1 neck, 2 jaw, 3 left eye, 4 right eye."""
NUM_SHAPEDIRS = 400
"""FLAME 2020 ``shapedirs``: components 0-299 identity, 300-399 expression."""
NUM_IDENTITY_COMPONENTS = 300
NECK_JOINT = 1
JAW_JOINT = 2

FLAME_MODEL_SHAPES: dict[str, tuple[int, ...]] = {
    "v_template": (NUM_VERTICES, 3),
    "f": (NUM_FACES, 3),
    "shapedirs": (NUM_VERTICES, 3, NUM_SHAPEDIRS),
    "posedirs": (NUM_VERTICES, 3, 9 * (NUM_JOINTS - 1)),
    "J_regressor": (NUM_JOINTS, NUM_VERTICES),
    "weights": (NUM_VERTICES, NUM_JOINTS),
    "kintree_table": (2, NUM_JOINTS),
}
"""Required keys of ``generic_model.pkl`` and their shapes."""

ASSET_FILES = {
    "masks": "FLAME_masks.pkl",
    "landmark_embedding": "landmark_embedding.npy",
    "mediapipe_embedding": "mediapipe_landmark_embedding.npz",
    "l_eyelid": "l_eyelid.npy",
    "r_eyelid": "r_eyelid.npy",
}
"""SMIRK's small FLAME asset files (``../shared/assets/smirk/``), by role."""

NUM_MEDIAPIPE_LANDMARKS = 105
NUM_FAN_LANDMARKS = 68
NUM_FAN_CONTOUR = 17
NUM_CONTOUR_BINS = 79
"""Dynamic contour lookup rows: head yaw rounded to whole degrees in [-39, 39]."""


class FlameModelError(ValueError):
    """A FLAME model or asset file is missing something, malformed, or uses a refused pickle class.

    The message names the file and the problem.
    """


# --------------------------------------------------------------------------------------------------
# Restricted unpickling
# --------------------------------------------------------------------------------------------------


class ChumpyStandIn:
    """Inert stand-in for a pickled chumpy object.

    Instances keep the chumpy class name (``chumpy_name``, e.g. ``"chumpy.ch.Ch"``), the constructor
    arguments the pickle passed (``args``) and the pickled ``__dict__`` (``state``). Nothing of chumpy
    runs; :func:`chumpy_to_numpy` evaluates the node kinds that hold data.
    """

    chumpy_name = "chumpy"

    def __new__(cls, *args: Any, **kwargs: Any) -> ChumpyStandIn:
        obj = super().__new__(cls)
        obj.args = args
        obj.state = {}
        return obj

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"<chumpy stand-in {self.chumpy_name} keys={sorted(self.state)}>"


_STAND_INS: dict[str, type[ChumpyStandIn]] = {}


def _stand_in(module: str, name: str) -> type[ChumpyStandIn]:
    full = f"{module}.{name}"
    cls = _STAND_INS.get(full)
    if cls is None:
        cls = type(name, (ChumpyStandIn,), {"chumpy_name": full, "__module__": __name__})
        _STAND_INS[full] = cls
    return cls


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` (protocol 0/1 pickles of new-style objects), limited to our stand-ins."""
    if isinstance(cls, type) and issubclass(cls, ChumpyStandIn) and base is object:
        return cls.__new__(cls)
    raise pickle.UnpicklingError(f"refused copyreg._reconstructor({cls!r}, {base!r})")


def _load_torch_bytes(data: bytes) -> Any:
    """``torch.storage._load_from_bytes``, but weights-only (tensors and plain containers only)."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _numpy_reconstruct() -> Any:
    return numpy_multiarray()._reconstruct


def _numpy_scalar() -> Any:
    return numpy_multiarray().scalar


def _numpy_frombuffer() -> Any:
    for name in ("numpy._core.numeric", "numpy.core.numeric"):
        try:
            return importlib.import_module(name)._frombuffer
        except (ImportError, AttributeError):
            continue
    raise ImportError("numpy has no numeric._frombuffer")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy.core.multiarray", "scalar"): _numpy_scalar(),
    ("numpy._core.multiarray", "scalar"): _numpy_scalar(),
    # protocol-5 pickles of arrays (Python 3.8+)
    ("numpy.core.numeric", "_frombuffer"): _numpy_frombuffer(),
    ("numpy._core.numeric", "_frombuffer"): _numpy_frombuffer(),
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "object"): object,
    ("__builtin__", "set"): set,
    ("__builtin__", "object"): object,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
    ("copy_reg", "_reconstructor"): _safe_reconstructor,
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): OrderedDict,
}
for _module in ("scipy.sparse.csc", "scipy.sparse._csc"):
    _ALLOWED[(_module, "csc_matrix")] = sp.csc_matrix
for _module in ("scipy.sparse.csr", "scipy.sparse._csr"):
    _ALLOWED[(_module, "csr_matrix")] = sp.csr_matrix
for _module in ("scipy.sparse.coo", "scipy.sparse._coo"):
    _ALLOWED[(_module, "coo_matrix")] = sp.coo_matrix

_TORCH_ALLOWED: dict[tuple[str, str], Any] = {
    # SMIRK's landmark_embedding.npy holds two torch tensors (pickled inside the numpy object array).
    ("torch.storage", "_load_from_bytes"): _load_torch_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
}


class _FlameUnpickler(AllowListUnpickler):
    """FLAME's allow-list (:class:`~networks.safe_pickle.AllowListUnpickler`): numpy arrays and dtypes,
    scipy sparse matrices, ``set``; every ``chumpy.*`` class becomes an inert stand-in."""

    allowed = {f"{module}.{name}": obj for (module, name), obj in _ALLOWED.items()}
    families = {"chumpy": _stand_in}
    persistent_load = AllowListUnpickler.refuse_persistent

    def refuse(self, global_name: str) -> Exception:
        what = global_name if global_name.startswith("persistent") else f"pickled global {global_name}"
        return FlameModelError(f"{self.source}: refused {what} (not on the allow-list)")


class _FlameTorchUnpickler(_FlameUnpickler):
    """FLAME's allow-list plus weights-only torch tensors (SMIRK's ``landmark_embedding.npy``)."""

    allowed = {**_FlameUnpickler.allowed, **{f"{m}.{n}": obj for (m, n), obj in _TORCH_ALLOWED.items()}}


def _unpickler(allow_torch: bool) -> type[_FlameUnpickler]:
    return _FlameTorchUnpickler if allow_torch else _FlameUnpickler


def restricted_pickle_load(path: str | os.PathLike, allow_torch: bool = False) -> Any:
    """Unpickle ``path`` (Python 2 or 3 pickle, latin1 strings) through the allow-list.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FlameModelError: the file is not a pickle, is truncated, or references a refused class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with path.open("rb") as f:
            return _unpickler(allow_torch).load_file(f, str(path), encoding="latin1")
    except FlameModelError:
        raise
    except Exception as exc:  # truncated / corrupt pickles raise many types
        raise FlameModelError(f"{path}: cannot be unpickled ({type(exc).__name__}: {exc})") from exc


def restricted_npy_load(path: str | os.PathLike) -> Any:
    """Read a ``.npy`` file; an object array (a pickled dict, as SMIRK's ``landmark_embedding.npy``)
    goes through the restricted unpickler (torch tensors inside are read weights-only).

    Returns:
        the array, or for a 0-d object array its single element.

    Raises:
        FileNotFoundError, FlameModelError (not a ``.npy`` file, or a refused class).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with path.open("rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported .npy version {version}")
            if dtype.hasobject:
                value = _unpickler(True).load_file(f, str(path), encoding="latin1")
                if isinstance(value, np.ndarray) and value.shape == () and value.dtype == object:
                    return value.item()
                return value
    except FlameModelError:
        raise
    except Exception as exc:
        raise FlameModelError(f"{path}: not a readable .npy file ({type(exc).__name__}: {exc})") from exc
    return np.load(path, allow_pickle=False)


def chumpy_to_numpy(value: Any, what: str = "value", _depth: int = 0) -> Any:
    """Evaluate a chumpy stand-in to a numpy array (non-chumpy values are returned unchanged).

    Supported node kinds (chumpy's own ``compute_r``): ``chumpy.ch.Ch`` → ``x``;
    ``chumpy.reordering.Select`` → ``a.ravel()[idxs].reshape(preferred_shape)``;
    ``chumpy.reordering.transpose`` → ``np.transpose(a, axes)``; ``chumpy.reordering.Reshape`` →
    ``a.reshape(newshape)``.

    Raises:
        ValueError: any other chumpy node kind, or one without its data.
    """
    if not isinstance(value, ChumpyStandIn):
        return value
    if _depth > 32:
        raise ValueError(f"{what}: chumpy expression nested too deeply")
    kind = value.chumpy_name.rsplit(".", 1)[-1]
    state = value.state

    def term(name: str) -> np.ndarray:
        if name not in state:
            raise ValueError(f"{what}: chumpy {value.chumpy_name} node without its {name!r} term")
        return np.asarray(chumpy_to_numpy(state[name], what, _depth + 1))

    if kind == "Ch":
        return term("x")
    if kind == "Select":
        out = term("a").ravel()[np.asarray(state.get("idxs"))]
        shape = state.get("preferred_shape")
        return out.reshape(shape) if shape is not None else out
    if kind == "transpose":
        return np.transpose(term("a"), axes=state.get("axes"))
    if kind == "Reshape":
        return term("a").reshape(state["newshape"])
    raise ValueError(f"{what}: chumpy node kind {value.chumpy_name} is not supported by this loader")


# --------------------------------------------------------------------------------------------------
# FLAME model file
# --------------------------------------------------------------------------------------------------


@dataclass
class FlameModelData:
    """Arrays of a FLAME model file, validated (float32 unless stated).

    Attributes:
        v_template: [5023, 3] template vertices (metres; x to the subject's left, y up, z forward).
        faces: int64 [9976, 3] triangles (vertex indices).
        shapedirs: [5023, 3, 400] identity (0-299) and expression (300-399) blend shapes.
        posedirs: [5023, 3, 36] pose-corrective blend shapes (4 non-root joints x 9).
        J_regressor: [5, 5023] joint regressor (dense).
        weights: [5023, 5] skinning weights.
        parents: int64 [5] kinematic parents, root = -1.
        source: the file the arrays came from.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    source: str = ""


def read_flame_pickle(path: str | os.PathLike) -> dict[str, Any]:
    """Unpickle a FLAME ``generic_model.pkl`` without chumpy (see the module docstring).

    Returns:
        the pickled dict with chumpy values still as :class:`ChumpyStandIn` (use :func:`load_flame_model`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FlameModelError: not a pickle of a dict, or a refused class.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FLAME model not found: {path}")
    data = restricted_pickle_load(path)
    if not isinstance(data, dict):
        raise FlameModelError(f"{path}: expected a pickled dict (FLAME generic_model.pkl), got {type(data).__name__}")
    return data


def load_flame_model(path: str | os.PathLike) -> FlameModelData:
    """Read and validate FLAME 2020's ``generic_model.pkl`` (no chumpy needed).

    Required keys and shapes: see :data:`FLAME_MODEL_SHAPES`. ``J_regressor`` may be sparse or dense;
    ``kintree_table[0]`` gives the parents (its root entry, stored as ``uint32(-1)``, becomes -1).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        FlameModelError: refused pickle class, missing key, wrong shape, non-finite values or an
            invalid kinematic tree (the message names the file and the key).
    """
    path = Path(path)
    raw = read_flame_pickle(path)
    missing = [k for k in FLAME_MODEL_SHAPES if k not in raw]
    if missing:
        raise FlameModelError(f"{path}: missing FLAME keys {missing} (present: {sorted(map(str, raw))})")
    arrays: dict[str, np.ndarray] = {}
    for key, shape in FLAME_MODEL_SHAPES.items():
        value = raw[key]
        try:
            value = chumpy_to_numpy(value, f"{path}: {key}")
            if sp.issparse(value):
                value = value.toarray()
            value = np.asarray(value)
        except ValueError as exc:
            raise FlameModelError(str(exc) if str(path) in str(exc) else f"{path}: {key}: {exc}") from exc
        except Exception as exc:
            raise FlameModelError(f"{path}: {key} cannot be read as an array ({type(exc).__name__}: {exc})") from exc
        if value.shape != shape:
            raise FlameModelError(f"{path}: {key} has shape {list(value.shape)}, expected {list(shape)}")
        if not (np.issubdtype(value.dtype, np.number) or value.dtype == bool):
            raise FlameModelError(f"{path}: {key} has non-numeric dtype {value.dtype}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise FlameModelError(f"{path}: {key} contains non-finite values")
        arrays[key] = value

    faces = arrays["f"].astype(np.int64)
    if faces.min() < 0 or faces.max() >= NUM_VERTICES:
        raise FlameModelError(f"{path}: f has vertex indices outside [0, {NUM_VERTICES})")
    parents = arrays["kintree_table"][0].astype(np.int64)
    parents[0] = -1
    if not all(0 <= parents[j] < j for j in range(1, NUM_JOINTS)):
        raise FlameModelError(f"{path}: kintree_table has invalid parents {arrays['kintree_table'][0].tolist()}")
    return FlameModelData(
        v_template=arrays["v_template"].astype(np.float32),
        faces=faces,
        shapedirs=arrays["shapedirs"].astype(np.float32),
        posedirs=arrays["posedirs"].astype(np.float32),
        J_regressor=arrays["J_regressor"].astype(np.float32),
        weights=arrays["weights"].astype(np.float32),
        parents=parents,
        source=str(path),
    )


# --------------------------------------------------------------------------------------------------
# SMIRK's FLAME assets
# --------------------------------------------------------------------------------------------------


@dataclass
class FlameAssets:
    """SMIRK's FLAME asset files, validated.

    Attributes:
        face_vertices: int64 [1787] vertex ids of the ``face`` region (``FLAME_masks.pkl['face']``).
        masks: every region of ``FLAME_masks.pkl`` (name → int64 vertex ids).
        l_eyelid, r_eyelid: float32 [5023, 3] eyelid-closure offsets (metres per unit eyelid parameter).
        static_lmk_faces_idx: int64 [51], static_lmk_bary_coords: float32 [51, 3] — FAN points 17-67.
        dynamic_lmk_faces_idx: int64 [79, 17], dynamic_lmk_bary_coords: float32 [79, 17, 3] — jaw
            contour (FAN points 0-16) for head yaw -39..39 degrees.
        full_lmk_faces_idx: int64 [68], full_lmk_bary_coords: float32 [68, 3] — static 68 points.
        mp_lmk_faces_idx: int64 [105], mp_lmk_bary_coords: float32 [105, 3] — MediaPipe points.
        mp_landmark_indices: int64 [105] the MediaPipe FaceMesh index of each of those points.
    """

    face_vertices: np.ndarray
    masks: dict[str, np.ndarray]
    l_eyelid: np.ndarray
    r_eyelid: np.ndarray
    static_lmk_faces_idx: np.ndarray
    static_lmk_bary_coords: np.ndarray
    dynamic_lmk_faces_idx: np.ndarray
    dynamic_lmk_bary_coords: np.ndarray
    full_lmk_faces_idx: np.ndarray
    full_lmk_bary_coords: np.ndarray
    mp_lmk_faces_idx: np.ndarray
    mp_lmk_bary_coords: np.ndarray
    mp_landmark_indices: np.ndarray


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _checked(path: Path, key: str, value: Any, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Validate one asset array: shape (-1 = any length), dtype kind ('i' integer, 'f' float), finiteness."""
    arr = _as_numpy(value)
    if arr.ndim != len(shape) or any(s not in (-1, a) for s, a in zip(shape, arr.shape)):
        raise FlameModelError(f"{path}: {key} has shape {list(arr.shape)}, expected {list(shape)}")
    if kind == "i":
        if not np.issubdtype(arr.dtype, np.integer):
            raise FlameModelError(f"{path}: {key} has dtype {arr.dtype}, expected integers")
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.number) or not np.isfinite(arr).all():
        raise FlameModelError(f"{path}: {key} must hold finite numbers (dtype {arr.dtype})")
    return arr.astype(np.float32)


def _asset_path(assets_dir: Path, role: str) -> Path:
    path = assets_dir / ASSET_FILES[role]
    if not path.is_file():
        raise FileNotFoundError(f"SMIRK asset file not found: {path}")
    return path


def _dict_get(path: Path, data: Any, key: str) -> Any:
    if not isinstance(data, dict):
        raise FlameModelError(f"{path}: expected a dict, got {type(data).__name__}")
    if key not in data:
        raise FlameModelError(f"{path}: missing key {key!r} (present: {sorted(map(str, data))})")
    return data[key]


def load_flame_assets(assets_dir: str | os.PathLike) -> FlameAssets:
    """Read SMIRK's FLAME assets from ``assets_dir`` (file names: :data:`ASSET_FILES`).

    Raises:
        FileNotFoundError: ``assets_dir`` or one of the files is missing (the message names it).
        FlameModelError: a file is malformed (missing key, wrong shape/dtype, index out of range).
    """
    assets_dir = Path(assets_dir)
    if not assets_dir.is_dir():
        raise FileNotFoundError(f"SMIRK assets folder not found: {assets_dir}")

    path = _asset_path(assets_dir, "masks")
    raw_masks = restricted_pickle_load(path)
    if not isinstance(raw_masks, dict):
        raise FlameModelError(f"{path}: expected a dict of vertex-id arrays, got {type(raw_masks).__name__}")
    masks = {str(k): _checked(path, str(k), v, (-1,), "i") for k, v in raw_masks.items()}
    face = _checked(path, "face", _dict_get(path, raw_masks, "face"), (-1,), "i")

    eyelids = []
    for role in ("l_eyelid", "r_eyelid"):
        p = _asset_path(assets_dir, role)
        eyelids.append(_checked(p, role, restricted_npy_load(p), (NUM_VERTICES, 3), "f"))

    path = _asset_path(assets_dir, "landmark_embedding")
    emb = restricted_npy_load(path)
    static_idx = _checked(path, "static_lmk_faces_idx", _dict_get(path, emb, "static_lmk_faces_idx"), (-1,), "i")
    n_static = static_idx.shape[0]
    static_bary = _checked(
        path, "static_lmk_bary_coords", _dict_get(path, emb, "static_lmk_bary_coords"), (n_static, 3), "f"
    )
    dyn_idx = _checked(
        path, "dynamic_lmk_faces_idx", _dict_get(path, emb, "dynamic_lmk_faces_idx"),
        (NUM_CONTOUR_BINS, NUM_FAN_CONTOUR), "i",
    )
    dyn_bary = _checked(
        path, "dynamic_lmk_bary_coords", _dict_get(path, emb, "dynamic_lmk_bary_coords"),
        (NUM_CONTOUR_BINS, NUM_FAN_CONTOUR, 3), "f",
    )
    if n_static + NUM_FAN_CONTOUR != NUM_FAN_LANDMARKS:
        raise FlameModelError(f"{path}: {n_static} static + {NUM_FAN_CONTOUR} contour landmarks, expected 68 in all")
    full_idx = _checked(path, "full_lmk_faces_idx", _dict_get(path, emb, "full_lmk_faces_idx"), (-1, -1), "i")
    full_bary = _checked(path, "full_lmk_bary_coords", _dict_get(path, emb, "full_lmk_bary_coords"), (-1, -1, 3), "f")
    full_idx, full_bary = full_idx.reshape(-1), full_bary.reshape(-1, 3)
    if full_idx.shape[0] != NUM_FAN_LANDMARKS or full_bary.shape[0] != NUM_FAN_LANDMARKS:
        raise FlameModelError(f"{path}: full_lmk_* must hold 68 landmarks, got {full_idx.shape[0]}")

    path = _asset_path(assets_dir, "mediapipe_embedding")
    try:
        with np.load(path, allow_pickle=False) as npz:
            mp = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise FlameModelError(f"{path}: not a readable .npz file ({exc})") from exc
    mp_idx = _checked(path, "lmk_face_idx", _dict_get(path, mp, "lmk_face_idx"), (NUM_MEDIAPIPE_LANDMARKS,), "i")
    mp_bary = _checked(path, "lmk_b_coords", _dict_get(path, mp, "lmk_b_coords"), (NUM_MEDIAPIPE_LANDMARKS, 3), "f")
    mp_ids = _checked(
        path, "landmark_indices", _dict_get(path, mp, "landmark_indices"), (NUM_MEDIAPIPE_LANDMARKS,), "i"
    )

    for p, key, idx in (
        (assets_dir / ASSET_FILES["landmark_embedding"], "static_lmk_faces_idx", static_idx),
        (assets_dir / ASSET_FILES["landmark_embedding"], "dynamic_lmk_faces_idx", dyn_idx),
        (assets_dir / ASSET_FILES["landmark_embedding"], "full_lmk_faces_idx", full_idx),
        (assets_dir / ASSET_FILES["mediapipe_embedding"], "lmk_face_idx", mp_idx),
    ):
        if idx.min() < 0 or idx.max() >= NUM_FACES:
            raise FlameModelError(f"{p}: {key} has triangle indices outside [0, {NUM_FACES})")
    for key, ids in masks.items():
        if ids.size and (ids.min() < 0 or ids.max() >= NUM_VERTICES):
            raise FlameModelError(f"{assets_dir / ASSET_FILES['masks']}: {key} has vertex ids outside [0, {NUM_VERTICES})")

    return FlameAssets(
        face_vertices=face,
        masks=masks,
        l_eyelid=eyelids[0],
        r_eyelid=eyelids[1],
        static_lmk_faces_idx=static_idx,
        static_lmk_bary_coords=static_bary,
        dynamic_lmk_faces_idx=dyn_idx,
        dynamic_lmk_bary_coords=dyn_bary,
        full_lmk_faces_idx=full_idx,
        full_lmk_bary_coords=full_bary,
        mp_lmk_faces_idx=mp_idx,
        mp_lmk_bary_coords=mp_bary,
        mp_landmark_indices=mp_ids,
    )


def region_faces(faces: np.ndarray, vertex_ids: np.ndarray) -> np.ndarray:
    """Triangles whose three vertices all lie in ``vertex_ids`` (SMIRK's renderer rule).

    Args:
        faces: int [F, 3]; vertex_ids: int [K].

    Returns:
        int64 [F', 3], still indexing the full vertex array.
    """
    inside = np.zeros(int(max(faces.max(), vertex_ids.max())) + 1, dtype=bool)
    inside[vertex_ids] = True
    return faces[inside[faces].all(axis=1)].astype(np.int64)
