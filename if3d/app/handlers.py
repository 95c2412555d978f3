"""What the web app does with an uploaded photo or video and with a camera frame, without the web page.

Every handler runs the command line's :class:`if3d.analyze.Analyzer` (one pipeline: detection, landmarks,
pose, AUs, expression model, smoothing) and its writers (:mod:`if3d.analyze.report`, :mod:`.timing`,
:mod:`.annotate`), and returns plain Python values that :mod:`if3d.app.ui` puts on the page. Bad input is an
:class:`AppInputError` whose message is shown on the page as it is: the uploaded file's name (never the
server's temporary path) and the problem.

Limits (:class:`AppOptions`): an upload larger than ``max_upload_mb`` or a video longer than ``max_video_s``
is refused before any analysis (a video whose header gives no length is stopped once it passes the limit).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from if3d.analyze.pipeline import AnalysisInterrupted, AnalysisResult, Analyzer, AnalyzerConfig
from if3d.analyze.sources import Frame, InputError

__all__ = ["AnalyzerPool", "AppInputError", "AppOptions", "FaceReport", "PhotoResult", "VideoResult",
           "WebcamHistory", "analyse_photo", "analyse_video", "webcam_frame"]

#: seconds of the webcam's rolling timing diagram
WEBCAM_WINDOW_S = 10.0
#: a photo smaller than this (pixels, longer side) is drawn enlarged to it
MIN_DRAWN_SIDE = 384


class AppInputError(ValueError):
    """An upload or setting the app cannot analyse; the message is shown on the page."""


@dataclass
class AppOptions:
    """The app's settings (``python -m if3d.app`` options; the page's options override the first three).

    Attributes:
        checkpoint: expression model, ``default`` (the shipped model) or a checkpoint file.
        min_detection_confidence: face detector threshold in [0, 1].
        show_aus: show AU intensities on the page.
        max_upload_mb: largest upload, megabytes (10**6 bytes), > 0.
        max_video_s: longest video, seconds, > 0.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        threads: CPU threads of the models (None: torch's default).
    """

    checkpoint: str = "default"
    min_detection_confidence: float = 0.5
    show_aus: bool = True
    max_upload_mb: float = 50.0
    max_video_s: float = 120.0
    device: str = "auto"
    threads: int | None = None

    def problems(self) -> list[str]:
        """What makes these settings unusable, one sentence each (empty when none)."""
        out = [f"--{k.replace('_', '-')} must be a number > 0, got {v}"
               for k, v in (("max_upload_mb", self.max_upload_mb), ("max_video_s", self.max_video_s))
               if not (math.isfinite(v) and v > 0)]
        return out + self.analyzer_config().problems()

    def analyzer_config(self, checkpoint: str | None = None, confidence: float | None = None) -> AnalyzerConfig:
        """The analysis settings, with the page's checkpoint and detection confidence when given."""
        return AnalyzerConfig(checkpoint=checkpoint or self.checkpoint, device=self.device, threads=self.threads,
                              min_detection_confidence=self.min_detection_confidence if confidence is None
                              else float(confidence))


class AnalyzerPool:
    """The one :class:`Analyzer` the app holds, built again when the page asks for another checkpoint or
    detection confidence (the queue runs one request at a time; a lock guards direct calls too).

    Args:
        options: the app's settings.
    """

    def __init__(self, options: AppOptions) -> None:
        self.options = options
        self._lock = threading.Lock()
        self._analyzer: Analyzer | None = None

    def get(self, checkpoint: str | None = None, confidence: float | None = None) -> Analyzer:
        """The analyzer for these settings.

        Raises:
            AppInputError: the checkpoint does not load or fit, or the settings are out of range.
        """
        from if3d.analyze.models import ModelLoadError

        config = self.options.analyzer_config(checkpoint, confidence)
        with self._lock:
            if self._analyzer is not None and self._analyzer.config == config:
                return self._analyzer
            try:
                analyzer = Analyzer(config)
            except (ModelLoadError, ValueError) as e:
                raise AppInputError(str(e)) from None
            if self._analyzer is not None:
                self._analyzer.close()
            self._analyzer = analyzer
            return analyzer

    def close(self) -> None:
        with self._lock:
            if self._analyzer is not None:
                self._analyzer.close()
                self._analyzer = None


class _ImageSource:
    """One decoded image as an analysis source (an image's ``kind``: faces ranked by size, no tracking)."""

    kind = "image"
    fps = 0.0

    def __init__(self, image: np.ndarray, path: str) -> None:
        self.image, self.path = image, path

    def __iter__(self):
        yield Frame(0, 0.0, self.image, self.path)


def _check_upload(path: str | os.PathLike | None, max_mb: float, what: str) -> Path:
    if path is None or str(path) == "":
        raise AppInputError(f"no {what} was uploaded")
    p = Path(path)
    if not p.is_file():
        raise AppInputError(f"{p.name}: the upload did not arrive; upload it again")
    size_mb = p.stat().st_size / 1e6
    if size_mb > max_mb:
        raise AppInputError(f"{p.name}: {size_mb:.1f} MB is more than the {max_mb:g} MB this app accepts")
    return p


def _own_words(error: Exception, path: Path) -> str:
    """An error's message with the server's temporary path replaced by the uploaded file's name."""
    return str(error).replace(str(path), path.name)


@dataclass
class FaceReport:
    """One face of a photo or frame.

    Attributes:
        face_id: rank by box size (0 = largest).
        box: ``(x0, y0, x1, y1)`` pixels.
        probabilities: class → probability in [0, 1] (empty without an expression model).
        expression: the predicted class ("" without a model); ``uncertain``: top probability below the threshold.
        valence, arousal: in [-1, 1], or None when the model has no such outputs.
        aus: AU column (``AU01`` …) → intensity 0–5.
        pose: ``(pitch, yaw, roll)`` degrees.
    """

    face_id: int
    box: tuple[float, float, float, float]
    probabilities: dict[str, float]
    expression: str
    uncertain: bool
    valence: float | None
    arousal: float | None
    aus: dict[str, float]
    pose: tuple[float, float, float]


def _finite(v) -> float | None:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def face_reports(result: AnalysisResult, frame: int = 0) -> list[FaceReport]:
    """The faces of one frame of an analysis, largest first."""
    t = result.table
    rows = t[(t["frame"] == frame) & t["face_detected"].astype(bool)]
    out = []
    for _, r in rows.iterrows():
        probs = {c: float(r[f"prob_{c}"]) for c in result.class_names}
        out.append(FaceReport(
            face_id=int(r["face_id"]), box=tuple(float(r[k]) for k in ("face_x0", "face_y0", "face_x1", "face_y1")),
            probabilities=probs, expression=str(r["expression"]) if "expression" in r else "",
            uncertain=bool(r["uncertain"]) if "uncertain" in r else False,
            valence=_finite(r.get("valence")), arousal=_finite(r.get("arousal")),
            aus={a: float(r[a]) for a in result.aus if pd.notna(r[a])},
            pose=(float(r["pitch"]), float(r["yaw"]), float(r["roll"]))))
    return sorted(out, key=lambda f: f.face_id)


def _annotated(image_rgb: np.ndarray, result: AnalysisResult) -> np.ndarray:
    """uint8 [H, W, 3] RGB: the frame with each face's box, landmarks and label (the command line's drawing)."""
    import cv2

    from if3d.analyze.annotate import annotate_frame

    t = result.table
    sel = t[t["face_detected"].astype(bool)].copy()
    lm = result.landmarks.array()
    landmarks = np.asarray(lm[sel["landmark_row"].to_numpy()]) if len(sel) else np.zeros((0, 478, 3))
    scale = MIN_DRAWN_SIDE / max(image_rgb.shape[:2])
    if scale > 1:  # a small photo (FER2013's 48 px) is drawn enlarged, so that its label can be read
        image_rgb = cv2.resize(image_rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        sel[["face_x0", "face_y0", "face_x1", "face_y1"]] *= scale
        landmarks = landmarks * scale
    return cv2.cvtColor(annotate_frame(image_rgb, sel, landmarks), cv2.COLOR_BGR2RGB)


@dataclass
class PhotoResult:
    """The analysis of one photo.

    Attributes:
        annotated: uint8 [H, W, 3] RGB, the photo with boxes, landmarks and labels (enlarged to a longer side of
            :data:`MIN_DRAWN_SIDE` pixels when smaller).
        faces: one report per face, largest first (empty when no face was found).
        class_names: the expression model's classes.
        message: one line for the page (faces found, or why none).
    """

    annotated: np.ndarray
    faces: list[FaceReport]
    class_names: list[str]
    message: str


def _analyse_image(analyzer: Analyzer, image: np.ndarray, name: str) -> tuple[np.ndarray, AnalysisResult]:
    result = analyzer.run(_ImageSource(image, name), name)
    try:
        return _annotated(image, result), result
    except BaseException:
        result.close()
        raise


def analyse_photo(path: str | os.PathLike | None, analyzer: Analyzer, options: AppOptions) -> PhotoResult:
    """Analyse an uploaded photo.

    Raises:
        AppInputError: no upload, too large, not an image, or an image that does not decode.
    """
    from if3d.data.images import decode_image
    from if3d.data.layout import IMAGE_EXTENSIONS
    from if3d.data.report import CorruptImageError

    p = _check_upload(path, options.max_upload_mb, "photo")
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise AppInputError(f"{p.name}: not a photo; upload one of {', '.join(sorted(IMAGE_EXTENSIONS))}")
    try:
        image = decode_image(p)
    except CorruptImageError as e:
        raise AppInputError(f"{p.name}: {e.problem or 'not a readable image'}") from None
    annotated, result = _analyse_image(analyzer, image, p.name)
    try:
        faces = face_reports(result)
    finally:
        result.close()
    message = f"{p.name}: {len(faces)} face(s)" if faces else \
        f"{p.name}: no face found (try a lower detection confidence, or a larger, frontal face)"
    return PhotoResult(annotated, faces, list(result.class_names), message)


@dataclass
class VideoResult:
    """The analysis of one video: the files the page shows and offers for download.

    Attributes:
        annotated: the annotated video (VP8 WebM, which browsers play), or None when it could not be written.
        timing: the timing diagram PNG of the main face, or None without a face.
        results_csv: one row per face per frame (the command line's ``results.csv``).
        analysis_json: the settings and the input's record (frames, frames without a face, notes, timings).
        summary: short lines for the page (:func:`if3d.analyze.report.describe`).
    """

    annotated: Path | None
    timing: Path | None
    results_csv: Path
    analysis_json: Path
    summary: str
    notes: list[str] = field(default_factory=list)


class _FrameLimit:
    """Called after every frame (``Analyzer.run``'s ``should_stop``): reports progress, stops past the limit."""

    def __init__(self, max_frames: int, total: int, progress: Callable[[float, str], None] | None) -> None:
        self.max_frames, self.total, self.progress = max_frames, total, progress
        self.frames = 0

    def __call__(self) -> bool:
        self.frames += 1
        if self.progress is not None and (self.frames % 5 == 0 or self.frames == self.total):
            self.progress(min(1.0, self.frames / self.total) if self.total > 0 else 0.0,
                          f"analysing frame {self.frames}" + (f" of {self.total}" if self.total > 0 else ""))
        return self.frames > self.max_frames


def analyse_video(path: str | os.PathLike | None, analyzer: Analyzer, options: AppOptions, work_dir: str | os.PathLike,
                  progress: Callable[[float, str], None] | None = None) -> VideoResult:
    """Analyse an uploaded video into ``work_dir`` (results, timing diagram, annotated video, record).

    Args:
        progress: called with (fraction done in [0, 1], what is being done) as the frames go.

    Raises:
        AppInputError: no upload, too large, too long, or not a video OpenCV decodes.
    """
    from if3d.analyze.annotate import write_annotated_video
    from if3d.analyze.report import describe, summarize, write_results_csv
    from if3d.analyze.sources import VideoSource
    from if3d.analyze.timing import save_timing_diagram
    from if3d.atomic import atomic_write_json

    p = _check_upload(path, options.max_upload_mb, "video")
    try:
        source = VideoSource(p)
    except InputError as e:
        raise AppInputError(_own_words(e, p)) from None
    too_long = f"{p.name}: longer than the {options.max_video_s:g} s this app analyses; cut it shorter"
    if source.frame_count > 0 and source.frame_count / source.fps > options.max_video_s:
        source.close()
        raise AppInputError(f"{too_long} (it lasts {source.frame_count / source.fps:.0f} s)")
    out = Path(work_dir)
    out.mkdir(parents=True, exist_ok=True)
    limit = _FrameLimit(int(math.ceil(options.max_video_s * source.fps)), source.frame_count, progress)
    try:
        result = analyzer.run(source, p.name, spill_dir=out, should_stop=limit)
    except AnalysisInterrupted:
        raise AppInputError(too_long) from None
    except InputError as e:
        raise AppInputError(_own_words(e, p)) from None
    finally:
        source.close()
    try:
        columns = [c for c in result.table.columns if c != "landmark_row"]
        write_results_csv(out / "results.csv", result, columns)
        face = result.main_face()
        timing = annotated = None
        if face is not None:
            timing = out / "timing.png"
            save_timing_diagram(timing, result.table, face, result.aus, result.class_names, result.fps,
                                title=f"{p.name}, face {face}")
        if progress is not None:
            progress(1.0, "writing the annotated video")
        try:
            annotated = out / "annotated.webm"
            write_annotated_video(annotated, p, result, title=f"{p.name}, face {face}", fourcc="VP80")
        except (OSError, InputError) as e:
            annotated = None
            result.notes.append(f"{p.name}: no annotated video ({_own_words(e, p)})")
        record = {"settings": asdict(analyzer.config),
                  "input": {"input": p.name, "kind": result.kind, "frames": result.frames,
                            "frames_without_face": result.frames_without_face, "fps": result.fps,
                            "faces": int(result.table["face_id"].nunique()), "notes": result.notes,
                            "seconds": {k: round(v, 3) for k, v in result.timings.items()}}}
        atomic_write_json(out / "analysis.json", record)
        summary = describe(summarize(result.table, result.fps, result.class_names))
        return VideoResult(annotated, timing, out / "results.csv", out / "analysis.json", summary, list(result.notes))
    finally:
        result.close()


@dataclass
class WebcamHistory:
    """The camera's recent frames (one page's stream): the main face's row of each, and when it came.

    Attributes:
        window_s: seconds kept.
        rows: ``(time in s, the face's table row or None)``, oldest first.
    """

    window_s: float = WEBCAM_WINDOW_S
    rows: deque = field(default_factory=deque)

    def add(self, t: float, row: pd.Series | None) -> None:
        self.rows.append((t, row))
        while self.rows and t - self.rows[0][0] > self.window_s:
            self.rows.popleft()

    def table(self) -> tuple[pd.DataFrame, float]:
        """The kept rows as an analysis table (``frame``, ``time_s`` from the oldest) and their frame rate."""
        times = np.array([t for t, _ in self.rows])
        dt = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
        fps = 1.0 / dt if dt > 0 else 1.0
        rows = []
        for t, row in self.rows:
            base = {"frame": int(round((t - times[0]) * fps)), "time_s": t - times[0]}
            rows.append({**row.to_dict(), **base} if row is not None else {**base, "face_detected": False})
        return pd.DataFrame(rows), fps


def _figure_rgb(fig) -> np.ndarray:
    import matplotlib.pyplot as plt

    try:
        fig.canvas.draw()
        return np.ascontiguousarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    finally:
        plt.close(fig)


def webcam_frame(image: np.ndarray | None, analyzer: Analyzer, history: WebcamHistory, show_aus: bool = True,
                 now: float | None = None) -> tuple[np.ndarray | None, list[FaceReport], np.ndarray | None, str]:
    """Analyse one camera frame and add its main face to the rolling history.

    Args:
        image: uint8 [H, W, 3] RGB frame (None: the camera gave nothing yet).
        now: the frame's time in seconds (default: the clock).

    Returns:
        ``(annotated frame uint8 [H, W, 3] RGB, faces, rolling timing diagram uint8 [h, w, 3] RGB or None,
        one line for the page)``.
    """
    from if3d.analyze.timing import timing_figure

    if image is None:
        return None, [], None, "waiting for the camera"
    image = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    annotated, result = _analyse_image(analyzer, image, "webcam")
    try:
        faces = face_reports(result)
        t = result.table
        rows = t[t["face_detected"].astype(bool) & (t["face_id"] == 0)]
        history.add(time.monotonic() if now is None else now, rows.iloc[0] if len(rows) else None)
        aus, class_names = list(result.aus), list(result.class_names)
    finally:
        result.close()
    table, fps = history.table()
    diagram = None
    if "face_id" in table and table["face_detected"].astype(bool).sum() >= 2:
        fig, _ = timing_figure(table, 0, aus if show_aus else [], class_names, fps,
                               title=f"camera, last {history.window_s:g} s", size_px=(720, 480), dpi=72)
        diagram = _figure_rgb(fig)
    line = f"{faces[0].expression} {faces[0].probabilities.get(faces[0].expression, 0):.2f}" if faces and \
        faces[0].expression else ("face found" if faces else "no face in view")
    return annotated, faces, diagram, line

