"""Annotated frames: each face's box, landmarks, expression label and valence/arousal drawn on the frame;
for videos merged side by side with the timing diagram and its moving cursor.

The annotated video is a second pass over the input (the timing diagram needs the whole, smoothed time
course): frames are decoded again one at a time, drawn, and written with OpenCV's FFmpeg writer (MPEG-4
Part 2, ``mp4v``, at the input's frame rate; a browser plays neither it nor OpenCV-written H.264, so the web
app asks for VP8 in WebM, ``fourcc="VP80"``), one output frame per input frame. It is written to a temporary
name and moved into place when complete (:func:`if3d.atomic.atomic_write`), so an interrupted run never
leaves a partial video under the final name.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from if3d.analyze.pipeline import AnalysisResult
from if3d.analyze.sources import VideoSource
from if3d.analyze.timing import TimingPanel
from if3d.atomic import atomic_write
from if3d.face.topology import NUM_MESH_VERTICES

__all__ = ["FaceRenderer", "annotate_frame", "face_label", "write_annotated_image", "write_annotated_video"]

_PALETTE = [(60, 180, 75), (230, 25, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
            (240, 50, 230), (210, 245, 60)]  # RGB, one per face id


def face_label(row: pd.Series) -> list[str]:
    """Text lines for one face row: id and the model's (smoothed) class, EMFACS, valence/arousal."""
    lines = []
    head = f"face {row['face_id']}"
    if "expression_smooth" in row and isinstance(row["expression_smooth"], str) and row["expression_smooth"]:
        c = row["expression_smooth"]
        p = row.get(f"prob_{c}_smooth", float("nan"))
        head += f": {c} {p:.2f}" if isinstance(p, float) and math.isfinite(p) else f": {c}"
        if row.get("uncertain") is True or row.get("uncertain") == 1:
            head += " (uncertain)"
    lines.append(head)
    emf = row.get("emfacs", "")
    if isinstance(emf, str) and emf:
        aus = row.get("emfacs_aus", "")
        lines.append(f"EMFACS {emf}" + (f" (AU {aus})" if isinstance(aus, str) and aus else ""))
    v, a = row.get("valence_smooth", float("nan")), row.get("arousal_smooth", float("nan"))
    if isinstance(v, float) and math.isfinite(v) and isinstance(a, float) and math.isfinite(a):
        lines.append(f"V {v:+.2f}  A {a:+.2f}")
    return lines


class FaceRenderer:
    """The 3D render of a face from its landmarks, framed like the models' face crop (MediaPipe render
    backend, ``if3d.analyze.models.CROP_MARGIN``): what a fusion model sees beside the photo.

    Args:
        size: render side in pixels.

    Attributes:
        problem: why no render can be made (no OpenGL/EGL), or None.
    """

    def __init__(self, size: int = 112) -> None:
        self.size = int(size)
        self.problem = None
        try:
            from if3d.render.backends import get_backend

            self.backend = get_backend("mediapipe", size=self.size, framing="photo")
        except Exception as e:  # noqa: BLE001 - any GL failure: the pictures go without renders
            self.backend, self.problem = None, f"no 3D renders in the annotated outputs ({e})"

    def render(self, landmarks: np.ndarray) -> np.ndarray | None:
        """uint8 [S, S, 3] RGB render of one face (landmarks [478, 3] in frame pixels), or None."""
        if self.backend is None:
            return None
        from if3d.analyze.models import CROP_MARGIN
        from if3d.data.converters.align import alignment_matrix

        return self.backend.render_landmarks(landmarks, alignment_matrix(landmarks, self.size, CROP_MARGIN))

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


def _save_render(folder: Path | None, frame: int, face_id: int, render: np.ndarray | None) -> None:
    if folder is None or render is None:
        return
    ok, buf = cv2.imencode(".png", cv2.cvtColor(render, cv2.COLOR_RGB2BGR))
    if ok:
        atomic_write(folder / f"{frame:06d}_{face_id}.png", lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


def annotate_frame(image_rgb: np.ndarray, rows: pd.DataFrame, landmarks: np.ndarray,
                   renders: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Draw the faces of one frame.

    Args:
        image_rgb: uint8 [H, W, 3] RGB frame.
        rows: the table's face rows of this frame.
        landmarks: float [len(rows), 478, 3] their landmarks (frame pixels).
        renders: each face's 3D render (uint8 [S, S, 3] RGB, or None), drawn as an inset beside its box.

    Returns:
        uint8 [H, W, 3] BGR (OpenCV's order) annotated copy.
    """
    out = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    h, w = out.shape[:2]
    scale = max(0.4, min(1.2, h / 900))
    thick = max(1, int(round(h / 400)))
    renders = renders if renders is not None else [None] * len(rows)
    for (_, row), lm, render in zip(rows.iterrows(), landmarks, renders):
        r, g, b = _PALETTE[int(row["face_id"]) % len(_PALETTE)]
        colour = (b, g, r)
        pts = np.round(np.asarray(lm)[:NUM_MESH_VERTICES, :2]).astype(np.int32)
        for x, y in pts:
            out[max(0, min(h - 1, y)), max(0, min(w - 1, x))] = (255, 255, 255)
        x0, y0, x1, y1 = (int(round(row[k])) for k in ("face_x0", "face_y0", "face_x1", "face_y1"))
        cv2.rectangle(out, (x0, y0), (x1, y1), colour, thick)
        if render is not None:
            side = max(16, min((y1 - y0) // 3, h // 3, w // 4))
            inset = cv2.resize(cv2.cvtColor(render, cv2.COLOR_RGB2BGR), (side, side), interpolation=cv2.INTER_AREA)
            ix = x1 + 4 if x1 + 4 + side <= w else max(0, x0 - 4 - side)
            iy = min(max(0, y0), h - side)
            out[iy:iy + side, ix:ix + side] = inset
            cv2.rectangle(out, (ix, iy), (ix + side - 1, iy + side - 1), colour, 1)
        lines = face_label(row)
        line_h = int(22 * scale) + 4
        y = max(line_h * len(lines) + 2, y0 - 4)
        for i, text in enumerate(lines):
            yy = y - (len(lines) - 1 - i) * line_h
            (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, thick)
            cv2.rectangle(out, (x0, yy - th - 4), (x0 + tw + 4, yy + 3), (0, 0, 0), -1)
            cv2.putText(out, text, (x0 + 2, yy), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, colour, thick, cv2.LINE_AA)
    return out


def _frame_rows(result: AnalysisResult) -> dict[int, np.ndarray]:
    t = result.table
    faces = t[t["face_detected"].astype(bool)]
    return {int(f): idx for f, idx in faces.groupby("frame").indices.items()} if len(faces) else {}


def write_annotated_image(path: str | os.PathLike, image_rgb: np.ndarray, result: AnalysisResult, frame: int,
                          renderer: FaceRenderer | None = None, render_dir: Path | None = None) -> None:
    """Write the annotated PNG of one image (``frame``: its number in the result), atomically.

    Args:
        renderer: draws each face's 3D render beside it (None: no renders).
        render_dir: also write each render to ``<render_dir>/<frame:06d>_<face_id>.png``.
    """
    t = result.table
    sel = t[(t["frame"] == frame) & t["face_detected"].astype(bool)]
    lm = result.landmarks.array()
    landmarks = np.asarray(lm[sel["landmark_row"].to_numpy()]) if len(sel) else np.zeros((0, 478, 3))
    renders = [renderer.render(x) if renderer is not None else None for x in landmarks]
    for fid, render in zip(sel["face_id"], renders):
        _save_render(render_dir, frame, int(fid), render)
    out = annotate_frame(image_rgb, sel, landmarks, renders)
    ok, buf = cv2.imencode(".png", out)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buf.tobytes()))


def write_annotated_video(path: str | os.PathLike, video: str | os.PathLike, result: AnalysisResult,
                          title: str = "", progress: bool = False, renderer: FaceRenderer | None = None,
                          render_dir: Path | None = None, fourcc: str = "mp4v") -> int:
    """Write the annotated video: the input's frames with the faces drawn | the timing diagram with a cursor.

    Args:
        path: the output video; its suffix picks the container (``.mp4``; ``.webm`` for VP8).
        video: the input video (decoded again, frame by frame).
        result: its analysis.
        title: the timing diagram's title.
        progress: show a progress bar.
        renderer: draws each face's 3D render beside it (None: no renders).
        render_dir: also write each render to ``<render_dir>/<frame:06d>_<face_id>.png``.
        fourcc: the codec, as OpenCV's four characters (``mp4v`` MPEG-4 Part 2; ``VP80`` VP8, which browsers play).

    Returns:
        Frames written (the input's decoded frame count).

    Raises:
        OSError: the video cannot be written (OpenCV's writer does not open, or the disk is full).
        if3d.analyze.sources.InputError: the input does not decode again.
    """
    source = VideoSource(video)
    w, h = source.size
    panel_h = max(h, 480)
    scale = panel_h / h
    frame_w = int(round(w * scale)) // 2 * 2
    panel_w = int(round(panel_h * 1.25)) // 2 * 2
    face = result.main_face()
    panel = None
    if face is not None:
        panel = TimingPanel(result.table, face, result.aus, result.class_names, result.fps or source.fps,
                            title or f"face {face}", (panel_w, panel_h))
    rows_of = _frame_rows(result)
    lm = result.landmarks.array()
    table = result.table
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=source.frame_count if source.frame_count > 0 else None, desc="annotated video",
                   unit="frame", leave=False, dynamic_ncols=True, mininterval=0.5)
    written = 0

    def write(tmp: str) -> None:
        nonlocal written
        # OpenCV picks the container from the file name: write "<tmp>.mp4" (or .webm), then move it onto the temporary
        # (a run killed outright leaves it; the command line removes it next time, by its dead pid)
        inner = f"{tmp}{Path(path).suffix or '.mp4'}"
        writer = cv2.VideoWriter(inner, cv2.VideoWriter_fourcc(*fourcc), source.fps, (frame_w + panel_w, panel_h))
        if not writer.isOpened():
            raise OSError(f"{path}: OpenCV's {fourcc} video writer did not open")
        try:
            for fr in source:
                idx = rows_of.get(fr.index, np.zeros(0, np.int64))
                sel = table.iloc[idx]
                landmarks = np.asarray(lm[sel["landmark_row"].to_numpy()]) if len(idx) else np.zeros((0, 478, 3))
                renders = [renderer.render(x) if renderer is not None else None for x in landmarks]
                for fid, render in zip(sel["face_id"], renders):
                    _save_render(render_dir, fr.index, int(fid), render)
                img = annotate_frame(fr.image, sel, landmarks, renders)
                if img.shape[1] != frame_w or img.shape[0] != panel_h:
                    img = cv2.resize(img, (frame_w, panel_h), interpolation=cv2.INTER_LINEAR)
                right = panel.at(fr.time_s) if panel is not None else np.full((panel_h, panel_w, 3), 255, np.uint8)
                writer.write(np.ascontiguousarray(np.concatenate([img, right], axis=1)))
                written += 1
                if bar is not None:
                    bar.update(1)
            writer.release()
            if not os.path.exists(inner) or os.path.getsize(inner) == 0:
                raise OSError(f"{path}: nothing was written (is the disk full?)")
            os.replace(inner, tmp)
        finally:
            writer.release()
            if os.path.exists(inner):
                os.remove(inner)

    try:
        atomic_write(path, write)
    finally:
        source.close()
        if bar is not None:
            bar.close()
    return written
