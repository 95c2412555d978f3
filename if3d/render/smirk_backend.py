"""SMIRK render backend: photo → MediaPipe landmarks → SMIRK crop → SMIRK encoder → FLAME → render.

Follows SMIRK (Retsinas et al., CVPR 2024; official ``demo.py``, ``src/FLAME/FLAME.py``,
``src/renderer/renderer.py``; facts in ``../shared/docs/SMIRK.md``):

1. MediaPipe FaceMesh landmarks (``FaceLandmarker``) give SMIRK's crop: the landmarks' box enlarged
   1.4x, a similarity warp to 224x224 (``if3d.face.landmarks.smirk_crop_matrix``, bilinear, black outside).
2. The encoder (``networks.smirk.SmirkEncoder``, RGB in [0, 1]) regresses FLAME shape (300),
   expression (50), global pose (3), jaw (3), eyelids (2) and an orthographic camera (scale, tx, ty).
3. FLAME (``networks.smirk.FLAME``) gives the 5023 vertices.
4. SMIRK's camera: ``xy' = scale * (xy + (tx, ty))``, ``z' = scale * z``; then y (and z) negated, and
   ``[-1, 1]^2`` is the 224x224 crop (continuous pixel coordinates ``(xy'' + 1) * 112``).
5. Only the FLAME ``face`` region is drawn (triangles whose three vertices are in
   ``FLAME_masks.pkl['face']``), grey albedo, five directional lights (``gl.MeshRenderer``).

Framing (``framing``):

- ``smirk-crop``: SMIRK's 224x224 crop frame, resized to ``size`` (what If3D stores, at 112).
- ``photo``: pixel-aligned with the photo resized to ``size`` x ``size`` (the crop frame mapped back
  through the inverse of the crop's similarity transform, as SMIRK's ``--render_orig``). The mesh is
  drawn directly in the target frame rather than warping a rendered image, so the result is sharp;
  non-square photos are stretched like ``cv2.resize(photo, (size, size))`` (x and y scaled
  separately; normals follow the stretched mesh, as in the MediaPipe backend).

Parameters saved per image (``RenderResult.params``, written to ``<stem>.npz``):

==================  ===============  ====================================================================
key                 dtype / shape    meaning
==================  ===============  ====================================================================
shape_params        float32 [300]    FLAME identity coefficients
expression_params   float32 [50]     FLAME expression coefficients (first 50)
pose_params         float32 [3]      global head rotation, axis-angle (rad)
jaw_params          float32 [3]      jaw rotation, axis-angle (rad)
eyelid_params       float32 [2]      eyelid closure (left, right) in [0, 1]
cam                 float32 [3]      orthographic camera (scale, tx, ty) of the 224 crop (see 4.)
landmarks           float32 [478,3]  MediaPipe landmarks in photo pixels (``FaceLandmarker.detect``)
crop_matrix         float32 [2,3]    SMIRK's crop: photo → 224x224 crop, pixel-centre convention
                                     (``cv2.warpAffine`` matrix, ``smirk_crop_matrix``)
image_size          int32 [2]        (height, width) of the photo
image_to_render     float32 [2,3]    affine map photo → render pixels, continuous coordinates
                                     (pixel (i, j) covers [j, j+1) x [i, i+1))
framing             str []           ``photo`` or ``smirk-crop``
==================  ===============  ====================================================================
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from if3d.face.landmarks import FaceLandmarker, smirk_crop_matrix
from if3d.render.backends import FRAMINGS, RenderResult, register_backend
from if3d.render.gl import MeshRenderer

CROP_SIZE = 224
"""SMIRK's input crop side (pixels); the camera's [-1, 1]^2 spans this crop."""
CROP_SCALE = 1.4
"""SMIRK's enlargement of the landmark box."""


def pixel_centre_to_continuous(matrix: np.ndarray) -> np.ndarray:
    """A pixel-centre affine map (OpenCV ``warpAffine``) as a map between continuous coordinates.

    ``q = A (p - 0.5) + t + 0.5``. Args/returns: float [2, 3].
    """
    m = np.asarray(matrix, dtype=np.float64)
    a, t = m[:, :2], m[:, 2]
    return np.concatenate([a, (t + 0.5 - a @ np.array([0.5, 0.5]))[:, None]], axis=1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """``outer ∘ inner`` for 2x3 affine maps (apply ``inner`` first)."""
    o = np.vstack([np.asarray(outer, dtype=np.float64), [0.0, 0.0, 1.0]])
    i = np.vstack([np.asarray(inner, dtype=np.float64), [0.0, 0.0, 1.0]])
    return (o @ i)[:2]


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine map."""
    m = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    return np.linalg.inv(m)[:2]


def crop_to_render_matrix(
    crop_matrix: np.ndarray, image_hw: tuple[int, int], size: int, framing: str
) -> np.ndarray:
    """Affine map float64 [2,3] from the 224 crop to the render, continuous pixel coordinates.

    Args:
        crop_matrix: SMIRK's photo → crop matrix (pixel-centre convention).
        image_hw: (height, width) of the photo.
        size: render side.
        framing: ``"smirk-crop"`` (the crop resized to ``size``) or ``"photo"`` (the photo resized to
            ``size`` x ``size``).

    Raises:
        ValueError: for an unknown framing.
    """
    if framing == "smirk-crop":
        k = size / CROP_SIZE
        return np.array([[k, 0.0, 0.0], [0.0, k, 0.0]])
    if framing == "photo":
        h, w = image_hw
        photo_to_render = np.array([[size / w, 0.0, 0.0], [0.0, size / h, 0.0]])
        return compose_affine(photo_to_render, invert_affine(pixel_centre_to_continuous(crop_matrix)))
    raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")


def project_to_crop(vertices: np.ndarray, cam: np.ndarray) -> np.ndarray:
    """SMIRK's orthographic camera, into continuous pixel coordinates of the 224 crop.

    Args:
        vertices: float [V, 3] FLAME vertices (metres; x to the subject's left = image right, y up,
            z toward the camera).
        cam: float [3] ``(scale, tx, ty)``.

    Returns:
        float32 [V, 3]: x right, y down in crop pixels ([0, 224]^2 = the camera's [-1, 1]^2); z =
        ``scale * z`` in the same pixel scale, larger = closer to the viewer (``MeshRenderer``'s frame).
    """
    v = np.asarray(vertices, dtype=np.float64)
    s, tx, ty = (float(c) for c in cam)
    half = CROP_SIZE / 2.0
    out = np.empty_like(v)
    out[:, 0] = (s * (v[:, 0] + tx) + 1.0) * half
    out[:, 1] = (-s * (v[:, 1] + ty) + 1.0) * half
    out[:, 2] = s * v[:, 2] * half
    return out.astype(np.float32)


def _default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@register_backend("smirk")
class SmirkBackend:
    """The official SMIRK pipeline as a render backend (module docstring).

    Args:
        checkpoint: SMIRK's ``SMIRK_em1.pt`` (flat state dict; only ``smirk_encoder.*`` is used).
        flame_model: FLAME 2020 ``generic_model.pkl`` (read without chumpy).
        assets_dir: folder with SMIRK's FLAME assets (``FLAME_masks.pkl``, ``landmark_embedding.npy``,
            ``mediapipe_landmark_embedding.npz``, ``l_eyelid.npy``, ``r_eyelid.npy``).
        device: torch device for the encoder and FLAME (default: CUDA when available, else CPU).
        size: render side S in pixels.
        framing: ``"smirk-crop"`` (default) or ``"photo"``.
        landmarker: a ``FaceLandmarker`` to use (default: a new one).
        renderer: a ``MeshRenderer`` of side ``size`` to use (default: a new one on EGL).

    Raises:
        ValueError: a path not given, unknown framing, bad size, or a renderer of another size.
        FileNotFoundError: a missing checkpoint, FLAME model, assets folder or asset file (named).
        networks.weights.CheckpointFormatError / UnsafePickleError / WeightLoadError: a malformed
            checkpoint (the message names the file and the keys).
        networks.smirk.FlameModelError: a malformed FLAME model or asset file (named).

    Create one per process and reuse it (it holds the models, the FaceMesh graphs and a GL context).
    """

    name = "smirk"

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        flame_model: str | os.PathLike | None = None,
        assets_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        size: int = CROP_SIZE,
        framing: str = "smirk-crop",
        landmarker: FaceLandmarker | None = None,
        renderer: MeshRenderer | None = None,
    ) -> None:
        from networks.smirk import FLAME, load_smirk_encoder

        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")
        if int(size) != size or size < 1:
            raise ValueError(f"size must be a positive integer, got {size!r}")
        if renderer is not None and renderer.size != size:
            raise ValueError(f"renderer size {renderer.size} does not match size {size}")
        needed = {"checkpoint": checkpoint, "flame_model": flame_model, "assets_dir": assets_dir}
        absent = [name for name, value in needed.items() if value is None]
        if absent:
            raise ValueError(
                f"the SMIRK backend needs {', '.join(absent)} (Smirk_batch_Render.py: --smirk-checkpoint "
                "SMIRK_em1.pt, --flame-model generic_model.pkl, --smirk-assets <folder of SMIRK's FLAME assets>)"
            )
        for what, path in (("SMIRK checkpoint", checkpoint), ("FLAME model", flame_model)):
            if not Path(path).is_file():
                raise FileNotFoundError(f"{what} not found: {path}")
        if not Path(assets_dir).is_dir():
            raise FileNotFoundError(f"SMIRK assets folder not found: {assets_dir}")
        self.size = int(size)
        self.framing = framing
        self.device = torch.device(device if device is not None else _default_device())
        self.encoder, self.load_report = load_smirk_encoder(checkpoint, device=self.device)
        self.flame = FLAME(flame_model, assets_dir).to(self.device).eval()
        self.faces = self.flame.face_faces.cpu().numpy().astype(np.int32)
        self.landmarker = landmarker if landmarker is not None else FaceLandmarker()
        self.renderer = renderer if renderer is not None else MeshRenderer(self.size)

    @torch.no_grad()
    def reconstruct(self, crop_rgb: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Encoder + FLAME on one SMIRK crop.

        Args:
            crop_rgb: uint8 [224, 224, 3] RGB crop.

        Returns:
            (parameters name → float32 array, as in the module table, without the crop keys;
            FLAME vertices float32 [5023, 3] in metres).
        """
        x = torch.from_numpy(np.ascontiguousarray(crop_rgb)).to(self.device)
        x = x.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        p = self.encoder(x)
        out = self.flame(p.shape_params, p.expression_params, p.pose_params, p.jaw_params, p.eyelid_params)
        params = {k: v[0].float().cpu().numpy() for k, v in p.as_dict().items()}
        return params, out.vertices[0].float().cpu().numpy()

    def render_vertices(self, vertices: np.ndarray, cam: np.ndarray, crop_to_render: np.ndarray) -> np.ndarray:
        """Render FLAME vertices (float [5023,3], metres) with SMIRK's camera through a crop → render map.

        Returns:
            uint8 [S, S, 3] render (face region only, black background).
        """
        crop = project_to_crop(vertices, cam)
        g = np.asarray(crop_to_render, dtype=np.float64)
        a = g[:, :2]
        out = np.empty_like(crop)
        out[:, :2] = (crop[:, :2].astype(np.float64) @ a.T + g[:, 2]).astype(np.float32)
        out[:, 2] = crop[:, 2] * np.float32(np.sqrt(abs(np.linalg.det(a))))
        # Make this renderer's GL context current: another MeshRenderer (another context) may have
        # been created or used in this process since (e.g. backends of two sizes side by side).
        with self.renderer.ctx:
            return self.renderer.render(out, self.faces)

    def process(self, image_rgb: np.ndarray) -> RenderResult | None:
        """Render one photo.

        Args:
            image_rgb: uint8 [H, W, 3] RGB.

        Returns:
            ``RenderResult`` (render uint8 [S, S, 3]; params as in the module table), or ``None`` when
            FaceMesh finds no face.

        Raises:
            ValueError: ``image_rgb`` is not a uint8 [H, W, 3] array.
        """
        landmarks = self.landmarker.detect(image_rgb)
        if landmarks is None:
            return None
        h, w = image_rgb.shape[:2]
        crop_matrix = smirk_crop_matrix(landmarks, out_size=CROP_SIZE, scale=CROP_SCALE)
        crop = cv2.warpAffine(
            image_rgb, crop_matrix, (CROP_SIZE, CROP_SIZE), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        params, vertices = self.reconstruct(crop)
        crop_to_render = crop_to_render_matrix(crop_matrix, (h, w), self.size, self.framing)
        render = self.render_vertices(vertices, params["cam"], crop_to_render)
        image_to_render = compose_affine(crop_to_render, pixel_centre_to_continuous(crop_matrix))
        params.update(
            landmarks=np.asarray(landmarks, dtype=np.float32),
            crop_matrix=crop_matrix.astype(np.float32),
            image_size=np.array([h, w], dtype=np.int32),
            image_to_render=image_to_render.astype(np.float32),
            framing=np.array(self.framing),
        )
        return RenderResult(render=render, params=params)

    def close(self) -> None:
        """Free the FaceMesh graphs and the GL context."""
        self.landmarker.close()
        self.renderer.release()
