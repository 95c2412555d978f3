"""If3D model zoo: DDAMFN (MixedFeatureNet + DDA heads), the If3D two-stream fusion models,
the SMIRK encoder and FLAME layer, and loaders for the original checkpoint formats.

Build by name with :func:`create_model`; load any supported weight file with
:func:`load_weights`.
"""

# importing a model module registers its builders (networks.ddamfn registers "ddamfn")
from networks.ddamfn import DDAMFN, DDAHead, attention_loss
from networks.mixedfeaturenet import MixedFeatureNet
from networks.registry import create_model, list_models, register_model

__all__ = [
    "DDAHead",
    "DDAMFN",
    "MixedFeatureNet",
    "attention_loss",
    "create_model",
    "list_models",
    "register_model",
]
