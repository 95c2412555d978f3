"""What training, evaluation, benchmarks and analysis share at run time: device and fast-path
resolution (:mod:`.device`), the CPU allocator tuning (:mod:`.allocator`), loaders and epoch order
(:mod:`.loaders`), batch preparation (:mod:`.batches`), the prediction loop (:mod:`.predict`), the
distributed helpers (:mod:`.distributed`) and the graceful stop on Ctrl-C / SIGTERM (:mod:`.stop`). It
imports ``networks`` and ``if3d.data``, never ``if3d.train``.

The names below are imported on first use, so that :class:`RuntimeConfig` (a section of the training
configuration) is read without loading torch, the data pipeline or the metrics. ``predict`` is the
function, as before, also after its submodule :mod:`if3d.runtime.predict` has been imported.
"""

from __future__ import annotations

import sys
import types

from if3d.lazy import lazy_exports

#: name → the module that defines it
_EXPORTS: dict[str, str] = {
    name: f"if3d.runtime.{module}"
    for module, names in {
        "batches": ("BatchPreparer", "forward_model", "model_streams", "unwrap_model"),
        "device": ("FAST_PATH_DEFAULTS", "RuntimeConfig", "autocast_context", "resolve_amp", "resolve_compile",
                   "resolve_runtime"),
        "distributed": ("DistInfo", "cleanup_distributed", "init_distributed"),
        "loaders": ("epoch_indices", "make_loader"),
        "predict": ("predict", "summarize_predictions"),
    }.items()
    for name in names
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


class _Package(types.ModuleType):
    """This package: importing a submodule that shares its name with an exported function (``predict``)
    binds the function, not the submodule, to the package's attribute."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == value.__name__:
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
