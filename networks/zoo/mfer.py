"""MFER: multiscale facial expression recognition with dynamic global and static local (DS) attention.

Xu, Li, Yang, He, Luo, "Multiscale Facial Expression Recognition Based on Dynamic Global and Static Local
Attention", IEEE Transactions on Affective Computing, 2024; authors' repository
https://github.com/XuJ1E/MFER (``model/attention.py``, ``model/multiscale.py``, ``model/smooth_feature.py``,
``train.py``; the full training code and weights were announced, not released).

Network (shapes for a 224×224 input on the ResNet-18 of the FER-crossval protocol, ``C`` classes)::

    x [B,3,224,224] → stem, layer1, layer2 → layer3 [B,256,14,14] → DS attention
                   → layer4 [B,512,7,7] → DS attention → GAP → LayerNorm → f [B,512]
    multiscale classifiers  z_s = fc2_s(GELU(fc1_s(f[:, :d_s]))),  d_s ∈ {D/2, 3D/4, D}   [B,C] each
    logits = Σ_s z_s

DS attention on a map X [B,c,h,w], tokens x_p ∈ R^c at the h·w positions p (the authors' ``Attention``)::

    static local:    L = LayerNorm(GELU(conv7×7(X)))            (a fixed 7×7 neighbourhood per position)
    dynamic global:  K = MLP(x_p) ⊙ x_p  (c → c/8 → c, GELU)    (an input-dependent gate per token)
    V = Linear(x_p)
    Y_p = softmax_over_positions(L + K)_p ⊙ V_p;   out = Y + X

Losses (:class:`MFERCriterion`): label-smoothing cross-entropy (ε = 0.1) summed over the three scale
classifiers + 0.001 × a feature loss with learnable class centres. Recipe (the authors' ``train.py``):
AdamW (lr 1e-3, torch's weight decay 0.01), ``ExponentialLR(0.95)`` per epoch, batch 32, 100 epochs, no
class balancing; input 224×224, ImageNet normalisation.

Deliberate deviations, because the authors' code is incomplete or on another backbone:

* Backbone: the brief of the FER-crossval protocol builds MFER on an MS-Celeb-1M ResNet-18 (registered
  ``resnet18``, ``--pretrained resnet18_msceleb.pth``); the authors' repository builds it on ConvNeXt-Base
  (dims 128–1024, stochastic depth 0.25) with DS attention closing its last two stages, on an MS-Celeb-1M
  ConvNeXt they did not release. Here DS attention closes ``layer3`` and ``layer4``, and the three
  classifiers read the first half, three quarters and all of the pooled feature, the proportions of the
  authors' 512 / 768 / 1024 of 1024. Parameters: 28.14 M with 7 classes (the table gives none; the
  ConvNeXt-Base version has about 4× as many). Any registered backbone with a ResNet's stages works.
* Feature loss: the paper's "DSF" loss is not public (``FeatureLoss`` is referenced, never defined); the
  center loss of Wen et al. (ECCV 2016), ``(1/2B) Σ_i ‖f_i − c_{y_i}‖²``, stands in for it, its centres a
  parameter of the model (``class_centers``). Its weight 0.001 is the authors' ``--weight_loss``.
* Prediction: the sum of the three classifiers' logits, as the authors' training script accumulates them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.backbones.resnet import ResNetBackbone, remap_torchvision_resnet
from networks.criteria import Criterion, LossOutput
from networks.registry import backbone_spec, create_backbone, register_criterion, register_model
from networks.zoo._common import reject_arguments

__all__ = [
    "DSAttention",
    "MFER",
    "MFERCriterion",
    "MFEROutput",
    "ScaleClassifier",
    "center_loss",
    "label_smoothing_cross_entropy",
    "mfer",
]


@dataclass
class MFEROutput:
    """Result of :class:`MFER`.

    Attributes:
        logits: [B, C] sum of the scale classifiers' logits (the prediction).
        scale_logits: [S, B, C] each scale classifier's logits (S = 3, smallest scale first).
        features: [B, D] pooled, layer-normalised feature f (the feature loss input).
        class_centers: [C, D] learnable class centres of the feature loss (the model's parameter).
    """

    logits: Tensor
    scale_logits: Tensor
    features: Tensor
    class_centers: Tensor


class DSAttention(nn.Module):
    """Dynamic global and static local attention (the authors' ``Attention``), with a residual connection.

    Args:
        channels: c of the map.
        kernel_size: side of the static local convolution (7).

    Shapes: ``[B, c, h, w]`` → ``[B, c, h, w]`` (formula in the module docstring; the softmax runs over the
    h·w positions of each channel).
    """

    def __init__(self, channels: int, kernel_size: int = 7) -> None:
        super().__init__()
        self.key = nn.Sequential(nn.Linear(channels, max(1, channels // 8)), nn.GELU(),
                                 nn.Linear(max(1, channels // 8), channels))
        self.value = nn.Linear(channels, channels)
        self.local = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1)  # [B, h, w, c]
        value = self.value(tokens).reshape(b, h * w, c)
        key = (self.key(tokens) * tokens).reshape(b, h * w, c)
        local = self.norm(F.gelu(self.local(x)).permute(0, 2, 3, 1)).reshape(b, h * w, c)
        y = torch.softmax(local + key, dim=1) * value
        return y.reshape(b, h, w, c).permute(0, 3, 1, 2) + x


class ScaleClassifier(nn.Module):
    """One multiscale classifier: ``fc2(GELU(fc1(f[:, :width])))`` (the authors' ``classifier``).

    Shapes: ``[B, D]`` (D ≥ width) → ``[B, C]``.
    """

    def __init__(self, width: int, num_classes: int) -> None:
        super().__init__()
        self.width = int(width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(features[:, : self.width])))


class MFER(nn.Module):
    """MFER classifier on a ResNet (see the module docstring for the deviations from the authors' ConvNeXt).

    Args:
        num_classes: C (7 in the paper's RAF-DB / AffectNet-7 tables, 8 for AffectNet-8).
        backbone: registered ResNet backbone (default ``resnet18``).
        scales: fractions of the pooled feature read by the classifiers (1/2, 3/4, 1).

    Attributes:
        backbone, backbone_spec: the ResNet and its spec (input 224, ImageNet mean/std).
        attention3, attention4: :class:`DSAttention` after ``layer3`` and ``layer4``.
        norm: ``LayerNorm(D)`` of the pooled feature.
        classifiers: ``nn.ModuleList`` of :class:`ScaleClassifier`.
        class_centers: ``[C, D]`` parameter (N(0, 1) initialised).
        input_streams: ``("photo",)``.

    Raises:
        ValueError: a non-ResNet backbone, C < 1, or a scale outside (0, 1].
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18",
                 scales: tuple[float, ...] = (0.5, 0.75, 1.0)) -> None:
        super().__init__()
        if num_classes < 1 or not scales or not all(0.0 < s <= 1.0 for s in scales):
            raise ValueError(f"MFER needs num_classes >= 1 and scales in (0, 1], got {num_classes}, {scales}")
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)
        self.backbone = create_backbone(backbone)
        if not isinstance(self.backbone, ResNetBackbone):
            raise ValueError(f"MFER places DS attention after ResNet stages; backbone {backbone!r} is not a ResNet")
        c3, c4 = self.backbone.stage_channels[2:]
        self.attention3, self.attention4 = DSAttention(c3), DSAttention(c4)
        self.norm = nn.LayerNorm(c4)
        self.classifiers = nn.ModuleList(ScaleClassifier(round(c4 * s), num_classes) for s in scales)
        self.class_centers = nn.Parameter(torch.randn(num_classes, c4))

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised) → attended ``layer4`` map ``[B, D, S/32, S/32]``."""
        b = self.backbone
        x = b.layer2(b.layer1(b.forward_stem(x)))
        x = self.attention3(b.layer3(x))
        return self.attention4(b.layer4(x))

    def forward(self, x: Tensor) -> MFEROutput:
        """Faces ``[B, 3, S, S]`` → :class:`MFEROutput` (logits ``[B, C]``)."""
        features = self.norm(self.forward_features(x).mean(dim=(2, 3)))
        scale_logits = torch.stack([clf(features) for clf in self.classifiers])
        return MFEROutput(logits=scale_logits.sum(dim=0), scale_logits=scale_logits, features=features,
                          class_centers=self.class_centers)

    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (protocol in docs/INTERFACES.md).

        Args:
            state_dict: the file's tensors.
            source: ``"torchvision_resnet"`` (``resnet18_msceleb.pth`` → ``backbone.``, ``fc`` discarded).

        Returns:
            ``(mapped, prefixes, discarded)``.

        Raises:
            ValueError: an unsupported source (the authors released no MFER weights).
        """
        if source == "torchvision_resnet":
            mapped, discarded = remap_torchvision_resnet(state_dict, self.state_dict(), "backbone.")
            return mapped, ["backbone."], discarded
        raise ValueError(f"MFER cannot load weights of source {source!r} (supported: torchvision_resnet)")


# ============================================================================================ losses


def label_smoothing_cross_entropy(logits: Tensor, labels: Tensor, smoothing: float = 0.1) -> Tensor:
    """``mean_i [(1 − ε)·(−log p_{i,y_i}) + ε·mean_c(−log p_{i,c})]`` (the authors' ``LabelSmoothingCrossEntropy``).

    Equal to ``F.cross_entropy(..., label_smoothing=ε)``. Args: logits [B, C], labels [B] int64, ε ∈ [0, 1).
    Returns: [] float32.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)


def center_loss(features: Tensor, labels: Tensor, centers: Tensor) -> Tensor:
    """Center loss (Wen et al., ECCV 2016): ``(1/2B) Σ_i ‖f_i − c_{y_i}‖²``.

    Args:
        features: [B, D]; labels: [B] int64; centers: [C, D].

    Returns:
        [] float32.
    """
    f = features.float()
    return 0.5 * (f - centers.float().index_select(0, labels)).pow(2).sum(dim=1).mean()


@register_criterion("mfer")
class MFERCriterion(Criterion):
    """MFER's training loss: ``L = Σ_s LS-CE(z_s, y; ε) + 0.001·center``.

    ``forward(output, batch)``: ``output`` an :class:`MFEROutput`, ``batch["label"]`` [B] int64 → terms
    ``ce`` (label-smoothing cross-entropy summed over the scale classifiers) and ``center``
    (:func:`center_loss`, standing in for the unpublished DSF loss), float32.

    Args:
        weights: term weights (ce 1, center 0.001).
        smoothing: ε (0.1, the authors').
    """

    terms = ("ce", "center")
    default_weights = {"ce": 1.0, "center": 0.001}

    def __init__(self, weights: Mapping[str, float] | None = None, smoothing: float = 0.1) -> None:
        super().__init__(weights)
        self.smoothing = float(smoothing)

    def forward(self, output: MFEROutput, batch: Mapping[str, Tensor]) -> LossOutput:
        labels = batch["label"].to(output.logits.device)
        ce = sum(label_smoothing_cross_entropy(z, labels, self.smoothing) for z in output.scale_logits)
        return self.combine({"ce": ce, "center": center_loss(output.features, labels, output.class_centers)})


@register_model(
    criterion="mfer",
    final_checkpoint="MFER.pth",
    recipe={"optimizer": "adamw", "lr": 1e-3, "weight_decay": 0.01, "scheduler": "exponential", "exp_gamma": 0.95,
            "batch_size": 32, "epochs": 100, "balanced_sampling": False},
)
def mfer(num_classes: int = 7, backbone: str = "resnet18", **kwargs) -> MFER:
    """MFER (Xu et al. 2024): ResNet-18 with DS attention after layers 3 and 4, multiscale classifiers; 224×224.

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("mfer", kwargs)
    return MFER(num_classes=num_classes, backbone=backbone)
