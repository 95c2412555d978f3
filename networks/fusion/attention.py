"""If3D's attention fusion strategy: the improved cross-attention (default) and If3D's own (faithful)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, PassThrough, check_maps, copy_pool
from networks.registry import FusionSpec, register_fusion

__all__ = ["CrossAttentionFusion", "If3DAttentionFusion", "sincos_position_2d"]


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
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        x1 = self.depthwise(photo_map)
        x2 = self.depthwise(render_map)
        b, c, h, w = x1.shape
        query = self.query_conv(x1).reshape(b, -1, h * w).permute(0, 2, 1)
        key = self.key_conv(x2).reshape(b, -1, h * w)
        attention = torch.softmax(torch.bmm(query, key), dim=-1)
        value = self.value_conv(x2).reshape(b, -1, h * w)
        out = torch.bmm(value, attention.permute(0, 2, 1)).reshape(b, c, h, w) + x1
        return out.flatten(1)

    @torch.no_grad()
    def init_passthrough(self, pool: nn.Module) -> PassThrough:
        """Start from a photo model: the output is ``value_conv(x2) + x1``, so a zero value convolution (weight
        and bias) leaves x1, the photo map through the shared 7×7 block, which becomes the photo model's pooling
        ``pool`` (arguments, result and errors as :meth:`CrossAttentionFusion.init_passthrough`)."""
        copy_pool(self.depthwise, pool)
        self.value_conv.weight.zero_()
        self.value_conv.bias.zero_()
        return _identity_readout(self.channels, "zero value convolution: output = the photo model's pooled feature")


def _identity_readout(channels: int, note: str) -> PassThrough:
    return PassThrough(torch.eye(channels), torch.zeros(channels), exact=True, note=note)


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


@register_fusion(
    "attention",
    FusionSpec(
        dropout=(0.5, 0.0, 0.0),  # ..._AttentionFusion.forward applies dropout1 only
        final_checkpoint="AttentionFusion.pth",
        if3d_class="DDAMNet_Smirk_Spatial_Alignment_AttentionFusion",
        if3d_marker="attention_fusion.",
        faithful_keys=(("attention_fusion.", ""),),
        faithful=If3DAttentionFusion,
    ),
)
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
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
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

    @torch.no_grad()
    def init_passthrough(self, pool: nn.Module) -> PassThrough:
        """Start from a photo model: both residual branches zero, so the photo tokens pass unchanged.

        The attention output projection and the last feed-forward layer get zero weights and biases (the
        zero-initialised residual of Goyal et al. 2017 / ReZero, Bachlechner et al. 2020): x = photo tokens,
        and the pooling (the depthwise 7×7 block, which becomes the photo model's pooling) gives the photo
        model's pooled feature. The attention itself stays as initialised and receives gradients through the
        output projection from the first step.

        Args:
            pool: the photo model's 7×7 depthwise conv + BN (DDAMFN's ``gdc``), kernel [C, 1, 7, 7].

        Returns:
            :class:`PassThrough` with readout I [C, C], exact.

        Raises:
            ValueError: the pooling kernel does not fit.
        """
        copy_pool(self.depthwise, pool)
        for layer in (self.out_proj, self.ffn[-1]):
            layer.weight.zero_()
            layer.bias.zero_()
        return _identity_readout(self.channels, "zero residual branches: the photo tokens pass, pooled by the "
                                                "photo model's pooling")

    def attention_weights(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        """Attention of each photo token over the render tokens, [B, num_heads, 49, 49], rows sum to 1.

        For inspection and tests; the same computation as :meth:`forward` without dropout.
        """
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = photo_map.flatten(2).transpose(1, 2)
        render = render_map.flatten(2).transpose(1, 2)
        position = self.position.to(dtype=photo.dtype)
        query = self._split_heads(self.q_proj(self.norm_q(photo) + position))
        key = self._split_heads(self.k_proj(self.norm_kv(render) + position))
        scale = 1.0 / math.sqrt(query.shape[-1])
        return torch.softmax(query @ key.transpose(-2, -1) * scale, dim=-1)
