"""3D render backends behind one interface.

A backend turns one RGB photo into a render of the reconstructed 3D face (grey shaded, black
background, ``MeshRenderer``) plus the per-image 3D parameters, or reports that no face was found.

- ``mediapipe`` (default): MediaPipe FaceMesh 478 landmarks as a mesh (``mediapipe_backend``); works
  offline out of the box.
- ``smirk``: the official SMIRK encoder + FLAME (``smirk_backend``); needs the user's
  ``SMIRK_em1.pt`` checkpoint and FLAME 2020 ``generic_model.pkl``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

BACKENDS = ("mediapipe", "smirk")
FRAMINGS = ("photo", "smirk-crop")
"""``photo``: the render is pixel-aligned with the photo resized to size x size.
``smirk-crop``: SMIRK's input crop (``landmarks.smirk_crop_matrix``) resized to size x size."""


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


def get_backend(name: str, **kwargs) -> RenderBackend:
    """Build a backend by name.

    Args:
        name: ``"mediapipe"`` or ``"smirk"``.
        **kwargs: passed to the backend's constructor. Both accept ``size`` (int) and ``framing``
            (one of ``FRAMINGS``). ``mediapipe``: see ``MediaPipeBackend``. ``smirk``: also
            ``checkpoint`` (path to ``SMIRK_em1.pt``), ``flame_model`` (path to ``generic_model.pkl``),
            ``assets_dir`` (folder with SMIRK's assets), ``device`` (torch device string).

    Raises:
        ValueError: for an unknown backend name.
    """
    if name == "mediapipe":
        from if3d.render.mediapipe_backend import MediaPipeBackend

        return MediaPipeBackend(**kwargs)
    if name == "smirk":
        from if3d.render.smirk_backend import SmirkBackend

        return SmirkBackend(**kwargs)
    raise ValueError(f"unknown render backend {name!r}; choose one of {', '.join(BACKENDS)}")
