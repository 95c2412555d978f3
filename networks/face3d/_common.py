"""Pieces shared by the 3D face models: their output, an MLP block, the face mesh's graph, the recipe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import torch.nn as nn
from torch import Tensor

__all__ = ["FACE3D_RECIPE", "NUM_LANDMARKS", "Face3DOutput", "count_parameters", "face_graph_edges", "mlp"]

#: Landmarks per face (468 FaceMesh points + 10 iris points).
NUM_LANDMARKS = 478

#: The training recipe of the 3D-only models (``--preset <model>``): AdamW (lr 1e-3, weight decay 1e-4), cosine
#: schedule with a 200-step warm-up, batch 128, shuffled (not class-balanced, as 3DFER), up to 100 epochs with
#: early stopping after 15 epochs without a better validation accuracy. Small models on small inputs: no torch.compile
#: needed (``--no-compile`` is a good idea for short runs).
FACE3D_RECIPE = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "scheduler": "cosine", "warmup_steps": 200,
                 "batch_size": 128, "epochs": 100, "balanced_sampling": False, "early_stopping_patience": 15}


@dataclass
class Face3DOutput:
    """Result of a 3D face model.

    Attributes:
        logits: [B, C] expression logits (AffectNet order of the dataset's classes).
        features: [B, D] the embedding before the classifier.
    """

    logits: Tensor
    features: Tensor


def mlp(widths: Sequence[int], dropout: float = 0.0, last_activation: bool = True) -> nn.Sequential:
    """Linear → BatchNorm1d → ReLU (→ Dropout) for each consecutive pair of ``widths``.

    Args:
        widths: ``(in, hidden..., out)``.
        dropout: rate after each activation (0: none).
        last_activation: put BatchNorm/ReLU/Dropout after the last linear layer too.
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        last = i == len(widths) - 2
        layers.append(nn.Linear(a, b, bias=last and not last_activation))
        if not last or last_activation:
            layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


@lru_cache(maxsize=1)
def face_graph_edges() -> tuple[tuple[int, int], ...]:
    """Undirected edges of the landmark graph: MediaPipe's face-mesh tessellation (1322 edges over the 468 mesh
    points, from ``mediapipe``'s ``FACEMESH_TESSELATION``) plus each iris ring and its centre (468 and 473 to
    their four ring points, the ring points in a cycle: 16 edges). Sorted ``(a, b)`` with ``a < b``."""
    from mediapipe.python.solutions import face_mesh_connections as fmc

    edges = {tuple(sorted((int(a), int(b)))) for a, b in fmc.FACEMESH_TESSELATION}
    for centre in (468, 473):
        ring = list(range(centre + 1, centre + 5))
        edges |= {(centre, r) for r in ring}
        edges |= {tuple(sorted((ring[i], ring[(i + 1) % 4]))) for i in range(4)}
    return tuple(sorted(edges))


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def check_input(name: str, x: Tensor, shape: Sequence[int]) -> None:
    """Raise ``ValueError`` unless ``x`` is float ``[B, *shape]``."""
    if x.dim() != len(shape) + 1 or tuple(x.shape[1:]) != tuple(shape) or not x.is_floating_point():
        raise ValueError(f"{name}: expected float [B, {', '.join(map(str, shape))}], got {x.dtype} {tuple(x.shape)}")
