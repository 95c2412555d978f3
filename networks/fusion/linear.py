"""If3D's linear fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, check_maps
from networks.registry import FusionSpec, register_fusion

__all__ = ["LinearFusion"]


@register_fusion(
    "linear",
    FusionSpec(
        shared_backbone=True,  # If3D's DDAMNet_Smirk_Spatial_Alignment runs one ``features`` on both streams
        dropout=(0.5, 0.0, 0.0),  # its forward applies dropout1 only (dropout2 commented out, dropout3 unused)
        final_checkpoint="LinearFusion.pth",
        if3d_class="DDAMNet_Smirk_Spatial_Alignment",
        faithful_smirk_linear=True,
    ),
)
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
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self.depthwise(photo_map)
        render = self.depthwise(render_map)
        return torch.cat([photo, render], dim=1).flatten(1)
