"""LNSU-Net: Swin-T with re-balanced attention consistency and re-balanced smooth labels.

Zhang, Wang, Liu, Li, "Leave No Stone Unturned: Mine Extra Knowledge for Imbalanced Facial Expression
Recognition", NeurIPS 2023; authors' code https://github.com/zyh-uaiaaaa/Mine-Extra-Knowledge
(``code/expression/models.py`` ``SwinTransFER``, ``code/train_exp.py`` ``LSR2``/``ACLoss``,
``code/configs/exp.py``). Facts taken from there:

- encoder: a face Swin-T for 112×112 inputs with 2×2 patches (stages 56, 28, 14, 7; 768 channels);
  the classifier is LayerNorm → global average over the 7×7 tokens → Linear(768, C);
- class activation maps (CAM) of every class, ``cam_k = Σ_c W[k, c] · f_c`` over the normalised 7×7
  token map ``f`` with the classifier weights ``W`` *detached* (they get no gradient from the maps);
- training runs the encoder a second time on the horizontally flipped batch; re-balanced attention
  consistency ``L_att = mean_b Σ_k w_k · mean_{h,w} (cam_k(x) − flip(cam_k(flip x)))²`` (the authors flip
  the second map with ``grid_sample`` on a mirrored grid with ``align_corners=True``, which is exactly a
  horizontal flip of the 7×7 map);
- re-balanced smooth labels: the target puts 1 − ε on the true class and spreads ε over the *other*
  classes in proportion to ``w_k``; ``L_ce = −Σ_k q_k log softmax(z)_k`` with ε = 0.3;
- ``L = L_ce + 0.1 · L_att``; ``w_k`` ∝ 1 / (training samples of class k) — the authors hard-code RAF-DB's
  ``[0.951, 4.367, 1.711, 0.257, 0.619, 1.741, 0.486]`` in RAF-DB's order (Surprise, Fear, Disgust,
  Happiness, Sadness, Anger, Neutral);
- recipe (RAF-DB, ``configs/exp.py``): AdamW, weight decay 0.05, lr 5e-4 · batch/512 (batch 32 on one
  GPU: 3.125e-5), cosine schedule with 2000 warm-up steps, 20 000 steps (≈ 52 epochs of RAF-DB's
  12 271 training images), plain shuffling (no class-balanced sampler), gradient clipping at norm 5, fp16;
  inputs normalised with mean = std = 0.5.

Deliberate deviations:

- the encoder is timm's Swin-T (:mod:`networks.backbones.swin_t`, ``patch_size=2, img_size=112``) with
  ``dynamic_img_size``, so ``--image-size`` other than 112 works (the CAM is then ``S/16``-sided);
- the authors' encoder also builds a face-recognition embedding head (``feature``: Linear-BN-Linear-BN,
  0.98 M parameters) and a LayerNorm that ``SwinTransFER`` never calls; they are not built here and
  :meth:`LNSUNet.remap_state_dict` reports them as discarded. That is the whole difference between the
  authors' 28.51 M and our 27.52 M parameters (7 classes);
- ``w_k``: the RAF-DB weights re-ordered to the toolkit's AffectNet-7 order for 7 classes (the criterion's
  ``class_weights`` for any other set); with another number of classes and no weights given, uniform
  weights (plain label smoothing over the other classes), with a warning;
- the recipe (:data:`RECIPE`) has the authors' cosine schedule with 2000 warm-up steps over 52 epochs
  (the engine counts epochs, so the schedule's length follows the dataset), but no gradient clipping and
  fp32 (``--amp`` for bf16/fp16).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.backbones.swin_t import remap_swin_keys
from networks.criteria import Criterion, LossOutput
from networks.registry import backbone_spec, create_backbone, register_criterion, register_model
from networks.weights import register_weight_source

__all__ = ["RAFDB_CLASS_WEIGHTS_AFFECTNET7", "RECIPE", "LNSUNet", "LNSUNetCriterion", "LNSUNetOutput",
           "lnsu_net", "rebalanced_smooth_labels"]

#: the authors' RAF-DB re-balancing weights (∝ 1 / class count), re-ordered from RAF-DB's order to
#: AffectNet-7's (Neutral, Happy, Sad, Surprise, Fear, Disgust, Angry)
RAFDB_CLASS_WEIGHTS_AFFECTNET7 = (0.48617274, 0.25714585, 0.6191221, 0.95124031, 4.36690391, 1.71143654, 1.74056738)

#: the paper's recipe as far as the engine expresses it (see the module docstring)
RECIPE = {"optimizer": "adamw", "lr": 3.125e-5, "weight_decay": 0.05, "scheduler": "cosine", "warmup_steps": 2000,
          "batch_size": 32, "epochs": 52, "balanced_sampling": False}


@dataclass
class LNSUNetOutput:
    """Forward result of :class:`LNSUNet`.

    Attributes:
        logits: [B, C] expression logits.
        features: [B, 768] pooled, normalised Swin-T features.
        cam: [B, C, h, w] class activation maps of the input (h = w = 7 at 112×112).
        flipped_cam: [B, C, h, w] maps of the horizontally flipped input (training only, else None), in the
            flipped image's own coordinates.
    """

    logits: Tensor
    features: Tensor
    cam: Tensor
    flipped_cam: Tensor | None = None


class LNSUNet(nn.Module):
    """LNSU-Net classifier (the authors' ``SwinTransFER`` with ``cam=True``).

    Args:
        num_classes: expression classes (7 in the paper).
        flip_consistency: in training mode also run the flipped batch (needed by the attention
            consistency term; False halves the training cost and gives ``flipped_cam=None``).

    Attributes:
        encoder: :class:`~networks.backbones.swin_t.SwinTiny` (2×2 patches, 112), its final LayerNorm is
            the classifier's (the authors' ``norm``); head: Linear(768, C).
        backbone_spec: 112×112, mean = std = 0.5 (the authors' normalisation).
        input_streams: ``("photo",)``.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, flip_consistency: bool = True) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"LNSU-Net needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.flip_consistency = flip_consistency
        self.encoder = create_backbone("swin_t", img_size=112, patch_size=2)
        self.backbone_spec = replace(backbone_spec("swin_t"), input_size=112, mean=(0.5, 0.5, 0.5),
                                     std=(0.5, 0.5, 0.5), weights="the authors' start_0.pt (state_dict_backbone)")
        self.head = nn.Linear(self.encoder.out_channels, num_classes)

    def class_activation_maps(self, feature_map: Tensor) -> Tensor:
        """Normalised map ``[B, 768, h, w]`` → CAM ``[B, C, h, w]`` with the classifier weights detached."""
        return torch.einsum("bchw,kc->bkhw", feature_map, self.head.weight.detach())

    def forward(self, x: Tensor) -> LNSUNetOutput:
        """Faces ``[B, 3, S, S]`` (normalised with mean = std = 0.5; S = 112 in the paper) → :class:`LNSUNetOutput`."""
        n = x.shape[0]
        both = self.training and self.flip_consistency
        maps = self.encoder.forward_features(torch.cat([x, x.flip(-1)]) if both else x)  # [B(·2), 768, h, w]
        cams = self.class_activation_maps(maps)
        features = maps[:n].mean(dim=(2, 3))
        return LNSUNetOutput(logits=self.head(features), features=features, cam=cams[:n],
                             flipped_cam=cams[n:] if both else None)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Map the authors' layouts onto this model (protocol in docs/INTERFACES.md).

        Args:
            source: ``"lnsu_net"`` — a trained ``SwinTransFER`` (``state_dict_model``: ``encoder.*``
            with the original Swin names, ``norm``, ``head``; the encoder's unused ``feature`` head and
            ``norm`` are discarded) or the backbone alone (``start_0.pt``'s ``state_dict_backbone``, into
            ``encoder.``); ``"swin"`` — a Swin-T file (timm or Microsoft names) into ``encoder.``.

        Raises:
            ValueError: another source.
        """
        if source == "swin":
            return remap_swin_keys(state_dict, dst_prefix="encoder.")
        if source != "lnsu_net":
            raise ValueError(f"LNSU-Net cannot load weights of source {source!r} (supported: lnsu_net, swin)")
        if not any(k.startswith("encoder.") for k in state_dict):  # the backbone file: Swin names at the top
            mapped, _, discarded = remap_swin_keys(state_dict, dst_prefix="encoder.", drop=("feature.", "norm."))
            # its final LayerNorm is the classifier's, which the authors train from scratch
            return mapped, ["encoder.patch_embed.", "encoder.layers."], discarded
        mapped, _, discarded = remap_swin_keys(state_dict, "encoder.", "encoder.", drop=("feature.", "norm."))
        for key, value in state_dict.items():
            if not key.startswith("encoder."):
                mapped["encoder." + key if key.startswith("norm.") else key] = value
        return mapped, None, discarded


def _is_lnsu_net(sd: Mapping[str, Tensor]) -> bool:
    """The authors' trained model (``encoder.*`` + ``head``) or their backbone file (a 2×2-patch Swin with
    the ``feature`` embedding head)."""
    if {"encoder.patch_embed.proj.weight", "norm.weight", "head.weight"} <= set(sd):
        return True
    return "feature.0.weight" in sd and "patch_embed.proj.weight" in sd


def _is_swin(sd: Mapping[str, Tensor]) -> bool:
    return "patch_embed.proj.weight" in sd and any(k.endswith("relative_position_bias_table") for k in sd)


def _build_lnsu_net(sd: Mapping[str, Tensor]) -> tuple[str, dict]:
    """The model a trained checkpoint describes; the backbone file holds no classifier to build one from."""
    if "head.weight" not in sd:
        raise ValueError("an LNSU-Net backbone file holds no classifier: build lnsu_net with networks.create_model "
                         "and load it with networks.load_weights")
    return "lnsu_net", {"num_classes": int(sd["head.weight"].shape[0])}


register_weight_source("lnsu_net", _is_lnsu_net, _build_lnsu_net)
register_weight_source("swin", _is_swin)


def rebalanced_smooth_labels(label: Tensor, num_classes: int, smoothing: float, class_weights: Tensor) -> Tensor:
    """The authors' re-balanced smooth labels (``LSR2._smooth_label``).

    Args:
        label: [B] int64 class indices.
        num_classes: C.
        smoothing: ε, the mass moved off the true class (0.3).
        class_weights: [C] positive re-balancing weights w.

    Returns:
        [B, C] float32 targets: ``1 − ε`` at the true class, ``ε · w_k / Σ_{j≠y} w_j`` at every other k.
    """
    w = class_weights.to(label.device, torch.float32).expand(label.shape[0], -1)
    true = F.one_hot(label, num_classes).bool()
    others = w.masked_fill(true, 0.0)
    spread = smoothing * others / others.sum(dim=1, keepdim=True)
    return spread.masked_fill(true, 1.0 - smoothing)


@register_criterion("lnsu_net")
class LNSUNetCriterion(Criterion):
    """LNSU-Net's loss: re-balanced smooth-label cross-entropy + 0.1 × re-balanced attention consistency.

    Terms (see the module docstring for the source)::

        smooth_ce              = mean_b −Σ_k q_bk · log softmax(logits_b)_k,  q = rebalanced_smooth_labels(ε)
        attention_consistency  = mean_b Σ_k w_k · mean_{h,w} (cam_bk − flip_w(flipped_cam_bk))²
                                 (0 when the output has no flipped maps, e.g. flip_consistency=False)

    ``forward(output, batch)``: ``output`` an :class:`LNSUNetOutput`, ``batch["label"]`` [B] int64.

    Args:
        weights: term weights (defaults smooth_ce 1, attention_consistency 0.1).
        smoothing: ε (0.3).
        class_weights: w, one per class in the model's class order; default the authors' RAF-DB
            weights (:data:`RAFDB_CLASS_WEIGHTS_AFFECTNET7`) for 7 classes, uniform (with a warning) otherwise.
    """

    terms = ("smooth_ce", "attention_consistency")
    default_weights = {"smooth_ce": 1.0, "attention_consistency": 0.1}

    def __init__(self, weights: Mapping[str, float] | None = None, smoothing: float = 0.3,
                 class_weights: Sequence[float] | None = None) -> None:
        super().__init__(weights)
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.smoothing = float(smoothing)
        self.class_weights = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self._warned = False

    def _weights_for(self, num_classes: int, device: torch.device) -> Tensor:
        if self.class_weights is not None:
            if self.class_weights.numel() != num_classes:
                raise ValueError(f"class_weights has {self.class_weights.numel()} values for {num_classes} classes")
            return self.class_weights.to(device)
        if num_classes == len(RAFDB_CLASS_WEIGHTS_AFFECTNET7):
            return torch.tensor(RAFDB_CLASS_WEIGHTS_AFFECTNET7, device=device)
        if not self._warned:
            warnings.warn(f"LNSU-Net's re-balancing weights are known for 7 classes (RAF-DB); with {num_classes} "
                          "classes uniform weights are used", stacklevel=2)
            self._warned = True
        return torch.ones(num_classes, device=device)

    def forward(self, output: LNSUNetOutput, batch: Mapping[str, Tensor]) -> LossOutput:
        logits = output.logits.float()
        label = batch["label"].to(logits.device)
        w = self._weights_for(logits.shape[1], logits.device)
        target = rebalanced_smooth_labels(label, logits.shape[1], self.smoothing, w)
        smooth_ce = -(target * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        consistency = smooth_ce.new_zeros(())
        if output.flipped_cam is not None:
            per_class = (output.cam.float() - output.flipped_cam.float().flip(-1)).pow(2).mean(dim=(2, 3))  # [B, C]
            consistency = (per_class * w).sum(dim=1).mean()
        return self.combine({"smooth_ce": smooth_ce, "attention_consistency": consistency})


@register_model(criterion="lnsu_net", recipe=RECIPE)
def lnsu_net(num_classes: int = 7, flip_consistency: bool = True, **kwargs) -> LNSUNet:
    """LNSU-Net (Zhang et al., NeurIPS 2023): face Swin-T + re-balanced attention consistency and smooth labels.

    Input 112×112 as the paper (``--image-size 112``, the default). Load the authors' checkpoints with
    ``networks.load_weights(model, path)`` (their trained ``state_dict_model`` or backbone ``start_0.pt``).

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"lnsu_net() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return LNSUNet(num_classes=num_classes, flip_consistency=flip_consistency)
