"""MediaPipe render backend: FaceMesh's 478 3D landmarks as a triangle mesh, rendered SMIRK style.

The 468 face-mesh landmarks (``FaceLandmarker``) are the vertices, MediaPipe's canonical face
topology (:func:`if3d.face.topology.face_mesh_triangles`, 852 triangles) the faces; the mesh is drawn grey-shaded on
black with SMIRK's albedo and five lights by ``MeshRenderer``. Works offline: the models ship in the
``mediapipe`` wheel.

Framing (``framing``):

- ``photo`` (default): the render is pixel-aligned with the photo resized to size x size (non-square
  photos are stretched, exactly like ``cv2.resize(photo, (size, size))``), so the two streams of a
  fusion model see the same face region at the same feature-map location.
- ``smirk-crop``: SMIRK's input crop (:func:`if3d.face.landmarks.smirk_crop_matrix`) at size x size; the photo
  cropped the same way is ``frame_photo(photo, params, size)``.

Parameters saved per image (``RenderResult.params``, written to ``<stem>.npz``):

=================  ===============  =====================================================================
key                dtype / shape    meaning
=================  ===============  =====================================================================
landmarks          float32 [478,3]  x, y in input-photo pixels (image = [0,W] x [0,H]); z in the same
                                    pixel scale, MediaPipe's sign (smaller = closer to the camera)
rotation           float32 [3,3]    head rotation, face frame -> view frame
euler_deg          float32 [3]      (pitch, yaw, roll) in degrees
translation        float32 [3]      centroid of the 468 mesh landmarks, input pixels
scale              float32 []       RMS radius of the 468 mesh landmarks, pixels
image_size         int32 [2]        (height, width) of the input photo
image_to_render    float32 [2,3]    affine map from input-photo to render pixel coordinates (both
                                    continuous: pixel (i, j) covers [j, j+1) x [i, i+1))
framing            str []           ``photo`` or ``smirk-crop``
=================  ===============  =====================================================================

The four head-pose keys are those of :func:`if3d.face.pose.head_pose`, which defines them exactly.
"""

from __future__ import annotations

import cv2
import numpy as np

from if3d.face.landmarks import FaceLandmarker, smirk_crop_matrix
from if3d.face.pose import head_pose
from if3d.face.topology import NUM_MESH_VERTICES, face_mesh_triangles
from if3d.render.backends import FRAMINGS, RenderResult, register_backend
from if3d.render.gl import MeshRenderer


def image_to_render_matrix(landmarks: np.ndarray, image_hw: tuple[int, int], size: int, framing: str) -> np.ndarray:
    """Affine map float64 [2,3] from input-photo to render pixels (continuous coordinates).

    Raises:
        ValueError: for an unknown framing.
    """
    h, w = image_hw
    if framing == "photo":
        return np.array([[size / w, 0.0, 0.0], [0.0, size / h, 0.0]])
    if framing == "smirk-crop":
        m = smirk_crop_matrix(landmarks, out_size=size)
        a, t = m[:, :2], m[:, 2]
        return np.concatenate([a, (t + 0.5 - a @ np.array([0.5, 0.5]))[:, None]], axis=1)
    raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")


def frame_photo(image_rgb: np.ndarray, params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """The photo framed like its render (uint8 [size, size, 3]).

    ``photo`` framing: ``cv2.resize`` (area interpolation when shrinking, bilinear otherwise);
    ``smirk-crop``: ``cv2.warpAffine`` with the crop matrix (bilinear, black outside the photo).
    """
    h, w = image_rgb.shape[:2]
    if str(params["framing"]) == "photo":
        interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
        return cv2.resize(image_rgb, (size, size), interpolation=interp)
    m = np.asarray(params["image_to_render"], dtype=np.float64)
    a, t = m[:, :2], m[:, 2]
    pixel_centre = np.concatenate([a, (t - 0.5 + a @ np.array([0.5, 0.5]))[:, None]], axis=1)
    return cv2.warpAffine(image_rgb, pixel_centre, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@register_backend("mediapipe")
class MediaPipeBackend:
    """Offline 3D backend: MediaPipe FaceMesh landmarks rendered as a grey shaded mesh.

    Args:
        size: render side S in pixels.
        framing: ``"photo"`` or ``"smirk-crop"`` (module docstring).
        landmarker: a ``FaceLandmarker`` to use (default: a new one).
        renderer: a ``MeshRenderer`` of side ``size`` to use (default: a new one on EGL).

    Create one per process and reuse it: it holds the FaceMesh graphs and an OpenGL context.
    """

    name = "mediapipe"

    def __init__(
        self,
        size: int = 224,
        framing: str = "photo",
        landmarker: FaceLandmarker | None = None,
        renderer: MeshRenderer | None = None,
    ) -> None:
        if framing not in FRAMINGS:
            raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")
        if renderer is not None and renderer.size != size:
            raise ValueError(f"renderer size {renderer.size} does not match size {size}")
        self.size = int(size)
        self.framing = framing
        self.faces = face_mesh_triangles()
        self.landmarker = landmarker if landmarker is not None else FaceLandmarker()
        self.renderer = renderer if renderer is not None else MeshRenderer(self.size)

    def render_landmarks(self, landmarks: np.ndarray, image_to_render: np.ndarray) -> np.ndarray:
        """Render MediaPipe landmarks (float [478,3], photo pixels) through an image-to-render affine map.

        Returns:
            uint8 [S, S, 3] render.
        """
        mesh = np.asarray(landmarks, dtype=np.float32)[:NUM_MESH_VERTICES]
        a = np.asarray(image_to_render, dtype=np.float64)[:, :2]
        vertices = np.empty((NUM_MESH_VERTICES, 3), dtype=np.float32)
        vertices[:, :2] = mesh[:, :2] @ a.T.astype(np.float32) + np.asarray(image_to_render, np.float32)[:, 2]
        # z: MediaPipe's smaller = closer becomes the renderer's larger = closer, at the mean xy scale.
        vertices[:, 2] = -mesh[:, 2] * np.float32(np.sqrt(abs(np.linalg.det(a))))
        return self.renderer.render(vertices, self.faces)

    def process(self, image_rgb: np.ndarray) -> RenderResult | None:
        """Render one photo.

        Args:
            image_rgb: uint8 [H, W, 3] RGB.

        Returns:
            ``RenderResult`` (render uint8 [S,S,3], params as in the module docstring), or ``None``
            when FaceMesh finds no face.
        """
        landmarks = self.landmarker.detect(image_rgb)
        if landmarks is None:
            return None
        h, w = image_rgb.shape[:2]
        matrix = image_to_render_matrix(landmarks, (h, w), self.size, self.framing)
        render = self.render_landmarks(landmarks, matrix)
        params = {
            "landmarks": landmarks,
            **head_pose(landmarks),
            "image_size": np.array([h, w], dtype=np.int32),
            "image_to_render": matrix.astype(np.float32),
            "framing": np.array(self.framing),
        }
        return RenderResult(render=render, params=params)

    def close(self) -> None:
        """Free the FaceMesh graphs and the GL context."""
        self.landmarker.close()
        self.renderer.release()

