"""ResNet feature extractors (torchvision's definitions) shared by the registered ``resnet18`` and ``resnet50``.

He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; the architecture is
torchvision's ``torchvision.models.resnet18`` / ``resnet50`` (built without weights: nothing is downloaded),
kept with torchvision's module names (``conv1``, ``bn1``, ``layer1`` … ``layer4``) and without ``avgpool``
and ``fc``, so the published pretraining files load key by key.

Pretrained weights come from the user's files through ``networks.load_weights`` / ``--pretrained``; this
module registers their layout (``networks.weights.register_weight_source``) as the source
``"torchvision_resnet"``: a state dict whose top-level keys
are exactly ``conv1, bn1, layer1 … layer4`` and optionally ``fc`` — torchvision's ImageNet files, the
MS-Celeb-1M ResNet-18 ``resnet18_msceleb.pth`` that DAN and Ada-DF load (``{'state_dict': {...}}`` with
torchvision's key names and a 1000-way ``fc``), and VGGFace2's ResNet-50 pickles that GSDNet loads
(``{name: numpy array}``, 8631-way ``fc``). The ``fc`` layer is a face-recognition or ImageNet head: the
models leave it out and report its keys as discarded. Files without BatchNorm ``num_batches_tracked``
counters (VGGFace2's pickles, files of torch < 0.4.1) load with those counters at 0; they matter only for
BatchNorm with ``momentum=None``, which no model here uses.

Deliberate option: ``stride_in_1x1=True`` (bottleneck ResNets only) gives the Caffe layout of the VGGFace2
ResNet-50 that GSDNet fine-tunes — the stride-2 of each stage's first block on its 1×1 ``conv1`` instead of
the 3×3 ``conv2`` (torchvision's "ResNet v1.5"), and a 3×3/2 max-pool without padding, rounding up. The
parameters and key names are the same; only the computation differs, so those weights compute what they
were trained to compute.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn
import torchvision
from torch import Tensor

from networks.weights import register_weight_source

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RESNET_KEYS",
    "ResNetBackbone",
    "remap_torchvision_resnet",
]

#: RGB mean / std of torchvision's ImageNet normalisation (pixels in [0, 1]); DAN, Ada-DF, MFER and GSDNet
#: normalise their inputs with it.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Top-level modules of a torchvision ResNet that hold weights, in order (``fc`` is not part of a backbone).
RESNET_KEYS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
_BUILDERS = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50,
             101: torchvision.models.resnet101}


class ResNetBackbone(nn.Module):
    """torchvision ResNet without ``avgpool`` and ``fc``: stem, then four stages.

    Args:
        depth: 18, 34 (basic blocks), 50 or 101 (bottlenecks).
        stride_in_1x1: Caffe layout of the VGGFace2 ResNet-50 (see the module docstring); bottleneck
            depths only.

    Attributes:
        conv1, bn1, relu, maxpool: the stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool).
        layer1 … layer4: the stages; their output widths are :attr:`stage_channels`.
        stage_channels: ``(64, 128, 256, 512)`` for 18/34, ``(256, 512, 1024, 2048)`` for 50/101.
        num_features: channels of the ``layer4`` map.

    Shapes (input ``[B, 3, S, S]``, ImageNet-normalised float): ``layer1`` ``[B, c1, S/4, S/4]`` …
    ``layer4`` ``[B, c4, S/32, S/32]`` (rounded up; 7×7 at 224, 4×4 at 112).

    Raises:
        ValueError: an unsupported depth, or ``stride_in_1x1`` with basic blocks.
    """

    def __init__(self, depth: int = 18, stride_in_1x1: bool = False) -> None:
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"ResNet depth must be one of {sorted(_BUILDERS)}, got {depth}")
        net = _BUILDERS[depth](weights=None)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.stage_channels = tuple(_out_channels(stage) for stage in self.stages)
        self.num_features = self.stage_channels[-1]
        self.stride_in_1x1 = bool(stride_in_1x1)
        if stride_in_1x1:
            if not isinstance(self.layer1[0], torchvision.models.resnet.Bottleneck):
                raise ValueError(f"stride_in_1x1 is the layout of bottleneck ResNets; ResNet-{depth} has basic blocks")
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
            for stage in self.stages:
                first = stage[0]
                stride = first.conv2.stride
                first.conv1.stride, first.conv2.stride = stride, (1, 1)

    @property
    def stages(self) -> tuple[nn.Sequential, nn.Sequential, nn.Sequential, nn.Sequential]:
        """``(layer1, layer2, layer3, layer4)``."""
        return (self.layer1, self.layer2, self.layer3, self.layer4)

    def forward_stem(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` → stem map ``[B, 64, S/4, S/4]`` (conv, BN, ReLU, max-pool)."""
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Faces ``[B, 3, S, S]`` → the four stage maps ``[B, c_i, S/2^(i+2), …]``, i = 0..3."""
        maps = []
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` → ``layer4`` map ``[B, num_features, S/32, S/32]``."""
        x = self.forward_stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Same as :meth:`forward_features`."""
        return self.forward_features(x)


def _out_channels(stage: nn.Sequential) -> int:
    block = stage[-1]
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return int(last_bn.num_features)


def remap_torchvision_resnet(
    state_dict: Mapping[str, Tensor], model_state: Mapping[str, Tensor], dst_prefix: str
) -> tuple[dict[str, Tensor], list[str]]:
    """torchvision ResNet keys (``conv1.weight``, ``layer3.1.bn2.running_var`` …) → ``dst_prefix`` + same key.

    Args:
        state_dict: a ``"torchvision_resnet"`` file's tensors.
        model_state: the target model's ``state_dict()`` (to supply missing ``num_batches_tracked``
            counters, see the module docstring).
        dst_prefix: where the backbone sits in the model, e.g. ``"backbone."``.

    Returns:
        ``(mapped, discarded)``: the renamed tensors, and the source keys left out on purpose (``fc.*``).
    """
    mapped: dict[str, Tensor] = {}
    discarded: list[str] = []
    for key, value in state_dict.items():
        if key.split(".", 1)[0] == "fc":
            discarded.append(key)
        else:
            mapped[dst_prefix + key] = value
    for key in model_state:
        if key.startswith(dst_prefix) and key.endswith("num_batches_tracked") and key not in mapped:
            running_mean = key[: -len("num_batches_tracked")] + "running_mean"
            if running_mean in mapped:
                mapped[key] = torch.zeros((), dtype=torch.int64)
    return mapped, discarded


def _is_torchvision_resnet(state_dict: Mapping[str, Tensor]) -> bool:
    tops = {k.split(".", 1)[0] for k in state_dict}
    return set(RESNET_KEYS) <= tops <= {*RESNET_KEYS, "fc"}


# a pretrained backbone, not a whole model: the file is loaded into a model built first (--pretrained)
register_weight_source("torchvision_resnet", _is_torchvision_resnet)
