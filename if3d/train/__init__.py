"""The training engine shared by every registered model: configuration and presets (:mod:`.config`),
the loop (:mod:`.engine`), the run directory (:mod:`.rundir`), named meters (:mod:`.meters`) and the
command line (:mod:`.cli`).

``python -m if3d.train --model ddamfn --data ROOT`` trains the photo-only DDAMFN baseline; the
``affectnet_*_fusion_train.py`` scripts call the same command line with their strategy's model.

The names below are imported on first use, so that the command line answers ``--help`` without loading
torch.
"""

from __future__ import annotations

from if3d.lazy import lazy_exports

#: name → the module that defines it
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("PRESETS", "Recipe", "TrainConfig", "config_from_preset"), "if3d.train.config"),
    "fit": "if3d.train.engine",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
