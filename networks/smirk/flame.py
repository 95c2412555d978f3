"""FLAME head model as SMIRK uses it: 300 identity + 50 expression components, jaw, eyelids, landmarks.

FLAME: Li, Bolkart, Black, Li, Romero, "Learning a model of facial shape and expression from 4D
scans", SIGGRAPH Asia 2017 (model file ``generic_model.pkl``, FLAME 2020, from the FLAME site).
SMIRK's use of it (public SMIRK implementation, MIT; ``../shared/docs/SMIRK.md``):

* ``betas = [shape (300), expression (50)]`` against ``shapedirs[..., :300]`` and ``shapedirs[..., 300:350]``;
* full pose ``[global (3) = pose_params, neck (3) = 0, jaw (3) = jaw_params, eyes (6) = 0]``;
* standard linear blend skinning — :func:`smplx.lbs.lbs`, reused, not re-written;
* eyelids after skinning: ``v += r_eyelid * eyelid[:, 1] + l_eyelid * eyelid[:, 0]``;
* landmarks as barycentric points on FLAME triangles: 105 MediaPipe points
  (``mediapipe_landmark_embedding.npz``), 68 FAN points with a pose-dependent jaw contour and 68
  static ones (``landmark_embedding.npy``; contour lookup via :func:`smplx.lbs.find_dynamic_lmk_idx_and_bcoords`,
  i.e. DECA's/smplx's yaw sign; SMIRK's own copy of this lookup omits the minus sign of the yaw angle, which
  only changes which contour row is picked for turned heads — the render does not use these landmarks);
* the ``face`` region of ``FLAME_masks.pkl`` (the part SMIRK renders).

The model file and the asset files are read by :mod:`networks.smirk.flame_files` (without chumpy and
without running code from them); this module is the layer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from smplx.lbs import find_dynamic_lmk_idx_and_bcoords, lbs, vertices2landmarks
from torch import Tensor

from networks.smirk.flame_files import (  # noqa: F401 - re-exported: the file readers belong with the layer
    ASSET_FILES,
    FLAME_MODEL_SHAPES,
    JAW_JOINT,
    NECK_JOINT,
    NUM_CONTOUR_BINS,
    NUM_FACES,
    NUM_FAN_CONTOUR,
    NUM_FAN_LANDMARKS,
    NUM_IDENTITY_COMPONENTS,
    NUM_JOINTS,
    NUM_MEDIAPIPE_LANDMARKS,
    NUM_SHAPEDIRS,
    NUM_VERTICES,
    ChumpyStandIn,
    FlameAssets,
    FlameModelData,
    FlameModelError,
    chumpy_to_numpy,
    load_flame_assets,
    load_flame_model,
    read_flame_pickle,
    region_faces,
    restricted_npy_load,
    restricted_pickle_load,
)

# --------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------


@dataclass
class FlameOutput:
    """FLAME mesh and landmarks in model space (metres; x to the subject's left, y up, z forward).

    Attributes:
        vertices: [B, 5023, 3].
        landmarks_mp: [B, 105, 3] MediaPipe landmarks (FaceMesh ids in ``FLAME.mp_landmark_indices``).
        landmarks_fan: [B, 68, 3] FAN/iBUG-68 landmarks, jaw contour (0-16) chosen by head yaw.
        landmarks_fan_3d: [B, 68, 3] the 68 landmarks with a static contour.
    """

    vertices: Tensor
    landmarks_mp: Tensor
    landmarks_fan: Tensor
    landmarks_fan_3d: Tensor


class FLAME(nn.Module):
    """FLAME layer with SMIRK's parameterisation (see the module docstring).

    Args:
        model: a :class:`FlameModelData` or the path of ``generic_model.pkl``.
        assets: a :class:`FlameAssets` or the folder with SMIRK's asset files.
        num_shape: identity components used (first ``num_shape`` of 0-299).
        num_expression: expression components used (first ``num_expression`` of 300-399).

    Buffers (all move with ``.to(device)``): ``v_template`` [5023,3], ``faces`` [9976,3],
    ``shapedirs`` [5023,3,num_shape+num_expression], ``posedirs`` [36, 15069], ``J_regressor`` [5,5023],
    ``lbs_weights`` [5023,5], ``parents`` [5], ``l_eyelid``/``r_eyelid`` [5023,3], ``face_faces``
    [F_face,3] (triangles of the ``face`` region), landmark embeddings.

    Raises:
        FileNotFoundError, FlameModelError: from :func:`load_flame_model` / :func:`load_flame_assets`.
        ValueError: ``num_shape``/``num_expression`` out of range.
    """

    def __init__(
        self,
        model: FlameModelData | str | os.PathLike,
        assets: FlameAssets | str | os.PathLike,
        num_shape: int = NUM_IDENTITY_COMPONENTS,
        num_expression: int = 50,
    ) -> None:
        super().__init__()
        if not isinstance(model, FlameModelData):
            model = load_flame_model(model)
        if not isinstance(assets, FlameAssets):
            assets = load_flame_assets(assets)
        if not 0 < num_shape <= NUM_IDENTITY_COMPONENTS:
            raise ValueError(f"num_shape must be in [1, {NUM_IDENTITY_COMPONENTS}], got {num_shape}")
        if not 0 < num_expression <= NUM_SHAPEDIRS - NUM_IDENTITY_COMPONENTS:
            raise ValueError(f"num_expression must be in [1, 100], got {num_expression}")
        self.num_shape = num_shape
        self.num_expression = num_expression

        def buf(name: str, array: np.ndarray, dtype: torch.dtype = torch.float32) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=dtype), persistent=False)

        buf("v_template", model.v_template)
        buf("faces", model.faces, torch.long)
        shapedirs = np.concatenate(
            [
                model.shapedirs[:, :, :num_shape],
                model.shapedirs[:, :, NUM_IDENTITY_COMPONENTS : NUM_IDENTITY_COMPONENTS + num_expression],
            ],
            axis=2,
        )
        buf("shapedirs", shapedirs)
        # smplx's lbs wants posedirs as [P, V*3].
        buf("posedirs", model.posedirs.reshape(-1, model.posedirs.shape[-1]).T)
        buf("J_regressor", model.J_regressor)
        buf("lbs_weights", model.weights)
        buf("parents", model.parents, torch.long)
        chain = [NECK_JOINT]
        while model.parents[chain[-1]] != -1:
            chain.append(int(model.parents[chain[-1]]))
        buf("neck_kin_chain", np.array(chain), torch.long)

        buf("l_eyelid", assets.l_eyelid)
        buf("r_eyelid", assets.r_eyelid)
        buf("face_vertices", assets.face_vertices, torch.long)
        buf("face_faces", region_faces(model.faces, assets.face_vertices), torch.long)
        buf("static_lmk_faces_idx", assets.static_lmk_faces_idx, torch.long)
        buf("static_lmk_bary_coords", assets.static_lmk_bary_coords)
        buf("dynamic_lmk_faces_idx", assets.dynamic_lmk_faces_idx, torch.long)
        buf("dynamic_lmk_bary_coords", assets.dynamic_lmk_bary_coords)
        buf("full_lmk_faces_idx", assets.full_lmk_faces_idx, torch.long)
        buf("full_lmk_bary_coords", assets.full_lmk_bary_coords)
        buf("mp_lmk_faces_idx", assets.mp_lmk_faces_idx, torch.long)
        buf("mp_lmk_bary_coords", assets.mp_lmk_bary_coords)
        buf("mp_landmark_indices", assets.mp_landmark_indices, torch.long)

    @staticmethod
    def full_pose(pose_params: Tensor, jaw_params: Tensor) -> Tensor:
        """[B, 15] = [global (3) = pose_params, neck (3) = 0, jaw (3) = jaw_params, eyes (6) = 0], axis-angle (rad)."""
        b = pose_params.shape[0]
        neck = pose_params.new_zeros(b, 3)
        eyes = pose_params.new_zeros(b, 6)
        return torch.cat([pose_params, neck, jaw_params, eyes], dim=1)

    def forward(
        self,
        shape_params: Tensor,
        expression_params: Tensor,
        pose_params: Tensor,
        jaw_params: Tensor,
        eyelid_params: Tensor | None = None,
    ) -> FlameOutput:
        """FLAME mesh and landmarks from SMIRK's parameters.

        Args:
            shape_params: [B, num_shape] identity coefficients (fewer columns are zero-padded).
            expression_params: [B, num_expression] expression coefficients (fewer columns zero-padded).
            pose_params: [B, 3] global rotation, axis-angle (rad).
            jaw_params: [B, 3] jaw rotation, axis-angle (rad).
            eyelid_params: [B, 2] ``(left, right)`` eyelid closure, or ``None`` for none.

        Returns:
            :class:`FlameOutput`.

        Raises:
            ValueError: inconsistent batch sizes or too many coefficients.
        """
        b = shape_params.shape[0]
        for name, t, width in (
            ("expression_params", expression_params, None),
            ("pose_params", pose_params, 3),
            ("jaw_params", jaw_params, 3),
            ("eyelid_params", eyelid_params, 2),
        ):
            if t is None:
                continue
            if t.ndim != 2 or t.shape[0] != b or (width is not None and t.shape[1] != width):
                raise ValueError(f"{name} has shape {tuple(t.shape)}, expected [{b}, {width or 'N'}]")
        shape_params = self._pad(shape_params, self.num_shape, "shape_params")
        expression_params = self._pad(expression_params, self.num_expression, "expression_params")

        dtype = self.v_template.dtype
        betas = torch.cat([shape_params, expression_params], dim=1).to(dtype)
        pose = self.full_pose(pose_params.to(dtype), jaw_params.to(dtype))
        vertices, _ = lbs(
            betas, pose, self.v_template.unsqueeze(0).expand(b, -1, -1), self.shapedirs, self.posedirs,
            self.J_regressor, self.parents, self.lbs_weights,
        )
        if eyelid_params is not None:
            eyelid_params = eyelid_params.to(dtype)
            vertices = vertices + self.r_eyelid * eyelid_params[:, 1, None, None]
            vertices = vertices + self.l_eyelid * eyelid_params[:, 0, None, None]
        return FlameOutput(
            vertices=vertices,
            landmarks_mp=self._landmarks(vertices, self.mp_lmk_faces_idx, self.mp_lmk_bary_coords),
            landmarks_fan=self._fan_landmarks(vertices, pose),
            landmarks_fan_3d=self._landmarks(vertices, self.full_lmk_faces_idx, self.full_lmk_bary_coords),
        )

    @staticmethod
    def _pad(t: Tensor, n: int, name: str) -> Tensor:
        if t.shape[1] > n:
            raise ValueError(f"{name} has {t.shape[1]} coefficients, this FLAME layer uses {n}")
        if t.shape[1] < n:
            t = torch.cat([t, t.new_zeros(t.shape[0], n - t.shape[1])], dim=1)
        return t

    def _landmarks(self, vertices: Tensor, faces_idx: Tensor, bary: Tensor) -> Tensor:
        b = vertices.shape[0]
        return vertices2landmarks(vertices, self.faces, faces_idx.repeat(b, 1), bary.repeat(b, 1, 1))

    def _fan_landmarks(self, vertices: Tensor, pose: Tensor) -> Tensor:
        """[B, 68, 3]: the 17 contour points for the head's yaw (via the neck chain), then 51 static points."""
        b = vertices.shape[0]
        dyn_idx, dyn_bary = find_dynamic_lmk_idx_and_bcoords(
            vertices, pose, self.dynamic_lmk_faces_idx, self.dynamic_lmk_bary_coords, self.neck_kin_chain
        )
        idx = torch.cat([dyn_idx, self.static_lmk_faces_idx.repeat(b, 1)], dim=1)
        bary = torch.cat([dyn_bary, self.static_lmk_bary_coords.repeat(b, 1, 1)], dim=1)
        return vertices2landmarks(vertices, self.faces, idx, bary)
