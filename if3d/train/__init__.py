"""The training engine shared by every registered model: configuration and presets (:mod:`.config`),
the loop (:mod:`.engine`), the run directory (:mod:`.rundir`), named meters (:mod:`.meters`) and the
command line (:mod:`.cli`).

``python -m if3d.train --model ddamfn --data ROOT`` trains the photo-only DDAMFN baseline; the
``affectnet_*_fusion_train.py`` scripts call the same command line with their strategy's model.
"""

from if3d.train.config import PRESETS, Recipe, TrainConfig, config_from_preset
from if3d.train.engine import fit

__all__ = ["PRESETS", "Recipe", "TrainConfig", "config_from_preset", "fit"]
