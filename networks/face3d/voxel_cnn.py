"""Voxel 3D CNN: an expression classifier on the landmark occupancy grid.

After 3DFER's landmark voxelisation + 3D CNN: the pose-normalised landmarks are put in a binary R³ occupancy
grid (``voxels32`` stream: 32³ over [-2, 2]³ RMS radii, :func:`if3d.data.face3d.voxel_occupancy`) and classified
by four 3D convolution stages (3×3×3 convolution, BatchNorm, ReLU, 2×2×2 max-pooling after the first three),
global average pooling and a linear layer. Deviations from 3DFER: pose-normalised landmarks (its grids are of the
raw image coordinates), BatchNorm, and a 32³ grid by default.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from networks.face3d._common import FACE3D_RECIPE, Face3DOutput, check_input
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["VoxelCNN", "voxel_cnn"]


def _stage(cin: int, cout: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout),
                               nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool3d(2))
    return nn.Sequential(*layers)


class VoxelCNN(nn.Module):
    """3D CNN on a ``[1, R, R, R]`` occupancy grid.

    Args:
        num_classes: C.
        resolution: R (the model reads the ``voxels<R>`` stream; ``if3d.data.face3d_streams.VOXEL_RESOLUTIONS``).
        widths: channels of the four stages.
        dropout: before the classifier.

    Shapes: ``forward(voxels [B, 1, R, R, R] float) -> Face3DOutput(logits [B, C], features [B, widths[-1]])``.
    The model keeps the default memory layout (3D convolutions have no channels-last one): ``.to(memory_format=
    torch.channels_last)``, which the training engine asks for on CPUs, leaves the layout as it is.
    """

    def __init__(self, num_classes: int = 7, resolution: int = 32, widths: Sequence[int] = (16, 32, 64, 128),
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.resolution = int(resolution)
        self.input_streams = (f"voxels{self.resolution}",)
        chans = (1, *widths)
        self.stages = nn.Sequential(*(_stage(chans[i], chans[i + 1], pool=i < len(widths) - 1)
                                      for i in range(len(widths))))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def to(self, *args, **kwargs):  # noqa: D102 - nn.Module.to without the 2D channels-last layout
        if kwargs.get("memory_format") is torch.channels_last:
            kwargs.pop("memory_format")
            if not args and not kwargs:
                return self
        return super().to(*args, **kwargs)

    def forward_features(self, voxels: Tensor) -> Tensor:
        """``[B, 1, R, R, R]`` → ``[B, widths[-1]]``.

        Raises:
            ValueError: not float ``[B, 1, R, R, R]``.
        """
        r = self.resolution
        check_input("VoxelCNN", voxels, (1, r, r, r))
        return self.stages(voxels).mean(dim=(2, 3, 4))

    def forward(self, voxels: Tensor) -> Face3DOutput:
        features = self.forward_features(voxels)
        return Face3DOutput(logits=self.classifier(self.dropout(features)), features=features)


@register_model(recipe=FACE3D_RECIPE, final_checkpoint="VoxelCNN.pth")
def voxel_cnn(num_classes: int = 7, resolution: int = 32, **kwargs) -> VoxelCNN:
    """Voxel 3D CNN: 32³ landmark occupancy grid → four 3D convolution stages (3D only).

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("voxel_cnn", kwargs)
    return VoxelCNN(num_classes=num_classes, resolution=resolution)
