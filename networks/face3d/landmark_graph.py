"""Landmark graph network: graph convolutions over MediaPipe's face mesh, on the pose-normalised cloud.

The point/graph model of the 3D-only comparison (after 3DFER, which reads MediaPipe's 478 landmarks and the face
mesh's connectivity): every landmark is a node with its coordinates and a learned embedding of its identity (the
landmarks correspond across faces, so, unlike PointNet's unordered points, which point is where matters); residual
graph-convolution blocks mix each node with the mean of its mesh neighbours (Kipf & Welling's GCN, with a separate
weight for the node itself, as GraphSAGE's mean aggregator); the node features are pooled (mean and max, as
PointNet's symmetric pooling) and classified. The graph is the 1322 edges of ``FACEMESH_TESSELATION`` plus the two
iris rings (:func:`networks.face3d._common.face_graph_edges`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.face3d._common import (
    FACE3D_RECIPE,
    NUM_LANDMARKS,
    Face3DOutput,
    check_input,
    face_graph_edges,
    mlp,
)
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["GraphBlock", "LandmarkGraphNet", "landmark_graph"]


class GraphBlock(nn.Module):
    """``h + ReLU(BN(W_self h + W_neigh mean_{j ∈ N(i)} h_j))`` on node features ``[B, N, C]``.

    Args:
        channels: C.
        src, dst: int64 [E] directed edges (both directions of every undirected edge).
        num_nodes: N.
    """

    def __init__(self, channels: int, src: Tensor, dst: Tensor, num_nodes: int) -> None:
        super().__init__()
        self.self_weight = nn.Linear(channels, channels, bias=False)
        self.neighbour_weight = nn.Linear(channels, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)
        degree = torch.zeros(num_nodes).index_add_(0, dst, torch.ones(dst.numel())).clamp(min=1.0)
        # row-normalised adjacency [N, N] (mean over the neighbours), sparse: 7x faster than gathering the edges
        mean = torch.sparse_coo_tensor(torch.stack([dst, src]), 1.0 / degree[dst], (num_nodes, num_nodes),
                                       check_invariants=False)
        self.register_buffer("neighbour_mean", mean.coalesce(), persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        b, n, c = h.shape
        flat = h.transpose(0, 1).reshape(n, b * c)
        neighbours = torch.sparse.mm(self.neighbour_mean.to(h.dtype), flat).reshape(n, b, c).transpose(0, 1)
        y = self.self_weight(h) + self.neighbour_weight(neighbours)
        return h + torch.relu(self.norm(y.transpose(1, 2)).transpose(1, 2))


class LandmarkGraphNet(nn.Module):
    """Graph network on the face mesh.

    Args:
        num_classes: C.
        channels: node feature width.
        depth: graph blocks.
        embedding: width of the learned per-landmark embedding.
        dropout: before the classifier.

    Shapes: ``forward(landmarks [B, 478, 3] float) -> Face3DOutput(logits [B, C], features [B, 2·channels])``.
    """

    input_streams = ("landmarks",)

    def __init__(self, num_classes: int = 7, channels: int = 64, depth: int = 4, embedding: int = 16,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.num_classes = num_classes
        edges = torch.tensor(face_graph_edges(), dtype=torch.long)
        src = torch.cat([edges[:, 0], edges[:, 1]])
        dst = torch.cat([edges[:, 1], edges[:, 0]])
        self.node_embedding = nn.Parameter(torch.randn(NUM_LANDMARKS, embedding) * 0.1)
        self.lift = nn.Linear(3 + embedding, channels)
        self.blocks = nn.ModuleList(GraphBlock(channels, src, dst, NUM_LANDMARKS) for _ in range(depth))
        self.head = mlp((2 * channels, 256), dropout=dropout)
        self.classifier = nn.Linear(256, num_classes)

    def forward_features(self, landmarks: Tensor) -> Tensor:
        """``[B, 478, 3]`` → pooled ``[B, 2·channels]`` (mean and max over the nodes).

        Raises:
            ValueError: not float ``[B, 478, 3]``.
        """
        check_input("LandmarkGraphNet", landmarks, (NUM_LANDMARKS, 3))
        b = landmarks.shape[0]
        h = self.lift(torch.cat([landmarks, self.node_embedding.expand(b, -1, -1).to(landmarks.dtype)], dim=2))
        for block in self.blocks:
            h = block(h)
        return torch.cat([h.mean(1), h.amax(1)], dim=1)

    def forward(self, landmarks: Tensor) -> Face3DOutput:
        features = self.head(self.forward_features(landmarks))
        return Face3DOutput(logits=self.classifier(features), features=features)


@register_model(recipe=FACE3D_RECIPE, final_checkpoint="LandmarkGraph.pth")
def landmark_graph(num_classes: int = 7, **kwargs) -> LandmarkGraphNet:
    """Landmark graph network: 4 residual graph convolutions over the face mesh, mean+max pooling (3D only).

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("landmark_graph", kwargs)
    return LandmarkGraphNet(num_classes=num_classes)
