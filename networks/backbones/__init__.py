"""Registered backbones beyond MixedFeatureNet, one file each (importing the package registers them all).

Every module of this package is imported here, so a new backbone is one new file: its builder decorated
with :func:`networks.registry.register_backbone` and its :class:`~networks.registry.BackboneSpec`.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
