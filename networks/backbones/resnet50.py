"""The registered ``resnet50`` backbone: torchvision's ResNet-50 up to ``layer4`` (:mod:`networks.backbones.resnet`).

Used by GSDNet, which fine-tunes the VGGFace2 ResNet-50 (Cao et al., "VGGFace2: A dataset for recognising
faces across pose and age", FG 2018), MS-Celeb-1M pretrained and VGGFace2 fine-tuned, as published in
PyTorch form by the VGGFace2-pytorch project: ``resnet50_ft_weight.pkl`` /
``vgg_msceleb_resnet50_ft_weight.pkl`` (GSDNet's repository, github.com/476037156/GSDNet, reads the latter).
The file is a plain pickle of ``{name: numpy array}`` with torchvision's key names (``conv1.weight``
[64,3,7,7], ``bn1.running_mean`` …, ``layer4.2.bn3.running_var`` [2048], ``fc.weight`` [8631,2048],
``fc.bias`` [8631]) and no ``num_batches_tracked`` counters; ``networks.load_weights`` reads it without
running pickled code. That network is the Caffe layout: build with ``stride_in_1x1=True`` (GSDNet does).
torchvision's ImageNet ResNet-50 files load too (with ``stride_in_1x1=False``, torchvision's layout).
"""

from __future__ import annotations

from networks.backbones.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNetBackbone
from networks.registry import BackboneSpec, register_backbone

__all__ = ["resnet50"]


@register_backbone(
    "resnet50",
    BackboneSpec(
        input_size=224,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        out_channels=2048,
        feature_size=7,
        weights="VGGFace2 (MS-Celeb-1M pretrained) face recognition: vgg_msceleb_resnet50_ft_weight.pkl "
                "(the user's file; numpy pickle, torchvision key names, Caffe layout: stride_in_1x1=True); "
                "or torchvision's ImageNet file",
    ),
)
def resnet50(stride_in_1x1: bool = False, **kwargs) -> ResNetBackbone:
    """torchvision ResNet-50 without pooling and classifier: ``forward_features`` [B,3,224,224] → [B,2048,7,7].

    ``stride_in_1x1=True`` builds the Caffe layout of the VGGFace2 weights (same keys and shapes).
    """
    return ResNetBackbone(depth=50, stride_in_1x1=stride_in_1x1, **kwargs)
