"""If3D's spatial-pyramid-pooling fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, check_maps
from networks.registry import FusionSpec, register_fusion

__all__ = ["SPPFusion"]


@register_fusion(
    "spp",
    FusionSpec(
        dropout=(0.5, 0.4, 0.3),  # ..._SPPFusion.forward applies all three dropouts
        final_checkpoint="SPPFusion.pth",
        if3d_class="DDAMNet_Smirk_Spatial_Alignment_SPPFusion",
    ),
)
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
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self._pyramid(self.depthwise(photo_map))
        render = self._pyramid(self.depthwise(render_map))
        return torch.cat([photo, render], dim=1)
