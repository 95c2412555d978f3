"""Frame attention networks for video facial expression recognition (Emotion-FAN).

Meng, Peng, Wang, Qiao, "Frame Attention Networks for Facial Expression Recognition in Videos",
ICIP 2019 (arXiv:1907.00193); authors' implementation https://github.com/Open-Debin/Emotion-FAN
(``basic_code/networks.py`` ``ResNet_AT``, ``fan_afew_traintest.py``, ``fan_ckplus_traintest.py``,
``baseline_afew.py``; read as a source of facts, no code is copied). Published: AFEW 8.0 validation
51.18 %, CK+ 99.69 % (10 subject-independent folds).

A clip of ``T`` aligned face frames is embedded frame by frame and the frame features are aggregated
with learned weights. With ``f_i`` the pooled frame feature (512-d, ResNet-18's average-pooled layer4),
``σ`` the logistic sigmoid and ``drop`` dropout (Emotion-FAN: p = 0.5 before every attention layer)::

    self-attention      α_i = σ(w_α · drop(f_i) + b_α)                     [B, T]
                        f'  = Σ_i α_i f_i / Σ_i α_i                         [B, D]
    fan_self            logits = fc(drop_0.5(f'))                          [B, C]
    relation-attention  β_i = σ(w_β · drop([f_i ; f']) + b_β)              [B, T]
                        g   = Σ_i α_i β_i [f_i ; f'] / Σ_i α_i β_i           [B, 2D]
    fan_relation        logits = fc(drop_0.6(g))                           [B, C]
    fan_baseline        p = mean_i softmax(fc(f_i)),  logits = log p       (Emotion-FAN's baseline_afew.py:
                        a frame classifier whose clip score is the mean of the frame probabilities)

Clips of different lengths share a batch through ``frame_mask`` [B, T] (True on real frames, False on
padding): padded frames get weight 0 and are never embedded. In training the batch preparation
(``if3d.runtime.batches``) gives each clip ``clip_frames`` frames, one drawn at random from each of
``clip_frames`` equal segments (Emotion-FAN: 3); evaluation sees every frame of the clip.

Frame-level fusion (``fusion=<strategy>``): the model reads the render of every frame too
(``render_clip``) and fuses the photo and render backbone maps of each frame with a registered If3D
fusion strategy (``networks.fusion``) before the frame attention, so f_i is the fused vector of frame i.

Deviations from the authors' code, on purpose:

- Emotion-FAN evaluates relation-attention as ``Σ α_i [f_i ; f'] / Σ α_i β_i`` (its
  ``AT_level='second_level'`` multiplies the features by α only and divides by Σ αβ), which is not what
  it trains (Σ αβ [f;f'] / Σ αβ). We use the trained formula in both; ``faithful=True`` reproduces the
  evaluation formula of the published numbers.
- Inputs: Emotion-FAN feeds ``ToTensor()`` pixels in [0, 1] without mean/std normalisation at 224×224.
  ``faithful=True`` keeps that (``backbone_spec.mean = 0, std = 1``); by default the backbone's own
  normalisation applies (ImageNet for ResNet-18), at any input size (the map is average-pooled).
- The baseline's per-frame cross-entropy becomes the ``frame_ce`` criterion on the training frames of
  each clip (Emotion-FAN trained it on single frames with the clip label: the same loss in expectation).

Weights: the authors share a ResNet-18 pretrained on MS-Celeb-1M and on FER+ (``Resnet18_FER+_pytorch.
pth.tar``): ``{'state_dict': {'module.conv1.weight', 'module.bn1.*', 'module.layer{1..4}.{0,1}.{conv1,bn1,
conv2,bn2}.*', 'module.layer{2,3,4}.0.downsample.{0,1}.*', 'module.fc.*'}}`` (torchvision's ResNet-18
names; ``fc`` is discarded, as their loader does). Their trained FAN checkpoints add ``alpha.0.*``
(Linear 512→1), ``beta.0.*`` (Linear 1024→1), ``pred_fc1.*`` (512→7) and ``pred_fc2.*`` (1024→7).
:meth:`FrameAttentionNet.remap_state_dict` maps both (sources ``"torchvision_resnet"`` and
``"emotion_fan"``) onto our names: ``backbone.<torchvision name>``, ``self_attention.*`` ← ``alpha.0.*``,
``relation_attention.*`` ← ``beta.0.*``, ``classifier.*`` ← ``pred_fc1.*`` (fan_self) or ``pred_fc2.*``
(fan_relation). Emotion-FAN's class order is AFEW: Happy, Angry, Disgust, Fear, Sad, Neutral,
Surprise; CK+: Happy, Angry, Disgust, Fear, Sad, Contempt, Surprise (:data:`EMOTION_FAN_CLASSES`).

Backbone: the registered ``resnet18`` (torchvision's definition up to layer4, :mod:`networks.backbones.resnet`)
by default, as the paper; any registered backbone works (``mixedfeaturenet``: its 7×7 map is
average-pooled the same way).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.criteria import Criterion, LossOutput
from networks.registry import (
    backbone_spec,
    create_backbone,
    create_fusion,
    fusion_spec,
    list_fusions,
    register_criterion,
    register_model,
)

__all__ = [
    "EMOTION_FAN_CLASSES",
    "EMOTION_FAN_RECIPE",
    "FrameAttentionNet",
    "FrameAttentionOutput",
    "FrameCrossEntropyCriterion",
    "attention_pool",
    "fan_baseline",
    "fan_relation",
    "fan_self",
    "relation_attention_pool",
]

#: Emotion-FAN's label order (``basic_code/load.py`` ``cate2label``) for its AFEW and CK+ checkpoints.
EMOTION_FAN_CLASSES: dict[str, tuple[str, ...]] = {
    "afew": ("Happy", "Angry", "Disgust", "Fear", "Sad", "Neutral", "Surprise"),
    "ckplus": ("Happy", "Angry", "Disgust", "Fear", "Sad", "Contempt", "Surprise"),
}

#: Emotion-FAN's AFEW recipe (``fan_afew_traintest.py``): SGD momentum 0.9, lr 4e-3, weight decay 1e-4,
#: StepLR(60 epochs, ×0.2), 180 epochs, batch 48, shuffled (not class-balanced). Its CK+ script uses
#: lr 1e-2, StepLR(30, ×0.2), 60 epochs, per fold.
EMOTION_FAN_RECIPE = {
    "optimizer": "sgd", "lr": 4e-3, "momentum": 0.9, "weight_decay": 1e-4, "scheduler": "step",
    "step_size": 60, "step_gamma": 0.2, "epochs": 180, "batch_size": 48, "balanced_sampling": False,
}

#: Emotion-FAN's dropout rates: before the attention layers, before the classifier of fan_self / fan_relation.
_ATTENTION_DROPOUT = 0.5
_CLASSIFIER_DROPOUT = {"self": 0.5, "relation": 0.6, "mean": 0.0}


# ============================================================================================ pooling


def attention_pool(features: Tensor, weights: Tensor, mask: Tensor, eps: float = 1e-12) -> Tensor:
    """Weighted mean of frame features over the valid frames: ``Σ_i w_i f_i / Σ_i w_i``.

    Args:
        features: [B, T, D] frame features.
        weights: [B, T] non-negative frame weights (α, or α·β).
        mask: [B, T] bool, True on real frames (padding gets weight 0).
        eps: keeps the division finite for weights that underflow to 0.

    Returns:
        [B, D].
    """
    w = weights * mask.to(weights.dtype)
    return (features * w.unsqueeze(-1)).sum(1) / (w.sum(1, keepdim=True) + eps)


def relation_attention_pool(features: Tensor, clip_feature: Tensor, alpha: Tensor, beta: Tensor, mask: Tensor,
                            faithful_eval: bool = False, eps: float = 1e-12) -> Tensor:
    """Emotion-FAN's relation-attention aggregate ``Σ α_i β_i [f_i ; f'] / Σ α_i β_i``.

    Args:
        features: [B, T, D] frame features f_i.
        clip_feature: [B, D] the self-attention clip feature f'.
        alpha, beta: [B, T] self- and relation-attention weights in (0, 1).
        mask: [B, T] bool, True on real frames.
        faithful_eval: Emotion-FAN's evaluation formula ``Σ α_i [f_i ; f'] / Σ α_i β_i`` (see the module
            docstring); for reproducing its published numbers only.

    Returns:
        [B, 2D].
    """
    cat = torch.cat([features, clip_feature.unsqueeze(1).expand_as(features)], dim=-1)
    m = mask.to(alpha.dtype)
    ab = alpha * beta * m
    num = alpha * m if faithful_eval else ab
    return (cat * num.unsqueeze(-1)).sum(1) / (ab.sum(1, keepdim=True) + eps)


# ============================================================================================ model


@dataclass
class FrameAttentionOutput:
    """Forward result of :class:`FrameAttentionNet`.

    Attributes:
        logits: [B, C] clip logits (fan_baseline: log of the mean frame probability).
        frame_features: [B, T, D] per-frame features (0 on padding).
        self_weights: [B, T] α_i in (0, 1) (fan_baseline: 1), 0 on padding.
        relation_weights: [B, T] β_i in (0, 1) (fan_relation only, else None), 0 on padding.
        final_weights: [B, T] the normalised aggregation weights, summing to 1 over the valid frames of a
            clip: α_i/Σα (fan_self), α_iβ_i/Σαβ (fan_relation), 1/T (fan_baseline).
        frame_mask: [B, T] bool, True on real frames.
        frame_logits: [B, T, C] per-frame logits (fan_baseline only, else None).
    """

    logits: Tensor
    frame_features: Tensor
    self_weights: Tensor
    relation_weights: Tensor | None
    final_weights: Tensor
    frame_mask: Tensor
    frame_logits: Tensor | None = None


class FrameAttentionNet(nn.Module):
    """Emotion-FAN: a frame CNN and frame attention over a clip (see the module docstring).

    Args:
        attention: ``"self"`` (fan_self, at_type 0), ``"relation"`` (fan_relation, at_type 1) or ``"mean"``
            (fan_baseline: frame classifier, clip score = mean frame probability).
        num_classes: C (Emotion-FAN: 7).
        backbone: registered backbone embedding each frame (default ``resnet18``, the paper's); its map is
            average-pooled to one D-dim vector per frame (D = out_channels).
        fusion: a registered fusion strategy (``networks.list_fusions()``) to fuse each frame with its render
            (the model then reads ``render_clip``), or None for photo frames only.
        clip_frames: frames per clip in training, one from each of as many equal segments (Emotion-FAN: 3).
        dropout: classifier dropout (default Emotion-FAN's: 0.5 fan_self, 0.6 fan_relation, 0 fan_baseline).
        faithful: reproduce Emotion-FAN exactly: [0, 1] inputs without normalisation, its relation-attention
            evaluation formula; requires ``backbone="resnet18"`` and no fusion.
        fusion_kwargs: extra arguments of the fusion module.
        eval_chunk: frames embedded at once in evaluation (bounds memory on long clips).

    Attributes:
        input_streams: ``("clip", "frame_mask")`` or ``("clip", "render_clip", "frame_mask")``: the engine
            calls ``model(clip, [render_clip,] frame_mask)``.
        backbone_spec: the backbone's :class:`~networks.registry.BackboneSpec` (faithful: mean 0, std 1), used
            by the batch preparation to normalise the frames.
        feature_dim: D of the frame features (fusion: the fusion's ``out_features``).

    Raises:
        ValueError: unknown attention type or fusion, bad sizes, or a faithful model with other settings.
    """

    def __init__(self, attention: str = "relation", num_classes: int = 7, backbone: str = "resnet18",
                 fusion: str | None = None, clip_frames: int = 3, dropout: float | None = None,
                 faithful: bool = False, fusion_kwargs: Mapping | None = None, eval_chunk: int = 256) -> None:
        super().__init__()
        if attention not in _CLASSIFIER_DROPOUT:
            raise ValueError(f"attention must be 'self', 'relation' or 'mean', got {attention!r}")
        if num_classes < 1 or clip_frames < 1 or eval_chunk < 1:
            raise ValueError(f"num_classes, clip_frames and eval_chunk must be >= 1, got {num_classes}, "
                             f"{clip_frames}, {eval_chunk}")
        if fusion is not None and fusion not in list_fusions():
            raise ValueError(f"unknown fusion strategy {fusion!r}; known: {', '.join(list_fusions())}")
        if faithful and (backbone != "resnet18" or fusion is not None or fusion_kwargs):
            raise ValueError("a faithful Emotion-FAN model uses backbone='resnet18' and no fusion")
        dropout = _CLASSIFIER_DROPOUT[attention] if dropout is None else float(dropout)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.attention = attention
        self.num_classes = num_classes
        self.backbone_name = backbone
        self.fusion_name = fusion
        self.clip_frames = clip_frames
        self.faithful = faithful
        self.eval_chunk = eval_chunk
        spec = backbone_spec(backbone)
        self.backbone_spec = replace(spec, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) if faithful else spec
        if fusion is None:
            self.input_streams = ("clip", "frame_mask")
            self.backbone = create_backbone(backbone)
            self.feature_dim = spec.out_channels
        else:
            self.input_streams = ("clip", "render_clip", "frame_mask")
            self.shared_backbone = fusion_spec(fusion).shared_backbone
            if self.shared_backbone:
                self.backbone = create_backbone(backbone)
            else:
                self.photo_backbone = create_backbone(backbone)
                self.render_backbone = create_backbone(backbone)
            self.fusion = create_fusion(fusion, channels=spec.out_channels, spatial=spec.feature_size,
                                        **dict(fusion_kwargs or {}))
            self.feature_dim = int(self.fusion.out_features)
        d = self.feature_dim
        self.attention_dropout = nn.Dropout(_ATTENTION_DROPOUT)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        if attention in ("self", "relation"):
            self.self_attention = nn.Linear(d, 1)
        if attention == "relation":
            self.relation_attention = nn.Linear(2 * d, 1)
        self.classifier = nn.Linear(2 * d if attention == "relation" else d, num_classes)

    # ------------------------------------------------------------------------------------------ frames

    @property
    def backbone_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the frame backbone(s)."""
        if self.fusion_name is None or self.shared_backbone:
            return ("backbone.",)
        return ("photo_backbone.", "render_backbone.")

    def _channels_last(self) -> bool:
        """True when the backbone's first convolution is stored channels_last (the engine's CPU/CUDA fast path):
        the frames are then given to it in the same memory format."""
        for p in self.parameters():
            if p.dim() == 4:
                return p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        return False

    def _embed(self, photo: Tensor, render: Tensor | None) -> Tensor:
        """Frames [N, 3, S, S] (and their renders) → features [N, D]."""
        if self.fusion_name is None:
            return F.adaptive_avg_pool2d(self.backbone.forward_features(photo), 1).flatten(1)
        photo_bb = self.backbone if self.shared_backbone else self.photo_backbone
        render_bb = self.backbone if self.shared_backbone else self.render_backbone
        return self.fusion(photo_bb.forward_features(photo), render_bb.forward_features(render))

    def forward_frames(self, clip: Tensor, render_clip: Tensor | None, frame_mask: Tensor) -> Tensor:
        """Embed the valid frames of each clip.

        Args:
            clip: [B, T, 3, S, S] normalised float frames.
            render_clip: [B, T, 3, S, S] their renders (fusion models), else None.
            frame_mask: [B, T] bool, True on real frames.

        Returns:
            [B, T, D] frame features, 0 on padding (padded frames are not embedded). In evaluation mode the
            frames go through the backbone ``eval_chunk`` at a time.
        """
        b, t = clip.shape[:2]
        idx = torch.nonzero(frame_mask.reshape(-1), as_tuple=True)[0]
        fmt = torch.channels_last if self._channels_last() else torch.contiguous_format
        frames = clip.reshape(b * t, *clip.shape[2:]).index_select(0, idx).contiguous(memory_format=fmt)
        renders = render_clip.reshape(b * t, *render_clip.shape[2:]).index_select(0, idx).contiguous(
            memory_format=fmt) if render_clip is not None else None
        if self.training or frames.shape[0] <= self.eval_chunk:
            feats = self._embed(frames, renders)
        else:
            n = self.eval_chunk
            feats = torch.cat([self._embed(frames[i:i + n], renders[i:i + n] if renders is not None else None)
                               for i in range(0, frames.shape[0], n)])
        out = feats.new_zeros(b * t, feats.shape[-1])
        out = out.index_copy(0, idx, feats)
        return out.view(b, t, -1)

    # ------------------------------------------------------------------------------------------ forward

    def _check(self, clip: Tensor, render_clip: Tensor | None, frame_mask: Tensor) -> None:
        if clip.dim() != 5 or clip.shape[2] != 3 or not clip.is_floating_point():
            raise ValueError(f"FrameAttentionNet: clip must be normalised float [B, T, 3, S, S], got "
                             f"{tuple(clip.shape)} {clip.dtype}")
        if frame_mask.shape != clip.shape[:2] or frame_mask.dtype != torch.bool:
            raise ValueError(f"FrameAttentionNet: frame_mask must be bool {list(clip.shape[:2])}, got "
                             f"{tuple(frame_mask.shape)} {frame_mask.dtype}")
        if not bool(frame_mask.any(1).all()):
            raise ValueError("FrameAttentionNet: every clip needs at least one valid frame")
        if self.fusion_name is not None:
            if render_clip is None or render_clip.shape != clip.shape:
                raise ValueError(f"FrameAttentionNet: render_clip must match clip {tuple(clip.shape)}, got "
                                 f"{None if render_clip is None else tuple(render_clip.shape)}")
            size = self.backbone_spec.input_size
            if tuple(clip.shape[-2:]) != (size, size):
                raise ValueError(f"FrameAttentionNet: with fusion {self.fusion_name!r} frames must be {size}×{size} "
                                 f"(the {self.backbone_name} map the fusion is built for), got {tuple(clip.shape[-2:])}")

    def forward(self, clip: Tensor, *rest: Tensor) -> FrameAttentionOutput:
        """Clips → :class:`FrameAttentionOutput`.

        Called as ``model(clip, frame_mask)`` or, with fusion, ``model(clip, render_clip, frame_mask)``.

        Args:
            clip: [B, T, 3, S, S] float frames, normalised with ``backbone_spec`` (mean/std).
            render_clip: [B, T, 3, S, S] renders of the same frames (fusion models only).
            frame_mask: [B, T] bool, True on real frames; every clip needs one.

        Raises:
            ValueError: wrong shapes or dtypes, a clip without valid frames, or the wrong number of inputs.
        """
        want = len(self.input_streams) - 1
        if len(rest) != want:
            raise ValueError(f"FrameAttentionNet takes {', '.join(self.input_streams)}; got {1 + len(rest)} inputs")
        render_clip, frame_mask = (rest[0], rest[1]) if want == 2 else (None, rest[0])
        self._check(clip, render_clip, frame_mask)
        feats = self.forward_frames(clip, render_clip, frame_mask)
        mask = frame_mask
        maskf = mask.to(feats.dtype)
        if self.attention == "mean":
            frame_logits = self.classifier(self.dropout(feats))  # [B, T, C]
            probs = frame_logits.float().softmax(-1) * maskf.unsqueeze(-1).float()
            probs = probs.sum(1) / maskf.float().sum(1, keepdim=True)
            logits = probs.clamp_min(1e-12).log()
            ones = maskf
            return FrameAttentionOutput(logits, feats, ones, None, ones / ones.sum(1, keepdim=True), mask,
                                        frame_logits)
        alpha = torch.sigmoid(self.self_attention(self.attention_dropout(feats))).squeeze(-1) * maskf
        clip_feature = attention_pool(feats, alpha, mask)
        if self.attention == "self":
            logits = self.classifier(self.dropout(clip_feature))
            return FrameAttentionOutput(logits, feats, alpha, None, alpha / alpha.sum(1, keepdim=True), mask)
        cat = torch.cat([feats, clip_feature.unsqueeze(1).expand_as(feats)], dim=-1)
        beta = torch.sigmoid(self.relation_attention(self.attention_dropout(cat))).squeeze(-1) * maskf
        pooled = relation_attention_pool(feats, clip_feature, alpha, beta, mask,
                                         faithful_eval=self.faithful and not self.training)
        logits = self.classifier(self.dropout(pooled))
        ab = alpha * beta
        return FrameAttentionOutput(logits, feats, alpha, beta, ab / ab.sum(1, keepdim=True), mask)

    # ------------------------------------------------------------------------------------------ weights

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str
                         ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map Emotion-FAN's and other foreign weights onto this model (protocol in docs/INTERFACES.md).

        Args:
            state_dict: the file's keys (``module.`` already stripped).
            source: ``"torchvision_resnet"`` (a ResNet-18 in torchvision's layout, e.g. Emotion-FAN's
                ``Resnet18_FER+_pytorch.pth.tar``: into every frame backbone; ``fc.*`` discarded),
                ``"emotion_fan"`` (a trained Emotion-FAN ``ResNet_AT``: backbone, ``alpha.0`` →
                ``self_attention``, ``beta.0`` → ``relation_attention``, ``pred_fc1``/``pred_fc2`` →
                ``classifier`` for fan_self/fan_relation; the other head discarded) or ``"mfn_module"``
                (DDAMFN's ``MFN_msceleb.pth`` into a MixedFeatureNet backbone).

        Returns:
            ``(mapped, prefixes, discarded)``.

        Raises:
            ValueError: an unsupported source, or a backbone that cannot take the weights.
        """
        if source == "mfn_module":
            from networks.mixedfeaturenet import MixedFeatureNet

            bb = self.backbone if hasattr(self, "backbone") else self.photo_backbone
            if not isinstance(bb, MixedFeatureNet):
                raise ValueError(f"MFN_msceleb weights hold a MixedFeatureNet; this model's backbone is "
                                 f"{self.backbone_name!r}")
            one, _, discarded = bb.remap_state_dict(state_dict, "mfn_module")
            return ({p + k: v for p in self.backbone_prefixes for k, v in one.items()}, list(self.backbone_prefixes),
                    discarded)
        if source not in ("torchvision_resnet", "emotion_fan"):
            raise ValueError(f"FrameAttentionNet cannot load weights of source {source!r} "
                             "(supported: torchvision_resnet, emotion_fan, mfn_module)")
        if self.backbone_name != "resnet18":
            raise ValueError(f"{source} weights hold a ResNet-18; this model's backbone is {self.backbone_name!r}")
        heads = ("fc.", "alpha.", "beta.", "pred_fc1.", "pred_fc2.")
        body = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
        mapped = {p + k: v for p in self.backbone_prefixes for k, v in body.items()}
        prefixes = list(self.backbone_prefixes)
        pairs: list[tuple[str, str]] = []
        if source == "emotion_fan":
            if self.attention in ("self", "relation"):
                pairs.append(("alpha.0.", "self_attention."))
            if self.attention == "relation":
                pairs += [("beta.0.", "relation_attention."), ("pred_fc2.", "classifier.")]
            elif self.attention == "self":
                pairs.append(("pred_fc1.", "classifier."))
        used = set(body)
        for src, dst in pairs:
            part = {dst + k[len(src):]: v for k, v in state_dict.items() if k.startswith(src)}
            mapped.update(part)
            used.update(k for k in state_dict if k.startswith(src))
            prefixes.append(dst)
        discarded = sorted(k for k in state_dict if k not in used)
        return mapped, prefixes, discarded


# ============================================================================================ criterion


@register_criterion("frame_ce")
class FrameCrossEntropyCriterion(Criterion):
    """Cross-entropy of every valid frame's logits against its clip's label, averaged over the frames.

    Emotion-FAN's baseline (``baseline_afew.py``) trains a frame classifier on single frames labelled with
    their clip's class; here each clip's training frames (``clip_frames`` per clip) contribute one term each.

    ``forward(output, batch)``: ``output.frame_logits`` [B, T, C], ``output.frame_mask`` [B, T] bool,
    ``batch["label"]`` [B] int64 → term ``ce`` (float32).
    """

    terms = ("ce",)
    default_weights = {"ce": 1.0}

    def forward(self, output, batch: Mapping[str, Tensor]) -> LossOutput:
        logits = output.frame_logits.float()
        mask = output.frame_mask
        label = batch["label"].to(logits.device)
        per_frame = label.unsqueeze(1).expand(mask.shape)
        ce = F.cross_entropy(logits[mask], per_frame[mask])
        return self.combine({"ce": ce})


# ============================================================================================ registered models


def _build(attention: str, kwargs: dict) -> FrameAttentionNet:
    allowed = {"num_classes", "backbone", "fusion", "clip_frames", "dropout", "faithful", "fusion_kwargs",
               "eval_chunk"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"fan_{attention}() got unexpected keyword arguments: {', '.join(unknown)}")
    return FrameAttentionNet(attention, **kwargs)


@register_model(criterion="ce", final_checkpoint="FAN_self.pth", recipe=EMOTION_FAN_RECIPE)
def fan_self(**kwargs) -> FrameAttentionNet:
    """Emotion-FAN with self-attention (at_type 0): clip feature Σα_i f_i / Σα_i → linear classifier.

    Keyword arguments as :class:`FrameAttentionNet` (``num_classes=7, backbone="resnet18", fusion=None,
    clip_frames=3, dropout=0.5, faithful=False``).
    """
    return _build("self", kwargs)


@register_model(criterion="ce", final_checkpoint="FAN_relation.pth", recipe=EMOTION_FAN_RECIPE)
def fan_relation(**kwargs) -> FrameAttentionNet:
    """Emotion-FAN with self- and relation-attention (at_type 1): Σα_iβ_i[f_i; f'] / Σα_iβ_i → classifier.

    Keyword arguments as :class:`FrameAttentionNet` (dropout default 0.6).
    """
    return _build("relation", kwargs)


@register_model(criterion="frame_ce", final_checkpoint="FAN_baseline.pth", recipe=EMOTION_FAN_RECIPE)
def fan_baseline(**kwargs) -> FrameAttentionNet:
    """Frame-average baseline: a frame classifier whose clip score is the mean of its frame probabilities.

    Keyword arguments as :class:`FrameAttentionNet` (dropout default 0).
    """
    return _build("mean", kwargs)
