"""The facial-landmark MobileFaceNet that POSTER and POSTER++ use for their landmark stream.

Chen, Liu, Gao, Han, "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on Mobile
Devices", CCBR 2018 (the architecture), trained as a 68-point landmark regressor (136 outputs) in
cunjian's ``pytorch_face_landmark``; POSTER (``models/mobilefacenet.py``, https://github.com/zczcwh/POSTER)
and POSTER++ (https://github.com/Talented-Q/POSTER_V2) build it as ``MobileFaceNet([112, 112], 136)``
and load ``models/pretrain/mobilefacenet_model_best.pth.tar`` (``{'state_dict': ...}``). Facts from
there (shapes at the 112×112 input the originals always give it)::

    conv1     3×3 s2 conv-BN-PReLU 3→64                       [B, 64, 56, 56]
    conv2_dw  3×3 depthwise conv-BN-PReLU                     [B, 64, 56, 56]
    conv_23   bottleneck 64→64, expansion 128, s2             [B, 64, 28, 28]
    conv_3    4 residual bottlenecks (128)                    [B, 64, 28, 28]   POSTER++ query 1
    conv_34   bottleneck 64→128, expansion 256, s2            [B, 128, 14, 14]
    conv_4    6 residual bottlenecks (256)                    [B, 128, 14, 14]  POSTER++ query 2
    conv_45   bottleneck 128→128, expansion 512, s2           [B, 128, 7, 7]
    conv_5    2 residual bottlenecks (256)                    [B, 128, 7, 7]
    conv_6_sep 1×1 conv-BN-PReLU 128→512                      [B, 512, 7, 7]    POSTER's landmark tokens
    output_layer (GDC) 7×7 depthwise conv-BN → Linear(512, 136, no bias) → BN1d   [B, 136] landmarks

A bottleneck (``Depth_Wise``) is 1×1 conv-BN-PReLU → 3×3 depthwise conv-BN-PReLU → 1×1 conv-BN, with an
identity shortcut inside the residual groups. The input is what POSTER feeds it: the ImageNet-normalised
face, resized to 112×112.

Module names follow the original (``conv1`` … ``conv_6_sep``, ``output_layer``; each conv block is
``conv``/``bn``/``prelu``, a residual group is ``conv_3.model.{i}``), so the landmark file loads with no
renaming; only the PReLU is called ``act`` as in the toolkit's :class:`~networks.mixedfeaturenet.ConvBnAct`
(``remap_state_dict`` with source ``"mobilefacenet"`` renames ``prelu`` → ``act``).

Weights: the file is found by :func:`find_landmark_weights` (``$IF3D_MOBILEFACENET_WEIGHTS``, else
``pretrained/mobilefacenet_model_best.pth.tar``); nothing is downloaded.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch.nn as nn
from torch import Tensor

from networks.mixedfeaturenet import ConvBnAct
from networks.registry import BackboneSpec, register_backbone

__all__ = ["LANDMARK_WEIGHTS_ENV", "LANDMARK_WEIGHTS_FILE", "LandmarkMobileFaceNet", "find_landmark_weights",
           "mobilefacenet", "remap_mobilefacenet_keys"]

#: environment variable naming the landmark MobileFaceNet weight file
LANDMARK_WEIGHTS_ENV = "IF3D_MOBILEFACENET_WEIGHTS"
#: where the file is looked for when the variable is unset (the authors' file name, under ``pretrained/``)
LANDMARK_WEIGHTS_FILE = Path("pretrained") / "mobilefacenet_model_best.pth.tar"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def find_landmark_weights() -> Path | None:
    """The landmark MobileFaceNet weight file: ``$IF3D_MOBILEFACENET_WEIGHTS`` when set, else
    ``pretrained/mobilefacenet_model_best.pth.tar`` (relative to the working directory) when it exists.

    Returns:
        The path, or None when the variable is unset and the default file is absent.

    Raises:
        FileNotFoundError: the variable names a file that does not exist (a wrong path is never ignored).
    """
    named = os.environ.get(LANDMARK_WEIGHTS_ENV)
    if named:
        path = Path(named)
        if not path.is_file():
            raise FileNotFoundError(f"${LANDMARK_WEIGHTS_ENV} names {path}, which is not a file")
        return path
    return LANDMARK_WEIGHTS_FILE if LANDMARK_WEIGHTS_FILE.is_file() else None


class DepthWise(nn.Module):
    """MobileFaceNet bottleneck: 1×1 expand → 3×3 depthwise (stride) → 1×1 linear projection (+ identity).

    Args:
        in_chs, out_chs: channels; groups: the expansion width; stride: of the depthwise conv;
        residual: add the input (only when ``in_chs == out_chs`` and stride 1).
    """

    def __init__(self, in_chs: int, out_chs: int, groups: int, stride: int = 2, residual: bool = False) -> None:
        super().__init__()
        self.conv = ConvBnAct(in_chs, groups, 1)
        self.conv_dw = ConvBnAct(groups, groups, 3, stride, 1, groups=groups)
        self.project = ConvBnAct(groups, out_chs, 1, act=False)
        self.residual = residual

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        return x + y if self.residual else y


class Residual(nn.Module):
    """``num_block`` residual :class:`DepthWise` bottlenecks of width ``groups`` (original name ``model``)."""

    def __init__(self, channels: int, num_block: int, groups: int) -> None:
        super().__init__()
        self.model = nn.Sequential(*(DepthWise(channels, channels, groups, 1, residual=True)
                                     for _ in range(num_block)))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class GDC(nn.Module):
    """Global depthwise conv head: 7×7 depthwise conv-BN → Linear(512, E, no bias) → BN1d; ``[B,512,7,7]`` → ``[B,E]``."""

    def __init__(self, embedding_size: int = 136) -> None:
        super().__init__()
        self.conv_6_dw = ConvBnAct(512, 512, 7, groups=512, act=False)
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.linear(self.conv_6_dw(x).flatten(1)))


class LandmarkMobileFaceNet(nn.Module):
    """MobileFaceNet landmark regressor (see the module docstring for the layers and shapes).

    Args:
        num_landmark_outputs: outputs of the GDC head (136 = 68 landmarks × (x, y)).
    """

    def __init__(self, num_landmark_outputs: int = 136) -> None:
        super().__init__()
        self.conv1 = ConvBnAct(3, 64, 3, 2, 1)
        self.conv2_dw = ConvBnAct(64, 64, 3, 1, 1, groups=64)
        self.conv_23 = DepthWise(64, 64, groups=128)
        self.conv_3 = Residual(64, num_block=4, groups=128)
        self.conv_34 = DepthWise(64, 128, groups=256)
        self.conv_4 = Residual(128, num_block=6, groups=256)
        self.conv_45 = DepthWise(128, 128, groups=512)
        self.conv_5 = Residual(128, num_block=2, groups=256)
        self.conv_6_sep = ConvBnAct(128, 512, 1)
        self.output_layer = GDC(num_landmark_outputs)

    def forward_stages(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Faces ``[B, 3, 112, 112]`` → ``(conv_3 [B,64,28,28], conv_4 [B,128,14,14], conv_6_sep [B,512,7,7])``."""
        x = self.conv_23(self.conv2_dw(self.conv1(x)))
        s3 = self.conv_3(x)
        s4 = self.conv_4(self.conv_34(s3))
        return s3, s4, self.conv_6_sep(self.conv_5(self.conv_45(s4)))

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, 112, 112]`` → ``[B, 512, 7, 7]`` (``conv_6_sep``)."""
        return self.forward_stages(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, 112, 112]`` → landmark regression ``[B, 136]`` (the original's first output)."""
        return self.output_layer(self.forward_features(x))

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Load the authors' landmark file (``source="mobilefacenet"``); protocol in docs/INTERFACES.md."""
        if source != "mobilefacenet":
            raise ValueError(f"MobileFaceNet cannot load weights of source {source!r} (supported: mobilefacenet)")
        return remap_mobilefacenet_keys(state_dict), None, []


def remap_mobilefacenet_keys(state_dict: Mapping[str, Tensor], src_prefix: str = "",
                             dst_prefix: str = "") -> dict[str, Tensor]:
    """Original MobileFaceNet keys (``conv_3.model.0.conv.prelu.weight`` …) → ours (``prelu`` → ``act``).

    Keys outside ``src_prefix`` are ignored; every other key keeps its name under ``dst_prefix``.
    """
    return {dst_prefix + re.sub(r"(^|\.)prelu\.", r"\1act.", k[len(src_prefix):]): v
            for k, v in state_dict.items() if k.startswith(src_prefix)}


@register_backbone(
    "mobilefacenet",
    BackboneSpec(input_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_channels=512, feature_size=7,
                 weights="68-point landmark regression (POSTER's models/pretrain/mobilefacenet_model_best.pth.tar; "
                         f"${LANDMARK_WEIGHTS_ENV} or {LANDMARK_WEIGHTS_FILE})",
                 find_weights=find_landmark_weights),
)
def mobilefacenet(num_landmark_outputs: int = 136, **kwargs) -> LandmarkMobileFaceNet:
    """Facial-landmark MobileFaceNet: ``forward_features`` [B,3,112,112] → [B,512,7,7]; ``forward`` → [B,136].

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"mobilefacenet() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return LandmarkMobileFaceNet(num_landmark_outputs)
