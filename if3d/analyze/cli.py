"""Command line of the analysis: ``python -m if3d.analyze INPUT [INPUT ...] --out DIR [options]``.

INPUT is an image, a folder of images (searched recursively) or a video file; ``--webcam DEVICE`` records
from a camera (index ``0`` …, or any path or URL OpenCV opens, e.g. a video file standing in for a camera)
until ``--duration``/``--max-frames`` or Ctrl-C, saves the recording and analyses it like a video.

Output folder (``--out``; created, or reused when an earlier analysis wrote it)::

    results.csv            every input's rows (one row per face per frame; module if3d.analyze.pipeline)
    results.parquet        the same, when pyarrow is installed (else the run says so)
    summary.csv            per input and face: dominant expression, time share of each, mean valence/arousal,
                           dominant EMFACS expression (module if3d.analyze.report)
    analysis.json          the settings, and per input: frames, frames without a face, skipped files, notes,
                           frames/s
    <name>/results.csv     the input's own rows
    <name>/timing.png      videos: the timing diagram of the main face (module if3d.analyze.timing)
    <name>/annotated.mp4   videos: the annotated frames side by side with the timing diagram and its cursor
    <name>/annotated.png   an image (a folder: <name>/annotated/<relative path>.png)
    <name>/recording.mp4   record mode: the captured video
    <name>/renders/        --save-renders: each face's 3D render, <frame>_<face id>.png (what a fusion model sees)
    <name>/input.json      what was analysed and with which settings (a re-run skips inputs whose file and
                           settings did not change: an interrupted run resumes)

Exit status: 0 done; 2 bad options, an input that cannot be read (without ``--skip-unreadable``), a
checkpoint that does not load or fit, or an output that cannot be written — one line naming the file, and
everything finished before it is kept; 130 interrupted (Ctrl-C; the finished inputs are written, the one
in progress is analysed again next time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from if3d.console import command_name, writing_to

if TYPE_CHECKING:
    from if3d.runtime.stop import StopRequest

__all__ = ["get_args_parser", "main", "run"]

OUTPUT_KIND = "analysis"

EXIT_STATUS = {0: "done", 2: "bad options, an input that cannot be read (without --skip-unreadable), a checkpoint "
               "that does not load or fit, or an output that cannot be written (the message names the file; what "
               "finished before it is kept)",
               130: "interrupted (the finished inputs are written: run the same command again for the rest)"}


def get_args_parser() -> argparse.ArgumentParser:
    from if3d.analyze.smoothing import FILTERS
    from if3d.console import HelpFormatter, command_name, exit_status

    p = argparse.ArgumentParser(
        prog=command_name("python -m if3d.analyze"), formatter_class=HelpFormatter,
        description="Analyse your own images, videos or camera: faces, 478 3D landmarks, head pose, action units, "
                    "expression probabilities (the shipped model by default) and valence/arousal where the model has "
                    "them, EMFACS expressions, smoothed over time; writes results.csv, summary.csv, a timing diagram and an annotated video per video.",
        epilog="Example: python -m if3d.analyze my_video.mp4 photos/ --out analysis\n\n" + exit_status(EXIT_STATUS),
    )
    p.add_argument("inputs", nargs="*", help="images, folders of images, video files")
    p.add_argument("--webcam", metavar="DEVICE",
                   help="record mode: camera index (0, 1 ...) or a path/URL OpenCV opens; the recording is saved")
    p.add_argument("--duration", type=float, help="record mode: stop after this many seconds")
    p.add_argument("--max-frames", type=int, help="record mode: stop after this many frames")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--checkpoint", default="default",
                   help="expression model: 'default' (the model that ships with the toolkit, docs/MODEL_CARD.md) or "
                   "any checkpoint the toolkit trains or loads (default: default)")
    p.add_argument("--no-expression", action="store_true",
                   help="no expression model: no expression, probability, valence or arousal columns")
    p.add_argument("--uncertain-below", type=float, default=None,
                   help="mark a face uncertain (column 'uncertain') when its top class probability is below this "
                   "(default 0.5: with calibrated probabilities such a face is more likely misclassified than not)")
    p.add_argument("--au-checkpoint", help="AU-intensity model (python -m if3d.train --model au_regressor) instead "
                   "of the geometric AU estimates")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), help="autocast of the models (default: the device's)")
    p.add_argument("--max-faces", type=int, default=4, help="faces per frame at most (default 4)")
    p.add_argument("--detector", choices=("short", "full"), default="short",
                   help="BlazeFace range for the detection score: short (within ~2 m) or full")
    p.add_argument("--min-detection-confidence", type=float, default=0.5, help="face detector threshold")
    p.add_argument("--batch-size", type=int, default=32, help="face crops per model batch (default 32)")
    p.add_argument("--threads", type=int, help="CPU threads of the models (default: torch's; 1 is often faster on "
                   "a machine shared with other jobs)")
    p.add_argument("--smoothing", choices=FILTERS, default="savgol", help="temporal filter (default savgol)")
    p.add_argument("--smooth-window", type=float, default=0.3, help="its window in seconds (default 0.3)")
    p.add_argument("--au-neutral", choices=("auto", "least_expressive", "median", "first", "population"),
                   default="auto", help="neutral reference of the geometric AUs (default auto)")
    p.add_argument("--emfacs-threshold", type=float, default=0.8, help="match an EMFACS prototype needs")
    p.add_argument("--no-annotate", action="store_true", help="no annotated video or images")
    p.add_argument("--no-render-inset", action="store_true",
                   help="annotated outputs without each face's 3D render beside its box")
    p.add_argument("--save-renders", action="store_true",
                   help="also write each face's 3D render to <name>/renders/<frame>_<face id>.png")
    p.add_argument("--no-landmark-columns", action="store_true",
                   help="leave the 1,434 landmark columns x_0 ... z_477 out of the result files")
    p.add_argument("--skip-unreadable", action="store_true",
                   help="count and skip images and inputs that cannot be read instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--quiet", dest="no_progress", action="store_true", help=argparse.SUPPRESS)  # earlier name
    return p


def _config(args):
    from if3d.analyze.pipeline import AnalyzerConfig

    extra = {} if args.uncertain_below is None else {"uncertain_below": args.uncertain_below}
    return AnalyzerConfig(checkpoint=None if args.no_expression else args.checkpoint, **extra,
                          au_checkpoint=args.au_checkpoint, device=args.device,
                          amp=args.amp, max_faces=args.max_faces, detector=args.detector,
                          min_detection_confidence=args.min_detection_confidence, batch_size=args.batch_size,
                          smoothing=args.smoothing, smooth_window_s=args.smooth_window, au_neutral=args.au_neutral,
                          emfacs_threshold=args.emfacs_threshold, skip_unreadable=args.skip_unreadable,
                          threads=args.threads)


def _fingerprint(path: Path) -> dict:
    """Size and modification time of a file, or of every file of a folder (hashed)."""
    if path.is_dir():
        h = hashlib.sha256()
        for root, dirs, names in os.walk(path):
            dirs.sort()
            for n in sorted(names):
                try:
                    st = os.stat(os.path.join(root, n))
                except OSError:  # a dangling link or a link loop: the analysis counts it; fingerprint the link
                    st = os.lstat(os.path.join(root, n))
                h.update(f"{os.path.relpath(os.path.join(root, n), path)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return {"folder_digest": h.hexdigest()}
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _names(inputs: Sequence[str]) -> list[str]:
    """Output sub-folder of each input: its file or folder name without extension, made unique."""
    seen: dict[str, int] = {}
    out = []
    for i in inputs:
        base = Path(i).stem if Path(i).suffix else Path(i).name
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in base) or "input"
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.append(base if n == 0 else f"{base}_{n + 1}")
    return out


def run(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = get_args_parser().parse_args(argv)
    if not args.inputs and args.webcam is None:
        print("error: give at least one INPUT (image, folder, video) or --webcam DEVICE", file=sys.stderr)
        return 2
    bad = [f"--{k.replace('_', '-')} must be > 0, got {v}" for k, v in
           (("duration", args.duration), ("max_frames", args.max_frames)) if v is not None and not v > 0]
    cfg = _config(args)
    bad += cfg.problems()
    missing = [i for i in args.inputs if not Path(i).exists()]
    if missing and not args.skip_unreadable:
        bad += [f"{m}: no such file or folder" for m in missing]
    for ckpt in (cfg.checkpoint, cfg.au_checkpoint):
        if ckpt and ckpt != "default" and not Path(ckpt).is_file():
            bad.append(f"{ckpt}: no such checkpoint file")
    if bad:
        print(f"error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    from if3d.runtime.stop import StopRequest

    stop = StopRequest("stopping after this frame")
    stop.install()
    try:
        return writing_to(args.out, command_name("python -m if3d.analyze"),
                          lambda: _run(args, cfg, [i for i in args.inputs if i not in missing], missing, stop))
    except KeyboardInterrupt:
        print("aborted", file=sys.stderr)
        return 130
    finally:
        stop.uninstall()


def _run(args, cfg, inputs: list[str], missing: list[str], stop: StopRequest) -> int:
    from if3d.analyze.models import ModelLoadError
    from if3d.analyze.pipeline import Analyzer
    from if3d.analyze.report import concat_csv, describe, parquet_available, write_parquet, write_summary
    from if3d.outputs import OutputError, is_fatal_write_error, prepare_output_dir, write_error

    out = Path(args.out)
    try:
        prepare_output_dir(out, OUTPUT_KIND, [str(Path(i)) for i in inputs])
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        analyzer = Analyzer(cfg)
    except (ModelLoadError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if analyzer.expression is None:
        print("--no-expression: the results have no expression, valence or arousal columns (AUs, EMFACS, pose and "
              "landmarks only)", flush=True)
    jobs = [(i, n) for i, n in zip(inputs, _names(inputs))]
    if args.webcam is not None:
        dev = args.webcam
        jobs.append((None, f"webcam{dev if str(dev).isdigit() else ''}_{time.strftime('%Y%m%d-%H%M%S')}"))
    record = {"settings": {**asdict(cfg), "annotate": not args.no_annotate,
                           "landmark_columns": not args.no_landmark_columns, "save_renders": args.save_renders},
              "inputs": [], "skipped_inputs": [{"input": m, "problem": "no such file or folder"} for m in missing]}
    parts, summaries, status = [], [], 0
    columns: list[str] | None = None
    try:
        for given, name in jobs:
            try:
                done = _analyse_one(args, analyzer, given, name, out, stop, columns)
            except _InputSkipped as e:
                print(f"skipped: {e}", file=sys.stderr, flush=True)
                record["skipped_inputs"].append({"input": given, "problem": str(e)})
                continue
            if done is None:
                status = 130
                break
            part, summary, info, cols = done
            columns = columns or cols
            parts.append(part)
            summaries.append(summary)
            record["inputs"].append(info)
    except _InputFailed as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        status = 2
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        status = 2
    except OSError as e:
        if not is_fatal_write_error(e):
            raise
        print(f"error: {write_error(out, e)}", file=sys.stderr, flush=True)
        return 2
    finally:
        analyzer.close()
        for _, name in jobs:  # an input that failed or was skipped leaves no empty folder behind
            folder = out / name
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
    # the inputs finished so far, whatever stopped the run
    try:
        if parts:
            concat_csv(out / "results.csv", parts)
            if parquet_available():
                write_parquet(out / "results.parquet", parts)
            else:
                print("pyarrow is not installed: results.parquet was not written (pip install pyarrow)", flush=True)
            summary = write_summary(out / "summary.csv", summaries)
            print(f"{len(parts)} input(s) analysed into {out}:\n{describe(summary)}", flush=True)
        from if3d.atomic import atomic_write_json

        atomic_write_json(out / "analysis.json", record)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if not is_fatal_write_error(e):
            raise
        print(f"error: {write_error(out, e)}", file=sys.stderr)
        return 2
    if status == 130:
        print("interrupted: the finished inputs are written; run the same command again to analyse the rest",
              file=sys.stderr)
    return status


class _InputFailed(ValueError):
    """An input that cannot be analysed (the run stops with status 2)."""


class _InputSkipped(ValueError):
    """An input that cannot be analysed, skipped and counted (``--skip-unreadable``)."""


def _analyse_one(args, analyzer, given: str | None, name: str, out: Path, stop: StopRequest, columns):
    """Analyse one input (or the camera) into ``out/<name>``; None when interrupted.

    Returns:
        ``(results.csv of the input, its summary table, its analysis.json record, its columns)``.
    """
    from if3d.analyze.annotate import FaceRenderer, write_annotated_image, write_annotated_video
    from if3d.analyze.pipeline import AnalysisInterrupted
    from if3d.analyze.report import read_results_csv, summarize, write_results_csv
    from if3d.analyze.sources import CameraSource, InputError, open_source
    from if3d.analyze.timing import save_timing_diagram
    from if3d.atomic import atomic_write_json, remove_stale_temporaries

    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(folder)
    _remove_stale_videos(folder)
    settings = {**asdict(analyzer.config), "annotate": not args.no_annotate,
                "landmark_columns": not args.no_landmark_columns, "save_renders": args.save_renders,
                "render_inset": not args.no_render_inset}
    settings.pop("skip_unreadable")
    settings.pop("threads")
    stamp = None
    if given is not None:
        from networks.inference import resolve_checkpoint

        models = {k: _fingerprint(resolve_checkpoint(v)) for k, v in (("checkpoint", analyzer.config.checkpoint),
                                                                      ("au_checkpoint", analyzer.config.au_checkpoint))
                  if v}
        stamp = {"input": str(Path(given).resolve()), **_fingerprint(Path(given)), "settings": settings,
                 "models": models}
        prev = folder / "input.json"
        try:
            old = json.loads(prev.read_text(encoding="utf-8")) if prev.is_file() else None
        except (OSError, ValueError):
            old = None
        if old is not None and old.get("stamp") == stamp and (folder / "results.csv").is_file():
            print(f"{given}: unchanged since the last analysis into {folder}; kept", flush=True)
            table = read_results_csv(folder / "results.csv")
            return folder / "results.csv", summarize(table, old.get("fps", 0.0), old.get("class_names", [])), \
                old["info"], old.get("columns")
    try:
        if given is None:
            source = CameraSource(_device(args.webcam), folder / "recording.mp4", max_frames=args.max_frames,
                                  duration_s=args.duration)
        else:
            source = open_source(given, skip_unreadable=args.skip_unreadable)
    except InputError as e:
        if args.skip_unreadable:
            raise _InputSkipped(str(e)) from None
        raise _InputFailed(str(e)) from None
    label = given if given is not None else f"webcam {args.webcam}"
    try:
        result = analyzer.run(source, given if given is not None else str(folder / "recording.mp4"),
                              spill_dir=folder, progress=not args.no_progress, should_stop=lambda: stop.requested)
    except AnalysisInterrupted:
        return None
    except InputError as e:
        raise _InputFailed(str(e)) from None
    except BaseException:
        if given is None:
            source.discard()
        raise
    try:
        if given is None:
            source.finish()
            stop.requested = False  # the Ctrl-C that ended the recording has done its job
        cols = columns or [c for c in result.table.columns if c != "landmark_row"]
        write_results_csv(folder / "results.csv", result, cols, landmarks=not args.no_landmark_columns)
        video = result.kind in ("video", "webcam")
        _remove_earlier_outputs(folder)  # what these settings write is written anew; nothing else stays
        if video and result.main_face() is not None:
            save_timing_diagram(folder / "timing.png", result.table, result.main_face(), result.aus,
                                result.class_names, result.fps, title=f"{Path(label).name}, face {result.main_face()}")
        if not args.no_annotate:
            renderer = None if args.no_render_inset and not args.save_renders else FaceRenderer()
            if renderer is not None and renderer.problem:
                result.notes.append(f"{label}: {renderer.problem}")
            render_dir = folder / "renders" if args.save_renders else None
            try:
                if video:
                    n = write_annotated_video(folder / "annotated.mp4", source.path, result,
                                              title=f"{Path(label).name}, face {result.main_face()}",
                                              progress=not args.no_progress, renderer=renderer, render_dir=render_dir)
                    if n != result.frames:
                        result.notes.append(f"{label}: the annotated video has {n} frames, the analysis "
                                            f"{result.frames} (the file decoded differently the second time)")
                else:
                    _annotate_images(source, result, folder,
                                     lambda *a: write_annotated_image(*a, renderer=renderer, render_dir=render_dir))
            finally:
                if renderer is not None:
                    renderer.close()
        fps_rate = result.frames / result.timings["total"] if result.timings.get("total") else float("nan")
        info = {"input": label, "name": name, "kind": result.kind, "frames": result.frames,
                "frames_without_face": result.frames_without_face,
                "face_rows": int(result.table["face_detected"].sum()),
                "faces": int(result.table["face_id"].nunique()), "fps": result.fps,
                "skipped_files": [{"file": f, "problem": p} for f, p in result.skipped], "notes": result.notes,
                "analysis_frames_per_s": round(fps_rate, 2),
                "seconds": {k: round(v, 3) for k, v in result.timings.items()}}
        for note in result.notes:
            print(f"note: {note}", flush=True)
        if result.skipped:
            print(f"{label}: {len(result.skipped)} file(s) skipped (listed in analysis.json), e.g. "
                  f"{result.skipped[0][0]}: {result.skipped[0][1]}", flush=True)
        print(f"{label}: {result.frames} frame(s), {result.frames_without_face} without a face, "
              f"{fps_rate:.1f} frames/s", flush=True)
        summary = summarize(result.table, result.fps, result.class_names)
        if stamp is not None:
            atomic_write_json(folder / "input.json", {"stamp": stamp, "info": info, "fps": result.fps,
                                                      "class_names": result.class_names, "columns": cols})
        return folder / "results.csv", summary, info, cols
    finally:
        result.close()


#: what an earlier analysis of an input may have written beside its results (files, then folders)
_EARLIER_OUTPUTS = (("timing.png", "annotated.mp4", "annotated.png"), ("annotated", "renders"))


def _remove_earlier_outputs(folder: Path) -> None:
    """Delete the timing diagram, annotated outputs and renders of an earlier analysis of the same input, so a
    re-analysis with other settings (``--no-annotate``, without ``--save-renders``) leaves none of them beside
    its new results."""
    import shutil

    for name in _EARLIER_OUTPUTS[0]:
        (folder / name).unlink(missing_ok=True)
    for name in _EARLIER_OUTPUTS[1]:
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)


def _remove_stale_videos(folder: Path) -> None:
    """Delete the hidden ``.mp4`` temporaries (annotated video, recording) of runs that were killed outright.

    OpenCV's writer needs a ``.mp4`` name, so these cannot carry ``if3d.atomic``'s suffix; they are named
    ``.<file>.<pid>.…mp4`` and removed here when that process no longer runs.
    """
    for p in folder.iterdir():
        if not (p.name.startswith(".") and p.name.endswith(".mp4") and p.is_file()):
            continue
        pid = next((int(part) for part in p.name.split(".") if part.isdigit()), None)
        if pid is None or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except PermissionError:
            pass


def _device(value: str) -> int | str:
    return int(value) if str(value).isdigit() else str(value)


def _annotate_images(source, result, folder: Path, write) -> None:
    from if3d.io.images import decode_image
    from if3d.io.report import CorruptImageError

    done = set()
    for frame, path in result.table[["frame", "path"]].drop_duplicates("frame").itertuples(index=False):
        if frame in done:
            continue
        done.add(frame)
        try:
            image = decode_image(path)
        except CorruptImageError:
            continue  # it decoded a moment ago; a file changed meanwhile is left out of the pictures only
        if source.kind == "folder":
            rel = Path(source.relative_name(path))
            dest = folder / "annotated" / rel.with_suffix(".png")
        else:
            dest = folder / "annotated.png"
        write(dest, image, result, int(frame))


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m if3d.analyze``; exits with the status."""
    sys.exit(run(argv))
