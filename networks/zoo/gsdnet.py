"""GSDNet: gradual self distillation network with adaptive channel attention.

Zhang, Zhu, Wang, Wang, Liang, Wang, Yin, "A gradual self distillation network with adaptive channel
attention for facial expression recognition", Applied Soft Computing 161:111762, 2024; authors' code
https://github.com/476037156/GSDNet (``GSD-Net/model/resnet1.py``, ``GSD-Net/model/utils.py``,
``GSD-Net/train.py``, ``GSD-Net/gsdnet.py``).

Network (shapes for a 224×224 input on the ResNet-50, ``C`` classes, W = 2048)::

    m_i = layer_i(m_{i-1})                             stage maps, c_i = 256, 512, 1024, 2048
    stage head i:  a_i = ACA(m_i)                      adaptive channel attention      [B,c_i,h,w]
                   p_i = GAP(ReLU(BN(conv1×1(a_i))))   to W channels (i < 4; stage 4: GAP(a_4))  [B,W]
                   e_i = embed_i(p_i)                  [B,128];   z_i = classifier_i(p_i)   [B,C]
    prediction = z_4 (the deepest classifier, as the authors evaluate)

Adaptive channel attention (the authors' ``ACBAM``/``ChannelGate``): CBAM's channel gate whose average- and
max-pooled branches are each scaled by a learned, input-dependent scalar::

    s = MLP(avg(x))·g_avg(avg(x)) + MLP(max(x))·g_max(max(x));   out = x · sigmoid(s)
    MLP: c → c/16 → c (ReLU), shared; g_avg, g_max: c → c/16 → 1 (ReLU)

Losses (:class:`GSDNetCriterion`, the authors' ``train_one_epoch``): every two neighbouring classifiers
are student (shallower) and teacher (deeper, gradient stopped)::

    ce      = CE(z_4, y)
    feature = Σ_{i=1..3} ‖e_i − sg(e_{i+1})‖₂            (Frobenius norm over the batch, torch.dist)
    distill = Σ_{i=1..3} −(1/B) Σ_b Σ_c softmax(sg(z_{i+1})/T)_bc · log_softmax(z_i/T)_bc,   T = 3
    L = ce + 0.01·feature + 0.3·distill

(``distill`` is the cross-entropy form of knowledge distillation: the KL divergence plus the teacher's
entropy, which has no gradient for the student; no T² factor, as the authors'.)

Recipe (the authors' ``train.py``): Adam, lr 1e-4, weight decay 1e-4, ``ExponentialLR(0.9)`` per epoch,
batch 64, 40 epochs, shuffled (no class balancing); input 224×224, ImageNet normalisation. Parameters:
29.70 M with 7 classes, as the authors' model.

Backbone: VGGFace2's ResNet-50 (MS-Celeb-1M pretrained, VGGFace2 fine-tuned), ``--pretrained
vgg_msceleb_resnet50_ft_weight.pkl`` (see :mod:`networks.backbones.resnet50`); it is the Caffe layout, so the
model builds ``resnet50`` with ``stride_in_1x1=True`` by default, as the authors' ``ResNet`` class
(``caffe_layout=False`` gives torchvision's layout, for ImageNet weights). The authors' checkpoints
(``torch.save(model.state_dict())``, keys ``resnet.*``) load as source ``"gsdnet"``.

Deliberate deviations: none in the computation. The deepest embedding layer (the authors' ``fc_4``) is
frozen: e_4 is used only as a gradient-stopped teacher, so that layer receives no gradient and never changes
in the authors' training either (freezing keeps the numbers and lets DDP require a gradient for every
trainable parameter). The engine's augmentation replaces the authors' torchvision pipeline (flip,
rotation/crop, erasing), as for every model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.backbones.resnet import ResNetBackbone, remap_torchvision_resnet
from networks.criteria import Criterion, LossOutput
from networks.registry import backbone_spec, create_backbone, register_criterion, register_model
from networks.weights import register_weight_source
from networks.zoo._common import freeze, reject_arguments, remap_prefixes, top_level_keys

__all__ = [
    "AdaptiveChannelAttention",
    "GSDNet",
    "GSDNetCriterion",
    "GSDNetOutput",
    "StageHead",
    "distillation_cross_entropy",
    "gsdnet",
]

#: Width of every stage head's embedding e_i (the authors' ``fc_i``).
EMBED_DIM = 128


@dataclass
class GSDNetOutput:
    """Result of :class:`GSDNet`.

    Attributes:
        logits: [B, C] the deepest classifier's logits z_4 (the prediction).
        stage_logits: [4, B, C] the classifiers' logits z_1..z_4, shallowest first.
        stage_embeddings: [4, B, 128] the stage embeddings e_1..e_4.
    """

    logits: Tensor
    stage_logits: Tensor
    stage_embeddings: Tensor


class AdaptiveChannelAttention(nn.Module):
    """GSDNet's adaptive channel attention (formula in the module docstring).

    Args:
        channels: c of the map.
        reduction: bottleneck ratio of the MLPs (16).

    Shapes: ``[B, c, h, w]`` → ``[B, c, h, w]``.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, channels))
        self.avg_weight = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.max_weight = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        avg, mx = x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
        scores = self.mlp(avg) * self.avg_weight(avg) + self.mlp(mx) * self.max_weight(mx)
        return x * torch.sigmoid(scores)[:, :, None, None]


class StageHead(nn.Module):
    """The classifier plugged after one ResNet stage: attention, projection to W channels, pooling, two heads.

    Args:
        channels: c_i of the stage map.
        width: W, channels of the pooled feature (the last stage's width, 2048).
        num_classes: C.
        project: add the 1×1 conv + BN + ReLU from c_i to W (every stage but the last).

    Shapes: ``[B, c_i, h, w]`` → ``(embedding [B, 128], logits [B, C])``.
    """

    def __init__(self, channels: int, width: int, num_classes: int, project: bool) -> None:
        super().__init__()
        self.attention = AdaptiveChannelAttention(channels)
        self.project = (nn.Sequential(nn.Conv2d(channels, width, 1), nn.BatchNorm2d(width), nn.ReLU())
                        if project else nn.Identity())
        self.embed = nn.Linear(width, EMBED_DIM)
        self.classifier = nn.Linear(width, num_classes)
        if project:  # the authors' initialisation of every convolution: N(0, 2/(k·k·out)), BN weight 1, bias 0
            conv, bn = self.project[0], self.project[1]
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (conv.kernel_size[0] * conv.kernel_size[1]
                                                                  * conv.out_channels)))
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.project(self.attention(x)).mean(dim=(2, 3))
        return self.embed(pooled), self.classifier(pooled)


class GSDNet(nn.Module):
    """GSDNet classifier (the authors' ``GSDNet`` / ``ResNet`` of ``resnet1.py``).

    Args:
        num_classes: C (7 in the paper).
        backbone: registered ResNet backbone (default ``resnet50``).
        caffe_layout: build ``resnet50`` in the Caffe layout of the VGGFace2 weights (``stride_in_1x1``).

    Attributes:
        backbone, backbone_spec: the ResNet and its spec (input 224, ImageNet mean/std).
        heads: ``nn.ModuleList`` of four :class:`StageHead`.
        input_streams: ``("photo",)``.

    Raises:
        ValueError: a non-ResNet backbone or C < 1.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, backbone: str = "resnet50", caffe_layout: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"GSDNet needs num_classes >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)
        self.caffe_layout = bool(caffe_layout and backbone == "resnet50")
        self.backbone = create_backbone(backbone, **({"stride_in_1x1": True} if self.caffe_layout else {}))
        if not isinstance(self.backbone, ResNetBackbone):
            raise ValueError(f"GSDNet plugs a classifier after each ResNet stage; backbone {backbone!r} is not one")
        channels = self.backbone.stage_channels
        width = channels[-1]
        self.heads = nn.ModuleList(StageHead(c, width, num_classes, project=i < 3) for i, c in enumerate(channels))
        # e_4 is only ever a gradient-stopped teacher: its layer never learns (in the authors' training neither)
        freeze(self.heads[-1].embed)

    def forward(self, x: Tensor) -> GSDNetOutput:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised) → :class:`GSDNetOutput` (logits ``[B, C]``)."""
        embeddings, logits = zip(*(head(m) for head, m in zip(self.heads, self.backbone.forward_stages(x),
                                                               strict=True)), strict=True)
        stage_logits = torch.stack(logits)
        return GSDNetOutput(logits=stage_logits[-1], stage_logits=stage_logits,
                            stage_embeddings=torch.stack(embeddings))

    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (protocol in docs/INTERFACES.md).

        Args:
            state_dict: the file's tensors.
            source: ``"torchvision_resnet"`` (VGGFace2's or torchvision's ResNet-50 → ``backbone.``, ``fc``
                discarded) or ``"gsdnet"`` (an authors' checkpoint: ``resnet.{conv1, bn1, layer1..4}`` →
                ``backbone.*``; ``resnet.cm{i}.0.ChannelGate.{mlp, mean_weight, max_weight}.{1,3}`` →
                ``heads.{i-1}.attention.{mlp, avg_weight, max_weight}.{0,2}``; ``resnet.cm{i}.{1,2}`` →
                ``heads.{i-1}.project.{0,1}``; ``resnet.fc_{i}`` → ``heads.{i-1}.embed``; ``resnet.fc_{i}_{i}``
                → ``heads.{i-1}.classifier``).

        Returns:
            ``(mapped, prefixes, discarded)``.

        Raises:
            ValueError: an unsupported source.
        """
        if source == "torchvision_resnet":
            mapped, discarded = remap_torchvision_resnet(state_dict, self.state_dict(), "backbone.")
            return mapped, ["backbone."], discarded
        if source == "gsdnet":
            rules = [(f"resnet.{name}.", f"backbone.{name}.") for name in
                     ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")]
            for i in range(1, 5):
                gate, head = f"resnet.cm{i}.0.ChannelGate.", f"heads.{i - 1}."
                for theirs, ours in (("mlp", "mlp"), ("mean_weight", "avg_weight"), ("max_weight", "max_weight")):
                    rules += [(f"{gate}{theirs}.1.", f"{head}attention.{ours}.0."),
                              (f"{gate}{theirs}.3.", f"{head}attention.{ours}.2.")]
                rules += [(f"resnet.cm{i}.1.", f"{head}project.0."), (f"resnet.cm{i}.2.", f"{head}project.1."),
                          (f"resnet.fc_{i}_{i}.", f"{head}classifier."), (f"resnet.fc_{i}.", f"{head}embed.")]
            mapped, discarded = remap_prefixes(state_dict, rules)
            return mapped, None, discarded
        raise ValueError(f"GSDNet cannot load weights of source {source!r} (supported: torchvision_resnet, gsdnet)")


def _is_gsdnet_checkpoint(state_dict: Mapping[str, Tensor]) -> bool:
    return top_level_keys(state_dict) == {"resnet"} and "resnet.fc_4_4.weight" in state_dict


# a GSDNet state dict (github.com/476037156/GSDNet) holds the whole model
register_weight_source("gsdnet", _is_gsdnet_checkpoint,
                       build=lambda sd: ("gsdnet", {"num_classes": int(sd["resnet.fc_4_4.weight"].shape[0])}))


# ============================================================================================ losses


def distillation_cross_entropy(student: Tensor, teacher: Tensor, temperature: float = 3.0) -> Tensor:
    """``−(1/B) Σ_b Σ_c softmax(teacher/T)_bc · log_softmax(student/T)_bc`` (the authors' ``CrossEntropy``).

    Args:
        student, teacher: [B, C] logits (the teacher is used as given: detach it to stop its gradient).
        temperature: T (3).

    Returns:
        [] float32.
    """
    log_p = F.log_softmax(student.float() / temperature, dim=1)
    q = F.softmax(teacher.float() / temperature, dim=1)
    return -(q * log_p).sum(dim=1).mean()


@register_criterion("gsdnet")
class GSDNetCriterion(Criterion):
    """GSDNet's gradual self-distillation loss: ``L = ce + 0.01·feature + 0.3·distill`` (module docstring).

    ``forward(output, batch)``: ``output`` a :class:`GSDNetOutput`, ``batch["label"]`` [B] int64 → terms
    ``ce`` (deepest classifier), ``feature`` (neighbouring embeddings, L2 distance to the detached deeper
    one), ``distill`` (neighbouring classifiers, :func:`distillation_cross_entropy` from the detached
    deeper one), float32.

    Args:
        weights: term weights (ce 1, feature 0.01, distill 0.3: the authors' ``main(0.01, 0.3)``).
        temperature: T of the distillation (3).
    """

    terms = ("ce", "feature", "distill")
    default_weights = {"ce": 1.0, "feature": 0.01, "distill": 0.3}

    def __init__(self, weights: Mapping[str, float] | None = None, temperature: float = 3.0) -> None:
        super().__init__(weights)
        self.temperature = float(temperature)

    def forward(self, output: GSDNetOutput, batch: Mapping[str, Tensor]) -> LossOutput:
        labels = batch["label"].to(output.logits.device)
        emb, logits = output.stage_embeddings.float(), output.stage_logits.float()
        feature = emb.new_zeros(())
        distill = emb.new_zeros(())
        for i in range(emb.shape[0] - 1):
            feature = feature + torch.dist(emb[i], emb[i + 1].detach())
            distill = distill + distillation_cross_entropy(logits[i], logits[i + 1].detach(), self.temperature)
        return self.combine({"ce": F.cross_entropy(logits[-1], labels), "feature": feature, "distill": distill})


@register_model(
    criterion="gsdnet",
    final_checkpoint="GSDNet.pth",
    recipe={"optimizer": "adam", "lr": 1e-4, "weight_decay": 1e-4, "scheduler": "exponential", "exp_gamma": 0.9,
            "batch_size": 64, "epochs": 40, "balanced_sampling": False},
)
def gsdnet(num_classes: int = 7, backbone: str = "resnet50", caffe_layout: bool = True, **kwargs) -> GSDNet:
    """GSDNet (Zhang et al. 2024): ResNet-50 with an attention classifier per stage, gradual self distillation; 224×224.

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("gsdnet", kwargs)
    return GSDNet(num_classes=num_classes, backbone=backbone, caffe_layout=caffe_layout)
