"""POSTER++ (POSTER V2): landmark-to-image window cross-attention at three scales, then a small ViT.

Mao, Xu, Li, Zhang, Xu, "POSTER++: A simpler and stronger facial expression recognition network", Pattern
Recognition 2024; authors' code https://github.com/Talented-Q/POSTER_V2 (``models/PosterV2_7cls.py``
``pyramid_trans_expr2``, ``models/vit_model.py``, ``main.py``). Facts taken from there (one face)::

    x [B,3,224,224] --nearest resize--> [B,3,112,112]
    landmark MobileFaceNet (frozen): conv_3 [B,64,28,28], conv_4 [B,128,14,14], conv_6_sep [B,512,7,7]
        → 3×3 conv 512→256 on the last                                        queries q1, q2, q3
    IR-50 (3 stages): [B,64,56,56], [B,128,28,28], [B,256,14,14] → 3×3 stride-2 convs
        → [B,64,28,28], [B,128,14,14], [B,256,7,7]                            keys/values
    per scale s (window 28/14/7 = the whole map, heads 2/4/8): LayerNorm of the image map; window
        cross-attention with the landmark map as queries (``WindowAttentionGlobal`` of GC ViT, with a
        Swin relative position bias; keys and values from one Linear(d, 2d)); o = norm + γ1·attn,
        o = o + γ2·MLP(LayerNorm(o)) (layer scale γ init 1e-5, stochastic depth 0, 0.125, 0.25)
    tokens: 3×3 s2 convs 64→768→768 (28→7), 3×3 s2 conv 128→768 (14→7), 1×1 conv 256→768 (7)
        → 3 × 49 = 147 tokens + class token + position embedding → 2 ViT blocks (768, 8 heads, MLP 4)
        → LayerNorm → class token → SE gate → Linear(768, C)

Loss (``main.py``): cross-entropy. Recipe (RAF-DB): SAM (ρ = 0.05) over Adam, lr 3.5e-5, weight decay
1e-4, ``ExponentialLR(0.98)`` per epoch, batch 144, 200 epochs, plain shuffling; images resized to 224,
ImageNet normalisation, flip and random erasing.

Deliberate deviations:

- no SAM (:data:`RECIPE` is Adam alone); the frozen landmark stream stays in eval mode; landmark weights as
  POSTER (:class:`~networks.zoo.poster.LandmarkStream`: a user file, else trained from scratch with a warning);
- the authors' code builds modules it never calls — IR-50's embedding head, and in the ViT a patch
  embedding, ``CON1``, ``IRLinear1``/``IRLinear2``, an ECA block and a Conv1d per block (14.6 M parameters
  together, 58.32 M in all). They are not built here (43.85 M for 7 classes, the paper's 43.7 M plus the
  MobileFaceNet's 0.10 M landmark regressor); :meth:`POSTERV2.remap_state_dict` reports them as discarded;
- each "window" is the whole map at the fixed 112 resize, so the window partition is the identity and is
  not spelled out; the relative position index is recomputed (a non-persistent buffer);
- ViT blocks are timm's ``Block`` (same layers and names as the original's ``norm1``, ``attn.qkv``,
  ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp
from timm.models.vision_transformer import Block
from torch import Tensor

from networks.backbones.ir50 import IResNet50, remap_ir50_keys
from networks.backbones.mobilefacenet import remap_mobilefacenet_keys
from networks.criteria import Criterion, LossOutput
from networks.registry import BackboneSpec, register_criterion, register_model
from networks.weights import register_weight_source
from networks.zoo.poster import IMAGENET, LandmarkStream, POSTEROutput, SEGate, resize_for_backbones

__all__ = ["POSTERV2", "RECIPE", "POSTERV2Criterion", "WindowCrossAttention", "poster_v2"]

#: the paper's recipe as far as the engine expresses it (no SAM)
RECIPE = {"optimizer": "adam", "lr": 3.5e-5, "weight_decay": 1e-4, "scheduler": "exponential", "exp_gamma": 0.98,
          "batch_size": 144, "epochs": 200, "balanced_sampling": False}
SIDES = (28, 14, 7)
DIMS = (64, 128, 256)
HEADS = (2, 4, 8)


def relative_position_index(side: int) -> Tensor:
    """Swin's relative position index of a ``side × side`` window: ``[side², side²]`` int64 into a
    ``(2·side − 1)²``-row bias table."""
    coords = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (side - 1)
    return rel[..., 0] * (2 * side - 1) + rel[..., 1]


class WindowCrossAttention(nn.Module):
    """Image tokens attend with landmark queries, plus a relative position bias (original ``WindowAttentionGlobal``).

    ``out = proj(softmax(q k^T / sqrt(d_h) + bias) v)``; ``k, v`` from ``kv(image)``, ``q`` the landmark
    tokens split into heads (no projection).

    Args:
        dim: channels; num_heads; side: the window (= map) side.

    Shapes: ``(image [B, side², dim], landmark [B, side², dim])`` → ``[B, side², dim]``.
    """

    def __init__(self, dim: int, num_heads: int, side: int) -> None:
        super().__init__()
        self.num_heads, self.side = num_heads, side
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * side - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(side), persistent=False)
        self.kv = nn.Linear(dim, dim * 2)
        self.proj = nn.Linear(dim, dim)
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(self, image: Tensor, landmark: Tensor) -> Tensor:
        b, n, d = image.shape
        h = self.num_heads
        k, v = self.kv(image).reshape(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)
        q = landmark.reshape(b, n, h, d // h).transpose(1, 2)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        bias = bias.reshape(n, n, h).permute(2, 0, 1).unsqueeze(0).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ScaleFusion(nn.Module):
    """One scale of POSTER++: LayerNorm'd image map + γ1·cross-attention, then + γ2·MLP (layer scale).

    Names follow the original (``window{s}.norm`` → ``norm``, ``attn{s}`` → ``attn``, ``ffn{s}.*`` → ``ffn_*``).
    Shapes: ``(image map [B, d, s, s], landmark map [B, d, s, s])`` → ``[B, d, s, s]``.
    """

    def __init__(self, dim: int, num_heads: int, side: int, drop_path: float, layer_scale: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = WindowCrossAttention(dim, num_heads, side)
        self.gamma1 = nn.Parameter(layer_scale * torch.ones(dim))
        self.gamma2 = nn.Parameter(layer_scale * torch.ones(dim))
        self.ffn_norm = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, dim * 4)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, image: Tensor, landmark: Tensor) -> Tensor:
        b, d, s, _ = image.shape
        x = self.norm(image.permute(0, 2, 3, 1)).reshape(b, s * s, d)  # the shortcut is the normalised map
        q = landmark.permute(0, 2, 3, 1).reshape(b, s * s, d)
        x = x + self.drop_path(self.gamma1 * self.attn(x, q))
        x = x + self.drop_path(self.gamma2 * self.mlp(self.ffn_norm(x)))
        return x.transpose(1, 2).reshape(b, d, s, s)


class POSTERV2(nn.Module):
    """POSTER++ (see the module docstring).

    Args:
        num_classes: expression classes (7 or 8 as the authors).
        landmark_weights, freeze_landmarks: see :class:`~networks.zoo.poster.LandmarkStream`.

    Attributes:
        image_backbone (IR-50, 3 stages), landmark, landmark_proj (3×3 conv 512 → 256), image_down (three
        3×3 s2 convs), scales (three :class:`ScaleFusion`), embed_q/embed_k/embed_v, cls_token, pos_embed,
        blocks (two timm ViT blocks), norm, se_block, head.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, landmark_weights: str | os.PathLike | bool | None = None,
                 freeze_landmarks: bool | None = None, embed_dim: int = 768) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"POSTER++ needs num_classes >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.backbone_spec = BackboneSpec(input_size=224, out_channels=embed_dim, feature_size=1, **IMAGENET,
                                          weights="IR-50 ir50.pth + landmark MobileFaceNet (the user's files)")
        self.image_backbone = IResNet50(num_stages=3, embedding_head=False)
        self.landmark = LandmarkStream(landmark_weights, freeze_landmarks)
        self.landmark_proj = nn.Conv2d(512, 256, 3, padding=1)
        self.image_down = nn.ModuleList(nn.Conv2d(d, d, 3, stride=2, padding=1) for d in DIMS)
        rates = torch.linspace(0, 0.5, 5).tolist()
        self.scales = nn.ModuleList(ScaleFusion(d, h, s, rates[i]) for i, (d, h, s) in enumerate(zip(DIMS, HEADS, SIDES)))
        self.embed_q = nn.Sequential(nn.Conv2d(DIMS[0], embed_dim, 3, 2, 1), nn.Conv2d(embed_dim, embed_dim, 3, 2, 1))
        self.embed_k = nn.Sequential(nn.Conv2d(DIMS[1], embed_dim, 3, 2, 1))
        self.embed_v = nn.Conv2d(DIMS[2], embed_dim, 1)
        tokens = 3 * SIDES[2] ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, embed_dim))
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.Sequential(*(Block(embed_dim, 8, mlp_ratio=4.0, qkv_bias=True, norm_layer=norm) for _ in range(2)))
        self.norm = norm(embed_dim)
        self.se_block = SEGate(embed_dim)
        self.head = nn.Linear(embed_dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    @property
    def landmark_weights(self) -> str:
        """Where the landmark stream's weights came from (a file, or a sentence saying none)."""
        return self.landmark.weights_source

    def forward(self, x: Tensor) -> POSTEROutput:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised; S = 224 in the paper; both backbones see a 112×112
        nearest resize) → :class:`~networks.zoo.poster.POSTEROutput` (logits ``[B, C]``, features ``[B, 768]``)."""
        x = resize_for_backbones(x)
        lm1, lm2, lm3 = self.landmark(x)
        queries = (lm1, lm2, self.landmark_proj(lm3))
        maps = [down(m) for down, m in zip(self.image_down, self.image_backbone.forward_stages(x))]
        o1, o2, o3 = (scale(m, q) for scale, m, q in zip(self.scales, maps, queries))
        tokens = torch.cat([self.embed_q(o1).flatten(2), self.embed_k(o2).flatten(2), self.embed_v(o3).flatten(2)],
                           dim=2).transpose(1, 2)  # [B, 147, 768]
        tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos_embed
        features = self.se_block(self.norm(self.blocks(tokens))[:, 0])
        return POSTEROutput(logits=self.head(features), features=features)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Map the authors' files onto this model (protocol in docs/INTERFACES.md).

        Args:
            source: ``"poster_v2"`` (a trained ``pyramid_trans_expr2``, ``state_dict``; the never-called
                modules are discarded), ``"ir50"`` (``ir50.pth`` into ``image_backbone.``; the fourth
                stage and the embedding head are discarded) or ``"mobilefacenet"`` (into ``landmark.net.``).

        Raises:
            ValueError: another source.
        """
        if source == "ir50":
            return remap_ir50_keys(state_dict, "image_backbone.", 3, False)
        if source == "mobilefacenet":
            return remap_mobilefacenet_keys(state_dict, dst_prefix="landmark.net."), ["landmark.net."], []
        if source != "poster_v2":
            raise ValueError(f"POSTER++ cannot load weights of source {source!r} (supported: poster_v2, ir50, "
                             "mobilefacenet)")
        mapped, _, discarded = remap_ir50_keys(state_dict, "image_backbone.", 3, False, src_prefix="ir_back.")
        mapped.update(remap_mobilefacenet_keys(state_dict, "face_landback.", "landmark.net."))
        for key, value in state_dict.items():
            if key.startswith(("ir_back.", "face_landback.")):
                continue
            new = _rename_v2(key)
            if new is None:
                discarded.append(key)
            else:
                mapped[new] = value
        return mapped, None, discarded


_V2_UNUSED = ("VIT.patch_embed.", "VIT.CON1.", "VIT.IRLinear1.", "VIT.IRLinear2.", "VIT.eca_block.")
_V2_RENAMES = OrderedDict([
    ("last_face_conv.", "landmark_proj."), ("embed_v.proj.", "embed_v."), ("embed_q.", "embed_q."),
    ("embed_k.", "embed_k."), ("VIT.se_block.", "se_block."), ("VIT.head.linear.", "head."),
    ("VIT.cls_token", "cls_token"), ("VIT.pos_embed", "pos_embed"), ("VIT.blocks.", "blocks."), ("VIT.norm.", "norm."),
])


def _rename_v2(key: str) -> str | None:
    """POSTER++ key → ours; None for a module the original builds but never calls."""
    if key.startswith(_V2_UNUSED) or (key.startswith("VIT.blocks.") and ".conv." in key) \
            or key.endswith("relative_position_index"):
        return None
    for i in range(3):
        scale = {f"conv{i + 1}.": f"image_down.{i}.", f"window{i + 1}.norm.": f"scales.{i}.norm.",
                 f"attn{i + 1}.qkv.": f"scales.{i}.attn.kv.", f"attn{i + 1}.": f"scales.{i}.attn.",
                 f"ffn{i + 1}.norm.": f"scales.{i}.ffn_norm.", f"ffn{i + 1}.": f"scales.{i}."}
        for src, dst in scale.items():
            if key.startswith(src):
                return dst + key[len(src):]
    for src, dst in _V2_RENAMES.items():
        if key.startswith(src):
            return dst + key[len(src):]
    return f"<unmapped>.{key}"


def _is_poster_v2(sd: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("VIT.") for k in sd) and any(k.startswith("ir_back.") for k in sd)


def _build_poster_v2(sd: Mapping[str, Tensor]) -> tuple[str, dict]:
    """The model an authors' checkpoint describes (classes from its classifier; its own landmark weights)."""
    return "poster_v2", {"num_classes": int(sd["VIT.head.linear.weight"].shape[0]), "landmark_weights": False}


register_weight_source("poster_v2", _is_poster_v2, _build_poster_v2)


@register_criterion("poster_v2")
class POSTERV2Criterion(Criterion):
    """POSTER++'s loss (``main.py``): cross-entropy of ``output.logits`` [B, C] against ``batch["label"]`` [B].
    Term ``ce``."""

    terms = ("ce",)
    default_weights = {"ce": 1.0}

    def forward(self, output: POSTEROutput, batch: Mapping[str, Tensor]) -> LossOutput:
        logits = output.logits.float()
        return self.combine({"ce": F.cross_entropy(logits, batch["label"].to(logits.device))})


@register_model(criterion="poster_v2", recipe=RECIPE)
def poster_v2(num_classes: int = 7, landmark_weights: str | os.PathLike | bool | None = None,
              freeze_landmarks: bool | None = None, **kwargs) -> POSTERV2:
    """POSTER++ (Mao et al., Pattern Recognition 2024): landmark → image window cross-attention at three scales + ViT.

    Paper input 224×224 (``--image-size 224``; the network sees a 112×112 nearest resize). Landmark and IR-50
    weights as :func:`networks.zoo.poster.poster`.

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"poster_v2() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return POSTERV2(num_classes=num_classes, landmark_weights=landmark_weights, freeze_landmarks=freeze_landmarks)
