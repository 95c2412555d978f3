"""If3D's spatial-pyramid-pooling fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, check_maps
from networks.registry import FusionSpec, register_fusion

__all__ = ["SPPFusion", "adaptive_max_pool_bins"]


def adaptive_max_pool_bins(x: Tensor, level: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, level)`` written as maxima over its bins, for the ONNX export.

    PyTorch's adaptive pooling bin ``i`` of a side ``S`` spans ``[floor(i·S/l), ceil((i+1)·S/l))``; here ``S`` is
    read as a constant, the form torch's ONNX exporters take (they cannot export adaptive max pooling of a map
    whose side is not static, which it is not once the batch axis is dynamic). The maxima are the same numbers.

    Shapes: x [B, C, H, W] → [B, C, level, level].
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    rows = []
    for i in range(level):
        r0, r1 = (i * h) // level, -(-(i + 1) * h // level)
        cols = [x[..., r0:r1, (j * w) // level:-(-(j + 1) * w // level)].amax(dim=(-2, -1)) for j in range(level)]
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


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
        pool = adaptive_max_pool_bins if torch.onnx.is_in_onnx_export() else F.adaptive_max_pool2d
        return torch.cat([pool(x, level).flatten(1) for level in self.levels], dim=1)

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self._pyramid(self.depthwise(photo_map))
        render = self._pyramid(self.depthwise(render_map))
        return torch.cat([photo, render], dim=1)
