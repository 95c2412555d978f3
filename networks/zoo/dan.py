"""DAN: Distract your Attention Network, multi-head cross attention for facial expression recognition.

Wen, Lin, Wang, Xu, "Distract Your Attention: Multi-head Cross Attention Network for Facial Expression
Recognition", Biomimetics 8(2):199, 2023 (arXiv:2109.07270); authors' implementation
https://github.com/yaoing/DAN (``networks/dan.py``, ``affectnet.py``, ``rafdb.py``).

Three parts, with shapes for a 224×224 input (``K`` heads, ``C`` classes)::

    feature clustering network (FCN)   x [B,3,224,224] --ResNet-18 to layer4--> f [B,512,7,7]
                                       trained with the affinity loss (class centres [C,512])
    multi-head cross attention (MAN)   h_k = channel_att_k(spatial_att_k(f))       [B,512], k = 1..K
        spatial attention:  y = ReLU(BN(conv3×3(r)) + BN(conv1×3(r)) + BN(conv3×1(r))), r = BN(conv1×1(f))
                            s = f · Σ_c y                                          [B,512,7,7]
        channel attention:  v = GAP(s); h = v · sigmoid(fc2(ReLU(BN(fc1(v)))))      [B,512]
    attention fusion (AFN)             H = log_softmax over heads of [h_1..h_K]    [B,K,512] (K > 1)
                                       logits = BN1d(fc(Σ_k H_k))                   [B,C]
                                       trained with the partition loss on H

Losses (:class:`DANCriterion`, the authors' ``AffinityLoss`` and ``PartitionLoss``): cross-entropy +
affinity + partition, all weight 1. Recipe (``affectnet.py``, AffectNet-7/-8): Adam, lr 1e-4, no weight
decay, ``ExponentialLR(0.6)`` stepped per epoch, batch 256, class-balanced sampling, 40 epochs (the
authors' README runs AffectNet for 10); input 224×224, ImageNet normalisation. Their RAF-DB recipe (SGD lr
0.1, momentum 0.9, weight decay 1e-4, StepLR 10 × 0.1) needs an SGD optimizer the engine does not offer.
Parameters: 19.72 M with 8 classes and 4 heads, as the authors' model (plus the 8×512 class centres, which
the authors keep in the loss).

Weights: ``--pretrained resnet18_msceleb.pth`` (see :mod:`networks.backbones.resnet18`) fills the ResNet;
the authors' checkpoints (``affecnet8_epoch5_acc0.6209.pth``, ``affecnet7_epoch6_acc0.6569.pth``,
``rafdb_epoch21_acc0.897_bacc0.8275.pth``: ``{'iter', 'model_state_dict', 'optimizer_state_dict'}``) load
with ``networks.load_weights`` (source ``"dan"``) and test directly with ``affectnet_fusion_test.py``.
Their AffectNet checkpoints use AffectNet's class order (ours); the RAF-DB one uses RAF-DB's (Surprise,
Fear, Disgust, Happiness, Sadness, Anger, Neutral), which the test script cannot know from the file.

Deliberate deviations:

* The class centres are a parameter of the model (``class_centers``), returned in the output, instead of a
  parameter of the loss: the engine optimises the model's parameters, and the centres are saved and resumed
  with it. The authors' checkpoints do not hold them; loading one leaves them as initialised.
* The affinity loss clamps the true-class distances to [1e-12, 1e12] as the authors' does, but not the
  masked-out zeros of the other classes (which added (C − 1)·1e-12 per sample to theirs).
* The engine's augmentation (flip, affine, erasing; same for every model) replaces the authors' torchvision
  pipeline.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.backbones.resnet import ResNetBackbone, remap_torchvision_resnet
from networks.criteria import Criterion, LossOutput
from networks.registry import backbone_spec, create_backbone, register_criterion, register_model
from networks.weights import register_weight_source
from networks.zoo._common import reject_arguments, remap_prefixes, top_level_keys

__all__ = [
    "DAN",
    "ChannelAttention",
    "CrossAttentionHead",
    "DANCriterion",
    "DANOutput",
    "SpatialAttention",
    "affinity_loss",
    "dan",
    "partition_loss",
]


@dataclass
class DANOutput:
    """Result of :class:`DAN`.

    Attributes:
        logits: [B, C] expression logits (after the logit BatchNorm, as the authors').
        features: [B, D, h, w] ResNet ``layer4`` map (D = 512; 7×7 at 224, 4×4 at 112): the affinity loss
            input.
        heads: [B, K, D] head vectors, log-softmaxed across the K heads when K > 1: the partition loss input.
        class_centers: [C, D] the learnable class centres of the affinity loss (the model's parameter).
    """

    logits: Tensor
    features: Tensor
    heads: Tensor
    class_centers: Tensor


def _conv_bn(in_channels: int, out_channels: int, kernel: int | tuple[int, int],
             padding: int | tuple[int, int] = 0) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, padding=padding),
                         nn.BatchNorm2d(out_channels))


class SpatialAttention(nn.Module):
    """DAN's spatial attention unit: a 1×1 reduction, then 3×3, 1×3 and 3×1 convolutions summed.

    ``y = ReLU(Σ_{k ∈ 3×3, 1×3, 3×1} BN(conv_k(BN(conv1×1(x)))))``; ``out = x · Σ_c y`` (one spatial map,
    broadcast over channels).

    Args:
        channels: D of the input map (512).
        reduced: channels after the 1×1 reduction (256 in DAN: D/2).

    Shapes: ``[B, D, h, w]`` → ``[B, D, h, w]``.
    """

    def __init__(self, channels: int = 512, reduced: int = 256) -> None:
        super().__init__()
        self.reduce = _conv_bn(channels, reduced, 1)
        self.conv3x3 = _conv_bn(reduced, channels, 3, padding=1)
        self.conv1x3 = _conv_bn(reduced, channels, (1, 3), padding=(0, 1))
        self.conv3x1 = _conv_bn(reduced, channels, (3, 1), padding=(1, 0))

    def forward(self, x: Tensor) -> Tensor:
        r = self.reduce(x)
        y = F.relu(self.conv3x3(r) + self.conv1x3(r) + self.conv3x1(r))
        return x * y.sum(dim=1, keepdim=True)


class ChannelAttention(nn.Module):
    """DAN's channel attention unit: squeeze-and-excitation on the pooled spatially attended map.

    ``v = GAP(x)``; ``out = v · sigmoid(fc2(ReLU(BN(fc1(v)))))``.

    Args:
        channels: D (512).
        hidden: width of the bottleneck (32 in DAN: D/16).

    Shapes: ``[B, D, h, w]`` → ``[B, D]``.
    """

    def __init__(self, channels: int = 512, hidden: int = 32) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: Tensor) -> Tensor:
        v = x.mean(dim=(2, 3))
        return v * torch.sigmoid(self.fc2(F.relu(self.bn(self.fc1(v)))))


class CrossAttentionHead(nn.Module):
    """One attention head of DAN's multi-head cross attention network: spatial, then channel attention.

    Initialised as the authors' ``CrossAttentionHead.init_weights``: convolutions Kaiming-normal
    (fan-out) with zero bias, BatchNorm weight 1 and bias 0, linear layers normal(0, 0.001) with zero bias.

    Shapes: ``[B, D, h, w]`` → ``[B, D]``.
    """

    def __init__(self, channels: int = 512) -> None:
        super().__init__()
        self.spatial = SpatialAttention(channels, channels // 2)
        self.channel = ChannelAttention(channels, max(1, channels // 16))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.channel(self.spatial(x))


class DAN(nn.Module):
    """DAN classifier (the authors' ``DAN``).

    Args:
        num_classes: C (8 for AffectNet-8, 7 for AffectNet-7 / RAF-DB).
        num_heads: K attention heads (4 in the paper).
        backbone: registered backbone with a ``forward_features`` map (default ``resnet18``).

    Attributes:
        backbone, backbone_spec: the feature clustering network and its spec (input 224, ImageNet mean/std).
        heads: ``nn.ModuleList`` of K :class:`CrossAttentionHead`.
        fc: ``Linear(D, C)``; logit_bn: ``BatchNorm1d(C)`` applied to the logits (the authors' ``bn``).
        class_centers: ``[C, D]`` parameter, N(0, 1) initialised (the affinity loss's centres).
        input_streams: ``("photo",)``.

    Raises:
        ValueError: ``num_classes`` < 1 or ``num_heads`` < 1.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 8, num_heads: int = 4, backbone: str = "resnet18") -> None:
        super().__init__()
        if num_classes < 1 or num_heads < 1:
            raise ValueError(f"DAN needs num_classes >= 1 and num_heads >= 1, got {num_classes}, {num_heads}")
        self.num_classes, self.num_heads = int(num_classes), int(num_heads)
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)
        self.backbone = create_backbone(backbone)
        channels = self.backbone_spec.out_channels
        self.heads = nn.ModuleList(CrossAttentionHead(channels) for _ in range(num_heads))
        self.fc = nn.Linear(channels, num_classes)
        self.logit_bn = nn.BatchNorm1d(num_classes)
        self.class_centers = nn.Parameter(torch.randn(num_classes, channels))

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised) → feature map ``[B, D, S/32, S/32]``."""
        return self.backbone.forward_features(x)

    def forward_heads(self, features: Tensor) -> Tensor:
        """Feature map ``[B, D, h, w]`` → head vectors ``[B, K, D]`` (log-softmax across heads when K > 1)."""
        heads = torch.stack([head(features) for head in self.heads], dim=1)
        return F.log_softmax(heads, dim=1) if heads.shape[1] > 1 else heads

    def forward(self, x: Tensor) -> DANOutput:
        """Faces ``[B, 3, S, S]`` → :class:`DANOutput` (logits ``[B, C]``)."""
        features = self.forward_features(x)
        heads = self.forward_heads(features)
        logits = self.logit_bn(self.fc(heads.sum(dim=1)))
        return DANOutput(logits=logits, features=features, heads=heads, class_centers=self.class_centers)

    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (protocol in docs/INTERFACES.md).

        Args:
            state_dict: the file's tensors (``module.`` stripped).
            source: ``"torchvision_resnet"`` (a pretrained ResNet → ``backbone.``, ``fc`` discarded) or
                ``"dan"`` (an authors' checkpoint: ``features.{0,1,4,5,6,7}`` → ``backbone.{conv1, bn1,
                layer1..4}``, ``cat_head{k}.sa.{conv1x1, conv_3x3, conv_1x3, conv_3x1}`` →
                ``heads.{k}.spatial.{reduce, conv3x3, conv1x3, conv3x1}``, ``cat_head{k}.ca.attention.{0,1,3}``
                → ``heads.{k}.channel.{fc1, bn, fc2}``, ``fc`` → ``fc``, ``bn`` → ``logit_bn``; the class
                centres are not in the file and keep their values).

        Returns:
            ``(mapped, prefixes, discarded)``.

        Raises:
            ValueError: an unsupported source, or a ResNet file for a non-ResNet backbone.
        """
        if source in ("torchvision_resnet", "dan") and not isinstance(self.backbone, ResNetBackbone):
            raise ValueError(f"{source} weights hold a ResNet; this model's backbone is {self.backbone_name!r}")
        if source == "torchvision_resnet":
            mapped, discarded = remap_torchvision_resnet(state_dict, self.state_dict(), "backbone.")
            return mapped, ["backbone."], discarded
        if source == "dan":
            rules = [(f"features.{i}.", f"backbone.{name}.") for i, name in
                     ((0, "conv1"), (1, "bn1"), (4, "layer1"), (5, "layer2"), (6, "layer3"), (7, "layer4"))]
            for k in range(_count_heads(state_dict)):
                rules += [(f"cat_head{k}.sa.conv1x1.", f"heads.{k}.spatial.reduce."),
                          (f"cat_head{k}.sa.conv_3x3.", f"heads.{k}.spatial.conv3x3."),
                          (f"cat_head{k}.sa.conv_1x3.", f"heads.{k}.spatial.conv1x3."),
                          (f"cat_head{k}.sa.conv_3x1.", f"heads.{k}.spatial.conv3x1."),
                          (f"cat_head{k}.ca.attention.0.", f"heads.{k}.channel.fc1."),
                          (f"cat_head{k}.ca.attention.1.", f"heads.{k}.channel.bn."),
                          (f"cat_head{k}.ca.attention.3.", f"heads.{k}.channel.fc2.")]
            rules += [("fc.", "fc."), ("bn.", "logit_bn.")]
            mapped, discarded = remap_prefixes(state_dict, rules)
            return mapped, ["backbone.", "heads.", "fc.", "logit_bn."], discarded
        raise ValueError(f"DAN cannot load weights of source {source!r} (supported: torchvision_resnet, dan)")


_HEAD_KEY = re.compile(r"^cat_head(\d+)\.")


def _count_heads(state_dict: Mapping[str, Any]) -> int:
    ids = {int(m.group(1)) for k in state_dict if (m := _HEAD_KEY.match(k))}
    return max(ids) + 1 if ids else 0


def _is_dan_checkpoint(state_dict: Mapping[str, Tensor]) -> bool:
    return ("features" in top_level_keys(state_dict) and "fc.weight" in state_dict
            and any(_HEAD_KEY.match(k) and ".sa." in k for k in state_dict))


# a DAN checkpoint (github.com/yaoing/DAN) holds the whole model
register_weight_source("dan", _is_dan_checkpoint, build=lambda sd: (
    "dan", {"num_classes": int(sd["fc.weight"].shape[0]), "num_heads": _count_heads(sd)}))


# ============================================================================================ losses


def affinity_loss(features: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
    """DAN's affinity loss: squared distance to the own class centre over the spread of the centres.

    ``L = (1/B) Σ_i clamp(‖x_i − c_{y_i}‖² / Σ_j Var_c(c_{·j}), 1e-12, 1e12)`` with ``x_i`` the globally
    average-pooled feature map and ``Var_c`` the unbiased variance over the C centres of each feature
    dimension j (the authors' ``AffinityLoss``). It pulls features to their centre and pushes centres apart.

    Args:
        features: [B, D, h, w] (or [B, D]) feature maps.
        labels: [B] int64 class indices.
        centers: [C, D] class centres, C ≥ 2.

    Returns:
        [] float32.
    """
    x = features.float()
    if x.dim() == 4:
        x = x.mean(dim=(2, 3))
    c = centers.float()
    dist = (x - c.index_select(0, labels)).pow(2).sum(dim=1) / c.var(dim=0).sum()
    return dist.clamp(min=1e-12, max=1e12).sum() / x.shape[0]


def partition_loss(heads: Tensor) -> Tensor:
    """DAN's partition loss: ``L = log(1 + K / mean(Var_k(H)))`` over heads ``H`` [B, K, D].

    ``Var_k`` is the unbiased variance across the K heads of each sample and dimension, averaged over B
    and D (the authors' ``PartitionLoss``); it pushes the heads to attend to different regions. With one
    head the loss is 0.

    Returns:
        [] float32.
    """
    num_heads = heads.shape[1]
    if num_heads < 2:
        return heads.new_zeros((), dtype=torch.float32)
    return torch.log1p(num_heads / heads.float().var(dim=1).mean())


@register_criterion("dan")
class DANCriterion(Criterion):
    """DAN's training loss: ``L = CE(logits, y) + 1·affinity + 1·partition`` (the authors' ``affectnet.py``).

    ``forward(output, batch)``: ``output`` a :class:`DANOutput`, ``batch["label"]`` [B] int64 → terms
    ``ce``, ``affinity`` (:func:`affinity_loss`), ``partition`` (:func:`partition_loss`), float32.
    """

    terms = ("ce", "affinity", "partition")
    default_weights = {"ce": 1.0, "affinity": 1.0, "partition": 1.0}

    def forward(self, output: DANOutput, batch: Mapping[str, Tensor]) -> LossOutput:
        labels = batch["label"].to(output.logits.device)
        return self.combine({
            "ce": F.cross_entropy(output.logits.float(), labels),
            "affinity": affinity_loss(output.features, labels, output.class_centers),
            "partition": partition_loss(output.heads),
        })


@register_model(
    criterion="dan",
    final_checkpoint="DAN.pth",
    recipe={"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "scheduler": "exponential", "exp_gamma": 0.6,
            "batch_size": 256, "epochs": 40, "balanced_sampling": True},
)
def dan(num_classes: int = 8, num_heads: int = 4, backbone: str = "resnet18", **kwargs) -> DAN:
    """DAN (Wen et al. 2023): ResNet-18 + K cross-attention heads + attention fusion; 224×224 in the paper.

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("dan", kwargs)
    return DAN(num_classes=num_classes, num_heads=num_heads, backbone=backbone)

