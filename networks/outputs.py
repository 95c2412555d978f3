"""Typed forward results shared by every model of the toolkit.

All tensors are batch-first. ``B`` is the batch size, ``C`` the number of expression classes,
``H`` the number of DDA heads. Feature maps are the MixedFeatureNet 7×7 maps (112×112 input).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class DDAMFNOutput:
    """Result of the photo-only DDAMFN classifier.

    Attributes:
        logits: [B, C] expression logits (unnormalised; softmax gives AffectNet-order probabilities).
        features: [B, 512, 7, 7] MixedFeatureNet feature map (backbone without its last four children).
        heads: [H, B, 512, 7, 7] DDA head attention maps (one per head, stacked), the input of the
            DDAMFN attention loss.
    """

    logits: Tensor
    features: Tensor
    heads: Tensor


@dataclass
class If3DOutput:
    """Result of a two-stream If3D fusion model ``forward(photo, render)``.

    Attributes:
        logits: [B, C] expression logits.
        valence: [B] predicted valence (AffectNet scale, nominally [-1, 1]; unbounded linear output),
            or ``None`` when the model has no VA outputs.
        arousal: [B] predicted arousal, same convention, or ``None``.
        photo_features: [B, 512, 7, 7] photo backbone map.
        render_features: [B, 512, 7, 7] render backbone map.
        photo_heads: [H, B, 512, 7, 7] DDA head maps of the photo stream.
        render_heads: [H, B, 512, 7, 7] DDA head maps of the render stream (same head modules).
        alignment: [] scalar MSE between the two backbone maps (If3D's alignment loss).
    """

    logits: Tensor
    valence: Tensor | None
    arousal: Tensor | None
    photo_features: Tensor
    render_features: Tensor
    photo_heads: Tensor
    render_heads: Tensor
    alignment: Tensor
