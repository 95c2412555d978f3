"""SMIRK (CVPR 2024) pieces for 3D face renders: the encoder (face crop → FLAME parameters) and the
FLAME layer (parameters → mesh, landmarks). See ``../shared/docs/SMIRK.md`` and
``if3d.render.smirk_backend`` for the full photo → render pipeline.
"""

from networks.smirk.encoder import SmirkEncoder, SmirkParams, load_smirk_encoder
from networks.smirk.flame import (
    FLAME,
    FlameAssets,
    FlameModelData,
    FlameModelError,
    FlameOutput,
    load_flame_assets,
    load_flame_model,
)

__all__ = [
    "FLAME",
    "FlameAssets",
    "FlameModelData",
    "FlameModelError",
    "FlameOutput",
    "SmirkEncoder",
    "SmirkParams",
    "load_flame_assets",
    "load_flame_model",
    "load_smirk_encoder",
]
