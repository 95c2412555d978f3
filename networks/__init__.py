"""If3D model zoo: DDAMFN (MixedFeatureNet + DDA heads), the If3D two-stream fusion models,
the SMIRK encoder and FLAME layer, and loaders for the original checkpoint formats.

Build by name with :func:`create_model`; load any supported weight file with
:func:`load_weights`.
"""

from networks.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
