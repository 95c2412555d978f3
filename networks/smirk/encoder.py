"""SMIRK encoder: FLAME parameters from a 224x224 face crop.

Follows SMIRK (Retsinas et al., "3D Facial Expressions through Analysis-by-Neural-Synthesis",
CVPR 2024; public implementation, MIT): three timm MobileNetV3 backbones with ``features_only=True``,
each followed by a global average pool of its last feature map and one ``Linear`` head.

============================  ==================================  ==============================
sub-module                    backbone                            head
============================  ==================================  ==============================
``pose_encoder``              ``tf_mobilenetv3_small_minimal_100``  ``pose_cam_layers.0`` 576→6
``shape_encoder``             ``tf_mobilenetv3_large_minimal_100``  ``shape_layers.0`` 960→300
``expression_encoder``        ``tf_mobilenetv3_large_minimal_100``  ``expression_layers.0`` 960→55
============================  ==================================  ==============================

The module names equal those of the official checkpoint ``SMIRK_em1.pt`` after its
``smirk_encoder.`` prefix (key/shape list: ``../shared/spec/smirk_encoder_state_dict_spec.json``,
built with timm 1.0), so :func:`load_smirk_encoder` loads it strictly without a key mapping.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.weights import LoadReport, load_state_dict_checked, read_checkpoint

POSE_BACKBONE = "tf_mobilenetv3_small_minimal_100"
SHAPE_BACKBONE = "tf_mobilenetv3_large_minimal_100"
EXPRESSION_BACKBONE = "tf_mobilenetv3_large_minimal_100"

CHECKPOINT_PREFIX = "smirk_encoder."
"""Prefix of the encoder keys in the official flat state dict ``SMIRK_em1.pt``."""
SMIRK_SOURCE = "smirk"
"""``source`` name of the official SMIRK layout for :meth:`SmirkEncoder.remap_state_dict`."""
GENERATOR_PREFIX = "smirk_generator."
"""Prefix of the neural generator's keys in ``SMIRK_em1.pt`` (not needed for rendering; ignored)."""

INPUT_SIZE = 224
NUM_SHAPE = 300
NUM_EXPRESSION = 50
NUM_EYELID = 2
NUM_JAW = 3
JAW_SIDE_LIMIT = 0.2
"""Bound (rad) of the jaw's second and third axis-angle components (SMIRK's clamp)."""


@dataclass
class SmirkParams:
    """FLAME parameters and camera regressed by :class:`SmirkEncoder` (all float, batch-first).

    Attributes:
        pose_params: [B, 3] global head rotation, axis-angle (rad).
        cam: [B, 3] orthographic camera ``(scale, tx, ty)``; projection ``xy' = scale * (xy + (tx, ty))``
            gives normalised image coordinates in [-1, 1] (FLAME units are metres).
        shape_params: [B, 300] FLAME identity coefficients.
        expression_params: [B, 50] first 50 FLAME expression coefficients.
        eyelid_params: [B, 2] eyelid closure ``(left, right)``, clamped to [0, 1].
        jaw_params: [B, 3] jaw rotation, axis-angle (rad): first component ``relu``-ed (>= 0, opening),
            the other two clamped to [-0.2, 0.2].
    """

    pose_params: Tensor
    cam: Tensor
    shape_params: Tensor
    expression_params: Tensor
    eyelid_params: Tensor
    jaw_params: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        """The six fields by name (SMIRK's output dictionary keys)."""
        return {
            "pose_params": self.pose_params,
            "cam": self.cam,
            "shape_params": self.shape_params,
            "expression_params": self.expression_params,
            "eyelid_params": self.eyelid_params,
            "jaw_params": self.jaw_params,
        }


def _backbone(name: str) -> nn.Module:
    # pretrained=False: no download; the weights come from the SMIRK checkpoint.
    return timm.create_model(name, pretrained=False, features_only=True)


def _pooled_last_map(backbone: nn.Module, image: Tensor) -> Tensor:
    """[B, C] global average of the backbone's last feature map."""
    return F.adaptive_avg_pool2d(backbone(image)[-1], 1).flatten(1)


class PoseEncoder(nn.Module):
    """Global head rotation and orthographic camera: ``tf_mobilenetv3_small_minimal_100`` + Linear 576→6."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = _backbone(POSE_BACKBONE)
        channels = self.encoder.feature_info.channels()[-1]
        self.pose_cam_layers = nn.Sequential(nn.Linear(channels, 6))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """image [B,3,224,224] in [0,1] → (pose_params [B,3], cam [B,3])."""
        out = self.pose_cam_layers(_pooled_last_map(self.encoder, image))
        return out[:, :3], out[:, 3:6]


class ShapeEncoder(nn.Module):
    """FLAME identity: ``tf_mobilenetv3_large_minimal_100`` + Linear 960→300."""

    def __init__(self, num_shape: int = NUM_SHAPE) -> None:
        super().__init__()
        self.encoder = _backbone(SHAPE_BACKBONE)
        channels = self.encoder.feature_info.channels()[-1]
        self.shape_layers = nn.Sequential(nn.Linear(channels, num_shape))

    def forward(self, image: Tensor) -> Tensor:
        """image [B,3,224,224] in [0,1] → shape_params [B,300]."""
        return self.shape_layers(_pooled_last_map(self.encoder, image))


class ExpressionEncoder(nn.Module):
    """Expression, eyelids and jaw: ``tf_mobilenetv3_large_minimal_100`` + Linear 960→(50+2+3)."""

    def __init__(self, num_expression: int = NUM_EXPRESSION) -> None:
        super().__init__()
        self.num_expression = num_expression
        self.encoder = _backbone(EXPRESSION_BACKBONE)
        channels = self.encoder.feature_info.channels()[-1]
        self.expression_layers = nn.Sequential(nn.Linear(channels, num_expression + NUM_EYELID + NUM_JAW))

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """image [B,3,224,224] in [0,1] → (expression [B,50], eyelid [B,2] in [0,1], jaw [B,3]).

        Post-processing as SMIRK's ``ExpressionEncoder``: eyelids ``clamp(0, 1)``; jaw
        ``[relu(out[52]), clamp(out[53:55], -0.2, 0.2)]``.
        """
        out = self.expression_layers(_pooled_last_map(self.encoder, image))
        n = self.num_expression
        expression = out[:, :n]
        eyelid = out[:, n : n + NUM_EYELID].clamp(0.0, 1.0)
        jaw_open = F.relu(out[:, n + NUM_EYELID : n + NUM_EYELID + 1])
        jaw_side = out[:, n + NUM_EYELID + 1 : n + NUM_EYELID + NUM_JAW].clamp(-JAW_SIDE_LIMIT, JAW_SIDE_LIMIT)
        return expression, eyelid, torch.cat([jaw_open, jaw_side], dim=1)


class SmirkEncoder(nn.Module):
    """SMIRK's encoder: a face crop → FLAME parameters and camera (3.60 M parameters; 3.66 M state-dict
    values with the BatchNorm statistics).

    Input: RGB float [B, 3, 224, 224] in [0, 1], no mean/std normalisation, cropped as SMIRK does
    (``if3d.face.landmarks.smirk_crop_matrix``). Output: :class:`SmirkParams`.
    """

    input_size = INPUT_SIZE

    def __init__(self, num_shape: int = NUM_SHAPE, num_expression: int = NUM_EXPRESSION) -> None:
        super().__init__()
        self.pose_encoder = PoseEncoder()
        self.shape_encoder = ShapeEncoder(num_shape)
        self.expression_encoder = ExpressionEncoder(num_expression)

    @staticmethod
    def remap_state_dict(
        state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], None, list[str]]:
        """Weight remapping protocol (docs/INTERFACES.md) for SMIRK's flat ``SMIRK_em1.pt``.

        Args:
            state_dict: ``smirk_encoder.*`` + ``smirk_generator.*`` keys (official layout).
            source: must be ``"smirk"``.

        Returns:
            (encoder tensors with the prefix stripped, ``None`` = the whole model, the discarded
            non-encoder keys).

        Raises:
            ValueError: another source, or no ``smirk_encoder.`` key at all.
        """
        if source != SMIRK_SOURCE:
            raise ValueError(f"SmirkEncoder loads {SMIRK_SOURCE!r} weights, not {source!r}")
        mapped = {k[len(CHECKPOINT_PREFIX) :]: v for k, v in state_dict.items() if k.startswith(CHECKPOINT_PREFIX)}
        if not mapped:
            first = ", ".join(list(state_dict)[:5])
            raise ValueError(f"no SMIRK encoder keys (expected keys starting with {CHECKPOINT_PREFIX!r}); first keys: {first}")
        discarded = [k for k in state_dict if not k.startswith(CHECKPOINT_PREFIX)]
        return mapped, None, discarded

    def forward(self, image: Tensor) -> SmirkParams:
        """image [B,3,224,224] float in [0,1] → :class:`SmirkParams`.

        Raises:
            ValueError: ``image`` is not a 4-D tensor with 3 channels.
        """
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"SmirkEncoder expects [B,3,224,224] RGB in [0,1], got shape {tuple(image.shape)}")
        pose, cam = self.pose_encoder(image)
        shape = self.shape_encoder(image)
        expression, eyelid, jaw = self.expression_encoder(image)
        return SmirkParams(
            pose_params=pose,
            cam=cam,
            shape_params=shape,
            expression_params=expression,
            eyelid_params=eyelid,
            jaw_params=jaw,
        )


def load_smirk_encoder(
    path: str | os.PathLike, device: str | torch.device = "cpu", model: SmirkEncoder | None = None
) -> tuple[SmirkEncoder, LoadReport]:
    """Build a :class:`SmirkEncoder` (or fill ``model``) from SMIRK's official ``SMIRK_em1.pt``.

    The file is read by :func:`networks.weights.read_checkpoint` (``torch.load(weights_only=True)``;
    no pickled code runs). Its ``smirk_encoder.*`` tensors must match the model exactly: every model
    key present, no extra encoder key, every shape equal; the ``smirk_generator.*`` keys are listed in
    ``LoadReport.discarded``.

    Returns:
        (model in eval mode on ``device``, :class:`~networks.weights.LoadReport`).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        networks.weights.CheckpointFormatError: not a readable checkpoint, or no SMIRK encoder keys.
        networks.weights.UnsafePickleError: the file pickles code outside the allow-list.
        networks.weights.WeightLoadError: missing / unexpected / wrongly shaped encoder keys (the
            message lists them; the model is not modified).
    """
    ckpt = read_checkpoint(path)
    model = model if model is not None else SmirkEncoder()
    report = load_state_dict_checked(model, ckpt.state_dict, source=SMIRK_SOURCE, strict=True, path=ckpt.path)
    return model.to(device).eval(), report
