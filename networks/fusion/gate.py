"""If3D's gate fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, check_maps
from networks.registry import FusionSpec, register_fusion

__all__ = ["GateFusion"]


@register_fusion(
    "gate",
    FusionSpec(
        dropout=(0.5, 0.4, 0.3),  # ..._GateFusion.forward applies all three dropouts
        final_checkpoint="GateFusion.pth",
        if3d_class="DDAMNet_Smirk_Spatial_Alignment_GateFusion",
        if3d_marker="gate_fusion.",
        if3d_keys=(("gate_fusion.gate_fc.0.", "gate."),),
    ),
)
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
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self.depthwise(photo_map)
        render = self.depthwise(render_map)
        gate = torch.sigmoid(self.gate(torch.cat([photo, render], dim=1)))
        return (gate * photo + (1 - gate) * render).flatten(1)
