"""MediaPipe FaceMesh landmarks (478 points, 3D) in input-pixel coordinates.

Wraps MediaPipe's legacy ``FaceMesh`` solution (Kartynnik et al., "Real-time Facial Surface Geometry
from Monocular Video on Mobile GPUs", CVPR-W 2019; attention/iris refinement, Grishchenko et al. 2020).
Its BlazeFace detector and landmark models ship inside the ``mediapipe`` wheel, so this works offline.

Small, tightly cropped faces (FER2013 and CK+48 are 48x48) are hard for the detector: the image is
upsampled so that its short side is at least ``min_side`` pixels and padded with a black border
(``pad`` x short side on each side) so that the face does not fill the whole frame. If no face is
found, a second attempt with a wider border and a lower detection confidence is made. Landmarks are
mapped back to the pixels of the image that was passed in.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

NUM_LANDMARKS = 478
"""468 face-mesh points + 10 iris points (468-472 one iris centre + 4 contour, 473-477 the other)."""


_NATIVE_NOISE = re.compile(
    rb"^(?:[IW]\d{4} \d+:\d+:\d+\.\d+ +\d+ [\w.-]+:\d+\] "  # absl/glog INFO and WARNING lines
    rb"|INFO: Created TensorFlow Lite"  # TFLite's delegate notice
    rb"|WARNING: All log messages before absl::InitializeLog\(\) is called)"
)
_NATIVE_LOCK = threading.Lock()
_WARM_UP_SIDE = 64
T = TypeVar("T")


@contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Drop MediaPipe's C++ INFO and WARNING lines while the block runs, pass on everything else.

    MediaPipe's C++ side (absl logging, TensorFlow Lite) writes straight to file descriptor 2 when a
    FaceMesh graph starts (``inference_feedback_manager.cc ... Disabling support for feedback
    tensors``, ``Created TensorFlow Lite XNNPACK delegate``), once per graph and process, which filled
    every render and alignment log; its logging ignores ``GLOG_minloglevel`` and
    ``TF_CPP_MIN_LOG_LEVEL``. While the block runs, descriptor 2 goes to a temporary file; afterwards
    the lines that match those INFO/WARNING formats are dropped and every other line (C++ errors,
    anything written by Python meanwhile) is written to the real stderr. ``IF3D_NATIVE_LOGS=1`` keeps
    everything.
    """
    if os.environ.get("IF3D_NATIVE_LOGS") == "1":
        yield
        return
    with _NATIVE_LOCK:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError, AttributeError):  # no usable stderr: nothing to filter
            yield
            return
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield
            finally:
                try:
                    sys.stderr.flush()
                except (OSError, ValueError, AttributeError):
                    pass
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                kept = [line for line in tmp.read().splitlines(keepends=True) if not _NATIVE_NOISE.match(line)]
                if kept:
                    os.write(2, b"".join(kept))


def open_graph_quietly(build: Callable[[], T]) -> T:
    """Build a MediaPipe solution (``FaceMesh``, ``FaceDetection``) and run it once on a blank frame, all
    inside :func:`quiet_native_logs`.

    The graph's calculators open on MediaPipe's own threads after the constructor returns, and they write
    their INFO/WARNING lines then; a first ``process`` call returns only after every calculator has
    opened, so those lines land inside the block instead of racing past its end.

    Args:
        build: no-argument factory of the solution.

    Returns:
        The solution, its graph open. A blank frame finds no face, so no tracking state is left behind.
    """
    with warnings.catch_warnings(), quiet_native_logs():
        # mediapipe 0.10 calls a protobuf API deprecated in protobuf >= 4.21 on every image.
        warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
        solution = build()
        solution.process(np.zeros((_WARM_UP_SIDE, _WARM_UP_SIDE, 3), dtype=np.uint8))
    return solution


@dataclass(frozen=True)
class DetectionAttempt:
    """One detection try: border width (fraction of the upsampled short side) and detector confidence."""

    pad: float
    min_detection_confidence: float


DEFAULT_ATTEMPTS: tuple[DetectionAttempt, ...] = (
    DetectionAttempt(pad=0.25, min_detection_confidence=0.5),
    DetectionAttempt(pad=0.5, min_detection_confidence=0.2),
)


class FaceLandmarker:
    """478 MediaPipe FaceMesh landmarks of the most prominent face in an RGB image.

    Args:
        min_side: images whose short side is below this are upsampled (bilinear) to it before
            detection; 192 px is the input size of the FaceMesh landmark model.
        attempts: detection tries, in order, until one finds a face (see ``DEFAULT_ATTEMPTS``).
        min_tracking_confidence: unused in static mode, kept at MediaPipe's default.

    One instance holds one FaceMesh graph per distinct detector confidence; create one per process
    (it is not safe to share between threads) and reuse it. Use ``close()`` or a ``with`` block to
    free the graphs.
    MediaPipe's C++ INFO/WARNING log lines are kept out of stderr (:func:`quiet_native_logs`).
    """

    def __init__(
        self,
        min_side: int = 192,
        attempts: tuple[DetectionAttempt, ...] = DEFAULT_ATTEMPTS,
    ) -> None:
        if min_side < 1:
            raise ValueError(f"min_side must be positive, got {min_side}")
        if not attempts:
            raise ValueError("attempts must not be empty")
        self.min_side = int(min_side)
        self.attempts = tuple(attempts)
        self._meshes: dict[float, object] = {}

    def _mesh(self, confidence: float):
        mesh = self._meshes.get(confidence)
        if mesh is None:
            from mediapipe.python.solutions import face_mesh

            mesh = open_graph_quietly(lambda: face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=confidence,
            ))
            self._meshes[confidence] = mesh
        return mesh

    def detect(self, image_rgb: np.ndarray) -> np.ndarray | None:
        """Landmarks of one face.

        Args:
            image_rgb: uint8 [H, W, 3] RGB image (any size).

        Returns:
            float32 [478, 3]: x, y in continuous pixel coordinates of ``image_rgb`` (x right, y
            down, the image spans [0, W] x [0, H]: MediaPipe's normalised coordinates times the image
            size); z in the same pixel scale, relative to the head centre, MediaPipe's sign
            (smaller z = closer to the camera). ``None`` when no face is found.

        Raises:
            ValueError: when ``image_rgb`` is not a uint8 [H, W, 3] array.
        """
        if not (isinstance(image_rgb, np.ndarray) and image_rgb.dtype == np.uint8 and image_rgb.ndim == 3
                and image_rgb.shape[2] == 3):
            shape = getattr(image_rgb, "shape", None)
            dtype = getattr(image_rgb, "dtype", type(image_rgb).__name__)
            raise ValueError(f"detect expects a uint8 [H,W,3] RGB array, got shape {shape} dtype {dtype}")
        h, w = image_rgb.shape[:2]
        scale = max(1.0, self.min_side / min(h, w))
        if scale > 1.0:
            work = cv2.resize(image_rgb, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_LINEAR)
        else:
            work = image_rgb
        sx = work.shape[1] / w
        sy = work.shape[0] / h
        short = min(work.shape[:2])
        for attempt in self.attempts:
            border = int(round(attempt.pad * short))
            padded = work
            if border > 0:
                padded = cv2.copyMakeBorder(work, border, border, border, border, cv2.BORDER_CONSTANT, value=0)
            mesh = self._mesh(attempt.min_detection_confidence)
            with warnings.catch_warnings(), quiet_native_logs():
                # mediapipe 0.10 calls a protobuf API deprecated in protobuf >= 4.21 on every image.
                warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
                result = mesh.process(np.ascontiguousarray(padded))
            faces = result.multi_face_landmarks
            if not faces:
                continue
            pw, ph = padded.shape[1], padded.shape[0]
            pts = np.array([(p.x, p.y, p.z) for p in faces[0].landmark], dtype=np.float64)
            if pts.shape != (NUM_LANDMARKS, 3):
                raise RuntimeError(f"FaceMesh returned {pts.shape[0]} landmarks, expected {NUM_LANDMARKS}")
            out = np.empty_like(pts)
            out[:, 0] = (pts[:, 0] * pw - border) / sx
            out[:, 1] = (pts[:, 1] * ph - border) / sy
            # MediaPipe's z uses the x scale of the (padded) image it saw.
            out[:, 2] = pts[:, 2] * pw / sx
            return out.astype(np.float32)
        return None

    def close(self) -> None:
        """Free the MediaPipe graphs (the instance can be used again afterwards; graphs are re-created)."""
        for mesh in self._meshes.values():
            mesh.close()
        self._meshes.clear()

    def __enter__(self) -> FaceLandmarker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def smirk_crop_matrix(landmarks: np.ndarray, out_size: int = 224, scale: float = 1.4) -> np.ndarray:
    """SMIRK's input crop as a 2x3 affine matrix for ``cv2.warpAffine``.

    SMIRK (official ``demo.py`` / ``utils``): the box of all MediaPipe landmarks, ``left, right, top,
    bottom``; ``old_size = (right - left + bottom - top) / 2``; centre = box centre;
    ``size = int(old_size * 1.4)``; the similarity transform mapping the square ``centre +- size/2``
    onto ``[0, out_size - 1]^2`` (scikit-image convention: pixel centres at integers, which is also
    OpenCV's). As SMIRK does, the landmark numbers are used as they are to build the box.

    Args:
        landmarks: float [N, 2+] landmarks in input pixels (``FaceLandmarker.detect`` output).
        out_size: side of the crop in pixels (SMIRK: 224).
        scale: box enlargement (SMIRK: 1.4).

    Returns:
        float64 [2, 3] matrix M for ``cv2.warpAffine(image, M, (out_size, out_size))`` (pixel-centre
        coordinates); use ``apply_affine_continuous`` to move landmarks with it.

    Raises:
        ValueError: on an empty or degenerate landmark set.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] == 0 or pts.shape[1] < 2:
        raise ValueError(f"landmarks must be [N,2+] with N > 0, got {pts.shape}")
    left, top = pts[:, 0].min(), pts[:, 1].min()
    right, bottom = pts[:, 0].max(), pts[:, 1].max()
    old_size = (right - left + bottom - top) / 2.0
    size = int(old_size * scale)
    if size <= 0:
        raise ValueError(f"degenerate landmark box ({right - left:.2f} x {bottom - top:.2f} px)")
    cx, cy = (right + left) / 2.0, (bottom + top) / 2.0
    s = (out_size - 1) / size
    return np.array([[s, 0.0, -s * (cx - size / 2.0)], [0.0, s, -s * (cy - size / 2.0)]], dtype=np.float64)


def apply_affine_continuous(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Move points given in continuous pixel coordinates (image = [0,W] x [0,H]) with a pixel-centre
    affine matrix (OpenCV convention, as returned by ``smirk_crop_matrix``), so that they stay aligned
    with the image warped by ``cv2.warpAffine(image, matrix, ...)``.

    Args:
        matrix: float [2, 3].
        points: float [N, 2+]; extra columns (z) are scaled by the matrix's mean scale.

    Returns:
        float32 [N, same columns]: ``M (p - 0.5) + 0.5`` for x, y; z times ``sqrt(|det A|)``.
    """
    m = np.asarray(matrix, dtype=np.float64)
    p = np.asarray(points, dtype=np.float64)
    out = p.copy()
    xy = p[:, :2] - 0.5
    out[:, :2] = xy @ m[:, :2].T + m[:, 2] + 0.5
    if p.shape[1] > 2:
        out[:, 2:] = p[:, 2:] * np.sqrt(abs(np.linalg.det(m[:, :2])))
    return out.astype(np.float32)
