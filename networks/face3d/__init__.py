"""Expression models on 3D face data alone, and the option of a landmark stream beside the photo.

After the 3DFER project (FER2013 turned into MediaPipe landmarks, a landmark voxel grid and mesh distances;
its finding: 2D models pass 67 % accuracy, 3D data alone stays below 57 % but trains faster). One file per
model; importing this package imports them all (so a new 3D model is one new file), and :data:`FACE3D_MODELS`
lists what they register. Their inputs are the streams of ``if3d.data.face3d_streams`` (``landmarks``,
``voxels32``, ``distance_map``, ``flame_expression``), computed from the ``<stem>.npz`` the render step saves.
"""

from __future__ import annotations

import importlib
import pkgutil

from networks.registry import list_models

_before = set(list_models())
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")

#: Names of the models the modules of this package register, sorted.
FACE3D_MODELS: tuple[str, ...] = tuple(sorted(set(list_models()) - _before))
