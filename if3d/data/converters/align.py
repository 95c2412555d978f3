"""Face alignment from MediaPipe FaceMesh landmarks (the landmarks the render backend uses).

:func:`align_face` rotates the image about the face so that the line between the eye centres is
horizontal, then crops a square around the landmark box enlarged by ``margin`` and resizes it to
``size`` pixels (a similarity transform, one ``cv2.warpAffine``; outside the image is black).
Landmarks come from :class:`if3d.face.landmarks.FaceLandmarker` (x, y in continuous input pixels).
"""

from __future__ import annotations

import cv2
import numpy as np

# MediaPipe FaceMesh eye corners (the subject's right eye: 33 outer, 133 inner; left eye: 362 inner,
# 263 outer); the mean of each pair is the eye centre.
RIGHT_EYE = (33, 133)
LEFT_EYE = (362, 263)


def alignment_matrix(landmarks: np.ndarray, size: int, margin: float) -> np.ndarray:
    """float64 [2, 3] affine from input to output pixels (continuous coordinates, image spans [0, W]).

    Args:
        landmarks: [478, 3] (or [N>=468, 2+]) FaceMesh landmarks, x/y in input pixels.
        size: output side in pixels.
        margin: the square's side is ``(1 + margin)`` x the larger side of the levelled landmark box.

    Raises:
        ValueError: fewer than 468 landmarks or a degenerate landmark box.
    """
    pts = np.asarray(landmarks, dtype=np.float64)[:, :2]
    if pts.shape[0] < 468:
        raise ValueError(f"expected FaceMesh landmarks [478, 3], got {np.asarray(landmarks).shape}")
    right = pts[list(RIGHT_EYE)].mean(0)
    left = pts[list(LEFT_EYE)].mean(0)
    dx, dy = left - right
    angle = np.arctan2(dy, dx)  # image y points down
    c, s = np.cos(-angle), np.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    centre = pts.mean(0)
    q = (pts - centre) @ rot.T
    lo, hi = q.min(0), q.max(0)
    side = float((hi - lo).max()) * (1.0 + margin)
    if not side > 0:
        raise ValueError("degenerate landmark box")
    k = size / side
    box_centre = (lo + hi) / 2
    m = np.zeros((2, 3))
    m[:, :2] = k * rot
    m[:, 2] = k * (-rot @ centre - box_centre) + size / 2.0
    return m


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = 224, margin: float = 0.25) -> np.ndarray:
    """Eye-levelled square face crop.

    Args:
        image_rgb: uint8 [H, W, 3] (or [H, W]) image the landmarks refer to.
        landmarks: FaceMesh landmarks [478, 3], x/y in ``image_rgb`` pixels.
        size: output side in pixels.
        margin: extra border around the landmark box (fraction of its larger side).

    Returns:
        uint8 [size, size, 3] (or [size, size]) aligned face.
    """
    m = alignment_matrix(landmarks, size, margin)
    # continuous -> OpenCV's pixel-centre convention: p_cv = p - 0.5 on both sides
    m_cv = m.copy()
    m_cv[:, 2] += m[:, :2] @ np.array([0.5, 0.5]) - 0.5
    h, w = image_rgb.shape[:2]
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.5:
        # warpAffine does not low-pass filter: shrink first so that the warp scales by >= 0.5
        f = scale * 2.0
        small = cv2.resize(image_rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        sx, sy = small.shape[1] / w, small.shape[0] / h
        m_small = m.copy()
        m_small[:, 0] /= sx
        m_small[:, 1] /= sy
        m_cv = m_small.copy()
        m_cv[:, 2] += m_small[:, :2] @ np.array([0.5, 0.5]) - 0.5
        image_rgb = small
    return cv2.warpAffine(image_rgb, m_cv, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def detect_landmarks(landmarker, image_rgb: np.ndarray, window: float = 0.5) -> np.ndarray | None:
    """FaceMesh landmarks of the most prominent face, searching windows when the whole image fails.

    MediaPipe's short-range face detector misses faces that fill only a small part of a large frame
    (movie frames, group photos). When the whole image gives nothing, square windows of side
    ``window`` x the short side, overlapping by half, are tried in turn (centre first); the first
    face found wins.

    Args:
        landmarker: an object with ``detect(uint8 [H, W, 3]) -> [478, 3] | None``
            (:class:`if3d.face.landmarks.FaceLandmarker`).
        image_rgb: uint8 [H, W, 3].

    Returns:
        float32 [478, 3] landmarks in ``image_rgb`` pixels, or None.
    """
    found = landmarker.detect(image_rgb)
    if found is not None or window <= 0:
        return found
    h, w = image_rgb.shape[:2]
    side = int(round(min(h, w) * window))
    if side < 32:
        return None
    step = max(1, side // 2)
    origins = [(x, y) for y in range(0, max(1, h - side + 1), step) for x in range(0, max(1, w - side + 1), step)]
    cx, cy = (w - side) / 2, (h - side) / 2
    origins.sort(key=lambda o: (o[0] - cx) ** 2 + (o[1] - cy) ** 2)
    for x, y in origins:
        pts = landmarker.detect(np.ascontiguousarray(image_rgb[y: y + side, x: x + side]))
        if pts is not None:
            pts = pts.copy()
            pts[:, 0] += x
            pts[:, 1] += y
            return pts
    return None


def enlarge_box(box: tuple[float, float, float, float], factor: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Integer (left, top, right, bottom) of ``box`` grown by ``factor`` x its size on each side, clipped."""
    left, top, right, bottom = box
    bw, bh = right - left, bottom - top
    return (
        max(0, int(np.floor(left - factor * bw))),
        max(0, int(np.floor(top - factor * bh))),
        min(width, int(np.ceil(right + factor * bw))),
        min(height, int(np.ceil(bottom + factor * bh))),
    )
