"""The analysis of one input, frame by frame: faces, landmarks, head pose, AUs, expression, valence/arousal,
then over time: neutral reference, smoothing, EMFACS expression.

One :class:`Analyzer` holds the face detector and the models; :meth:`Analyzer.analyze` takes a path (image,
folder of images, video) and returns a pandas DataFrame with one row per face per frame (py-feat's ``Fex``
is the model for what the table holds) and one row with ``face_detected = False`` for each frame where no
face was found. :meth:`Analyzer.run` does the same for any frame source and returns an
:class:`AnalysisResult` (what the command line writes from).

Frames are streamed: each frame is decoded, its faces detected and cropped, and the frame dropped; the
crops wait in a batch for the models (``batch_size`` faces, across frames). What is kept per face and
frame is a few dozen numbers and the 478 landmarks (in memory, or appended to a file with ``spill_dir``).

Columns (``COLUMNS`` and the functions below give the exact names):

=============================  ==================================================================================
``input``, ``path``            the input as given; the file of the frame (the image in a folder)
``frame``, ``time_s``          0-based frame (image) number; ``frame / fps`` in seconds (0 for images)
``face_detected``              False on the one row of a frame without a face (the other columns empty)
``face_id``                    identity kept across the frames of a video by IoU tracking; in an image, the
                               face's rank by box area (0 = largest); in a folder of images every image's faces
                               are new faces (numbered on from the previous image's), never one track
``face_x0 … face_y1``          box of the 468 mesh landmarks, pixels; ``face_score`` BlazeFace confidence
``pitch``, ``yaw``, ``roll``   head pose, degrees (:func:`if3d.face.pose.head_pose`)
``AU01`` … ``AU43``            AU intensity, 0–5; ``au_source`` says whether geometric or from an AU model;
                               ``AU12_R``/``AU12_L`` unilateral lip corner raise (geometric)
``ear``                        eye aspect ratio (Soukupová & Čech 2016)
``prob_<class>``, ``expression``  class probabilities and the predicted class (of the expression model: the
                               shipped default unless another ``checkpoint`` is given or none is asked for)
``uncertain``                  True when the top class probability is below ``uncertain_below`` (default
                               :data:`UNCERTAIN_BELOW`): the predicted class is then more likely wrong than right
``valence``, ``arousal``       the model's valence/arousal, [−1, 1] nominal (models with VA outputs only)
``<signal>_smooth``            each AU, probability, valence, arousal and pose angle smoothed over time
                               (:mod:`if3d.analyze.smoothing`); ``expression_smooth`` the class of the smoothed
                               probabilities
``emfacs``, ``emfacs_score``,  the EMFACS expression of the smoothed AUs (:mod:`if3d.analyze.emfacs`), its
``emfacs_aus``                 match, and the AUs at level A or more
``x_0 … z_477``                the 478 landmarks (x, y frame pixels; z MediaPipe's depth in the same scale)
=============================  ==================================================================================

With ``checkpoint=None`` (``--no-expression``) the expression, uncertainty and valence/arousal columns are absent.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from if3d.analyze import au_geometry, emfacs
from if3d.analyze.faces import FaceDetector, FaceTracker
from if3d.analyze.smoothing import FILTERS, smooth_track, window_frames
from if3d.analyze.sources import Frame, open_source
from if3d.atomic import TMP_SUFFIX
from if3d.face.landmarks import NUM_LANDMARKS

__all__ = ["AnalysisInterrupted", "AnalysisResult", "Analyzer", "AnalyzerConfig", "analyze_paths", "au_column",
           "landmark_columns"]

NEUTRAL_CHOICES = ("auto", *au_geometry.NEUTRAL_MODES)
#: a face track shorter than this (frames) has no neutral of its own: ``auto`` uses the population reference
MIN_TRACK_FOR_NEUTRAL = 30
#: a face whose top class probability is below this is marked ``uncertain``: with calibrated probabilities
#: (the shipped model's temperature, docs/MODEL_CARD.md) its predicted class is more likely wrong than right
UNCERTAIN_BELOW = 0.5


class AnalysisInterrupted(RuntimeError):
    """The analysis of an input was stopped on request (Ctrl-C); nothing of that input was written."""


def au_column(name: str) -> str:
    """Column name of an AU: ``AU1`` → ``AU01``, ``AU12_R`` → ``AU12_R`` (py-feat / OpenFace spelling)."""
    base, _, side = name.partition("_")
    col = f"AU{int(base[2:]):02d}"
    return f"{col}_{side}" if side else col


def landmark_columns() -> list[str]:
    """``x_0 … x_477, y_0 … y_477, z_0 … z_477``."""
    return [f"{a}_{i}" for a in "xyz" for i in range(NUM_LANDMARKS)]


@dataclass
class AnalyzerConfig:
    """Settings of an analysis (the command line's options).

    Attributes:
        checkpoint: expression model checkpoint; ``"default"`` (the default) is the model that ships with the
            toolkit (``docs/MODEL_CARD.md``); None: no expression, valence or arousal columns.
        uncertain_below: top class probability below which a face is marked ``uncertain``, in [0, 1].
        au_checkpoint: AU-intensity model checkpoint (None: geometric AU estimates).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: autocast of the models (``off``, ``bf16``, ``fp16``; None: the device's default).
        max_faces: faces per frame at most.
        detector: BlazeFace model of the detection score, ``short`` or ``full`` range.
        min_detection_confidence: face detector threshold in [0, 1].
        batch_size: face crops per model batch.
        smoothing: temporal filter (:data:`if3d.analyze.smoothing.FILTERS`).
        smooth_window_s: its window in seconds.
        au_neutral: neutral reference of the geometric AUs (:func:`if3d.analyze.au_geometry.neutral_reference`):
            ``auto`` (``least_expressive`` for face tracks of at least ``MIN_TRACK_FOR_NEUTRAL`` frames, else
            ``population``), ``least_expressive``, ``median``, ``first``, ``population``.
        emfacs_threshold: the match an EMFACS prototype needs.
        skip_unreadable: in a folder, count and skip images that do not decode instead of stopping.
        threads: CPU threads of the models (``torch.set_num_threads``; None: torch's default). On a machine
            shared with other jobs 1 is often faster than more (``benchmarks/RESULTS.md``).
    """

    checkpoint: str | None = "default"
    uncertain_below: float = UNCERTAIN_BELOW
    au_checkpoint: str | None = None
    device: str = "auto"
    amp: str | None = None
    max_faces: int = 4
    detector: str = "short"
    min_detection_confidence: float = 0.5
    batch_size: int = 32
    smoothing: str = "savgol"
    smooth_window_s: float = 0.3
    au_neutral: str = "auto"
    emfacs_threshold: float = 0.8
    skip_unreadable: bool = False
    threads: int | None = None

    def problems(self) -> list[str]:
        """What makes these settings unusable, one sentence each (empty when none)."""
        out = []
        if self.max_faces < 1:
            out.append(f"--max-faces must be >= 1, got {self.max_faces}")
        if self.batch_size < 1:
            out.append(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.smoothing not in FILTERS:
            out.append(f"--smoothing must be one of {', '.join(FILTERS)}, got {self.smoothing!r}")
        if not (np.isfinite(self.smooth_window_s) and self.smooth_window_s >= 0):
            out.append(f"--smooth-window must be a number of seconds >= 0, got {self.smooth_window_s}")
        if self.au_neutral not in NEUTRAL_CHOICES:
            out.append(f"--au-neutral must be one of {', '.join(NEUTRAL_CHOICES)}, got {self.au_neutral!r}")
        if not 0.0 < self.emfacs_threshold <= 1.0:
            out.append(f"--emfacs-threshold must be in (0, 1], got {self.emfacs_threshold}")
        if not 0.0 <= self.min_detection_confidence <= 1.0:
            out.append(f"--min-detection-confidence must be in [0, 1], got {self.min_detection_confidence}")
        if self.detector not in ("short", "full"):
            out.append(f"--detector must be short or full, got {self.detector!r}")
        if not (np.isfinite(self.uncertain_below) and 0.0 <= self.uncertain_below <= 1.0):
            out.append(f"--uncertain-below must be in [0, 1], got {self.uncertain_below}")
        if self.threads is not None and self.threads < 1:
            out.append(f"--threads must be >= 1, got {self.threads}")
        return out


class LandmarkStore:
    """The landmarks of every face row, in memory or appended to a file (``spill_dir``).

    Args:
        spill_dir: folder for a temporary file (removed by :meth:`close`); None: memory.
    """

    def __init__(self, spill_dir: str | os.PathLike | None = None) -> None:
        self.count = 0
        self._chunks: list[np.ndarray] = []
        self._file = None
        self._path: str | None = None
        if spill_dir is not None:
            # named like if3d.atomic's temporaries, so a run killed outright leaves nothing a re-run keeps
            fd, self._path = tempfile.mkstemp(prefix=f".landmarks.{os.getpid()}.", suffix=TMP_SUFFIX, dir=spill_dir)
            self._file = os.fdopen(fd, "wb")

    def append(self, landmarks: np.ndarray) -> int:
        """Store float32 [478, 3]; returns its index."""
        lm = np.ascontiguousarray(landmarks, dtype=np.float32).reshape(NUM_LANDMARKS, 3)
        if self._file is not None:
            self._file.write(lm.tobytes())
        else:
            self._chunks.append(lm)
        self.count += 1
        return self.count - 1

    def array(self) -> np.ndarray:
        """float32 [count, 478, 3] (a read-only memory map when spilled)."""
        if self._file is not None:
            self._file.flush()
            if self.count == 0:
                return np.zeros((0, NUM_LANDMARKS, 3), np.float32)
            return np.memmap(self._path, dtype=np.float32, mode="r", shape=(self.count, NUM_LANDMARKS, 3))
        return np.stack(self._chunks) if self._chunks else np.zeros((0, NUM_LANDMARKS, 3), np.float32)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            if self._path and os.path.exists(self._path):
                os.unlink(self._path)


@dataclass
class AnalysisResult:
    """The analysis of one input.

    Attributes:
        name: the input as given.
        kind: ``image``, ``folder``, ``video`` or ``webcam``.
        fps: frames per second (0 for images).
        table: one row per face per frame (and per frame without a face), every column but the landmarks.
        landmarks: the landmarks of the face rows (:class:`LandmarkStore`); ``table["landmark_row"]`` indexes it
            (-1 on rows without a face).
        class_names: the expression model's classes ([] without one).
        aus: AU columns in order (``AU01`` …).
        frames: frames analysed; ``frames_without_face``: of which no face was found.
        skipped: ``(file, problem)`` of images left out (``skip_unreadable``).
        notes: what the user should know (assumed fps, truncated video …), one sentence each.
        timings: seconds spent per stage (``decode``, ``faces``, ``models``, ``total``).
    """

    name: str
    kind: str
    fps: float
    table: pd.DataFrame
    landmarks: LandmarkStore
    class_names: list[str]
    aus: list[str]
    frames: int
    frames_without_face: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    size: tuple[int, int] | None = None

    def frame(self, landmark_columns_: bool = True) -> pd.DataFrame:
        """The results as one DataFrame (landmark columns ``x_0 … z_477`` appended when asked)."""
        df = self.table.drop(columns=["landmark_row"])
        if not landmark_columns_:
            return df
        return pd.concat([df, self.landmark_frame()], axis=1)

    def landmark_frame(self, rows: slice | None = None) -> pd.DataFrame:
        """The landmark columns of the table's rows (NaN on rows without a face)."""
        idx = self.table["landmark_row"].to_numpy()
        idx = idx[rows] if rows is not None else idx
        lm = self.landmarks.array()
        out = np.full((len(idx), NUM_LANDMARKS * 3), np.nan, dtype=np.float32)
        has = idx >= 0
        if has.any():
            out[has] = np.asarray(lm[idx[has]]).transpose(0, 2, 1).reshape(int(has.sum()), -1)
        index = self.table.index[rows] if rows is not None else self.table.index
        return pd.DataFrame(out, columns=landmark_columns(), index=index)

    def main_face(self) -> int | None:
        """The face id with the most frames (the one the timing diagram shows), or None."""
        faces = self.table.loc[self.table["face_detected"], "face_id"]
        return None if faces.empty else int(faces.value_counts().idxmax())

    def close(self) -> None:
        self.landmarks.close()


class Analyzer:
    """Faces, landmarks, pose, AUs, expression and valence/arousal of images and videos (module docstring).

    Args:
        config: :class:`AnalyzerConfig` (or pass its fields as keywords).

    Raises:
        ValueError: bad settings (the message lists them).
        if3d.analyze.models.ModelLoadError: a checkpoint that does not load or does not fit.
    """

    def __init__(self, config: AnalyzerConfig | None = None, **kwargs) -> None:
        from if3d.analyze.models import AUModel, ExpressionModel, resolve_device

        self.config = config or AnalyzerConfig(**kwargs)
        problems = self.config.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.device = resolve_device(self.config.device)
        if self.config.threads is not None:
            import torch

            torch.set_num_threads(self.config.threads)
        self.expression = ExpressionModel(self.config.checkpoint, self.device, self.config.amp) \
            if self.config.checkpoint else None
        self.au_model = AUModel(self.config.au_checkpoint, self.device, self.config.amp) \
            if self.config.au_checkpoint else None

    def close(self) -> None:
        """Free the models' render contexts."""
        for m in (self.expression, self.au_model):
            if m is not None:
                m.close()

    def __enter__(self) -> Analyzer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------ public API

    def analyze(self, path: str | os.PathLike, landmarks: bool = True, progress: bool = False) -> pd.DataFrame:
        """Analyse an image, a folder of images or a video.

        Args:
            path: the input.
            landmarks: include the landmark columns ``x_0 … z_477``.
            progress: show a progress bar.

        Returns:
            The results table (module docstring): one row per face per frame.

        Raises:
            if3d.analyze.sources.InputError: an input that cannot be read (the message names it).
        """
        source = open_source(path, skip_unreadable=self.config.skip_unreadable)
        result = self.run(source, str(path), progress=progress)
        try:
            return result.frame(landmarks)
        finally:
            result.close()

    def run(self, source, name: str, *, spill_dir: str | os.PathLike | None = None, progress: bool = False,
            should_stop: Callable[[], bool] | None = None) -> AnalysisResult:
        """Analyse every frame of a source (:mod:`if3d.analyze.sources`).

        Args:
            source: a ``VideoSource``, ``ImageFolderSource`` or ``CameraSource``.
            name: the input's name in the ``input`` column.
            spill_dir: keep the landmarks in a temporary file there instead of memory.
            progress: show a progress bar with frames/s.
            should_stop: called after every frame; True stops the analysis (a camera's recording ends
                there and is analysed; any other source raises :class:`AnalysisInterrupted`).

        Raises:
            AnalysisInterrupted: stopped on request (not for cameras).
            if3d.analyze.sources.InputError: an unreadable image (without ``skip_unreadable``).
        """
        video = source.kind in ("video", "webcam")
        fps = float(getattr(source, "fps", 0.0)) if video else 0.0
        acc = _Accumulator(self, name, video, spill_dir)
        t_start = time.perf_counter()
        detector = FaceDetector(max_faces=self.config.max_faces, video=video, detector=self.config.detector,
                                min_detection_confidence=self.config.min_detection_confidence)
        bar = None
        if progress:
            from tqdm import tqdm

            total = getattr(source, "frame_count", None) or len(getattr(source, "files", [])) or None
            bar = tqdm(total=total if total and total > 0 else None, desc=Path(name).name or name, unit="frame",
                       dynamic_ncols=True, mininterval=0.5, leave=False)
        frames = iter(source)
        try:
            while True:
                t0 = time.perf_counter()
                frame = next(frames, None)
                acc.timings["decode"] += time.perf_counter() - t0
                if frame is None:
                    break
                acc.add_frame(frame, detector)
                if bar is not None:
                    bar.update(1)
                if should_stop is not None and should_stop():
                    if source.kind == "webcam":
                        break  # the recording ends here and is analysed
                    raise AnalysisInterrupted(f"{name}: stopped at frame {frame.index + 1}")
            acc.flush()
        except BaseException:
            acc.landmarks.close()
            raise
        finally:
            if hasattr(frames, "close"):
                frames.close()  # a generator left early (a camera's stop) releases its capture now
            detector.close()
            if bar is not None:
                bar.close()
        result = acc.finish(source, fps)
        result.timings["total"] = time.perf_counter() - t_start
        return result


class _Accumulator:
    """Rows of one input as they come, the pending model batch, and the final table."""

    def __init__(self, analyzer: Analyzer, name: str, video: bool, spill_dir) -> None:
        self.a = analyzer
        self.cfg = analyzer.config
        self.name = name
        self.video = video
        self.tracker = FaceTracker() if video else None
        self.landmarks = LandmarkStore(spill_dir)
        self.rows: list[dict] = []
        self.features: list[np.ndarray] = []  # per face row
        self.face_rows: list[int] = []
        self.next_face_id = 0  # images: every face of every image is a face of its own
        self.pending: list[tuple[int, dict]] = []
        self.outputs: dict[str, dict[int, np.ndarray]] = {}
        self.frames = 0
        self.no_face = 0
        self.size: tuple[int, int] | None = None
        self.timings = {"decode": 0.0, "faces": 0.0, "models": 0.0}

    def add_frame(self, frame: Frame, detector: FaceDetector) -> None:
        from if3d.face.pose import head_pose

        self.frames += 1
        self.size = (frame.image.shape[1], frame.image.shape[0])
        t0 = time.perf_counter()
        faces = detector.detect(frame.image)
        base = {"input": self.name, "path": frame.path, "frame": frame.index, "time_s": frame.time_s}
        if not faces:
            self.no_face += 1
            self.rows.append({**base, "face_detected": False, "landmark_row": -1})
            self.timings["faces"] += time.perf_counter() - t0
            return
        boxes = np.stack([f.box for f in faces])
        if self.tracker is not None:
            ids = self.tracker.update(boxes)
        else:
            ids = list(range(self.next_face_id, self.next_face_id + len(faces)))
            self.next_face_id += len(faces)
        for face, fid in zip(faces, ids):
            pose = head_pose(face.landmarks)
            pitch, yaw, roll = (float(v) for v in pose["euler_deg"])
            row = {**base, "face_detected": True, "face_id": int(fid),
                   "face_x0": float(face.box[0]), "face_y0": float(face.box[1]),
                   "face_x1": float(face.box[2]), "face_y1": float(face.box[3]), "face_score": face.score,
                   "pitch": pitch, "yaw": yaw, "roll": roll, "landmark_row": self.landmarks.append(face.landmarks)}
            idx = len(self.rows)
            self.rows.append(row)
            self.face_rows.append(idx)
            self.features.append(au_geometry.geometric_features(face.landmarks[None], pose["rotation"][None])[0])
            crops = {}
            for key, model in (("expression", self.a.expression), ("au", self.a.au_model)):
                if model is not None:
                    crops[key] = model.crops(frame.image, face.landmarks)
            if crops:
                self.pending.append((idx, crops))
        self.timings["faces"] += time.perf_counter() - t0
        if len(self.pending) >= self.cfg.batch_size:
            self.flush()

    def flush(self) -> None:
        """Run the models on the pending crops."""
        if not self.pending:
            return
        t0 = time.perf_counter()
        rows = [r for r, _ in self.pending]
        for key, model in (("expression", self.a.expression), ("au", self.a.au_model)):
            if model is None:
                continue
            photos = np.stack([c[key][0] for _, c in self.pending])
            renders = np.stack([c[key][1] for _, c in self.pending]) if model.needs_render else None
            for out_key, values in model.predict(photos, renders).items():
                store = self.outputs.setdefault(out_key, {})
                for r, v in zip(rows, values):
                    store[r] = v
        self.pending.clear()
        self.timings["models"] += time.perf_counter() - t0

    # ------------------------------------------------------------------------------ over time

    def finish(self, source, fps: float) -> AnalysisResult:
        cfg = self.cfg
        table = pd.DataFrame(self.rows)
        n = len(table)
        table["face_detected"] = table["face_detected"].astype(bool)
        table["face_id"] = table["face_id"].astype("Int64") if "face_id" in table else \
            pd.array([pd.NA] * n, dtype="Int64")
        for col in ("face_x0", "face_y0", "face_x1", "face_y1", "face_score", "pitch", "yaw", "roll"):
            if col not in table:
                table[col] = np.nan
        face = np.asarray(self.face_rows, dtype=np.int64)
        feats = np.stack(self.features) if self.features else np.zeros((0, len(au_geometry.FEATURES)))
        tracks = self._tracks(table, face)
        class_names = list(self.a.expression.class_names) if self.a.expression is not None else []
        window = window_frames(cfg.smooth_window_s, fps) if fps > 0 else 1

        # AUs: an AU model's, or geometric (AU43 always geometric: the closed-eye detector)
        aus = self._geometric_aus(feats, tracks, fps)
        au_source = "geometric"
        if self.a.au_model is not None:
            model_au = self._gather("au", face, len(self.a.au_model.aus))
            aus = {**{k: v for k, v in aus.items() if k == "AU43"},
                   **{name: model_au[:, j] for j, name in enumerate(self.a.au_model.aus)}}
            au_source = f"model {Path(self.a.au_model.path).name}; AU43 geometric"
        au_names = sorted(aus, key=lambda k: (int(k.split("_")[0][2:]), k))
        signals: dict[str, np.ndarray] = {au_column(k): aus[k] for k in au_names}
        signals["ear"] = feats[:, au_geometry.FEATURES.index("ear")] if len(feats) else np.zeros(0)
        if class_names:
            probs = self._gather("probabilities", face, len(class_names))
            for j, c in enumerate(class_names):
                signals[f"prob_{c}"] = probs[:, j]
            if self.a.expression.has_va:
                signals["valence"] = self._gather("valence", face, None)
                signals["arousal"] = self._gather("arousal", face, None)
        for k in ("pitch", "yaw", "roll"):
            signals[k] = table[k].to_numpy(dtype=np.float64)[face] if len(face) else np.zeros(0)

        smooth_keys = [k for k in signals if k != "ear"]
        smoothed = self._smooth({k: signals[k] for k in smooth_keys}, tracks, table, face, window)
        for name in au_names:  # a smoothing filter may overshoot the scale's ends
            smoothed[au_column(name)] = np.clip(smoothed[au_column(name)], 0.0, 5.0)

        cols: dict[str, np.ndarray] = {}
        for k, v in signals.items():
            if k in ("pitch", "yaw", "roll"):
                continue
            cols[k] = v
        if class_names:
            p = np.stack([signals[f"prob_{c}"] for c in class_names], 1)
            ps = np.clip(np.stack([smoothed[f"prob_{c}"] for c in class_names], 1), 0.0, None)
            ps = ps / np.where(ps.sum(1, keepdims=True) > 0, ps.sum(1, keepdims=True), 1.0)
            for j, c in enumerate(class_names):
                smoothed[f"prob_{c}"] = ps[:, j]
            cols["expression"] = np.array([class_names[i] for i in p.argmax(1)], dtype=object) if len(p) \
                else np.zeros(0, dtype=object)
            cols["uncertain"] = np.array([bool(v) for v in p.max(1) < cfg.uncertain_below], dtype=object) \
                if len(p) else np.zeros(0, dtype=object)
            cols["expression_smooth"] = np.array([class_names[i] for i in ps.argmax(1)], dtype=object) \
                if len(ps) else np.zeros(0, dtype=object)
        for k in smooth_keys:
            cols[f"{k}_smooth"] = smoothed[k]
        smooth_aus = {name: smoothed[au_column(name)] for name in au_names}
        labels, scores, active, _ = emfacs.emfacs_expressions(smooth_aus, cfg.emfacs_threshold) if len(face) else \
            (np.zeros(0, object), np.zeros(0), np.zeros(0, object), {})
        cols["emfacs"], cols["emfacs_score"], cols["emfacs_aus"] = labels, scores, active

        for k, v in cols.items():
            full = pd.Series([None] * n, dtype=object) if v.dtype == object else np.full(n, np.nan)
            if isinstance(full, pd.Series):
                full.iloc[face] = list(v)
                table[k] = full.to_numpy()
            else:
                full[face] = v
                table[k] = full
        table["au_source"] = np.where(table["face_detected"].to_numpy(bool), au_source, "")
        table = table[_ordered_columns(table.columns, class_names, [au_column(k) for k in au_names])]
        table = table.sort_values(["frame", "face_id"], kind="stable", na_position="first").reset_index(drop=True)
        notes = []
        if getattr(source, "fps_assumed", False):
            notes.append(f"{self.name}: the video gives no frame rate; {fps:g} frames/s assumed")
        if getattr(source, "truncated", False):
            notes.append(f"{self.name}: the video ended after {source.decoded} of the {source.frame_count} frames its "
                         "header announces (a truncated or damaged file); the decoded frames were analysed")
        skipped = list(getattr(source, "skipped", []))
        kind = source.kind
        return AnalysisResult(name=self.name, kind=kind, fps=fps, table=table, landmarks=self.landmarks,
                              class_names=class_names, aus=[au_column(k) for k in au_names], frames=self.frames,
                              frames_without_face=self.no_face, skipped=skipped, notes=notes,
                              timings=dict(self.timings), size=self.size)

    def _tracks(self, table: pd.DataFrame, face: np.ndarray) -> dict[int, np.ndarray]:
        """face id → positions (into the face rows) in frame order; in images every face is its own track."""
        if not len(face):
            return {}
        if not self.video:
            return {i: np.array([i]) for i in range(len(face))}
        ids = table["face_id"].to_numpy()[face].astype(np.int64)
        return {int(t): np.flatnonzero(ids == t) for t in np.unique(ids)}

    def _geometric_aus(self, feats: np.ndarray, tracks: dict[int, np.ndarray], fps: float) -> dict[str, np.ndarray]:
        names = [a.name for a in au_geometry.GEOMETRIC_AUS] + ["AU12_R", "AU12_L"]
        out = {k: np.full(len(feats), np.nan) for k in names}
        mode = self.cfg.au_neutral
        first = max(1, int(round(0.5 * fps))) if fps > 0 else 15
        for pos in tracks.values():
            m = mode
            if m == "auto":
                m = "least_expressive" if self.video and len(pos) >= MIN_TRACK_FOR_NEUTRAL else "population"
            neutral = au_geometry.neutral_reference(feats[pos], m, first=first)
            for k, v in au_geometry.geometric_au_intensities(feats[pos], neutral).items():
                out[k][pos] = v
        return out

    def _gather(self, key: str, face: np.ndarray, width: int | None) -> np.ndarray:
        store = self.outputs.get(key, {})
        shape = (len(face),) if width is None else (len(face), width)
        out = np.full(shape, np.nan)
        for i, r in enumerate(face):
            if r in store:
                out[i] = store[r]
        return out

    def _smooth(self, signals: dict[str, np.ndarray], tracks, table, face, window: int) -> dict[str, np.ndarray]:
        keys = list(signals)
        if not keys or not len(face):
            return {k: np.asarray(v, dtype=np.float64).copy() for k, v in signals.items()}
        values = np.stack([signals[k] for k in keys], 1).astype(np.float64)
        if not self.video or window < 3 or self.cfg.smoothing == "none":
            return {k: values[:, j].copy() for j, k in enumerate(keys)}
        out = np.full_like(values, np.nan)
        frames = table["frame"].to_numpy()[face]
        for pos in tracks.values():
            out[pos] = smooth_track(values[pos], frames[pos], window, self.cfg.smoothing)
        return {k: out[:, j] for j, k in enumerate(keys)}


def _ordered_columns(columns: Iterable[str], class_names: list[str], aus: list[str]) -> list[str]:
    head = ["input", "path", "frame", "time_s", "face_detected", "face_id", "face_x0", "face_y0", "face_x1", "face_y1",
            "face_score", "pitch", "yaw", "roll"]
    expr = [*(f"prob_{c}" for c in class_names), "expression", "uncertain", "valence", "arousal"]
    au = [*aus, "au_source", "ear"]
    smooth = [*(f"prob_{c}_smooth" for c in class_names), "expression_smooth", "valence_smooth", "arousal_smooth",
              *(f"{a}_smooth" for a in aus), "pitch_smooth", "yaw_smooth", "roll_smooth"]
    tail = ["emfacs", "emfacs_score", "emfacs_aus", "landmark_row"]
    cols = list(columns)
    order = [c for c in (*head, *expr, *au, *smooth, *tail) if c in cols]
    return order + [c for c in cols if c not in order]


def analyze_paths(paths: Iterable[str | os.PathLike], **kwargs) -> pd.DataFrame:
    """Analyse several inputs with one :class:`Analyzer` and concatenate the tables."""
    with Analyzer(**kwargs) as analyzer:
        return pd.concat([analyzer.analyze(p) for p in paths], ignore_index=True)

