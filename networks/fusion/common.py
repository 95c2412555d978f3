"""Pieces shared by the fusion modules: the map check and If3D's depthwise conv + BN block."""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

__all__ = ["DepthwiseConvBN", "check_maps"]


def check_maps(module: nn.Module, photo_map: Tensor, render_map: Tensor, channels: int, spatial=None) -> None:
    """Check a fusion module's inputs: two [B, channels, H, W] maps of the same shape (H = W = ``spatial``).

    Raises:
        ValueError: naming the module and the offending shapes.
    """
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
