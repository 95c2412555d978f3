"""Registered backbones beyond MixedFeatureNet, one file each; importing a module registers its backbone."""

from networks.backbones import ir50, mobilefacenet, swin_t  # noqa: F401
