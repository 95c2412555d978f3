"""Ada-DF: dual-branch adaptive distribution fusion for facial expression recognition.

Liu, Xu, Wan, Kui, "A Dual-Branch Adaptive Distribution Fusion Framework for Real-World Facial Expression
Recognition", ICASSP 2023; authors' implementation https://github.com/taylor-xy0827/Ada-DF (``model.py``,
``train.py``, ``utils.py``, ``dataset.py``).

Network (shapes for a 224×224 input, ``C`` classes)::

    f0 = dropout(layer1(stem(x)))                 [B,64,56,56]   shared, frozen (as the authors')
    auxiliary branch:  a = GAP(layer4(layer3(layer2(f0))))   [B,512];  w_a = sigmoid(att_a(a))  [B,1]
                       z_a = w_a · fc_a(a)                                                    [B,C]
    target branch:     t, w_t, z_t the same with its own copy of layers 2–4, fc and attention
    attention w = (w_a + w_t) / 2                                                            [B,1]

The target branch's ``z_t`` is the prediction (``logits``), as the authors evaluate it.

Losses (:class:`AdaDFCriterion`, the authors' ``train.py``), at epoch e (1-based) with β the warm-up::

    ce    = CE(z_a, y)                                         (auxiliary branch learns the labels)
    kld   = (1/B) Σ_i KL(q_i ‖ softmax(z_t,i))                 (target branch learns the fused distribution)
            q_i = (1 − ŵ_i) · softmax(z_a,i) + ŵ_i · LD[y_i]   (adaptive distribution fusion)
            ŵ = min-max normalisation of w over the batch into [0.2, 1.0]
    rank  = max(0, mean(w_low) − mean(w_high) + 0.07)          (rank regularisation, top 70 % = high)
    L = α_ce·ce + α_kld·kld + rank,  α_kld = exp(−(1 − e/β)²), α_ce = 1 for e ≤ β;
                                     α_kld = 1, α_ce = exp(−(1 − β/e)²) after

``LD`` [C, C] are the class distributions: row c is the mean auxiliary-branch distribution of the training
samples of class c in the previous epoch when its c-th entry reaches the threshold t, else a smoothed
one-hot (t on c, (1 − t)/(C − 1) elsewhere); it starts as the smoothed one-hot.

Settings: threshold t and β are the model's (``threshold``, ``beta``): the authors use t = 0.7, β = 3 on
RAF-DB and t = 0.5, β = 5 on AffectNet-7; the default here is AffectNet's (the toolkit's classes are
AffectNet's). Recipe (the authors' defaults and README): Adam, lr 1e-3, no weight decay,
``ExponentialLR(0.9)`` per epoch, batch 64, 75 epochs, class-balanced sampling (their AffectNet-7
down-sampler; RAF-DB shuffles); input 224×224, ImageNet normalisation. Parameters: 22.20 M with 7 classes
(the authors' model), of which 0.16 M (stem and layer1) frozen.

Weights: ``--pretrained resnet18_msceleb.pth`` fills the shared stem and both branches (each branch starts
from the same pretrained layers 2–4, as the authors' ``deepcopy``); the authors' checkpoints
(``{'epoch', 'state_dict', 'acc', 'best_acc', 'optimizer', 'class_distributions'}``) load as source
``"ada_df"`` (their ``state_dict`` lists each branch twice, under ``branch_k`` and ``branch_k_feature`` /
``branch_k_classifier``; the duplicates are checked equal and reported as discarded).

Deliberate deviations:

* The class distributions are computed from the auxiliary-branch outputs seen during the training epoch
  (train-mode BatchNorm, weights changing over the epoch) instead of an extra evaluation pass over the whole
  training set after it: the statistics are summed by the criterion into buffers of the model, and the
  model turns them into ``LD`` when it leaves training mode (the engine evaluates after every epoch). The
  buffers are saved with the model, so an interrupted run resumes them. Under DDP they come from rank 0's
  share of the samples (DDP keeps rank 0's buffers).
* A class whose mean does not reach the threshold gets ``(1 − t)/(C − 1)`` off the diagonal; the authors'
  ``generate_adaptive_LD`` wrote ``0.4/(C − 1)``, so the row summed to 0.4 + t instead of 1 unless t = 0.6.
* When all attention weights of a batch are equal the min-max normalisation gives ŵ = 0.2 for all (the
  authors' divides 0 by 0); the rank regularisation is 0 for batches of fewer than 2 samples.
* The optional sharpening of ``LD`` (off by default in the authors' code) is not offered.
* As in the authors' code, the fused target q is not detached: the KL term also trains the auxiliary branch
  and the attention layers.
"""

from __future__ import annotations

import copy
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
    "AdaDF",
    "AdaDFCriterion",
    "AdaDFOutput",
    "ClassDistributions",
    "ada_df",
    "fusion_weights",
    "loss_scales",
    "rank_regularization",
]


class ClassDistributions(nn.Module):
    """Ada-DF's class distributions ``LD`` and the statistics of the current epoch that renew them.

    Args:
        num_classes: C ≥ 2.
        threshold: t ∈ (0, 1]: a class keeps its measured mean distribution when its own entry reaches t.

    Buffers (saved with the model): ``distributions`` [C, C] (row c: the target distribution of class c,
    rows sum to 1), ``prob_sum`` [C, C] and ``count`` [C] (this epoch's sums of auxiliary-branch
    probabilities and sample counts per true class), ``epochs_done`` [] int64.

    Raises:
        ValueError: C < 2 or t outside (0, 1].
    """

    def __init__(self, num_classes: int, threshold: float) -> None:
        super().__init__()
        if num_classes < 2 or not 0.0 < threshold <= 1.0:
            raise ValueError(f"class distributions need >= 2 classes and a threshold in (0, 1], got "
                             f"{num_classes}, {threshold}")
        self.num_classes, self.threshold = int(num_classes), float(threshold)
        self.register_buffer("distributions", self.smoothed_one_hot())
        self.register_buffer("prob_sum", torch.zeros(num_classes, num_classes))
        self.register_buffer("count", torch.zeros(num_classes))
        self.register_buffer("epochs_done", torch.zeros((), dtype=torch.int64))

    def smoothed_one_hot(self) -> Tensor:
        """``[C, C]``: t on the diagonal, (1 − t)/(C − 1) elsewhere."""
        c, t = self.num_classes, self.threshold
        out = torch.full((c, c), (1.0 - t) / (c - 1))
        out.fill_diagonal_(t)
        return out

    @torch.no_grad()
    def accumulate(self, probabilities: Tensor, labels: Tensor) -> None:
        """Add a training batch: ``probabilities`` [B, C] (auxiliary-branch softmax), ``labels`` [B] int64."""
        probs = probabilities.detach().to(self.prob_sum.dtype)
        self.prob_sum.index_add_(0, labels, probs)
        self.count.index_add_(0, labels, torch.ones_like(labels, dtype=self.count.dtype))

    @torch.no_grad()
    def end_epoch(self) -> None:
        """Renew ``distributions`` from this epoch's statistics, reset them, count the epoch.

        Row c becomes the mean probability vector of the class-c samples when its entry c is ≥ t, else
        the smoothed one-hot (also for classes without samples this epoch).
        """
        fallback = self.smoothed_one_hot().to(self.distributions.device)
        mean = self.prob_sum / self.count.clamp_min(1.0).unsqueeze(1)
        own = mean.diagonal()
        keep = (self.count > 0) & (own >= self.threshold)
        self.distributions.copy_(torch.where(keep.unsqueeze(1), mean, fallback))
        self.prob_sum.zero_()
        self.count.zero_()
        self.epochs_done += 1


@dataclass
class AdaDFOutput:
    """Result of :class:`AdaDF`.

    Attributes:
        logits: [B, C] target-branch logits ``z_t`` (attention-weighted), the prediction.
        aux_logits: [B, C] auxiliary-branch logits ``z_a`` (attention-weighted).
        attention: [B] mean of the two branches' sigmoid attention weights, in (0, 1).
        class_distributions: the model's :class:`ClassDistributions` (``LD`` and this epoch's statistics),
            which the criterion reads and updates during training.
        training: whether the model ran in training mode (the criterion records statistics only then).
        beta: β of the loss schedule (:func:`loss_scales`).
    """

    logits: Tensor
    aux_logits: Tensor
    attention: Tensor
    class_distributions: ClassDistributions
    training: bool
    beta: float


class _Stages(nn.Module):
    """ResNet stages 2–4 (torchvision names ``layer2``–``layer4``): one Ada-DF branch's own layers."""

    def __init__(self, backbone: ResNetBackbone) -> None:
        super().__init__()
        self.layer2 = copy.deepcopy(backbone.layer2)
        self.layer3 = copy.deepcopy(backbone.layer3)
        self.layer4 = copy.deepcopy(backbone.layer4)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer4(self.layer3(self.layer2(x)))


class AdaDF(nn.Module):
    """Ada-DF classifier (the authors' ``ResNet18`` of ``model.py``).

    Args:
        num_classes: C ≥ 2 (7 in the paper).
        backbone: registered ResNet backbone (default ``resnet18``); its stem and ``layer1`` are shared, its
            ``layer2``–``layer4`` are the auxiliary branch and a copy of them the target branch.
        drop_rate: dropout on the shared map (the authors' default 0).
        threshold: t of the class distributions (AffectNet 0.5, RAF-DB 0.7).
        beta: β, the epochs over which the KL weight rises (AffectNet 5, RAF-DB 3).
        freeze_shared: keep the shared stem and ``layer1`` frozen, as the authors do.

    Attributes:
        backbone: the ResNet (stem, ``layer1`` shared; ``layer2``–``layer4`` auxiliary branch).
        target: :class:`_Stages`, the target branch's layers 2–4.
        aux_fc, target_fc: ``Linear(D, C)``; aux_attention, target_attention: ``Linear(D, 1)`` (+ sigmoid).
        class_distributions: :class:`ClassDistributions`.
        input_streams: ``("photo",)``.

    Raises:
        ValueError: a non-ResNet backbone, C < 2, a threshold outside (0, 1], β ≤ 0 or a drop rate
            outside [0, 1).
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, backbone: str = "resnet18", drop_rate: float = 0.0,
                 threshold: float = 0.5, beta: float = 5.0, freeze_shared: bool = True) -> None:
        super().__init__()
        if not beta > 0 or not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"Ada-DF needs beta > 0 and a drop rate in [0, 1), got {beta}, {drop_rate}")
        self.num_classes, self.beta = int(num_classes), float(beta)
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)
        self.backbone = create_backbone(backbone)
        if not isinstance(self.backbone, ResNetBackbone):
            raise ValueError(f"Ada-DF splits a ResNet into branches; backbone {backbone!r} is not one")
        self.target = _Stages(self.backbone)
        width = self.backbone.num_features
        self.dropout = nn.Dropout(drop_rate)
        self.aux_fc, self.target_fc = nn.Linear(width, num_classes), nn.Linear(width, num_classes)
        self.aux_attention, self.target_attention = nn.Linear(width, 1), nn.Linear(width, 1)
        self.class_distributions = ClassDistributions(num_classes, threshold)
        if freeze_shared:
            for module in (self.backbone.conv1, self.backbone.bn1, self.backbone.layer1):
                freeze(module)

    def train(self, mode: bool = True) -> AdaDF:
        """Switch mode; leaving training mode after training steps renews the class distributions."""
        if self.training and not mode and bool(self.class_distributions.count.sum() > 0):
            self.class_distributions.end_epoch()
        return super().train(mode)

    def forward_branches(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Faces ``[B, 3, S, S]`` → pooled auxiliary and target features, ``[B, D]`` each."""
        b = self.backbone
        shared = self.dropout(b.layer1(b.forward_stem(x)))
        aux = b.layer4(b.layer3(b.layer2(shared))).mean(dim=(2, 3))
        target = self.target(shared).mean(dim=(2, 3))
        return aux, target

    def forward(self, x: Tensor) -> AdaDFOutput:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised) → :class:`AdaDFOutput` (logits ``[B, C]``)."""
        aux, target = self.forward_branches(x)
        w_aux = torch.sigmoid(self.aux_attention(aux))
        w_target = torch.sigmoid(self.target_attention(target))
        aux_logits = w_aux * self.aux_fc(aux)
        logits = w_target * self.target_fc(target)
        return self._output(logits, aux_logits, ((w_aux + w_target) / 2).squeeze(1))

    @torch.compiler.disable
    def _output(self, logits: Tensor, aux_logits: Tensor, attention: Tensor) -> AdaDFOutput:
        # outside any compiled graph: the output carries the module holding the class distributions
        return AdaDFOutput(logits=logits, aux_logits=aux_logits, attention=attention,
                           class_distributions=self.class_distributions, training=self.training, beta=self.beta)

    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (protocol in docs/INTERFACES.md).

        Args:
            state_dict: the file's tensors (``module.`` stripped).
            source: ``"torchvision_resnet"`` (``resnet18_msceleb.pth``: stem and layers → ``backbone.``,
                layers 2–4 also → ``target.``, ``fc`` discarded) or ``"ada_df"`` (an authors' checkpoint:
                ``feature.{0,1,4}`` → ``backbone.{conv1, bn1, layer1}``, ``branch_1.{0,1,2}`` →
                ``backbone.layer{2,3,4}``, ``branch_2.{0,1,2}`` → ``target.layer{2,3,4}``, ``branch_k.4`` →
                ``aux_fc`` / ``target_fc``, ``alpha_k.0`` → ``aux_attention`` / ``target_attention``; the
                duplicate ``branch_k_feature.*`` / ``branch_k_classifier.*`` entries are discarded).

        Returns:
            ``(mapped, prefixes, discarded)``; the class distributions are not filled (the authors keep
            them outside the state dict).

        Raises:
            ValueError: an unsupported source, or duplicate entries that differ from their original.
        """
        if source == "torchvision_resnet":
            mapped, discarded = remap_torchvision_resnet(state_dict, self.state_dict(), "backbone.")
            for key, value in list(mapped.items()):
                layer = key[len("backbone."):].split(".", 1)[0]
                if layer in ("layer2", "layer3", "layer4"):
                    mapped["target." + key[len("backbone."):]] = value
            return mapped, ["backbone.", "target."], discarded
        if source == "ada_df":
            for dup, original in (("branch_1_feature.", "branch_1."), ("branch_2_feature.", "branch_2."),
                                  ("branch_1_classifier.", "branch_1.4."), ("branch_2_classifier.", "branch_2.4.")):
                for key, value in state_dict.items():
                    if key.startswith(dup):
                        twin = original + key[len(dup):]
                        if twin in state_dict and not torch.equal(state_dict[twin], value):
                            raise ValueError(f"Ada-DF checkpoint: {key} differs from {twin}, which it duplicates")
            rules = [("feature.0.", "backbone.conv1."), ("feature.1.", "backbone.bn1."),
                     ("feature.4.", "backbone.layer1."),
                     ("branch_1.0.", "backbone.layer2."), ("branch_1.1.", "backbone.layer3."),
                     ("branch_1.2.", "backbone.layer4."), ("branch_1.4.", "aux_fc."),
                     ("branch_2.0.", "target.layer2."), ("branch_2.1.", "target.layer3."),
                     ("branch_2.2.", "target.layer4."), ("branch_2.4.", "target_fc."),
                     ("alpha_1.0.", "aux_attention."), ("alpha_2.0.", "target_attention.")]
            discard = ("branch_1_feature.", "branch_2_feature.", "branch_1_classifier.", "branch_2_classifier.")
            mapped, discarded = remap_prefixes(state_dict, rules, discard)
            prefixes = ["backbone.", "target.", "aux_fc.", "target_fc.", "aux_attention.", "target_attention."]
            return mapped, prefixes, discarded
        raise ValueError(f"Ada-DF cannot load weights of source {source!r} (supported: torchvision_resnet, ada_df)")


def _is_ada_df_checkpoint(state_dict: Mapping[str, Tensor]) -> bool:
    return {"feature", "branch_1", "branch_2", "alpha_1", "alpha_2"} <= top_level_keys(state_dict)


# an Ada-DF checkpoint (github.com/taylor-xy0827/Ada-DF) holds the whole model
register_weight_source("ada_df", _is_ada_df_checkpoint,
                       build=lambda sd: ("ada_df", {"num_classes": int(sd["branch_2.4.weight"].shape[0])}))


# ============================================================================================ losses


def loss_scales(epoch: int, beta: float) -> tuple[float, float]:
    """Ada-DF's epoch-dependent weights ``(α_ce, α_kld)`` at the 1-based ``epoch`` with warm-up ``beta``.

    ``e ≤ β``: ``(1, exp(−(1 − e/β)²))``; ``e > β``: ``(exp(−(1 − β/e)²), 1)`` (the authors' ``train``).
    """
    if epoch <= beta:
        return 1.0, math.exp(-((1.0 - epoch / beta) ** 2))
    return math.exp(-((1.0 - beta / epoch) ** 2)), 1.0


def fusion_weights(attention: Tensor, low: float = 0.2, high: float = 1.0) -> Tensor:
    """Min-max normalise the attention weights of a batch into ``[low, high]`` (ŵ of the fused target).

    Args:
        attention: [B] weights.

    Returns:
        [B]; all ``low`` when the weights are all equal.
    """
    a = attention.float()
    span = (a.max() - a.min()).clamp_min(1e-12)
    return (a - a.min()) / span * (high - low) + low


def rank_regularization(attention: Tensor, high_fraction: float = 0.7, margin: float = 0.07) -> Tensor:
    """Rank regularisation of the attention weights: ``max(0, mean(low group) − mean(high group) + margin)``.

    The high group is the ``int(B · high_fraction)`` largest weights, the low group the rest (the authors'
    ``RR_loss``, from SCN). 0 when either group would be empty.

    Args:
        attention: [B] weights.

    Returns:
        [] float32.
    """
    a = attention.float()
    n = a.shape[0]
    k = int(n * high_fraction)
    if k < 1 or n - k < 1:
        return a.new_zeros(())
    ordered = a.sort(descending=True).values
    return F.relu(ordered[k:].mean() - ordered[:k].mean() + margin)


@register_criterion("ada_df")
class AdaDFCriterion(Criterion):
    """Ada-DF's training loss (formulas in the module docstring).

    Terms (logged unweighted): ``ce`` (auxiliary branch vs the labels), ``kld`` (target branch vs the
    fused distribution), ``rank`` (rank regularisation). ``total = w_ce·α_ce·ce + w_kld·α_kld·kld +
    w_rank·rank``, with α from :func:`loss_scales` at the model's current epoch; the term weights ``w``
    default to 1.

    ``forward(output, batch)``: ``output`` an :class:`AdaDFOutput`, ``batch["label"]`` [B] int64. In
    training mode it also adds the batch's auxiliary-branch probabilities to the model's class-distribution
    statistics.

    Args:
        weights: term weights.
        low_weight, high_weight: range of the normalised fusion weights ŵ (0.2, 1.0).
        high_fraction, margin: rank regularisation settings (0.7, 0.07).
    """

    terms = ("ce", "kld", "rank")
    default_weights = {"ce": 1.0, "kld": 1.0, "rank": 1.0}

    def __init__(self, weights: Mapping[str, float] | None = None, low_weight: float = 0.2, high_weight: float = 1.0,
                 high_fraction: float = 0.7, margin: float = 0.07) -> None:
        super().__init__(weights)
        self.low_weight, self.high_weight = float(low_weight), float(high_weight)
        self.high_fraction, self.margin = float(high_fraction), float(margin)

    def forward(self, output: AdaDFOutput, batch: Mapping[str, Tensor]) -> LossOutput:
        labels = batch["label"].to(output.logits.device)
        tracker = output.class_distributions
        aux_logits = output.aux_logits.float()
        aux_probs = F.softmax(aux_logits, dim=1)
        if output.training:
            tracker.accumulate(aux_probs, labels)
        ce = F.cross_entropy(aux_logits, labels)
        w = fusion_weights(output.attention, self.low_weight, self.high_weight).unsqueeze(1)
        target = (1.0 - w) * aux_probs + w * tracker.distributions.index_select(0, labels).float()
        log_q = F.log_softmax(output.logits.float(), dim=1)
        kld = F.kl_div(log_q, target, reduction="sum") / labels.shape[0]
        rank = rank_regularization(output.attention, self.high_fraction, self.margin)
        epoch = int(tracker.epochs_done) + 1
        alpha_ce, alpha_kld = loss_scales(epoch, output.beta)
        terms = {"ce": ce, "kld": kld, "rank": rank}
        total = (self.weights["ce"] * alpha_ce * ce + self.weights["kld"] * alpha_kld * kld
                 + self.weights["rank"] * rank)
        return LossOutput(total=total, terms=terms)


@register_model(
    criterion="ada_df",
    final_checkpoint="AdaDF.pth",
    recipe={"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "exponential", "exp_gamma": 0.9,
            "batch_size": 64, "epochs": 75, "balanced_sampling": True},
)
def ada_df(num_classes: int = 7, backbone: str = "resnet18", drop_rate: float = 0.0, threshold: float = 0.5,
           beta: float = 5.0, freeze_shared: bool = True, **kwargs) -> AdaDF:
    """Ada-DF (Liu et al. 2023): ResNet-18 with auxiliary and target branches, adaptive distribution fusion; 224×224.

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("ada_df", kwargs)
    return AdaDF(num_classes=num_classes, backbone=backbone, drop_rate=drop_rate, threshold=threshold, beta=beta,
                 freeze_shared=freeze_shared)
