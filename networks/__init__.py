"""If3D model zoo: DDAMFN (MixedFeatureNet + DDA heads), the If3D two-stream fusion models,
the SMIRK encoder and FLAME layer, their criteria, and loaders for the original checkpoint formats.

Build by name with :func:`create_model`; load any supported weight file with :func:`load_weights`;
get a model's training criterion with :func:`create_criterion`. Models, backbones, fusion strategies
and criteria are registered (:mod:`networks.registry`); ``list_models()``, ``list_backbones()``,
``list_fusions()``, ``list_criteria()`` show them.
"""

# importing a module registers what it defines (networks.ddamfn registers "ddamfn", networks.fusion the
# four If3D strategies and their models if3d_<strategy>, networks.criteria the criteria, networks.backbones
# the backbones of the model zoo, networks.zoo the published FER networks with their criteria and recipes,
# networks.au the AU regressor and its criterion)
from networks import au, backbones, criteria, fusion, zoo  # noqa: F401
from networks.criteria import Criterion, LossOutput
from networks.ddamfn import DDAMFN, DDAHead, attention_loss
from networks.if3d import If3DNet, infer_if3d_config
from networks.mixedfeaturenet import MixedFeatureNet
from networks.registry import (
    BackboneSpec,
    FusionSpec,
    ModelInfo,
    backbone_spec,
    create_backbone,
    create_criterion,
    create_fusion,
    create_model,
    fusion_spec,
    list_backbones,
    list_criteria,
    list_fusions,
    list_models,
    model_info,
    register_backbone,
    register_criterion,
    register_fusion,
    register_fusion_model,
    register_model,
)
from networks.safe_pickle import UnsafePickleError
from networks.weights import (
    CheckpointFormatError,
    LoadReport,
    WeightLoadError,
    build_model_from_checkpoint,
    load_weights,
    register_weight_source,
)

# the model if3d_<strategy> of every fusion strategy is the two-stream If3DNet built with that strategy
register_fusion_model(If3DNet)

# 3D face models (landmarks, voxels, distance maps, FLAME) and the landmark stream beside the photo
from networks import face3d  # noqa: E402, F401, I001  isort: skip

# video models (Emotion-FAN) last: they register the resnet18 backbone only when no module above did
from networks import video  # noqa: E402, F401, I001  isort: skip

# score-level ensembles of trained members of any registered model (python -m if3d.ensemble fits them)
from networks import ensemble  # noqa: E402, F401, I001  isort: skip

__all__ = [
    "BackboneSpec",
    "CheckpointFormatError",
    "Criterion",
    "DDAHead",
    "DDAMFN",
    "FusionSpec",
    "If3DNet",
    "LoadReport",
    "LossOutput",
    "MixedFeatureNet",
    "ModelInfo",
    "UnsafePickleError",
    "WeightLoadError",
    "attention_loss",
    "backbone_spec",
    "build_model_from_checkpoint",
    "create_backbone",
    "create_criterion",
    "create_fusion",
    "create_model",
    "fusion_spec",
    "infer_if3d_config",
    "list_backbones",
    "list_criteria",
    "list_fusions",
    "list_models",
    "load_weights",
    "model_info",
    "register_backbone",
    "register_criterion",
    "register_fusion",
    "register_fusion_model",
    "register_model",
    "register_weight_source",
]
