"""Fusion modules of the If3D two-stream model: photo map + render map → one feature vector.

Every module takes the two DDA-attended MixedFeatureNet maps of one face and returns one vector::

    forward(photo_map [B, C, 7, 7], render_map [B, C, 7, 7]) -> [B, out_features]

(``C = 512`` for MixedFeatureNet at 112×112 input; ``photo_map`` is the photo backbone map multiplied
by the element-wise maximum of the DDA head maps, likewise ``render_map``). ``out_features`` is an
attribute of every module, fixed at construction.

Four strategies follow If3D (Wang et al., "If3D: Enhancing Facial Expression Inference with 3D Face
Representations via Intermediate Fusion"; original implementation ``networks/DDAM_smirkpic_fusion.py``
of github.com/WangXiaoShawn/If3d, read as a source of facts, not copied). In all four, one depthwise
convolution + BatchNorm (If3D's ``Linear`` attribute, a ``Linear_block`` with ``groups=512``, no bias, no
activation) is applied to *each* stream with the *same* weights:

=========  ===============================================================  ============
strategy   fusion                                                           out_features
=========  ===============================================================  ============
linear     depthwise 7×7 → [B,512,1,1] per stream, concatenated (photo first)  1024
attention  depthwise 7×7, then If3D's query/key/value attention on 1×1 maps    512
gate       depthwise 3×3 (pad 1); g = sigmoid(1×1 conv of concat);             25088
           g·photo + (1−g)·render, flattened
spp        depthwise 3×3 (pad 1); adaptive max-pool at 1, 2, 4 per stream,    21504
           concatenated (photo levels first, then render levels)
=========  ===============================================================  ============

:class:`If3DAttentionFusion` reproduces If3D's attention fusion exactly, including its defect: the
maps it attends over are 1×1, so the softmax runs over a single element, is identically 1, and its
query and key convolutions never receive a gradient. :class:`CrossAttentionFusion` is the improved
replacement (the default of ``if3d_attention``): multi-head cross-attention over the 7×7 = 49 spatial
tokens, in which the photo attends to the render.

:func:`build_fusion` builds a module by strategy name.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FUSION_STRATEGIES",
    "CrossAttentionFusion",
    "DepthwiseConvBN",
    "GateFusion",
    "If3DAttentionFusion",
    "LinearFusion",
    "SPPFusion",
    "build_fusion",
    "sincos_position_2d",
]

FUSION_STRATEGIES: tuple[str, ...] = ("linear", "attention", "gate", "spp")


def _check_maps(module: nn.Module, photo_map: Tensor, render_map: Tensor, channels: int, spatial=None) -> None:
    """Raise ``ValueError`` naming the module when the two maps are not [B, channels, H, W] alike."""
    name = type(module).__name__
    if photo_map.dim() != 4 or render_map.dim() != 4:
        raise ValueError(
            f"{name}: expected 4-D maps [B, C, H, W], got photo {tuple(photo_map.shape)} "
            f"and render {tuple(render_map.shape)}"
        )
    if photo_map.shape != render_map.shape:
        raise ValueError(
            f"{name}: photo map {tuple(photo_map.shape)} and render map {tuple(render_map.shape)} differ in shape"
        )
    if photo_map.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got {photo_map.shape[1]}")
    if spatial is not None and tuple(photo_map.shape[-2:]) != (spatial, spatial):
        raise ValueError(
            f"{name}: expected {spatial}×{spatial} maps (MixedFeatureNet at 112×112 input), "
            f"got {tuple(photo_map.shape[-2:])}"
        )


class DepthwiseConvBN(nn.Module):
    """Depthwise convolution without bias followed by BatchNorm2d, no activation.

    This is DDAMFN's and If3D's ``Linear_block(512, 512, groups=512, kernel=(k, k), padding=(p, p))``
    (state-dict keys ``conv.weight`` [C, 1, k, k] and ``bn.*``). With ``k = 7, p = 0`` on a 7×7 map it
    is the learned global depthwise pooling (GDC) of MobileFaceNet/DDAMFN: [B, C, 7, 7] → [B, C, 1, 1].

    Args:
        channels: C, input and output channels.
        kernel_size: k.
        padding: p (zero padding on each side).
    """

    def __init__(self, channels: int = 512, kernel_size: int = 7, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, stride=1, padding=padding, groups=channels, bias=False
        )
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] → [B, C, H + 2p − k + 1, W + 2p − k + 1]."""
        return self.bn(self.conv(x))


class LinearFusion(nn.Module):
    """If3D's linear fusion: shared depthwise 7×7 pooling per stream, concatenated.

    Source: ``DDAMNet_Smirk_Spatial_Alignment.forward`` in If3D's ``networks/DDAM_smirkpic_fusion.py``:
    ``orig_y = Linear(orig_y); smirk_y = Linear(smirk_y); y = flatten(cat([orig_y, smirk_y], dim=1))``.

    Args:
        channels: C of the maps (512).
        spatial: side of the maps (7); the 7×7 kernel without padding pools them to 1×1.

    Shapes: photo_map, render_map [B, C, 7, 7] → [B, 2C] (photo channels first, then render).
    """

    def __init__(self, channels: int = 512, spatial: int = 7) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = spatial
        self.depthwise = DepthwiseConvBN(channels, kernel_size=spatial, padding=0)
        self.out_features = 2 * channels

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        _check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self.depthwise(photo_map)
        render = self.depthwise(render_map)
        return torch.cat([photo, render], dim=1).flatten(1)


class If3DAttentionFusion(nn.Module):
    """If3D's attention fusion, reproduced exactly (faithful mode only).

    Source: ``AttentionFusion`` and ``DDAMNet_Smirk_Spatial_Alignment_AttentionFusion.forward`` in If3D's
    ``networks/DDAM_smirkpic_fusion.py``. Both streams first pass the shared depthwise 7×7 pooling
    (If3D ``Linear``), giving [B, C, 1, 1] maps x1 (photo) and x2 (render); then::

        q = query_conv(x1)  [B, C/8, N] → [B, N, C/8]      (1×1 conv with bias)
        k = key_conv(x2)    [B, C/8, N]                    (1×1 conv with bias)
        a = softmax(q @ k, dim=-1)  [B, N, N]
        v = value_conv(x2)  [B, C, N]                      (1×1 conv with bias)
        out = (v @ aᵀ).view(B, C, H, W) + x1 → flatten → [B, C]

    **Defect kept on purpose:** after the 7×7 pooling N = H·W = 1, so the softmax runs over one element
    and is exactly 1 whatever q and k are: the output is ``value_conv(x2) + x1`` and ``query_conv`` /
    ``key_conv`` receive exactly zero gradient (softmax's Jacobian over one element is 0). Use
    :class:`CrossAttentionFusion` for a fusion that actually attends.

    Args:
        channels: C (512).
        reduction: query/key width is C // reduction (8 in If3D → 64).
        spatial: side of the input maps (7).

    Shapes: photo_map, render_map [B, C, 7, 7] → [B, C].
    """

    def __init__(self, channels: int = 512, reduction: int = 8, spatial: int = 7) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = spatial
        self.depthwise = DepthwiseConvBN(channels, kernel_size=spatial, padding=0)
        self.query_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.key_conv = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.value_conv = nn.Conv2d(channels, channels, kernel_size=1)
        self.out_features = channels

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        _check_maps(self, photo_map, render_map, self.channels, self.spatial)
        x1 = self.depthwise(photo_map)
        x2 = self.depthwise(render_map)
        b, c, h, w = x1.shape
        query = self.query_conv(x1).reshape(b, -1, h * w).permute(0, 2, 1)
        key = self.key_conv(x2).reshape(b, -1, h * w)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)
        value = self.value_conv(x2).reshape(b, -1, h * w)
        out = torch.bmm(value, attention.permute(0, 2, 1)).reshape(b, c, h, w) + x1
        return out.flatten(1)


class GateFusion(nn.Module):
    """If3D's gate fusion: g = sigmoid(W·[photo; render] + b); g·photo + (1 − g)·render, flattened.

    Source: ``GateFusion`` and ``DDAMNet_Smirk_Spatial_Alignment_GateFusion.forward`` in If3D's
    ``networks/DDAM_smirkpic_fusion.py``: shared depthwise 3×3 conv (padding 1) + BN per stream, then a
    1×1 conv (2C → C, with bias) on the channel concatenation (photo first) and a sigmoid give the
    per-position, per-channel gate g ∈ (0, 1); the mixed map is flattened in (C, H, W) order.

    Args:
        channels: C (512).
        spatial: side of the maps (7).

    Shapes: photo_map, render_map [B, C, 7, 7] → [B, C·7·7] = [B, 25088].
    """

    def __init__(self, channels: int = 512, spatial: int = 7) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = spatial
        self.depthwise = DepthwiseConvBN(channels, kernel_size=3, padding=1)
        self.gate = nn.Conv2d(2 * channels, channels, kernel_size=1)
        self.out_features = channels * spatial * spatial

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        _check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self.depthwise(photo_map)
        render = self.depthwise(render_map)
        gate = torch.sigmoid(self.gate(torch.cat([photo, render], dim=1)))
        return (gate * photo + (1 - gate) * render).flatten(1)


class SPPFusion(nn.Module):
    """If3D's spatial-pyramid-pooling fusion.

    Source: ``SpatialPyramidPooling`` and ``DDAMNet_Smirk_Spatial_Alignment_SPPFusion.forward`` in If3D's
    ``networks/DDAM_smirkpic_fusion.py``: shared depthwise 3×3 conv (padding 1) + BN per stream; per
    stream, adaptive max pooling to 1×1, 2×2 and 4×4, each flattened in (C, l, l) order and
    concatenated by level; the photo vector comes first, then the render vector.

    Args:
        channels: C (512).
        levels: pooled sides (1, 2, 4).
        spatial: side of the maps (7).

    Shapes: photo_map, render_map [B, C, 7, 7] → [B, 2·C·Σ l²] = [B, 21504].
    """

    def __init__(self, channels: int = 512, levels: tuple[int, ...] = (1, 2, 4), spatial: int = 7) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = spatial
        self.levels = tuple(levels)
        self.depthwise = DepthwiseConvBN(channels, kernel_size=3, padding=1)
        self.out_features = 2 * channels * sum(level * level for level in self.levels)

    def _pyramid(self, x: Tensor) -> Tensor:
        return torch.cat([F.adaptive_max_pool2d(x, level).flatten(1) for level in self.levels], dim=1)

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        _check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self._pyramid(self.depthwise(photo_map))
        render = self._pyramid(self.depthwise(render_map))
        return torch.cat([photo, render], dim=1)


def sincos_position_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """Fixed 2-D sine-cosine position code, [height·width, dim], tokens in row-major (y, x) order.

    A quarter of the channels each hold sin(y·ω), cos(y·ω), sin(x·ω), cos(x·ω) with frequencies
    ω_i = temperature^(−i / (dim/4)), i = 0 … dim/4 − 1 (the 2-D extension of Vaswani et al. 2017 used by
    MoCo v3 / "Simple ViT", Chen et al. 2021; Beyer et al. 2022). Values lie in [−1, 1].

    Raises:
        ValueError: ``dim`` is not a multiple of 4.
    """
    if dim % 4:
        raise ValueError(f"sincos_position_2d: dim must be a multiple of 4, got {dim}")
    quarter = dim // 4
    omega = temperature ** (-torch.arange(quarter, dtype=torch.float64) / quarter)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64), indexing="ij"
    )
    y = ys.reshape(-1, 1) * omega
    x = xs.reshape(-1, 1) * omega
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1).float()


class CrossAttentionFusion(nn.Module):
    """Improved attention fusion: the photo attends to the render over the 7×7 = 49 spatial tokens.

    Replaces :class:`If3DAttentionFusion`, whose attention runs over one token and never learns. One
    pre-norm transformer cross-attention block (Vaswani et al. 2017; pre-norm as in Xiong et al. 2020)::

        p, r  = photo / render map as tokens [B, 49, C]
        pos   = fixed 2-D sine-cosine code [49, C]           (sincos_position_2d)
        q     = W_q (LN_q(p) + pos) + b_q      k = W_k (LN_kv(r) + pos)      v = W_v LN_kv(r) + b_v
        x     = p + W_o MultiHead(q, k, v) + b_o              (num_heads heads of C / num_heads)
        x     = x + FFN(LN_ffn(x))                            (C → ffn_ratio·C → C, GELU)
        out   = depthwise 7×7 conv + BN of x as a [B, C, 7, 7] map → [B, C]

    Choices and why:

    * **Photo queries, render keys/values, photo residual**: the photo carries the expression texture
      and is always informative; the render is a geometry cue that the photo should look up, and the
      residual keeps the photo path intact when the render is poor (failed or blurred reconstruction).
    * **Fixed sine-cosine positions added to queries and keys only** (DETR's convention, Carion et al.
      2020): photo and render are pixel-aligned (same crop, same geometric augmentation), so a shared
      absolute code lets a photo location find the corresponding render location; values stay pure
      content. Fixed rather than learned: no extra parameters to overfit on small FER sets, and it
      gives the same code to both streams by construction.
    * **Key projection without bias**: a key bias adds q·b_k to every logit of a query, which softmax
      cancels, so it could never receive a gradient.
    * **8 heads of 64**: the same 64-wide query/key space as If3D's ``C // 8`` convolutions.
    * **Pooling by the depthwise 7×7 conv + BN** (If3D/DDAMFN's ``Linear`` GDC pooling) rather than a
      mean: keeps the learned spatial weighting of DDAMFN, and the output width (C = 512) and the
      pooling layer's shape equal those of If3D's attention model, so an If3D attention checkpoint still
      initialises the pooling and the MLP head.
    * No final LayerNorm: the pooling's BatchNorm normalises the output.

    Args:
        channels: C (512).
        num_heads: attention heads; C must be divisible by it.
        ffn_ratio: hidden width of the feed-forward block as a multiple of C.
        dropout: dropout on the attention weights and on both residual branches (0 = none).
        spatial: side of the maps (7).

    Shapes: photo_map, render_map [B, C, 7, 7] → [B, C].
    """

    def __init__(
        self,
        channels: int = 512,
        num_heads: int = 8,
        ffn_ratio: float = 2.0,
        dropout: float = 0.0,
        spatial: int = 7,
    ) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"CrossAttentionFusion: channels {channels} not divisible by num_heads {num_heads}")
        self.channels = channels
        self.num_heads = num_heads
        self.spatial = spatial
        self.dropout = dropout
        self.norm_q = nn.LayerNorm(channels)
        self.norm_kv = nn.LayerNorm(channels)
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels, bias=False)
        self.v_proj = nn.Linear(channels, channels)
        self.out_proj = nn.Linear(channels, channels)
        hidden = int(round(channels * ffn_ratio))
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(nn.Linear(channels, hidden), nn.GELU(), nn.Linear(hidden, channels))
        self.drop = nn.Dropout(dropout)
        self.depthwise = DepthwiseConvBN(channels, kernel_size=spatial, padding=0)
        self.register_buffer("position", sincos_position_2d(spatial, spatial, channels), persistent=False)
        self.out_features = channels

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        _check_maps(self, photo_map, render_map, self.channels, self.spatial)
        b, c, h, w = photo_map.shape
        photo = photo_map.flatten(2).transpose(1, 2)
        render = render_map.flatten(2).transpose(1, 2)
        position = self.position.to(dtype=photo.dtype)
        render_normed = self.norm_kv(render)
        query = self._split_heads(self.q_proj(self.norm_q(photo) + position))
        key = self._split_heads(self.k_proj(render_normed + position))
        value = self._split_heads(self.v_proj(render_normed))
        attended = F.scaled_dot_product_attention(
            query, key, value, dropout_p=self.dropout if self.training else 0.0
        )
        attended = attended.transpose(1, 2).reshape(b, h * w, c)
        x = photo + self.drop(self.out_proj(attended))
        x = x + self.drop(self.ffn(self.norm_ffn(x)))
        return self.depthwise(x.transpose(1, 2).reshape(b, c, h, w)).flatten(1)

    def attention_weights(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        """Attention of each photo token over the render tokens, [B, num_heads, 49, 49], rows sum to 1.

        For inspection and tests; the same computation as :meth:`forward` without dropout.
        """
        _check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = photo_map.flatten(2).transpose(1, 2)
        render = render_map.flatten(2).transpose(1, 2)
        position = self.position.to(dtype=photo.dtype)
        query = self._split_heads(self.q_proj(self.norm_q(photo) + position))
        key = self._split_heads(self.k_proj(self.norm_kv(render) + position))
        scale = 1.0 / math.sqrt(query.shape[-1])
        return torch.softmax(query @ key.transpose(-2, -1) * scale, dim=-1)


def build_fusion(strategy: str, *, faithful: bool = False, channels: int = 512, spatial: int = 7, **kwargs) -> nn.Module:
    """Fusion module for a strategy name.

    Args:
        strategy: one of :data:`FUSION_STRATEGIES` (``linear``, ``attention``, ``gate``, ``spp``).
        faithful: for ``attention``, If3D's :class:`If3DAttentionFusion` instead of the improved
            :class:`CrossAttentionFusion`; the other three strategies are If3D's in both modes.
        channels, spatial: map channels (512) and side (7).
        **kwargs: extra constructor arguments of the chosen class (e.g. ``num_heads`` of
            :class:`CrossAttentionFusion`).

    Raises:
        ValueError: unknown strategy.
    """
    if strategy == "linear":
        return LinearFusion(channels, spatial=spatial, **kwargs)
    if strategy == "attention":
        if faithful:
            return If3DAttentionFusion(channels, spatial=spatial, **kwargs)
        return CrossAttentionFusion(channels, spatial=spatial, **kwargs)
    if strategy == "gate":
        return GateFusion(channels, spatial=spatial, **kwargs)
    if strategy == "spp":
        return SPPFusion(channels, spatial=spatial, **kwargs)
    raise ValueError(f"unknown fusion strategy {strategy!r}; known: {', '.join(FUSION_STRATEGIES)}")
