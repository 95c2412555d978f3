"""If3D's gate fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, PassThrough, check_maps, pool_affine, set_identity
from networks.registry import FusionSpec, register_fusion

__all__ = ["PASSTHROUGH_GATE_LOGIT", "GateFusion"]

#: Gate pre-activation of :meth:`GateFusion.init_passthrough`: photo weight σ(14) = 1 − 8.3e-7, render weight
#: 8.3e-7. Large enough that the render moves the logits by far less than 1e-4; not so large that the sigmoid's
#: slope σ(1 − σ) (the gate's gradient) rounds to 0 in float32, as it does from about 17 on.
PASSTHROUGH_GATE_LOGIT = 14.0


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

    @torch.no_grad()
    def init_passthrough(self, pool: nn.Module) -> PassThrough:
        """Start from a photo model: the gate open to the photo, the depthwise 3×3 block the identity.

        The gate convolution gets zero weights and the bias :data:`PASSTHROUGH_GATE_LOGIT`, so every gate value
        is σ(14) = 1 − 8.3e-7 whatever the inputs; the shared 3×3 block passes both maps unchanged (eval mode).
        The output is then the attended photo map (flattened) up to 8.3e-7 of the render, and the photo model's
        pooled feature is an affine function of it: its 7×7 depthwise kernel, scaled by its BN.

        Args:
            pool: the photo model's 7×7 depthwise conv + BN (DDAMFN's ``gdc``), kernel [C, 1, 7, 7].

        Returns:
            :class:`PassThrough` with readout [C, C·49] (block-diagonal: channel c reads its own 49 values),
            exact up to the render's 8.3e-7 share, and ``norms`` naming the 3×3 block's BN.

        Raises:
            ValueError: the pooling kernel is not [C, 1, 7, 7] for this fusion's C and side.
        """
        c, area = self.channels, self.spatial * self.spatial
        kernel, scale, shift = pool_affine(pool, self.channels, self.spatial)
        set_identity(self.depthwise)
        self.gate.weight.zero_()
        self.gate.bias.fill_(PASSTHROUGH_GATE_LOGIT)
        weight = torch.zeros(c, c * area, device=kernel.device)
        rows = torch.arange(c, device=kernel.device)
        cols = rows[:, None] * area + torch.arange(area, device=kernel.device)
        weight[rows[:, None], cols] = kernel * scale[:, None]
        return PassThrough(weight, shift, exact=True, norms={"depthwise.bn": self.channels},
                           note=f"gate open to the photo (σ({PASSTHROUGH_GATE_LOGIT:g}) = 1 − 8.3e-7), "
                                "the 3×3 block the identity; readout = the photo model's 7×7 pooling")
