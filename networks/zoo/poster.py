"""POSTER: a pyramid cross-fusion transformer of an image stream and a facial-landmark stream.

Zheng, Mendieta, Chen, "POSTER: A Pyramid Cross-Fusion Transformer Network for Facial Expression
Recognition", ICCV Workshops 2023; authors' code https://github.com/zczcwh/POSTER (``models/emotion_hyp.py``
``pyramid_trans_expr``, ``models/hyp_crossvit.py``, ``train.py``). Facts taken from there (shapes for one
face, ``type="large"``)::

    x [B,3,224,224] --nearest resize--> [B,3,112,112]   (both backbones resize to 112 themselves)
    landmark: MobileFaceNet conv_6_sep [B,512,7,7] → 49 tokens [B,49,512]   (frozen, pretrained)
    image:    IR-50, 3 stages [B,256,14,14] → reshaped in memory order to [B,49,1024] → Linear → [B,49,512]
    tokens:   [mean(image) ; image + pos_embed] (50) and [mean(landmark) ; landmark] (50) → [B,100,512]
    pyramid:  the same 100 tokens at dims 512, 256, 128 (Conv1d over the token axis, kernel = stride
              = 1, 2, 4, applied along the embedding); 8 pyramid blocks, each: a cross-fusion block per
              scale (image tokens attend with landmark tokens as queries and vice versa; 8 heads,
              MLP ratio 2, a 1×1 Conv1d mixing the 100 tokens), then the small scale is added to the middle
              and the middle to the large one through ConvTranspose1d(kernel 2, stride 2)
    head:     LayerNorm → image class token [B,512] → SE (Linear-ReLU-Linear-sigmoid gate) → Linear(512, C)

In a cross-fusion block the queries are the *other* stream's normalised tokens themselves (no query
projection); keys and values come from one ``Linear(d, 2d)``. Loss (``train.py``): ``CE + 2 · LSCE`` with
label smoothing 0.2. Recipe (RAF-DB): SAM (ρ = 0.05) over Adam, lr 4e-5, ``ExponentialLR(0.98)`` per
epoch, batch 200, 300 epochs, plain shuffling; images resized to 224, ImageNet normalisation, random
flip and random erasing.

Deliberate deviations:

- no SAM: the engine takes one optimizer step per batch (Adam alone, :data:`RECIPE`);
- the frozen landmark stream stays in eval mode during training (the original's BatchNorm statistics drift
  although its weights are frozen);
- the landmark weights come from a file the user gives (:func:`networks.backbones.mobilefacenet.find_landmark_weights`:
  ``$IF3D_MOBILEFACENET_WEIGHTS`` or ``pretrained/mobilefacenet_model_best.pth.tar``) or ``landmark_weights=PATH``;
  with none found the landmark stream is *trained from scratch* instead of frozen (a warning says so and
  ``model.landmark_weights`` records it) — a random frozen stream would only add noise.

Unused modules of the original are kept frozen so the authors' checkpoints load strictly and the count
matches their 71.85 M (7 classes): IR-50's face-recognition embedding head (12.85 M), the MobileFaceNet
landmark regressor (0.10 M, part of the landmark network) and the pyramid's never-read ``cls_token``.
Module names are ours; :meth:`POSTER.remap_state_dict` loads the authors' (``ir_back``, ``face_landback``,
``ir_layer``, ``pyramid_fuse``, ``se_block``, ``head.linear``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from torch import Tensor

from networks.backbones.ir50 import IResNet50, remap_ir50_keys
from networks.backbones.mobilefacenet import (
    LANDMARK_WEIGHTS_ENV,
    LANDMARK_WEIGHTS_FILE,
    LandmarkMobileFaceNet,
    find_landmark_weights,
    remap_mobilefacenet_keys,
)
from networks.criteria import Criterion, LossOutput
from networks.mixedfeaturenet import _freeze
from networks.registry import BackboneSpec, register_criterion, register_model
from networks.weights import register_weight_source

__all__ = ["POSTER", "RECIPE", "LandmarkStream", "POSTERCriterion", "POSTEROutput", "PyramidCrossFusion",
           "label_smoothing_cross_entropy", "poster"]

#: the paper's recipe as far as the engine expresses it (no SAM; see the module docstring)
RECIPE = {"optimizer": "adam", "lr": 4e-5, "weight_decay": 0.0, "scheduler": "exponential", "exp_gamma": 0.98,
          "batch_size": 200, "epochs": 300, "balanced_sampling": False}
#: POSTER and POSTER++ resize every face to this side before both backbones
BACKBONE_SIDE = 112
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def resize_for_backbones(x: Tensor) -> Tensor:
    """``[B, 3, S, S]`` → ``[B, 3, 112, 112]`` by nearest-neighbour resizing, as the originals'
    ``F.interpolate(x, size=112)`` (the identity when S = 112)."""
    return x if x.shape[-1] == x.shape[-2] == BACKBONE_SIDE else F.interpolate(x, size=BACKBONE_SIDE)


class LandmarkStream(nn.Module):
    """The landmark MobileFaceNet of POSTER/POSTER++ with its weights and freezing decided at construction.

    Args:
        weights: the landmark weight file; None looks it up (:func:`find_landmark_weights`); False trains the
            stream from scratch without looking.
        freeze: freeze it (and keep it in eval mode); None = freeze exactly when weights were loaded.

    Attributes:
        net: :class:`~networks.backbones.mobilefacenet.LandmarkMobileFaceNet`.
        weights_source: the file loaded, or a sentence saying that none was.
        frozen: whether the stream is frozen.

    Raises:
        FileNotFoundError: ``weights`` (or ``$IF3D_MOBILEFACENET_WEIGHTS``) names a missing file.
        networks.weights.WeightLoadError: the file's keys do not match the network (checked one by one).
    """

    def __init__(self, weights: str | os.PathLike | bool | None = None, freeze: bool | None = None) -> None:
        super().__init__()
        self.net = LandmarkMobileFaceNet()
        _freeze(self.net.output_layer)  # the landmark regressor: part of the file, never used by POSTER(++)
        path = find_landmark_weights() if weights is None else (None if weights is False else Path(weights))
        if path is not None:
            from networks.weights import load_state_dict_checked, read_checkpoint

            ckpt = read_checkpoint(path)
            load_state_dict_checked(self.net, ckpt.state_dict, "mobilefacenet", strict=True, path=ckpt.path)
            self.weights_source = str(path)
        else:
            self.weights_source = "none: trained from scratch"
            if weights is None:
                warnings.warn(f"no landmark MobileFaceNet weights (set ${LANDMARK_WEIGHTS_ENV} or put the authors' "
                              f"file at {LANDMARK_WEIGHTS_FILE}); the landmark stream is trained from scratch instead "
                              "of frozen, unlike the paper", stacklevel=3)
        self.frozen = path is not None if freeze is None else bool(freeze)
        if self.frozen:
            _freeze(self.net)

    def train(self, mode: bool = True) -> LandmarkStream:
        super().train(mode and not self.frozen)
        return self

    def forward(self, x112: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``[B, 3, 112, 112]`` → the MobileFaceNet maps ``([B,64,28,28], [B,128,14,14], [B,512,7,7])``."""
        return self.net.forward_stages(x112)


class CrossAttention(nn.Module):
    """One direction of POSTER's cross-fusion: ``kv`` tokens attend with the other stream's tokens as queries.

    ``out = proj(softmax(q k^T / sqrt(d_h)) v)`` with ``k, v = kv(tokens)`` and ``q`` = the query tokens,
    split into heads without a projection (original ``Attention_img`` / ``Attention_lm``).

    Shapes: ``(tokens [B, N, d], queries [B, N, d])`` → ``[B, N, d]``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor, queries: Tensor) -> Tensor:
        b, n, d = tokens.shape
        k, v = self.kv(tokens).reshape(b, n, 2, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q = queries.reshape(b, -1, self.num_heads, d // self.num_heads).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d_h)) v
        return self.proj(out.transpose(1, 2).reshape(b, -1, d))


class CrossFusionBlock(nn.Module):
    """POSTER's ``Block``: two cross-attentions + MLPs, then a 1×1 Conv1d mixing all tokens.

    Args:
        dim: token width; tokens: image tokens (50) + landmark tokens (50); mlp_ratio: 2.

    Shapes: ``[B, 2·tokens, dim]`` → same.
    """

    def __init__(self, dim: int, image_tokens: int = 50, landmark_tokens: int = 50, num_heads: int = 8,
                 mlp_ratio: float = 2.0, drop_path: float = 0.0) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.image_tokens = image_tokens
        self.norm1, self.norm2, self.norm3, self.norm4 = norm(dim), norm(dim), norm(dim), norm(dim)
        self.attn_img = CrossAttention(dim, num_heads)
        self.attn_lm = CrossAttention(dim, num_heads)
        self.mlp1 = Mlp(dim, int(dim * mlp_ratio))
        self.mlp2 = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.conv = nn.Conv1d(image_tokens + landmark_tokens, image_tokens + landmark_tokens, 1)

    def forward(self, x: Tensor) -> Tensor:
        n = self.image_tokens
        img, lm = x[:, :n], x[:, n:]
        # the image tokens and the landmark tokens of norm1(x) / norm3(x) (the original normalises all 100)
        a, c = self.norm1(x), self.norm3(x)
        img = img + self.drop_path(self.attn_img(a[:, :n], a[:, n:]))
        img = img + self.drop_path(self.mlp1(self.norm2(img)))
        lm = lm + self.drop_path(self.attn_lm(c[:, n:], c[:, :n]))
        lm = lm + self.drop_path(self.mlp2(self.norm4(lm)))
        return self.conv(torch.cat([img, lm], dim=1))


class PyramidBlock(nn.Module):
    """One pyramid level: cross-fusion at widths d, d/2, d/4; small → middle → large by ConvTranspose1d."""

    def __init__(self, dim: int, tokens: int = 100, drop_path: float = 0.0, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.block_l = CrossFusionBlock(dim, mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.block_m = CrossFusionBlock(dim // 2, mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.block_s = CrossFusionBlock(dim // 4, mlp_ratio=mlp_ratio, drop_path=drop_path)
        self.upsample_m = nn.ConvTranspose1d(tokens, tokens, kernel_size=2, stride=2)
        self.upsample_s = nn.ConvTranspose1d(tokens, tokens, kernel_size=2, stride=2)

    def forward(self, x: list[Tensor]) -> list[Tensor]:
        x_l, x_m, x_s = self.block_l(x[0]), self.block_m(x[1]), self.block_s(x[2])
        x_m = self.upsample_s(x_s) + x_m
        return [x_l + self.upsample_m(x_m), x_m, x_s]


class PyramidCrossFusion(nn.Module):
    """POSTER's ``HyVisionTransformer``: image and landmark tokens → fused image class token ``[B, dim]``.

    Args:
        dim: 512; depth: pyramid blocks (small 4, base 6, large 8); tokens: 49 per stream.
    """

    def __init__(self, dim: int = 512, depth: int = 8, tokens: int = 49, drop_path_rate: float = 0.1) -> None:
        super().__init__()
        total = 2 * (tokens + 1)
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        self.unused_cls_token = nn.Parameter(torch.zeros(1, 1, dim), requires_grad=False)  # built, never read
        self.downsample_m = nn.Conv1d(total, total, kernel_size=2, stride=2)
        self.downsample_s = nn.Conv1d(total, total, kernel_size=4, stride=4)
        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.Sequential(*(PyramidBlock(dim, total, rates[i]) for i in range(depth)))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, image_tokens: Tensor, landmark_tokens: Tensor) -> Tensor:
        """``([B, 49, dim], [B, 49, dim])`` → the image class token ``[B, dim]`` after the pyramid."""
        img = torch.cat([image_tokens.mean(1, keepdim=True), image_tokens], dim=1) + self.pos_embed
        lm = torch.cat([landmark_tokens.mean(1, keepdim=True), landmark_tokens], dim=1)
        x = torch.cat([img, lm], dim=1)
        x_l = self.blocks([x, self.downsample_m(x), self.downsample_s(x)])[0]
        return self.norm(x_l)[:, 0]


class SEGate(nn.Module):
    """``x · sigmoid(linear2(relu(linear1(x))))`` on ``[B, d]`` (the original ``SE_block``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear1 = nn.Linear(dim, dim)
        self.linear2 = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(self.linear2(F.relu(self.linear1(x))))


@dataclass
class POSTEROutput:
    """Forward result of :class:`POSTER` and :class:`~networks.zoo.poster_v2.POSTERV2`.

    Attributes:
        logits: [B, C] expression logits.
        features: [B, D] the gated class token the classifier reads (D = 512 POSTER, 768 POSTER++).
    """

    logits: Tensor
    features: Tensor


class POSTER(nn.Module):
    """POSTER (``type="large"``; see the module docstring).

    Args:
        num_classes: expression classes (7 or 8 as the authors).
        depth: pyramid blocks (4 small, 6 base, 8 large).
        landmark_weights, freeze_landmarks: see :class:`LandmarkStream`.

    Attributes:
        image_backbone (IR-50, 3 stages, frozen embedding head), landmark (:class:`LandmarkStream`),
        image_proj (Linear 1024 → 512), fusion (:class:`PyramidCrossFusion`), se_block, head.
        backbone_spec: 224×224 input (the paper's; 112 gives the same network input), ImageNet normalisation.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, depth: int = 8, landmark_weights: str | os.PathLike | bool | None = None,
                 freeze_landmarks: bool | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"POSTER needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone_spec = BackboneSpec(input_size=224, out_channels=512, feature_size=1, **IMAGENET,
                                          weights="IR-50 ir50.pth + landmark MobileFaceNet (the user's files)")
        self.image_backbone = IResNet50(num_stages=3, embedding_head=True)
        self.landmark = LandmarkStream(landmark_weights, freeze_landmarks)
        self.image_proj = nn.Linear(1024, 512)
        self.fusion = PyramidCrossFusion(512, depth)
        self.se_block = SEGate(512)
        self.head = nn.Linear(512, num_classes)

    @property
    def landmark_weights(self) -> str:
        """Where the landmark stream's weights came from (a file, or a sentence saying none)."""
        return self.landmark.weights_source

    def forward(self, x: Tensor) -> POSTEROutput:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised; S = 224 in the paper, any S works: both backbones
        see a 112×112 nearest resize) → :class:`POSTEROutput` (logits ``[B, C]``, features ``[B, 512]``)."""
        x = resize_for_backbones(x)
        b = x.shape[0]
        landmark_tokens = self.landmark(x)[2].flatten(2).transpose(1, 2)  # [B, 49, 512]
        image_map = self.image_backbone.forward_features(x)  # [B, 256, 14, 14]
        image_tokens = self.image_proj(image_map.reshape(b, 49, 1024))  # the original's memory-order view
        features = self.se_block(self.fusion(image_tokens, landmark_tokens))
        return POSTEROutput(logits=self.head(features), features=features)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Map the authors' files onto this model (protocol in docs/INTERFACES.md).

        Args:
            source: ``"poster"`` (a trained ``pyramid_trans_expr``, ``model_state_dict``), ``"ir50"``
                (``ir50.pth`` into ``image_backbone.``; its fourth stage is discarded) or
                ``"mobilefacenet"`` (the landmark file into ``landmark.net.``).

        Raises:
            ValueError: another source.
        """
        if source == "ir50":
            return remap_ir50_keys(state_dict, "image_backbone.", 3, True)
        if source == "mobilefacenet":
            return remap_mobilefacenet_keys(state_dict, dst_prefix="landmark.net."), ["landmark.net."], []
        if source != "poster":
            raise ValueError(f"POSTER cannot load weights of source {source!r} (supported: poster, ir50, mobilefacenet)")
        mapped, _, discarded = remap_ir50_keys(state_dict, "image_backbone.", 3, True, src_prefix="ir_back.")
        mapped.update(remap_mobilefacenet_keys(state_dict, "face_landback.", "landmark.net."))
        renames = {"ir_layer.": "image_proj.", "pyramid_fuse.cls_token": "fusion.unused_cls_token",
                   "pyramid_fuse.": "fusion.", "se_block.": "se_block.", "head.linear.": "head."}
        for key, value in state_dict.items():
            if key.startswith(("ir_back.", "face_landback.")):
                continue
            src = next((s for s in renames if key.startswith(s)), None)
            mapped[renames[src] + key[len(src):] if src else f"<unmapped>.{key}"] = value
        return mapped, None, discarded


def _is_poster(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("pyramid_fuse.") for k in sd) and any(k.startswith("ir_back.") for k in sd)


def _is_ir50(sd: Mapping[str, Tensor]) -> bool:
    return "input_layer.0.weight" in sd and any(k.startswith("body") for k in sd)


def _is_mobilefacenet(sd: Mapping[str, Tensor]) -> bool:
    return "conv_6_sep.conv.weight" in sd and "output_layer.conv_6_dw.conv.weight" in sd


def _build_poster(sd: Mapping[str, Tensor]) -> tuple[str, dict]:
    """The model an authors' checkpoint describes (classes from its classifier; its own landmark weights)."""
    return "poster", {"num_classes": int(sd["head.linear.weight"].shape[0]), "landmark_weights": False}


register_weight_source("poster", _is_poster, _build_poster)
register_weight_source("ir50", _is_ir50)
register_weight_source("mobilefacenet", _is_mobilefacenet)


def label_smoothing_cross_entropy(logits: Tensor, label: Tensor, smoothing: float) -> Tensor:
    """``mean_b [(1 − s) · (−log p_{b,y_b}) + s · mean_k (−log p_{b,k})]``, ``p = softmax(logits)``
    (POSTER's ``LabelSmoothingCrossEntropy``; equals ``F.cross_entropy(..., label_smoothing=s)``).

    Args:
        logits: [B, C]; label: [B] int64; smoothing: s ∈ [0, 1).

    Returns:
        [] float32.
    """
    logp = F.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, label.unsqueeze(1)).squeeze(1)
    return ((1.0 - smoothing) * nll - smoothing * logp.mean(dim=1)).mean()


@register_criterion("poster")
class POSTERCriterion(Criterion):
    """POSTER's loss (``train.py``): ``ce + 2 · smooth_ce``.

    Terms: ``ce`` = cross-entropy of ``output.logits`` [B, C] against ``batch["label"]`` [B];
    ``smooth_ce`` = :func:`label_smoothing_cross_entropy` with ``smoothing`` (0.2).

    Args:
        weights: term weights (defaults ce 1, smooth_ce 2); smoothing: s.
    """

    terms = ("ce", "smooth_ce")
    default_weights = {"ce": 1.0, "smooth_ce": 2.0}

    def __init__(self, weights: Mapping[str, float] | None = None, smoothing: float = 0.2) -> None:
        super().__init__(weights)
        self.smoothing = float(smoothing)

    def forward(self, output: POSTEROutput, batch: Mapping[str, Tensor]) -> LossOutput:
        logits = output.logits.float()
        label = batch["label"].to(logits.device)
        return self.combine({"ce": F.cross_entropy(logits, label),
                             "smooth_ce": label_smoothing_cross_entropy(logits, label, self.smoothing)})


@register_model(criterion="poster", recipe=RECIPE)
def poster(num_classes: int = 7, depth: int = 8, landmark_weights: str | os.PathLike | bool | None = None,
           freeze_landmarks: bool | None = None, **kwargs) -> POSTER:
    """POSTER (Zheng et al., ICCVW 2023), large: IR-50 image stream × landmark MobileFaceNet, pyramid cross-fusion.

    Paper input 224×224 (``--image-size 224``; both backbones see a 112×112 nearest resize, so 112 gives the
    same network input). Landmark weights: ``$IF3D_MOBILEFACENET_WEIGHTS`` or
    ``pretrained/mobilefacenet_model_best.pth.tar``; IR-50 / trained POSTER weights through
    ``networks.load_weights`` (``--pretrained``).

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"poster() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return POSTER(num_classes=num_classes, depth=depth, landmark_weights=landmark_weights,
                  freeze_landmarks=freeze_landmarks)
