"""A landmark stream beside the photo (DDAMFN) or beside the photo and its render (If3D fusion models).

The third input is the pose-normalised landmark cloud (``landmarks`` stream, ``[478, 3]``), encoded by an MLP
(1434 → 512 → 128, as :class:`~networks.face3d.landmark_mlp.LandmarkMLP`'s first layers) and fused late: its
128-d embedding is concatenated with the image model's pooled features right before the classifier.

- ``ddamfn_landmarks``: DDAMFN (MixedFeatureNet + DDA heads); ``fc`` reads ``[GDC features (512); landmark
  embedding (128)]``. Criterion and recipe: DDAMFN's (cross-entropy + 0.1 · attention loss, ``ddamfn`` preset).
- ``if3d_landmarks``: an If3D fusion model (``--fusion linear|attention|gate|spp``, default ``gate``); its MLP
  classifier reads ``[fused photo/render vector; landmark embedding]``. Criterion and recipe: If3D's.

Whether it helps is measured in ``docs/FACE3D.md`` (FER2013 subset); it is an option, not a default of the
photo or fusion models. ``MFN_msceleb.pth`` loads into the backbones as for the models without landmarks
(``--pretrained``); checkpoints of those models do not load here (the classifier's input is wider).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch import Tensor

from networks.ddamfn import DDAMFN
from networks.face3d._common import NUM_LANDMARKS, check_input, mlp
from networks.if3d import If3DClassifier, If3DNet
from networks.outputs import DDAMFNOutput, If3DOutput
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["DDAMFNLandmarks", "If3DLandmarks", "LANDMARK_EMBEDDING", "ddamfn_landmarks", "if3d_landmarks"]

#: Width of the landmark embedding.
LANDMARK_EMBEDDING = 128


def landmark_encoder(width: int = LANDMARK_EMBEDDING) -> nn.Sequential:
    """MLP ``[B, 1434]`` → ``[B, width]`` (BatchNorm, ReLU, dropout 0.3)."""
    return mlp((NUM_LANDMARKS * 3, 512, width), dropout=0.3)


class DDAMFNLandmarks(DDAMFN):
    """DDAMFN with a landmark stream fused before the classifier.

    Args: those of :class:`~networks.ddamfn.DDAMFN` (``num_classes``, ``num_heads``, ``backbone``).

    Shapes: ``forward(photo [B, 3, 112, 112], landmarks [B, 478, 3]) -> DDAMFNOutput(logits [B, C],
    features [B, 512, 7, 7], heads [H, B, 512, 7, 7])``.
    """

    input_streams = ("photo", "landmarks")

    def __init__(self, num_classes: int = 7, num_heads: int = 2, backbone: str = "mixedfeaturenet") -> None:
        super().__init__(num_classes=num_classes, num_heads=num_heads, backbone=backbone)
        self.landmark_encoder = landmark_encoder()
        self.fc = nn.Linear(self.fc.in_features + LANDMARK_EMBEDDING, num_classes)

    def forward(self, photo: Tensor, landmarks: Tensor) -> DDAMFNOutput:
        """Raises ``ValueError`` when ``landmarks`` is not float ``[B, 478, 3]``."""
        check_input("DDAMFNLandmarks", landmarks, (NUM_LANDMARKS, 3))
        features = self.forward_features(photo)
        heads = self.forward_heads(features)
        pooled = self.gdc(features * heads.amax(dim=0)).flatten(1)
        logits = self.fc(torch.cat([pooled, self.landmark_encoder(landmarks.flatten(1))], dim=1))
        return DDAMFNOutput(logits=logits, features=features, heads=heads)


class If3DLandmarks(If3DNet):
    """An If3D fusion model with a landmark stream fused before its MLP classifier.

    Args: those of :class:`~networks.if3d.If3DNet` (``strategy`` …) except ``faithful`` (If3D has no such model).

    Shapes: ``forward(photo, render [B, 3, 112, 112], landmarks [B, 478, 3]) -> If3DOutput``.
    """

    input_streams = ("photo", "render", "landmarks")

    def __init__(self, strategy: str, **kwargs) -> None:
        super().__init__(strategy, **kwargs)
        self.landmark_encoder = landmark_encoder()
        old = self.classifier
        self.classifier = If3DClassifier(self.fusion.out_features + LANDMARK_EMBEDDING, old.output.out_features,
                                         hidden=old.fc1.out_features, dropout=old.dropout_rates)

    def forward(self, photo: Tensor, render: Tensor, landmarks: Tensor) -> If3DOutput:  # type: ignore[override]
        """Raises ``ValueError`` for inputs of the wrong shape."""
        check_input("If3DLandmarks", landmarks, (NUM_LANDMARKS, 3))
        feats = self.forward_features(photo, render)
        out = self.forward_head(torch.cat([feats.fused, self.landmark_encoder(landmarks.flatten(1))], dim=1))
        c = self.num_classes
        return If3DOutput(logits=out[:, :c], valence=out[:, c] if self.va_outputs else None,
                          arousal=out[:, c + 1] if self.va_outputs else None, photo_features=feats.photo_features,
                          render_features=feats.render_features, photo_heads=feats.photo_heads,
                          render_heads=feats.render_heads, alignment=feats.alignment)


@register_model(criterion="ddamfn", default_preset="ddamfn", final_checkpoint="DDAMFNLandmarks.pth")
def ddamfn_landmarks(num_classes: int = 7, num_heads: int = 2, backbone: str = "mixedfeaturenet",
                     **kwargs) -> DDAMFNLandmarks:
    """DDAMFN + landmark stream (late fusion): photo and pose-normalised 478×3 cloud.

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("ddamfn_landmarks", kwargs)
    return DDAMFNLandmarks(num_classes=num_classes, num_heads=num_heads, backbone=backbone)


@register_model(criterion="if3d", default_preset="if3d", final_checkpoint="If3DLandmarks.pth")
def if3d_landmarks(num_classes: int = 8, fusion: str = "gate", **kwargs) -> If3DLandmarks:
    """If3D fusion (``--fusion``, default gate) + landmark stream (late fusion): photo, render and 478×3 cloud.

    Raises:
        UnexpectedArgumentError: ``faithful`` (If3D has no landmark model).
    """
    if kwargs.pop("faithful", False):
        reject_arguments("if3d_landmarks", {"faithful": True})
    return If3DLandmarks(fusion, num_classes=num_classes, **kwargs)
