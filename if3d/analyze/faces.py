"""Faces of a frame: detection score, 478 3D landmarks, a box, and an identity kept across frames.

Two MediaPipe models that ship inside the ``mediapipe`` wheel (offline):

- **Landmarks**: the legacy FaceMesh solution with attention refinement (Kartynnik et al., "Real-time
  Facial Surface Geometry from Monocular Video on Mobile GPUs", CVPR-W 2019; iris: Grishchenko et al.
  2020), up to ``max_faces`` faces per frame. For a video it runs in tracking mode
  (``static_image_mode=False``: the face detector runs only while fewer than ``max_faces`` faces are
  tracked, and each face's landmarks seed the next frame), for unrelated images in static mode.
- **Detection score**: BlazeFace (Bazarevsky et al., "BlazeFace: Sub-millisecond Neural Face Detection
  on Mobile GPUs", CVPR-W 2019), MediaPipe's ``FaceDetection`` (short-range model by default, the
  full-range one with ``detector="full"``). FaceMesh does not report a confidence, so each FaceMesh face
  takes the score of the BlazeFace box it overlaps most (IoU ≥ 0.2); a face that FaceMesh keeps tracking
  while BlazeFace misses it gets NaN.

The **face box** is the bounding box of the 468 mesh landmarks (x, y in frame pixels; continuous
coordinates, the frame spans [0, W] × [0, H]): defined for every face, consistent between frames.

Small frames are upsampled so that the short side is at least ``min_side`` (192 px, FaceMesh's input),
and images in static mode get a black border (a quarter of the short side) so a tightly cropped face
does not fill the whole frame, as :class:`if3d.face.landmarks.FaceLandmarker` does; landmarks are
mapped back to the frame's pixels.

**Identity across frames** (:class:`FaceTracker`): the boxes of a frame are matched to the tracks of the
previous frames by intersection over union (Hungarian assignment, ``scipy.optimize.linear_sum_assignment``,
IoU ≥ ``min_iou``); unmatched boxes start new tracks (ids 0, 1, 2 … in order of appearance) and a track
unseen for more than ``max_missed`` frames ends.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import cv2
import numpy as np

from if3d.face.landmarks import NUM_LANDMARKS, open_graph_quietly, quiet_native_logs
from if3d.face.topology import NUM_MESH_VERTICES

__all__ = ["DETECTORS", "DetectedFace", "FaceDetector", "FaceTracker", "box_iou", "landmark_box"]

#: ``FaceDetection`` model per ``detector`` name: short range (faces within ~2 m, selfie and webcam
#: distance) or full range (smaller faces farther away).
DETECTORS = {"short": 0, "full": 1}


@dataclass
class DetectedFace:
    """One face of one frame.

    Attributes:
        landmarks: float32 [478, 3]: x, y in frame pixels (continuous coordinates); z in the same pixel
            scale, relative to the head centre, MediaPipe's sign (smaller = closer to the camera).
        box: float32 [4] ``(x0, y0, x1, y1)`` bounding box of the 468 mesh landmarks, frame pixels.
        score: BlazeFace detection confidence in [0, 1]; NaN when no detection box matched this face.
    """

    landmarks: np.ndarray
    box: np.ndarray
    score: float


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """float32 [4] ``(x0, y0, x1, y1)``: the bounding box of the 468 mesh landmarks (x, y columns)."""
    pts = np.asarray(landmarks, dtype=np.float32)[:NUM_MESH_VERTICES, :2]
    return np.concatenate([pts.min(0), pts.max(0)]).astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of two sets of boxes.

    Args:
        a: [N, 4], b: [M, 4] boxes ``(x0, y0, x1, y1)``.

    Returns:
        float64 [N, M] IoU in [0, 1] (0 for empty boxes).
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


class FaceDetector:
    """Landmarks, box and detection score of every face in a frame (see the module docstring).

    Args:
        max_faces: faces per frame at most (FaceMesh's ``max_num_faces``).
        video: tracking mode for the frames of one video (call :meth:`reset` between videos); False:
            every frame is an unrelated image (static mode, with a second, more lenient try when the
            first finds nothing).
        min_detection_confidence: BlazeFace threshold of FaceMesh's detector and of the score model.
        detector: ``"short"`` or ``"full"`` range BlazeFace for the scores (:data:`DETECTORS`).
        min_side: short side in pixels below which frames are upsampled (bilinear).

    One instance holds MediaPipe graphs; create one per process and thread, reuse it, :meth:`close` it.

    Raises:
        ValueError: ``max_faces`` < 1, an unknown ``detector``, a confidence outside [0, 1].
    """

    def __init__(self, max_faces: int = 4, video: bool = True, min_detection_confidence: float = 0.5,
                 detector: str = "short", min_side: int = 192) -> None:
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        if detector not in DETECTORS:
            raise ValueError(f"unknown face detector {detector!r}; choose one of {', '.join(DETECTORS)}")
        if not 0.0 <= min_detection_confidence <= 1.0:
            raise ValueError(f"min_detection_confidence must be in [0, 1], got {min_detection_confidence}")
        self.max_faces = int(max_faces)
        self.video = bool(video)
        self.confidence = float(min_detection_confidence)
        self.detector = detector
        self.min_side = int(min_side)
        self._mesh = None
        self._lenient_mesh = None
        self._scorer = None

    # ------------------------------------------------------------------------------ graphs

    def _make_mesh(self, static: bool, confidence: float):
        from mediapipe.python.solutions import face_mesh

        return open_graph_quietly(lambda: face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=self.max_faces, refine_landmarks=True,
            min_detection_confidence=confidence, min_tracking_confidence=0.5))

    def _graphs(self):
        if self._mesh is None:
            from mediapipe.python.solutions import face_detection

            self._mesh = self._make_mesh(not self.video, self.confidence)
            self._scorer = open_graph_quietly(lambda: face_detection.FaceDetection(
                model_selection=DETECTORS[self.detector], min_detection_confidence=min(self.confidence, 0.3)))
        return self._mesh, self._scorer

    def reset(self) -> None:
        """Forget the tracked faces (call between videos in tracking mode)."""
        if self._mesh is not None:
            self._mesh.close()
            self._mesh = None
        if self._scorer is not None:
            self._scorer.close()
            self._scorer = None

    def close(self) -> None:
        """Free the MediaPipe graphs (the detector can be used again afterwards)."""
        self.reset()
        if self._lenient_mesh is not None:
            self._lenient_mesh.close()
            self._lenient_mesh = None

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ detection

    def detect(self, image_rgb: np.ndarray) -> list[DetectedFace]:
        """The faces of one frame, largest box first.

        Args:
            image_rgb: uint8 [H, W, 3] RGB frame.

        Returns:
            Up to ``max_faces`` :class:`DetectedFace`; empty when no face is found.

        Raises:
            ValueError: ``image_rgb`` is not a uint8 [H, W, 3] array.
        """
        if not (isinstance(image_rgb, np.ndarray) and image_rgb.dtype == np.uint8 and image_rgb.ndim == 3
                and image_rgb.shape[2] == 3 and min(image_rgb.shape[:2]) > 0):
            raise ValueError(f"detect expects a uint8 [H,W,3] RGB array, got shape {getattr(image_rgb, 'shape', None)} "
                             f"dtype {getattr(image_rgb, 'dtype', type(image_rgb).__name__)}")
        mesh, scorer = self._graphs()
        work, scale, border = self._prepare(image_rgb, pad=0.0 if self.video else 0.25)
        faces = self._run(mesh, work)
        if not faces and not self.video:
            # a second, more lenient try for a single image: wider border, lower detector threshold
            if self._lenient_mesh is None:
                self._lenient_mesh = self._make_mesh(True, min(0.2, self.confidence))
            work, scale, border = self._prepare(image_rgb, pad=0.5)
            faces = self._run(self._lenient_mesh, work)
        if not faces:
            return []
        boxes_work = self._scores(scorer, work)
        out = []
        for pts in faces:
            lm = np.empty_like(pts)
            lm[:, 0] = (pts[:, 0] * work.shape[1] - border) / scale[0]
            lm[:, 1] = (pts[:, 1] * work.shape[0] - border) / scale[1]
            lm[:, 2] = pts[:, 2] * work.shape[1] / scale[0]  # FaceMesh's z uses the x scale of its input
            lm = lm.astype(np.float32)
            box = landmark_box(lm)
            score = float("nan")
            if len(boxes_work[0]):
                det = boxes_work[0].copy()
                det[:, [0, 2]] = (det[:, [0, 2]] * work.shape[1] - border) / scale[0]
                det[:, [1, 3]] = (det[:, [1, 3]] * work.shape[0] - border) / scale[1]
                iou = box_iou(box[None], det)[0]
                j = int(iou.argmax())
                if iou[j] >= 0.2:
                    score = float(boxes_work[1][j])
            out.append(DetectedFace(landmarks=lm, box=box, score=score))
        out.sort(key=lambda f: -float((f.box[2] - f.box[0]) * (f.box[3] - f.box[1])))
        return out

    def _prepare(self, image_rgb: np.ndarray, pad: float) -> tuple[np.ndarray, tuple[float, float], int]:
        h, w = image_rgb.shape[:2]
        s = max(1.0, self.min_side / min(h, w))
        work = image_rgb
        if s > 1.0:
            work = cv2.resize(image_rgb, (round(w * s), round(h * s)), interpolation=cv2.INTER_LINEAR)
        scale = (work.shape[1] / w, work.shape[0] / h)
        border = int(round(pad * min(work.shape[:2])))
        if border > 0:
            work = cv2.copyMakeBorder(work, border, border, border, border, cv2.BORDER_CONSTANT, value=0)
        return np.ascontiguousarray(work), scale, border

    @staticmethod
    def _run(mesh, work: np.ndarray) -> list[np.ndarray]:
        with warnings.catch_warnings(), quiet_native_logs():
            # mediapipe 0.10 calls a protobuf API deprecated in protobuf >= 4.21 on every image
            warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
            result = mesh.process(work)
        faces = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64)
            if pts.shape != (NUM_LANDMARKS, 3):
                raise RuntimeError(f"FaceMesh returned {pts.shape[0]} landmarks, expected {NUM_LANDMARKS}")
            faces.append(pts)
        return faces

    @staticmethod
    def _scores(scorer, work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """BlazeFace boxes [K, 4] (relative x0, y0, x1, y1 of ``work``) and scores [K]."""
        with warnings.catch_warnings(), quiet_native_logs():
            warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype", category=UserWarning)
            result = scorer.process(work)
        boxes, scores = [], []
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            boxes.append((b.xmin, b.ymin, b.xmin + b.width, b.ymin + b.height))
            scores.append(det.score[0] if det.score else float("nan"))
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(scores, dtype=np.float64)


class FaceTracker:
    """Face identities across the frames of one video, by IoU matching of boxes.

    Args:
        min_iou: a box continues a track when their IoU is at least this (0.3).
        max_missed: a track not matched for more than this many frames ends (30 ≈ 1 s at 30 fps).

    Call :meth:`update` once per frame, in frame order; ids are 0, 1, 2 … in order of first appearance
    and are never reused within one tracker.
    """

    def __init__(self, min_iou: float = 0.3, max_missed: int = 30) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        self.min_iou = float(min_iou)
        self.max_missed = int(max_missed)
        self._boxes: dict[int, np.ndarray] = {}
        self._missed: dict[int, int] = {}
        self._next = 0

    def update(self, boxes: np.ndarray) -> list[int]:
        """Track ids of this frame's boxes.

        Args:
            boxes: [N, 4] ``(x0, y0, x1, y1)`` of the frame's faces (N may be 0).

        Returns:
            N ids, one per box, in the order of ``boxes``.
        """
        from scipy.optimize import linear_sum_assignment

        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids: list[int | None] = [None] * len(boxes)
        track_ids = list(self._boxes)
        if track_ids and len(boxes):
            iou = box_iou(boxes, np.stack([self._boxes[t] for t in track_ids]))
            rows, cols = linear_sum_assignment(-iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= self.min_iou:
                    ids[r] = track_ids[c]
        for i, tid in enumerate(ids):
            if tid is None:
                tid = self._next
                self._next += 1
                ids[i] = tid
            self._boxes[tid] = boxes[i]
            self._missed[tid] = 0
        seen = set(ids)
        for tid in list(self._boxes):
            if tid not in seen:
                self._missed[tid] += 1
                if self._missed[tid] > self.max_missed:
                    del self._boxes[tid], self._missed[tid]
        return [int(t) for t in ids]
