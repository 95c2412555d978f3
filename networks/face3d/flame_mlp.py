"""FLAME MLP: an expression classifier on SMIRK's FLAME expression and jaw parameters.

The SMIRK render backend regresses FLAME (Li et al., SIGGRAPH Asia 2017) parameters for every photo (Retsinas
et al., SMIRK, CVPR 2024) and saves them in ``<stem>.npz``; the 50 expression coefficients and the jaw's
axis-angle rotation (``flame_expression`` stream, [53]) describe the expression without identity or head pose.
A small MLP classifies them. Needs renders from ``Smirk_batch_Render.py --backend smirk``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor

from networks.face3d._common import FACE3D_RECIPE, Face3DOutput, check_input, mlp
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["FLAMEMLP", "flame_mlp"]

#: FLAME expression (50) + jaw (3).
FLAME_WIDTH = 53


class FLAMEMLP(nn.Module):
    """MLP on FLAME expression + jaw parameters.

    Args:
        num_classes: C.
        hidden: widths of the hidden layers.
        dropout: rate after each hidden layer.

    Shapes: ``forward(flame_expression [B, 53] float) -> Face3DOutput(logits [B, C], features [B, hidden[-1]])``.
    """

    input_streams = ("flame_expression",)

    def __init__(self, num_classes: int = 7, hidden: Sequence[int] = (256, 256, 128), dropout: float = 0.2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_norm = nn.BatchNorm1d(FLAME_WIDTH)  # the coefficients have very different spreads
        self.encoder = mlp((FLAME_WIDTH, *hidden), dropout=dropout)
        self.classifier = nn.Linear(hidden[-1], num_classes)

    def forward(self, flame_expression: Tensor) -> Face3DOutput:
        """Raises ``ValueError`` unless the input is float ``[B, 53]``."""
        check_input("FLAMEMLP", flame_expression, (FLAME_WIDTH,))
        features = self.encoder(self.input_norm(flame_expression))
        return Face3DOutput(logits=self.classifier(features), features=features)


@register_model(recipe=FACE3D_RECIPE, final_checkpoint="FLAMEMLP.pth")
def flame_mlp(num_classes: int = 7, **kwargs) -> FLAMEMLP:
    """FLAME MLP: SMIRK's 50 expression + 3 jaw parameters → 256-256-128 MLP (3D only; SMIRK renders).

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("flame_mlp", kwargs)
    return FLAMEMLP(num_classes=num_classes)
