"""Distance CNN: a 2D CNN on the landmark distance map.

After 3DFER's mesh-connectivity distances + DistanceCNN: the Euclidean distances between the K = 162 landmarks
of the facial regions (lips, eyes, eyebrows, nose, face oval, irises; ``distance_map`` stream,
:func:`if3d.data.face3d.distance_map`) form a symmetric K × K image with one block per pair of regions, read by
four convolution stages (3×3 convolution, BatchNorm, ReLU, 2×2 max-pooling after each), global average pooling
and a linear layer. Deviation from 3DFER: every pair of region landmarks rather than the mesh's edges only (the
edge lengths have no image layout; ``docs/FACE3D.md`` gives the measurement), from pose-normalised landmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor

from networks.face3d._common import FACE3D_RECIPE, Face3DOutput
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["DistanceCNN", "distance_cnn"]

#: Landmarks of the distance map (``if3d.data.face3d.distance_map_indices``).
MAP_SIDE = 162


class DistanceCNN(nn.Module):
    """2D CNN on a ``[1, K, K]`` distance map.

    Args:
        num_classes: C.
        widths: channels of the four stages.
        dropout: before the classifier.

    Shapes: ``forward(distance_map [B, 1, K, K] float) -> Face3DOutput(logits [B, C], features [B, widths[-1]])``.
    """

    input_streams = ("distance_map",)

    def __init__(self, num_classes: int = 7, widths: Sequence[int] = (32, 64, 128, 256), dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        chans = (1, *widths)
        self.stages = nn.Sequential(*(nn.Sequential(
            nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False), nn.BatchNorm2d(chans[i + 1]),
            nn.ReLU(inplace=True), nn.MaxPool2d(2)) for i in range(len(widths))))
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward_features(self, distance_map: Tensor) -> Tensor:
        """``[B, 1, K, K]`` → ``[B, widths[-1]]``.

        Raises:
            ValueError: not a float one-channel square map.
        """
        x = distance_map
        if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or not x.is_floating_point():
            raise ValueError(f"DistanceCNN: expected float [B, 1, K, K], got {x.dtype} {tuple(x.shape)}")
        return self.stages(x).mean(dim=(2, 3))

    def forward(self, distance_map: Tensor) -> Face3DOutput:
        features = self.forward_features(distance_map)
        return Face3DOutput(logits=self.classifier(self.dropout(features)), features=features)


@register_model(recipe=FACE3D_RECIPE, final_checkpoint="DistanceCNN.pth")
def distance_cnn(num_classes: int = 7, **kwargs) -> DistanceCNN:
    """Distance CNN: 162×162 map of region-landmark distances → four 2D convolution stages (3D only).

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("distance_cnn", kwargs)
    return DistanceCNN(num_classes=num_classes)
