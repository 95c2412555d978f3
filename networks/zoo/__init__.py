"""The model zoo: published facial expression recognition networks, trainable by the toolkit's one engine.

One file per model (``networks/zoo/<name>.py``): the network built from its paper, its training losses as a
registered criterion, its paper's recipe, and converters for its authors' checkpoints. Importing this
package imports every module in it, so a new zoo model is one new file. :data:`ZOO_MODELS` lists the
models registered here.
"""

from __future__ import annotations

import importlib
import pkgutil

from networks.registry import list_models

_before = set(list_models())
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")

#: Names of the models the zoo modules register, sorted.
ZOO_MODELS: tuple[str, ...] = tuple(sorted(set(list_models()) - _before))
