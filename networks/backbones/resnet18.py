"""The registered ``resnet18`` backbone: torchvision's ResNet-18 up to ``layer4`` (:mod:`networks.backbones.resnet`).

Used by DAN, Ada-DF and MFER, which start from a ResNet-18 trained for face recognition on MS-Celeb-1M.
That file is the user's: DAN (github.com/yaoing/DAN, ``models/resnet18_msceleb.pth``) and Ada-DF
(github.com/taylor-xy0827/Ada-DF, ``pretrain/resnet18_msceleb.pth``) both load it strictly into a
torchvision/timm ResNet-18, so its layout is ``{'state_dict': {conv1.weight [64,3,7,7], bn1.{weight, bias,
running_mean, running_var, num_batches_tracked}, layer1.0.conv1.weight [64,64,3,3], …,
layer4.1.bn2.running_var [512], fc.weight [1000,512], fc.bias [1000]}}`` — 122 tensors, torchvision's key
names (a ``module.`` prefix is stripped). ``--pretrained resnet18_msceleb.pth`` loads it into the model's
backbone(s); ``fc`` is reported as discarded.
"""

from __future__ import annotations

from networks.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNetBackbone
from networks.registry import BackboneSpec, register_backbone

__all__ = ["resnet18"]


@register_backbone(
    "resnet18",
    BackboneSpec(
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        out_channels=512,
        feature_size=7,
        weights="MS-Celeb-1M face recognition: resnet18_msceleb.pth of DAN / Ada-DF (the user's file, "
                "torchvision key names); or torchvision's ImageNet file",
    ),
)
def resnet18(**kwargs) -> ResNetBackbone:
    """torchvision ResNet-18 without pooling and classifier: ``forward_features`` [B,3,224,224] → [B,512,7,7]."""
    return ResNetBackbone(depth=18, **kwargs)
