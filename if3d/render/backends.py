"""3D render backends behind one interface.

A backend turns one RGB photo into a render of the reconstructed 3D face (grey shaded, black
background, ``MeshRenderer``) plus the per-image 3D parameters, or reports that no face was found.

- ``mediapipe`` (default): MediaPipe FaceMesh 478 landmarks as a mesh (``mediapipe_backend``); works
  offline out of the box.
- ``smirk``: the official SMIRK encoder + FLAME (``smirk_backend``); needs the user's
  ``SMIRK_em1.pt`` checkpoint and FLAME 2020 ``generic_model.pkl``.

Backends are registered by name (:func:`register_backend`, a class decorator); :func:`get_backend`
builds one and :func:`list_backends` names them (the render command's ``--backend`` choices). A new
backend is one module whose class satisfies :class:`RenderBackend` and is decorated; the built-in
modules are imported on first use, so ``import if3d.render`` stays light.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

#: The built-in backends: name → the module whose import registers it.
_BUILTIN_MODULES = {"mediapipe": "if3d.render.mediapipe_backend", "smirk": "if3d.render.smirk_backend"}
_BACKENDS: dict[str, Callable[..., RenderBackend]] = {}

FRAMINGS = ("photo", "smirk-crop")
"""``photo``: the render is pixel-aligned with the photo resized to size x size.
``smirk-crop``: SMIRK's input crop (:func:`if3d.face.landmarks.smirk_crop_matrix`) resized to size x size."""


@dataclass
class RenderResult:
    """Output of a backend for one photo.

    Attributes:
        render: uint8 [S, S, 3] RGB render (grey shaded face on black).
        params: per-image 3D parameters, name -> numpy array (saved as ``<stem>.npz``); the keys are
            backend specific and documented by each backend.
    """

    render: np.ndarray
    params: dict[str, np.ndarray] = field(default_factory=dict)


@runtime_checkable
class RenderBackend(Protocol):
    """What ``render_tree`` needs from a backend.

    Attributes:
        name: backend name (``"mediapipe"`` or ``"smirk"``).
        size: render side S in pixels.
    """

    name: str
    size: int

    def process(self, image_rgb: np.ndarray) -> RenderResult | None:
        """Render one photo (uint8 [H, W, 3] RGB); ``None`` when no face is found.

        Raises on anything else that goes wrong (the batch driver records it as ``error``)."""
        ...

    def close(self) -> None:
        """Free models and GL resources."""
        ...


def register_backend(name: str):
    """Register a render backend class under ``name`` (class decorator).

    Raises:
        ValueError: the name is already registered.
    """

    def decorate(cls):
        if name in _BACKENDS:
            raise ValueError(f"render backend {name!r} is registered twice")
        _BACKENDS[name] = cls
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES.values():
        importlib.import_module(module)


def list_backends() -> list[str]:
    """Names accepted by :func:`get_backend` (the built-in ``mediapipe`` and ``smirk`` and any registered)."""
    _load_builtins()
    return sorted(_BACKENDS)


def backend_names() -> list[str]:
    """The names :func:`list_backends` gives, without importing the built-in backends (MediaPipe, OpenCV,
    torch): the render command's ``--backend`` choices, so that its ``--help`` comes back at once."""
    return sorted({*_BUILTIN_MODULES, *_BACKENDS})


def get_backend(name: str, **kwargs) -> RenderBackend:
    """Build a registered backend by name.

    Args:
        name: ``"mediapipe"``, ``"smirk"`` or another registered name (:func:`list_backends`).
        **kwargs: passed to the backend's constructor. Both built-ins accept ``size`` (int) and
            ``framing`` (one of ``FRAMINGS``). ``mediapipe``: see ``MediaPipeBackend``. ``smirk``: also
            ``checkpoint`` (path to ``SMIRK_em1.pt``), ``flame_model`` (path to ``generic_model.pkl``),
            ``assets_dir`` (folder with SMIRK's assets), ``device`` (torch device string).

    Raises:
        ValueError: for an unknown backend name (the message lists the registered ones).
    """
    names = list_backends()
    if name not in _BACKENDS:
        raise ValueError(f"unknown render backend {name!r}; choose one of {', '.join(names)}")
    return _BACKENDS[name](**kwargs)
