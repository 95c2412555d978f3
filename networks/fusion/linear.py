"""If3D's linear fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, PassThrough, check_maps, copy_pool
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

    @torch.no_grad()
    def init_passthrough(self, pool: nn.Module) -> PassThrough:
        """Start from a photo model: the shared depthwise 7×7 block becomes the photo model's pooling.

        The first C outputs are then exactly the photo model's pooled feature ``pool(photo_map)``; the
        render half ``pool(render_map)`` is there too, and the classifier gives it zero weight at first
        (:meth:`networks.if3d.If3DClassifier.init_passthrough`).

        Args:
            pool: the photo model's 7×7 depthwise conv + BN (DDAMFN's ``gdc``), kernel [C, 1, 7, 7].

        Returns:
            :class:`PassThrough` with readout ``[I_C, 0]`` [C, 2C], exact.

        Raises:
            ValueError: the pooling kernel does not fit.
        """
        copy_pool(self.depthwise, pool)
        c = self.channels
        weight = torch.cat([torch.eye(c), torch.zeros(c, c)], dim=1)
        return PassThrough(weight, torch.zeros(c), exact=True,
                           note="photo half of the concatenation = the photo model's pooled feature")
