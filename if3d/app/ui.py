"""The web page (Gradio Blocks): the Photo, Video and Webcam tabs and the options, wired to
:mod:`if3d.app.handlers`.

Each event runs in Gradio's queue under one concurrency group of size 1: one analysis at a time, the
other users wait their turn (their page says so). A handler's :class:`~if3d.app.handlers.AppInputError`
becomes the tab's status line; any other error is logged with its traceback on the server and shown on the
page as one line, never a traceback.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from if3d.app.handlers import (
    AnalyzerPool,
    AppInputError,
    AppOptions,
    FaceReport,
    WebcamHistory,
    analyse_photo,
    analyse_video,
    webcam_frame,
)

__all__ = ["CONCURRENCY_ID", "MAX_FACES_SHOWN", "build_app"]

log = logging.getLogger("if3d.app")

#: faces whose probability charts the Photo tab shows (the analysis finds up to 4 by default)
MAX_FACES_SHOWN = 4
#: the one queue every analysis waits in
CONCURRENCY_ID = "analysis"
#: a video's work folder (its results for download) is removed this long after it was made, seconds
KEEP_RESULTS_S = 3600
PHOTO_TYPES = [".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"]
VIDEO_TYPES = [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"]


def _problem(e: Exception) -> str:
    if isinstance(e, AppInputError):
        return f"⚠ {e}"
    log.exception("the analysis failed")
    return f"⚠ the analysis failed ({type(e).__name__}: {e}); the server's log has the details"


def _face_table(faces: list[FaceReport]) -> pd.DataFrame:
    def fmt(v):
        return None if v is None else round(v, 2)

    return pd.DataFrame([{"face": f.face_id, "expression": f.expression,
                          "probability": fmt(f.probabilities.get(f.expression)), "uncertain": f.uncertain,
                          "valence": fmt(f.valence), "arousal": fmt(f.arousal), "pitch °": round(f.pose[0], 1),
                          "yaw °": round(f.pose[1], 1), "roll °": round(f.pose[2], 1)} for f in faces])


def _au_table(faces: list[FaceReport]) -> pd.DataFrame:
    return pd.DataFrame([{"face": f.face_id, **{k: round(v, 2) for k, v in f.aus.items()}} for f in faces])


def _face_label(f: FaceReport) -> str:
    return f"face {f.face_id}" + (" (uncertain)" if f.uncertain else "")


def _prune(work_root: Path) -> None:
    """Remove the work folders of video analyses older than :data:`KEEP_RESULTS_S`."""
    now = time.time()
    for d in work_root.glob("video-*"):
        if d.is_dir() and now - d.stat().st_mtime > KEEP_RESULTS_S:
            shutil.rmtree(d, ignore_errors=True)


def build_app(options: AppOptions, pool: AnalyzerPool, work_root: str | Path,
              checkpoints: list[str] | None = None, allow_custom_checkpoint: bool = True) -> gr.Blocks:
    """The page.

    Args:
        options: the app's settings (limits, defaults of the page's options).
        pool: holds the analyzer.
        work_root: folder of the video analyses' results (removed by the caller at exit).
        checkpoints: the checkpoint choices of the page (``default`` and ``options.checkpoint`` are added).
        allow_custom_checkpoint: the page may name any checkpoint file on the server.
    """
    work_root = Path(work_root)
    choices = list(dict.fromkeys(["default", options.checkpoint, *(checkpoints or [])]))
    with gr.Blocks(title="If3D expression analysis", analytics_enabled=False, delete_cache=(900, KEEP_RESULTS_S)) \
            as app:
        gr.Markdown("## If3D expression analysis\nUpload a photo or a video, or use your camera: each face's "
                    "expression probabilities, valence/arousal (models that have them), action units and head "
                    f"pose. Uploads up to {options.max_upload_mb:g} MB, videos up to {options.max_video_s:g} s. "
                    "Nothing leaves this computer.")
        with gr.Accordion("Options", open=False):
            with gr.Row():
                checkpoint = gr.Dropdown(choices, value=options.checkpoint, label="expression model (checkpoint)",
                                         allow_custom_value=allow_custom_checkpoint, elem_id="opt-checkpoint")
                confidence = gr.Slider(0.05, 1.0, value=options.min_detection_confidence, step=0.05,
                                       label="face detection confidence", elem_id="opt-confidence")
                show_aus = gr.Checkbox(value=options.show_aus, label="show action units", elem_id="opt-aus")
        settings = [checkpoint, confidence, show_aus]

        with gr.Tab("Photo"):
            with gr.Row():
                with gr.Column(scale=1):
                    photo_in = gr.File(label="photo", file_types=PHOTO_TYPES, type="filepath", elem_id="photo-input")
                    photo_status = gr.Markdown(elem_id="photo-status")
                photo_out = gr.Image(label="annotated", type="numpy", interactive=False, scale=2,
                                     elem_id="photo-annotated")
            with gr.Row():
                face_labels = [gr.Label(num_top_classes=8, visible=False, elem_id=f"photo-face-{i}")
                               for i in range(MAX_FACES_SHOWN)]
            face_table = gr.Dataframe(label="faces", interactive=False, elem_id="photo-faces")
            au_table = gr.Dataframe(label="action unit intensities (0–5)", interactive=False, elem_id="photo-aus",
                                    visible=options.show_aus)

        with gr.Tab("Video"):
            with gr.Row():
                with gr.Column(scale=1):
                    video_in = gr.File(label="video", file_types=VIDEO_TYPES, type="filepath", elem_id="video-input")
                    video_status = gr.Markdown(elem_id="video-status")
                    video_files = gr.File(label="results.csv, analysis.json", file_count="multiple",
                                          interactive=False, elem_id="video-files")
                video_out = gr.Video(label="annotated video", interactive=False, scale=2, elem_id="video-annotated")
            timing_out = gr.Image(label="timing diagram", type="filepath", interactive=False, elem_id="video-timing")

        with gr.Tab("Webcam"):
            with gr.Row():
                cam = gr.Image(sources=["webcam"], streaming=True, type="numpy", label="camera", elem_id="cam-input")
                cam_out = gr.Image(label="annotated", type="numpy", interactive=False, elem_id="cam-annotated")
            with gr.Row():
                cam_label = gr.Label(num_top_classes=8, label="expression now", elem_id="cam-label")
                cam_diagram = gr.Image(label="last seconds", type="numpy", interactive=False, elem_id="cam-timing")
            cam_status = gr.Markdown(elem_id="cam-status")
            cam_state = gr.State(None)

        def on_photo(path, ckpt, conf, aus):
            hidden = [gr.Label(visible=False)] * MAX_FACES_SHOWN
            try:
                res = analyse_photo(path, pool.get(ckpt, conf), options)
            except Exception as e:  # the page gets one line; the log gets the traceback
                return [None, *hidden, None, gr.Dataframe(value=None, visible=bool(aus)), _problem(e)]
            labels = [gr.Label(value=f.probabilities or None, label=_face_label(f), visible=bool(f.probabilities))
                      for f in res.faces[:MAX_FACES_SHOWN]]
            labels += hidden[len(labels):]
            more = f" (charts of the {MAX_FACES_SHOWN} largest)" if len(res.faces) > MAX_FACES_SHOWN else ""
            return [res.annotated, *labels, _face_table(res.faces),
                    gr.Dataframe(value=_au_table(res.faces), visible=bool(aus)), res.message + more]

        def on_video(path, ckpt, conf, progress=gr.Progress()):  # noqa: B008 (Gradio's progress idiom)
            if path is None:
                return None, None, None, ""
            _prune(work_root)
            work = Path(tempfile.mkdtemp(prefix="video-", dir=work_root))
            try:
                res = analyse_video(path, pool.get(ckpt, conf), options, work,
                                    progress=lambda f, what: progress(f, desc=what))
            except Exception as e:
                shutil.rmtree(work, ignore_errors=True)
                return None, None, None, _problem(e)
            text = "\n".join(f"- {line.strip()}" for line in res.summary.splitlines() if line.strip())
            notes = "".join(f"\n- note: {n}" for n in res.notes)
            return (str(res.annotated) if res.annotated else None, str(res.timing) if res.timing else None,
                    [str(res.results_csv), str(res.analysis_json)], f"{Path(path).name}: done\n\n{text}{notes}")

        def on_frame(image, ckpt, conf, aus, history):
            history = history if isinstance(history, WebcamHistory) else WebcamHistory()
            try:
                annotated, faces, diagram, line = webcam_frame(image, pool.get(ckpt, conf), history, bool(aus))
            except Exception as e:
                return None, None, None, _problem(e), history
            label = faces[0].probabilities if faces and faces[0].probabilities else None
            return annotated, label, diagram, line, history

        common = {"concurrency_limit": 1, "concurrency_id": CONCURRENCY_ID, "api_visibility": "private"}
        photo_in.upload(on_photo, [photo_in, *settings], [photo_out, *face_labels, face_table, au_table, photo_status],
                        **common)
        video_in.upload(on_video, [video_in, checkpoint, confidence], [video_out, timing_out, video_files,
                                                                       video_status], **common)
        cam.stream(on_frame, [cam, *settings, cam_state], [cam_out, cam_label, cam_diagram, cam_status, cam_state],
                   stream_every=0.5, time_limit=600, **common)
        show_aus.change(lambda v: gr.Dataframe(visible=bool(v)), show_aus, au_table, queue=False)
    return app
