"""Swin-T (Swin Transformer, tiny) as a registered backbone, on timm's implementation.

Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows", ICCV 2021
(https://github.com/microsoft/Swin-Transformer); timm's ``swin_tiny_patch4_window7_224`` settings:
embedding 96, depths (2, 2, 6, 2), heads (3, 6, 12, 24), window 7, MLP ratio 4, stochastic depth 0.1.

Two layouts of the same network:

- ``patch_size=4, img_size=224`` (default): the ImageNet model, feature map ``[B, 768, 7, 7]`` at 224;
- ``patch_size=2, img_size=112``: the face Swin-T of LNSU-Net (``code/backbones/swin.py`` of
  https://github.com/zyh-uaiaaaa/Mine-Extra-Knowledge, an insightface-style Swin for 112×112 faces),
  feature map ``[B, 768, 7, 7]`` at 112.

Built with ``dynamic_img_size=True``, so other input sides work too (windows and masks follow the map).
``forward_features`` returns the final LayerNorm'd map channels-first. Weights come from the user's file
(``remap_state_dict`` with source ``"swin"``): timm's key names load as they are; the original Microsoft
layout (patch merging at the *end* of a stage, ``head.weight``) is renumbered (patch merging of stage
``i`` becomes timm's ``layers.{i+1}.downsample``); its ``relative_position_index`` and ``attn_mask``
buffers (recomputed here) and the ImageNet classifier ``head`` are discarded and reported. The patch
embedding is never resampled: a 4×4 ImageNet patch embedding does not load into the 2×2 layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from timm.models.swin_transformer import SwinTransformer
from torch import Tensor

from networks.registry import BackboneSpec, register_backbone

__all__ = ["SwinTiny", "remap_swin_keys", "swin_t"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SwinTiny(SwinTransformer):
    """timm's Swin-T without classifier whose ``forward_features`` gives a channels-first map.

    Args:
        img_size: the input side the windows and masks are first built for (other sides work).
        patch_size: 4 (ImageNet, 224) or 2 (LNSU-Net's face layout, 112).
        drop_path_rate: stochastic depth (0.1 as Swin-T and LNSU-Net).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 4, drop_path_rate: float = 0.1) -> None:
        super().__init__(img_size=img_size, patch_size=patch_size, num_classes=0, embed_dim=96, depths=(2, 2, 6, 2),
                         num_heads=(3, 6, 12, 24), window_size=7, drop_path_rate=drop_path_rate,
                         dynamic_img_size=True)
        self.out_channels = self.num_features

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` → final LayerNorm'd map ``[B, 768, S/(8·patch), S/(8·patch)]`` (7×7 at the
        built size; odd sides are padded by the patch merging)."""
        return super().forward_features(x).permute(0, 3, 1, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Load timm or original Microsoft Swin names (``source="swin"``); protocol in docs/INTERFACES.md."""
        if source != "swin":
            raise ValueError(f"Swin-T cannot load weights of source {source!r} (supported: swin)")
        return remap_swin_keys(state_dict)


def remap_swin_keys(state_dict: Mapping[str, Tensor], src_prefix: str = "", dst_prefix: str = "",
                    drop: tuple[str, ...] = ("head.",)) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
    """Rename a Swin state dict (timm or original layout) onto :class:`SwinTiny` keys.

    Args:
        state_dict: tensors; keys outside ``src_prefix`` are ignored.
        src_prefix, dst_prefix: prefixes of the source and of the target module.
        drop: source sub-keys (after ``src_prefix``) left out on purpose (the ImageNet classifier).

    Returns:
        ``(mapped, [dst_prefix] or None, discarded source keys)``.
    """
    own = {k[len(src_prefix):]: (k, v) for k, v in state_dict.items() if k.startswith(src_prefix)}
    original = "layers.0.downsample.reduction.weight" in own  # patch merging at the end of each stage
    mapped: dict[str, Tensor] = {}
    discarded: list[str] = []
    for rest, (key, value) in own.items():
        if rest.endswith(("relative_position_index", "attn_mask")) or rest.startswith(drop):
            discarded.append(key)
            continue
        if original:
            rest = re.sub(r"^layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) + 1}.downsample", rest)
        mapped[dst_prefix + rest] = value
    return mapped, [dst_prefix] if dst_prefix else None, discarded


@register_backbone(
    "swin_t",
    BackboneSpec(input_size=224, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_channels=768, feature_size=7,
                 weights="ImageNet-1k (timm swin_tiny_patch4_window7_224 or Microsoft's swin_tiny_patch4_window7_224.pth; "
                         "the user's own file)"),
)
def swin_t(img_size: int = 224, patch_size: int = 4, drop_path_rate: float = 0.1, **kwargs) -> SwinTiny:
    """Swin-T feature extractor: ``forward_features`` [B,3,224,224] → [B,768,7,7] (``patch_size=2``: 112 → 7×7).

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"swin_t() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return SwinTiny(img_size=img_size, patch_size=patch_size, drop_path_rate=drop_path_rate)
