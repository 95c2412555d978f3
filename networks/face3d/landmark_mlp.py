"""Landmark MLP: an expression classifier on the flattened pose-normalised landmark cloud.

The simplest 3D-only model of the 3DFER comparison (its landmark models read MediaPipe's 478 landmarks per
FER2013 face): the cloud ``[478, 3]`` (``landmarks`` stream, :mod:`if3d.data.face3d`) is flattened to 1434
numbers and classified by an MLP. Deviation from 3DFER: the cloud is pose-normalised (head pose, scale and
position removed) instead of raw image coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor

from networks.face3d._common import FACE3D_RECIPE, NUM_LANDMARKS, Face3DOutput, check_input, mlp
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["LandmarkMLP", "landmark_mlp"]


class LandmarkMLP(nn.Module):
    """MLP on the flattened landmark cloud.

    Args:
        num_classes: C.
        hidden: widths of the hidden layers.
        dropout: rate after each hidden layer.

    Shapes: ``forward(landmarks [B, 478, 3] float) -> Face3DOutput(logits [B, C], features [B, hidden[-1]])``.
    """

    input_streams = ("landmarks",)

    def __init__(self, num_classes: int = 7, hidden: Sequence[int] = (1024, 512, 256), dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.encoder = mlp((NUM_LANDMARKS * 3, *hidden), dropout=dropout)
        self.classifier = nn.Linear(hidden[-1], num_classes)

    def forward_features(self, landmarks: Tensor) -> Tensor:
        """``[B, 478, 3]`` → ``[B, hidden[-1]]``.

        Raises:
            ValueError: not float ``[B, 478, 3]``.
        """
        check_input("LandmarkMLP", landmarks, (NUM_LANDMARKS, 3))
        return self.encoder(landmarks.flatten(1))

    def forward_head(self, features: Tensor) -> Tensor:
        return self.classifier(features)

    def forward(self, landmarks: Tensor) -> Face3DOutput:
        features = self.forward_features(landmarks)
        return Face3DOutput(logits=self.forward_head(features), features=features)


@register_model(recipe=FACE3D_RECIPE, final_checkpoint="LandmarkMLP.pth")
def landmark_mlp(num_classes: int = 7, **kwargs) -> LandmarkMLP:
    """Landmark MLP: flattened pose-normalised 478×3 cloud → 1024-512-256 MLP (3D only).

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("landmark_mlp", kwargs)
    return LandmarkMLP(num_classes=num_classes)
