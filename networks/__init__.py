"""If3D model zoo: DDAMFN (MixedFeatureNet + DDA heads), the If3D two-stream fusion models,
the SMIRK encoder and FLAME layer, and loaders for the original checkpoint formats.

Build by name with :func:`create_model`; load any supported weight file with
:func:`load_weights`.
"""

# importing a model module registers its builders (networks.ddamfn registers "ddamfn")
from networks.ddamfn import DDAMFN, DDAHead, attention_loss
from networks.if3d import If3DNet, infer_if3d_config
from networks.mixedfeaturenet import MixedFeatureNet
from networks.registry import create_model, list_models, register_model
from networks.weights import (
    CheckpointFormatError,
    LoadReport,
    UnsafePickleError,
    WeightLoadError,
    build_model_from_checkpoint,
    load_weights,
)

__all__ = [
    "CheckpointFormatError",
    "DDAHead",
    "DDAMFN",
    "If3DNet",
    "LoadReport",
    "MixedFeatureNet",
    "UnsafePickleError",
    "WeightLoadError",
    "attention_loss",
    "build_model_from_checkpoint",
    "create_model",
    "infer_if3d_config",
    "list_models",
    "load_weights",
    "register_model",
]
