"""Synthetic stand-ins for the files SMIRK needs and we cannot download: FLAME's ``generic_model.pkl``
and SMIRK's ``SMIRK_em1.pt``.

* :func:`write_synthetic_flame` writes a FLAME 2020-structured model: the real template mesh and
  triangles (``head_template.obj`` from ``../shared/assets/smirk``), random small blend shapes, a
  plausible 5-joint rig (root, neck, jaw, eyes; joints regressed from real FLAME regions), pickled the
  way the real file is: a Python 2 protocol-2 pickle (``str`` data as ``BINSTRING``, ``numpy.core`` /
  ``scipy.sparse.csc`` / ``__builtin__`` module names) whose arrays are ``chumpy.ch.Ch`` objects and
  whose ``J_regressor`` is a ``scipy.sparse.csc_matrix``. The chumpy classes come from fake modules
  registered in ``sys.modules`` only while pickling, so chumpy is never needed.
* :func:`write_synthetic_smirk_checkpoint` writes a flat state dict with every key/shape of
  ``smirk_encoder_state_dict_spec.json`` (random tensors, sane BatchNorm statistics, a camera bias
  that puts the face in frame) plus ``smirk_generator.*`` keys that a loader must ignore.
"""

from __future__ import annotations

import contextlib
import json
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from networks.smirk.flame import restricted_pickle_load

NUM_VERTICES = 5023


def read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Vertices float64 [V,3] and triangles int64 [F,3] (0-based) of a Wavefront OBJ."""
    verts, faces = [], []
    with open(path) as f:
        for line in f:
            if line.startswith("v "):
                verts.append([float(t) for t in line.split()[1:4]])
            elif line.startswith("f "):
                faces.append([int(t.split("/")[0]) - 1 for t in line.split()[1:4]])
    return np.asarray(verts, dtype=np.float64), np.asarray(faces, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Python-2-style pickling with fake chumpy classes
# ---------------------------------------------------------------------------------------------

_PY2_MODULES = {
    "numpy._core.multiarray": "numpy.core.multiarray",
    "numpy.core.multiarray": "numpy.core.multiarray",
    "scipy.sparse._csc": "scipy.sparse.csc",
    "builtins": "__builtin__",
    "copyreg": "copy_reg",
}


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes what Python 2's cPickle wrote: ``str``/``bytes`` as BINSTRING and
    Python 2 era module names."""

    dispatch = dict(pickle._Pickler.dispatch)

    def _save_binstring(self, data: bytes) -> None:
        n = len(data)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + struct.pack("<B", n) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + data)

    def save_bytes_py2(self, obj: bytes) -> None:
        self._save_binstring(obj)
        self.memoize(obj)

    def save_str_py2(self, obj: str) -> None:
        if obj.isascii():
            self._save_binstring(obj.encode("ascii"))
            self.memoize(obj)
        else:
            pickle._Pickler.save_str(self, obj)

    dispatch[bytes] = save_bytes_py2
    dispatch[str] = save_str_py2

    def save_global(self, obj, name=None) -> None:
        name = name or getattr(obj, "__qualname__", None) or obj.__name__
        module = pickle.whichmodule(obj, name)
        module = _PY2_MODULES.get(module, module)
        self.write(pickle.GLOBAL + module.encode("ascii") + b"\n" + name.encode("ascii") + b"\n")
        self.memoize(obj)

    dispatch[type] = save_global
    dispatch[types.FunctionType] = save_global
    dispatch[types.BuiltinFunctionType] = save_global


@contextlib.contextmanager
def fake_chumpy():
    """Register fake ``chumpy``, ``chumpy.ch`` and ``chumpy.ch_ops`` modules while the block runs.

    Yields ``(Ch, add)``: ``Ch(x)`` pickles like chumpy's ``Ch`` (state = its ``__dict__`` without the
    weak-reference caches: ``x``, ``_dirty_vars``, ``_itr``, ``_depends_on_deps``, ``_make_dense``,
    ``_make_sparse``); ``add(a, b)`` like ``chumpy.ch_ops.add`` (an expression node).
    """
    chumpy = types.ModuleType("chumpy")
    ch = types.ModuleType("chumpy.ch")
    ch_ops = types.ModuleType("chumpy.ch_ops")

    class Ch:
        def __init__(self, x):
            self.x = np.asarray(x)
            self._dirty_vars = set()
            self._itr = None
            self._depends_on_deps = {}
            self._make_dense = False
            self._make_sparse = False

    class add:  # noqa: N801 - chumpy's class name
        def __init__(self, a, b):
            self.a, self.b = a, b
            self._dirty_vars = {"a", "b"}
            self._itr = None
            self._depends_on_deps = {}

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    add.__module__, add.__qualname__ = "chumpy.ch_ops", "add"
    ch.Ch, ch_ops.add = Ch, add
    chumpy.ch, chumpy.ch_ops, chumpy.Ch = ch, ch_ops, Ch
    names = {"chumpy": chumpy, "chumpy.ch": ch, "chumpy.ch_ops": ch_ops}
    saved = {k: sys.modules.get(k) for k in names}
    sys.modules.update(names)
    try:
        yield Ch, add
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def dump_py2(obj, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


# ---------------------------------------------------------------------------------------------
# Synthetic FLAME
# ---------------------------------------------------------------------------------------------


def synthetic_flame_arrays(assets_dir: Path, seed: int = 0) -> dict[str, np.ndarray]:
    """Plain arrays of a synthetic FLAME model (see the module docstring).

    The template is the real ``head_template.obj`` mesh moved so that the ``face`` region's centre is
    at the origin (as in FLAME, whose camera translations are ~0 for a centred face). Joints:
    0 root and 1 neck at the neck region's centre, 2 jaw at the ears' centre, 3/4 at the eyeball
    centres. Skinning: eyeballs → eye joints; lower-face vertices (below the upper lip, in front of
    the ears) → jaw; neck region split between root and neck; everything else → neck.
    ``posedirs`` jaw columns (9-17) are non-zero only on jaw-weighted vertices.
    """
    rng = np.random.default_rng(seed)
    verts, faces = read_obj(assets_dir / "head_template.obj")
    masks = restricted_pickle_load(assets_dir / "FLAME_masks.pkl")
    face_centre = verts[masks["face"]].mean(axis=0)
    v_template = verts - np.array([face_centre[0], face_centre[1], 0.0])

    def centroid_row(ids: np.ndarray) -> np.ndarray:
        row = np.zeros(NUM_VERTICES)
        row[ids] = 1.0 / len(ids)
        return row

    ears = np.concatenate([masks["left_ear"], masks["right_ear"]])
    regressor = np.stack(
        [
            centroid_row(masks["neck"]),
            centroid_row(masks["neck"]),
            centroid_row(ears),
            centroid_row(masks["left_eyeball"]),
            centroid_row(masks["right_eyeball"]),
        ]
    )
    jaw_joint = regressor[2] @ v_template
    lips = v_template[masks["lips"]]
    upper_lip_y = np.median(lips[:, 1])
    weights = np.zeros((NUM_VERTICES, 5))
    weights[:, 1] = 1.0
    jaw = (v_template[:, 1] < upper_lip_y) & (v_template[:, 2] > jaw_joint[2] + 0.02)
    jaw[masks["neck"]] = False
    weights[jaw] = [0.0, 0.0, 1.0, 0.0, 0.0]
    weights[masks["neck"]] = [0.5, 0.5, 0.0, 0.0, 0.0]
    weights[masks["left_eyeball"]] = [0.0, 0.0, 0.0, 1.0, 0.0]
    weights[masks["right_eyeball"]] = [0.0, 0.0, 0.0, 0.0, 1.0]

    shapedirs = rng.normal(0.0, 1e-4, (NUM_VERTICES, 3, 400))
    posedirs = rng.normal(0.0, 1e-4, (NUM_VERTICES, 3, 36))
    posedirs[~jaw, :, 9:18] = 0.0
    return {
        "v_template": v_template,
        "f": faces.astype(np.uint32),
        "shapedirs": shapedirs,
        "posedirs": posedirs,
        "J_regressor": regressor,
        "weights": weights,
        "kintree_table": np.array([[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], dtype=np.int64),
    }


def write_synthetic_flame(path: Path, assets_dir: Path, seed: int = 0, overrides: dict | None = None) -> dict:
    """Write a synthetic ``generic_model.pkl`` to ``path``; returns its plain arrays.

    ``overrides`` replaces (or, with value ``None``, removes) entries before pickling; values are
    wrapped in ``Ch`` like the real file's arrays.
    """
    arrays = synthetic_flame_arrays(assets_dir, seed)
    with fake_chumpy() as (Ch, add):
        model = {
            "f": arrays["f"],
            "J_regressor": sp.csc_matrix(arrays["J_regressor"]),
            "kintree_table": arrays["kintree_table"],
            "J": add(Ch(arrays["J_regressor"] @ arrays["v_template"]), Ch(np.zeros((5, 3)))),
            "weights": Ch(arrays["weights"]),
            "posedirs": Ch(arrays["posedirs"]),
            "v_template": Ch(arrays["v_template"]),
            "shapedirs": Ch(arrays["shapedirs"]),
            "bs_style": "lbs",
            "bs_type": "lrotmin",
        }
        for key, value in (overrides or {}).items():
            if value is None:
                model.pop(key, None)
            else:
                model[key] = Ch(value) if isinstance(value, np.ndarray) else value
        dump_py2(model, path)
    return arrays


# ---------------------------------------------------------------------------------------------
# Synthetic SMIRK checkpoint
# ---------------------------------------------------------------------------------------------


def synthetic_smirk_state_dict(
    spec_path: Path, seed: int = 0, cam_bias=(8.0, 0.0, 0.0), head_std: float = 0.003, pose_cam_std: float = 0.0005
) -> dict[str, torch.Tensor]:
    """Random tensors for every key of the SMIRK encoder spec, plus a few ``smirk_generator.*`` keys.

    Convolutions: normal with std ``1/sqrt(fan_in)``; BatchNorm affine: weight ~1, bias ~0; BatchNorm
    running statistics: measured on random images (train-mode passes with cumulative averaging, so
    that activations stay O(1) as in a trained network); Linear heads: weight N(0, head_std²) (pose/camera
    head: N(0, pose_cam_std²), as the translation is in metres and multiplied by the scale), bias 0
    except the camera ``(scale, tx, ty) = cam_bias`` (SMIRK initialises the scale bias to 7 for the
    same reason: a face in frame).
    """
    from networks.smirk.encoder import CHECKPOINT_PREFIX, SmirkEncoder

    spec = json.loads(Path(spec_path).read_text())
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for key, shape in spec.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = torch.ones(shape)
        elif key.endswith("running_mean"):
            out[key] = torch.zeros(shape)
        elif "pose_cam_layers." in key and key.endswith(".weight"):
            out[key] = pose_cam_std * torch.randn(shape, generator=g)
        elif "_layers." in key and key.endswith(".weight"):
            out[key] = head_std * torch.randn(shape, generator=g)
        elif "_layers." in key and key.endswith(".bias"):
            out[key] = torch.zeros(shape)
        elif len(shape) == 4:
            fan_in = shape[1] * shape[2] * shape[3]
            out[key] = torch.randn(shape, generator=g) / fan_in**0.5
        elif key.endswith(".weight"):
            out[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            out[key] = 0.1 * torch.randn(shape, generator=g)
    out["smirk_encoder.pose_encoder.pose_cam_layers.0.bias"][3:6] = torch.tensor(cam_bias)

    # BatchNorm statistics from random images.
    model = SmirkEncoder()
    model.load_state_dict({k[len(CHECKPOINT_PREFIX) :]: v for k, v in out.items()}, strict=True)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.rand(4, 3, 224, 224, generator=g))
    out = {CHECKPOINT_PREFIX + k: v.clone() for k, v in model.state_dict().items()}

    out["smirk_generator.encoder1.enc1conv1.weight"] = torch.randn(32, 6, 3, 3, generator=g)
    out["smirk_generator.encoder1.enc1norm1.running_var"] = torch.ones(32)
    return out


def write_synthetic_smirk_checkpoint(path: Path, spec_path: Path, **kwargs) -> dict[str, torch.Tensor]:
    """Write :func:`synthetic_smirk_state_dict` as a flat state dict (``torch.save``); returns it."""
    state = synthetic_smirk_state_dict(spec_path, **kwargs)
    torch.save(state, path)
    return state


# ---------------------------------------------------------------------------------------------
# Session cache (the files take a couple of seconds to build; every test module shares them)
# ---------------------------------------------------------------------------------------------

_CACHE: dict[str, tuple[Path, object]] = {}


def cached_synthetic_flame(tmp_path_factory, assets_dir: Path) -> tuple[Path, dict]:
    """(path, plain arrays) of one synthetic ``generic_model.pkl`` per test session."""
    if "flame" not in _CACHE:
        path = tmp_path_factory.mktemp("synthetic_flame") / "generic_model.pkl"
        _CACHE["flame"] = (path, write_synthetic_flame(path, assets_dir))
    return _CACHE["flame"]


def cached_synthetic_checkpoint(tmp_path_factory, spec_path: Path) -> tuple[Path, dict]:
    """(path, state dict) of one synthetic ``SMIRK_em1.pt`` per test session."""
    if "smirk" not in _CACHE:
        path = tmp_path_factory.mktemp("synthetic_smirk") / "SMIRK_em1.pt"
        _CACHE["smirk"] = (path, write_synthetic_smirk_checkpoint(path, spec_path))
    return _CACHE["smirk"]
