"""Head pose from MediaPipe FaceMesh landmarks: rotation, Euler angles, position and size of the face.

The pose is a geometric frame built from the landmarks (no canonical model is needed): x from
the right-eye centroid to the left-eye centroid (the subject's left), "up" from the lip centroid to
the mid-point of the eyes, z = x cross up, y = z cross x. It is therefore defined relative to a face
whose eye line and eye-to-mouth line lie in the image plane, which is close to (within a few
degrees of) the anatomical frontal pose.

=================  ===============  =====================================================================
key                dtype / shape    meaning
=================  ===============  =====================================================================
rotation           float32 [3,3]    head rotation R: face frame -> view frame (columns: the face's
                                    left-pointing x, up y and forward z axes); view frame = x right,
                                    y up, z toward the camera; identity for an upright frontal face
euler_deg          float32 [3]      (pitch, yaw, roll) in degrees: R = Rz(roll) Ry(yaw) Rx(pitch)
                                    (scipy ``as_euler("xyz")``, extrinsic); pitch > 0 = face turned down,
                                    yaw > 0 = face turned toward the image's right, roll > 0 = head
                                    tilted counter-clockwise on screen
translation        float32 [3]      centroid of the 468 mesh landmarks, (x, y, z) in input pixels
scale              float32 []       RMS distance of the 468 mesh landmarks to their centroid, pixels
=================  ===============  =====================================================================

The MediaPipe render backend saves it with every render (``<stem>.npz``); the 3D representations
(:mod:`if3d.data.face3d`) and the analysis use it too.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from if3d.face.topology import NUM_MESH_VERTICES

__all__ = ["head_pose"]


@lru_cache(maxsize=1)
def _pose_landmark_sets() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mediapipe.python.solutions import face_mesh_connections as fmc

    def vertices(connections) -> np.ndarray:
        return np.array(sorted({i for edge in connections for i in edge}), dtype=np.int64)

    # MediaPipe's LEFT/RIGHT are the subject's: the left eye is on the image's right side.
    return vertices(fmc.FACEMESH_LEFT_EYE), vertices(fmc.FACEMESH_RIGHT_EYE), vertices(fmc.FACEMESH_LIPS)


def head_pose(landmarks: np.ndarray) -> dict[str, np.ndarray]:
    """Head pose from MediaPipe landmarks (see the module docstring for the definition).

    Args:
        landmarks: float [478, 3] (or [468, 3]) in pixels, MediaPipe's z sign.

    Returns:
        dict with ``rotation`` float32 [3,3], ``euler_deg`` float32 [3] (pitch, yaw, roll),
        ``translation`` float32 [3] (pixels), ``scale`` float32 [] (pixels).
    """
    from scipy.spatial.transform import Rotation

    left, right, lips = _pose_landmark_sets()
    mesh = np.asarray(landmarks, dtype=np.float64)[:NUM_MESH_VERTICES]
    view = mesh * np.array([1.0, -1.0, -1.0])  # x right, y up, z toward the camera
    left_eye, right_eye, mouth = view[left].mean(0), view[right].mean(0), view[lips].mean(0)
    x = left_eye - right_eye
    x /= np.linalg.norm(x)
    up = (left_eye + right_eye) / 2.0 - mouth
    z = np.cross(x, up)
    z /= np.linalg.norm(z)
    y = np.cross(z, x)
    rotation = np.stack([x, y, z], axis=1)
    euler = Rotation.from_matrix(rotation).as_euler("xyz", degrees=True)
    centroid = mesh.mean(0)
    scale = np.sqrt(((mesh - centroid) ** 2).sum(1).mean())
    return {
        "rotation": rotation.astype(np.float32),
        "euler_deg": euler.astype(np.float32),
        "translation": centroid.astype(np.float32),
        "scale": np.float32(scale),
    }
