"""Video converters: video files, AFEW frame folders and CK+ image sequences → a canonical clip dataset.

``python -m if3d.data convert --format video|afew|ckplus-sequences --src SRC --out ROOT`` writes::

    ROOT/clips/<split>/<label>/<clip>/<frame>.png    aligned face frames (PNG), frame = 6-digit position in the
                                                     source (video frame number, or index of the sorted frame files)
    ROOT/classes.json, counts.json, report.json      as every converter (counts per split and class are clips)
    ROOT/clips.csv                                   one row per clip: split, label, clip, subject, fold, frames,
                                                     source_frames, faceless_frames, source

Sources:

``video``
    ``SRC/<class>/<clip>.<avi|mp4|mov|mkv|webm|...>`` (or ``SRC/<split>/<class>/...``), decoded with OpenCV's
    FFmpeg backend; ``--fps F`` keeps the first frame at or after every multiple of 1/F seconds (default:
    every frame, as Emotion-FAN's ``ffmpeg -i clip -f image2`` extraction).
``afew``
    AFEW-style frame folders ``SRC/<Split>/<Class>/<clip>/<frame>.png|jpg`` (``Train``/``Val``), e.g. the
    frames Emotion-FAN extracts from AFEW 8.0.
``ckplus-sequences``
    CK+ ``cohn-kanade-images/S<subject>/<seq>/*.png`` with the labels of ``Emotion/S<subject>/<seq>/
    *_emotion.txt`` (codes 1 anger, 2 contempt, 3 disgust, 4 fear, 5 happy, 6 sadness, 7 surprise);
    sequences without an emotion file are counted as ``unlabelled_clip``. Every frame of a sequence is kept
    by default (Emotion-FAN's loader slices ``img_lists[-int(round(len(img_lists))):]``, i.e. all frames,
    onset → apex); ``--last-frames N`` keeps the last N (the peak frames common in image-based CK+ work).
    Folds: Emotion-FAN's ``CK+_10-fold_sample_IDascendorder_step10.txt`` assigns the labelled subjects, in
    ascending id order, to folds 1..10 in turn (fold = rank mod 10 + 1); ``clips.csv`` records that fold and
    the subject of every clip (subject-independent cross-validation, ``python -m if3d.crossval``), and fold 10,
    Emotion-FAN's default test fold, is the ``val`` split (``--val-fraction 0``: everything in ``train``).

Faces: every frame goes through the MediaPipe landmarker and the toolkit's eye-levelled alignment
(:mod:`if3d.data.converters.align`, ``--size``, ``--margin``). ``--clip-alignment frame`` (default) aligns each
frame on its own landmarks; ``clip`` crops every frame of a clip with one alignment, from the median landmarks
of its frames. Measured on the shared CK+ clip (``../shared/data/video/1543684773.avi``, 67 frames, 224 px
output): rigid landmarks (eye corners, nose) stay within 0.55 px of their mean position with per-frame
alignment and 0.99 px with one crop per clip (the head moves 1.6 px in the 720×480 source); frame-to-frame
jitter is 0.46 vs 0.35 px, and the per-frame scale varies by 2.6 % (the landmark box grows with the
expression; ``benchmarks/bench_video.py``, section ``alignment``). Per-frame alignment is the default because it keeps the face registered when the head moves
(AFEW's films) at a sub-pixel cost on still lab sequences; ``clip`` suits static cameras. Emotion-FAN aligned
every frame on its own (dlib 5-point ``get_face_chip``, 224 px, padding 0.25). Frames without a face are
left out of their clip and counted (``faceless_frame``, per clip in ``clips.csv``); a clip without any face is
an error naming it, or with ``--skip-faceless-clips`` a counted ``faceless_clip``. ``--align none`` writes the
frames as they are (already aligned face frames).

Writing: clips are written into ``.<out>.partial/`` next to ``--out`` (each clip folder renamed into place
when complete, with a record of it), and the finished folder is renamed onto ``--out`` at the end
(:mod:`if3d.outputs` decides what may be replaced). An interrupted conversion (Ctrl-C, a faceless clip, a
crash) keeps its finished clips: running the same command again resumes after them (a run with other options
that change the frames starts afresh).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from if3d.atomic import atomic_write_json
from if3d.classes import AFFECTNET7, AFFECTNET8, canonical_label
from if3d.data.clips import write_clip_table
from if3d.data.converters.base import (
    SPLIT_ALIASES,
    WriteOptions,
    _encode,
    _landmarker,
    carve_validation,
    format_counts,
)
from if3d.data.layout import (
    CLIPS_FILE,
    COUNTS_FILE,
    IGNORED_NAMES,
    IMAGE_EXTENSIONS,
    REPORT_FILE,
    SPLITS,
    clips_dir,
    write_classes,
)
from if3d.io.images import decode_image
from if3d.io.report import CorruptImageError, DataError, DataReport
from if3d.outputs import check_replaceable, is_fatal_write_error, replace_dir, write_error, write_marker

__all__ = [
    "CKPLUS_CODES",
    "VIDEO_EXTENSIONS",
    "VIDEO_OPTIONS",
    "ClipScan",
    "SourceClip",
    "emotion_fan_folds",
    "read_video_frames",
    "scan_afew",
    "scan_ckplus_sequences",
    "scan_video",
    "write_clip_dataset",
]

VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v", ".wmv", ".flv"})
"""File extensions (lower case) read as videos."""

VIDEO_OPTIONS = ("fps", "clip_alignment", "skip_faceless_clips", "last_frames")
"""Options of the clip formats only (``--fps``, ``--clip-alignment``, ``--skip-faceless-clips``, ``--last-frames``)."""

#: CK+ emotion codes (``*_emotion.txt``) → class name.
CKPLUS_CODES = {0: "neutral", 1: "anger", 2: "contempt", 3: "disgust", 4: "fear", 5: "happy", 6: "sadness",
                7: "surprise"}

_PARTIAL_STATE = ".convert-state.json"
_DONE = ".done"


@dataclass
class SourceClip:
    """One clip of the output, as found in the source: a video file or a list of frame files."""

    label: int
    clip: str
    split: str | None = None
    video: Path | None = None
    frames: list[Path] | None = None
    subject: str | None = None
    fold: int | None = None
    origin: str = ""


@dataclass
class ClipScan:
    """What a clip converter found (clips, problems, class names, split note) and the clip options."""

    clips: list[SourceClip]
    report: DataReport
    class_names: list[str]
    split_note: str = ""
    align: bool = True
    options: dict = field(default_factory=dict)
    val_fold: int | None = None


# ---------------------------------------------------------------------------------------------------- scanning


def _options(options: dict) -> dict:
    out = {"fps": None, "clip_alignment": "frame", "skip_faceless_clips": False, "last_frames": None}
    out.update({k: v for k, v in options.items() if v is not None})
    if out["fps"] is not None and not (float(out["fps"]) > 0):
        raise ValueError(f"--fps must be > 0, got {out['fps']}")
    if out["clip_alignment"] not in ("frame", "clip"):
        raise ValueError(f"--clip-alignment must be frame or clip, got {out['clip_alignment']!r}")
    if out["last_frames"] is not None and int(out["last_frames"]) < 1:
        raise ValueError(f"--last-frames must be >= 1, got {out['last_frames']}")
    return out


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _frame_files(folder: Path, report: DataReport) -> list[Path]:
    files = []
    for p in sorted(folder.iterdir(), key=lambda p: _natural_key(p.name)):
        if p.name in IGNORED_NAMES:
            continue
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
            if p.stat().st_size == 0:
                report.add("empty_image", p)
            else:
                files.append(p)
        else:
            report.add("non_image_file", p, "clip folders hold frames only")
    return files


def _split_layout(src: Path, report: DataReport) -> list[tuple[str | None, Path]]:
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    subdirs = [d for d in sorted(src.iterdir()) if d.is_dir()]
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    if not split_dirs:
        return [(None, src)]
    for d in subdirs:
        if d not in split_dirs:
            report.add("unknown_label_folder", d, "neither a split folder nor used")
    return [(SPLIT_ALIASES[d.name.lower()], d) for d in split_dirs]


def _class_dirs(folder: Path, report: DataReport) -> list[tuple[int, Path]]:
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            out.append((canonical_label(d.name), d))
        except KeyError:
            report.add("unknown_class", d, "class folder name not a known expression")
    for p in sorted(f for f in folder.iterdir() if f.is_file() and f.name not in IGNORED_NAMES):
        report.add("stray_file", p, "outside a class folder")
    return out


def _names(clips: list[SourceClip]) -> list[str]:
    return list(AFFECTNET8 if any(c.label == 7 for c in clips) else AFFECTNET7)


def scan_video(src: Path, align: str = "detect", **options) -> ClipScan:
    """Video files ``SRC/[<split>/]<class>/<clip>.<ext>``; one clip per file, named after the file stem."""
    report = DataReport(f"video {src}")
    clips: list[SourceClip] = []
    for split, folder in _split_layout(src, report):
        for label, cd in _class_dirs(folder, report):
            for p in sorted(cd.rglob("*")):
                if not p.is_file() or p.name in IGNORED_NAMES:
                    continue
                if p.suffix.lower() not in VIDEO_EXTENSIONS:
                    report.add("non_image_file", p, "not a video file")
                    continue
                clip = "_".join(p.relative_to(cd).with_suffix("").parts)
                clips.append(SourceClip(label, clip, split, video=p, origin=str(p)))
    if not clips and not report.total:
        raise DataError(f"{src}: no video files found (expected <class>/<clip>.<avi|mp4|...>)")
    return ClipScan(clips, report, _names(clips), "split folders kept" if any(c.split for c in clips)
                    else "no official split", align == "detect", _options(options))


def scan_afew(src: Path, align: str = "detect", **options) -> ClipScan:
    """AFEW-style frame folders ``SRC/<Split>/<Class>/<clip>/<frame>``."""
    report = DataReport(f"afew {src}")
    clips: list[SourceClip] = []
    opts = _options(options)
    for split, folder in _split_layout(src, report):
        for label, cd in _class_dirs(folder, report):
            for clip_dir in sorted(p for p in cd.iterdir() if p.is_dir()):
                frames = _frame_files(clip_dir, report)
                if opts["last_frames"] is not None:
                    frames = frames[-int(opts["last_frames"]):]
                if not frames:
                    report.add("empty_clip", clip_dir)
                    continue
                clips.append(SourceClip(label, clip_dir.name, split, frames=frames, origin=str(clip_dir)))
            for p in sorted(f for f in cd.iterdir() if f.is_file() and f.name not in IGNORED_NAMES):
                report.add("stray_file", p, "frames belong in a clip folder <class>/<clip>/")
    if not clips and not report.total:
        raise DataError(f"{src}: no clip folders found (expected <Split>/<Class>/<clip>/<frame>.png)")
    return ClipScan(clips, report, _names(clips), "official splits: Train->train, Val->val", align == "detect", opts)


def emotion_fan_folds(subjects: list[str], folds: int = 10) -> dict[str, int]:
    """Emotion-FAN's CK+ folds: subjects in ascending id order, fold = rank mod ``folds`` + 1.

    Source: ``data/txt/CK+_10-fold_sample_IDascendorder_step10.txt`` of Emotion-FAN (fold 1 holds S005, S035,
    S054, …: every tenth labelled subject in id order). Ids compare by their number (``S005`` < ``S010``).
    """
    order = sorted(set(subjects), key=_natural_key)
    return {s: i % folds + 1 for i, s in enumerate(order)}


def _find_dir(src: Path, names: tuple[str, ...]) -> Path | None:
    for n in names:
        for cand in (src / n, *sorted(src.glob(f"*/{n}"))):
            if cand.is_dir():
                return cand
    return None


def scan_ckplus_sequences(src: Path, align: str = "detect", **options) -> ClipScan:
    """CK+ image sequences with their emotion labels (see the module docstring)."""
    report = DataReport(f"ckplus-sequences {src}")
    opts = _options(options)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    images = src if src.name == "cohn-kanade-images" else _find_dir(src, ("cohn-kanade-images",))
    emotion = _find_dir(src if images != src else src.parent, ("Emotion", "Emotion_labels/Emotion"))
    if images is None:
        raise FileNotFoundError(f"{src}: cohn-kanade-images/ not found (CK+ sequences S<subject>/<seq>/*.png)")
    if emotion is None:
        raise FileNotFoundError(f"{src}: Emotion/ not found (CK+ labels Emotion/S<subject>/<seq>/*_emotion.txt)")
    clips: list[SourceClip] = []
    for subject_dir in sorted(p for p in images.iterdir() if p.is_dir()):
        for seq in sorted(p for p in subject_dir.iterdir() if p.is_dir()):
            label_files = sorted((emotion / subject_dir.name / seq.name).glob("*_emotion.txt"))
            if not label_files:
                report.add("unlabelled_clip", seq, "no Emotion/<subject>/<seq>/*_emotion.txt")
                continue
            try:
                code = int(round(float(label_files[0].read_text(encoding="utf-8").split()[0])))
                label = canonical_label(CKPLUS_CODES[code])
            except (ValueError, IndexError, KeyError, UnicodeDecodeError) as e:
                report.add("bad_label_row", label_files[0], f"not a CK+ emotion code ({e})")
                continue
            frames = _frame_files(seq, report)
            if opts["last_frames"] is not None:
                frames = frames[-int(opts["last_frames"]):]
            if not frames:
                report.add("empty_clip", seq)
                continue
            clips.append(SourceClip(label, f"{subject_dir.name}_{seq.name}", None, frames=frames,
                                    subject=subject_dir.name.upper(), origin=str(seq)))
    if not clips and not report.total:
        raise DataError(f"{images}: no sequences found (expected S<subject>/<seq>/*.png)")
    folds = emotion_fan_folds([c.subject for c in clips])
    for c in clips:
        c.fold = folds[c.subject]
    note = "Emotion-FAN's 10 subject folds (ascending subject id, fold = rank mod 10 + 1)"
    return ClipScan(clips, report, _names(clips), note, align == "detect", opts, val_fold=10)


# ---------------------------------------------------------------------------------------------------- frames


def read_video_frames(path: str | os.PathLike, fps: float | None = None,
                      problems: list | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Decode a video with OpenCV (FFmpeg backend) and yield ``(frame number, uint8 [H, W, 3] RGB)``.

    Args:
        path: the video file.
        fps: keep the first frame at or after every multiple of ``1/fps`` seconds of the video's time
            (frame time = number / the container's frame rate); None keeps every frame.
        problems: when given, a video that ends before the frame count its header announces (the rule of the
            analysis' :attr:`if3d.analyze.sources.VideoSource.truncated`) is appended as
            ``("truncated_video", path, detail)``; its decoded frames are still yielded.

    Raises:
        DataError: the file cannot be opened or yields no frame (the message names it).
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise DataError(f"{path}: cannot open the video (OpenCV/FFmpeg)")
        native = cap.get(cv2.CAP_PROP_FPS)
        announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        step = None if fps is None else 1.0 / float(fps)
        next_t = 0.0
        n = 0
        while True:
            ok, bgr = cap.read()
            if not ok or bgr is None:
                break
            t = n / native if native and native > 0 else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
            if step is None or t + 1e-9 >= next_t:
                if step is not None:
                    while next_t <= t + 1e-9:
                        next_t += step
                yield n, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            n += 1
        if n == 0:
            raise DataError(f"{path}: no frame could be decoded")
        if problems is not None and 0 < n < announced:
            problems.append(("truncated_video", str(path), f"ended after {n} of the {announced} frames its header "
                             "announces (a truncated or damaged file); the decoded frames were kept"))
    finally:
        cap.release()


def _source_frames(clip: SourceClip, fps: float | None, report: list) -> Iterator[tuple[int, np.ndarray]]:
    if clip.video is not None:
        yield from read_video_frames(clip.video, fps, report)
        return
    for i, p in enumerate(clip.frames or []):
        try:
            yield i, decode_image(p)
        except CorruptImageError as e:
            report.append(("corrupt_image", str(p), e.problem))


def _process_clip(clip: SourceClip, dest: Path, align: bool, opts: dict, size: int, margin: float) -> dict:
    """Detect, align and write one clip into ``dest`` (created); returns its record (see :func:`write_clip_dataset`)."""
    from if3d.data.converters.align import align_face, detect_landmarks

    problems: list[tuple[str, str, str]] = []
    faceless: list[int] = []
    seen = written = 0
    mode = opts["clip_alignment"]
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if align and mode == "clip":
            found = {}
            for n, rgb in _source_frames(clip, opts["fps"], problems):
                seen += 1
                pts = detect_landmarks(_landmarker(), rgb)
                if pts is None:
                    faceless.append(n)
                else:
                    found[n] = pts
            if found:
                clip_landmarks = np.median(np.stack(list(found.values())), 0)  # one crop for the whole clip
                for n, rgb in _source_frames(clip, opts["fps"], []):
                    if n in found:
                        _encode(dest / f"{n:06d}.png", align_face(rgb, clip_landmarks, size, margin))
                        written += 1
        else:
            for n, rgb in _source_frames(clip, opts["fps"], problems):
                seen += 1
                if not align:
                    _encode(dest / f"{n:06d}.png", rgb)
                    written += 1
                    continue
                pts = detect_landmarks(_landmarker(), rgb)
                if pts is None:
                    faceless.append(n)
                    continue
                _encode(dest / f"{n:06d}.png", align_face(rgb, pts, size, margin))
                written += 1
    except DataError as e:
        problems.append(("unreadable_video", clip.origin, str(e).split(": ", 1)[-1]))
    except OSError as e:
        if is_fatal_write_error(e):
            raise write_error(dest, e) from None
        problems.append(("unreadable_video", clip.origin, str(e)))
    return {"frames": written, "source_frames": seen, "faceless": faceless, "problems": problems}


def _clip_job(args) -> tuple[int, dict]:
    """Worker: one clip into ``<partial>/clips/<split>/<label>/.<clip>.tmp`` renamed onto ``<clip>``, and its record."""
    i, clip, partial, align, opts, size, margin = args
    final = clips_dir(partial, clip.split) / str(clip.label) / clip.clip
    tmp = final.parent / f".{clip.clip}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(final, ignore_errors=True)
    record = _process_clip(clip, tmp, align, opts, size, margin)
    if record["frames"] > 0:
        os.replace(tmp, final)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(partial / _DONE / f"{_clip_key(clip)}.json", record)
    return i, record


def _clip_key(clip: SourceClip) -> str:
    return hashlib.sha1(f"{clip.split}/{clip.label}/{clip.clip}|{clip.origin}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------------- writing


def _assign_splits(scan: ClipScan, opts: WriteOptions) -> str:
    clips = scan.clips
    if scan.val_fold is not None:
        for c in clips:
            c.split = "val" if (opts.val_fraction > 0 and c.fold == scan.val_fold) else "train"
        return (f"{scan.split_note}; fold {scan.val_fold} is val" if opts.val_fraction > 0
                else f"{scan.split_note}; no validation split (--val-fraction 0)")
    for c in clips:
        c.split = c.split or "train"
    if any(c.split == "val" for c in clips):
        return scan.split_note or "official validation split"
    if opts.val_fraction <= 0:
        return "no validation split (--val-fraction 0)"
    train = [i for i, c in enumerate(clips) if c.split == "train"]
    if not train:
        return scan.split_note
    labels = np.array([clips[i].label for i in train], dtype=np.int64)
    groups = [clips[i].subject or clips[i].clip for i in train] if opts.group_split else None
    for i, v in zip(train, carve_validation(labels, opts.val_fraction, opts.seed, groups)):
        if v:
            clips[i].split = "val"
    how = "grouped by subject (clip when unknown)" if groups is not None else "stratified by clip"
    return f"validation carved from train: fraction {opts.val_fraction}, seed {opts.seed}, {how}"


def _fingerprint(scan: ClipScan, opts: WriteOptions, fmt: str, src) -> dict:
    """What decides the written frames: a partial folder with another fingerprint is not resumed."""
    o = {k: v for k, v in scan.options.items() if k != "skip_faceless_clips"}
    return {"format": fmt, "source": str(Path(src).resolve()) if src else "", "align": scan.align, **o,
            "size": opts.size, "margin": opts.margin, "val_fraction": opts.val_fraction, "seed": opts.seed,
            "group_split": opts.group_split}


def _open_partial(partial: Path, fingerprint: dict, verbose: bool) -> None:
    state = partial / _PARTIAL_STATE
    if partial.is_dir():
        try:
            old = json.loads(state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = None
        if old == fingerprint:
            if verbose:
                done = len(list((partial / _DONE).glob("*.json"))) if (partial / _DONE).is_dir() else 0
                print(f"resuming the interrupted conversion in {partial} ({done} clips done)", file=sys.stderr)
            return
        if old is None and any(p.name != _PARTIAL_STATE for p in partial.iterdir()):
            raise DataError(f"{partial}: a folder of that name is in the way and is not an interrupted conversion; "
                            "move it away")
        shutil.rmtree(partial)
        if verbose:
            print(f"an interrupted conversion with other options was in {partial}; starting afresh", file=sys.stderr)
    try:
        partial.mkdir(parents=True)
        atomic_write_json(state, fingerprint)
    except OSError as e:
        raise write_error(partial, e) from None


def write_clip_dataset(scan: ClipScan, out: str | os.PathLike, opts: WriteOptions, fmt: str = "",
                       src: str | os.PathLike = "", sources: list | None = None) -> dict:
    """Write ``scan`` as a canonical clip dataset at ``out`` (resumable, renamed into place at the end).

    Args:
        scan: the clips (:func:`scan_video`, :func:`scan_afew`, :func:`scan_ckplus_sequences`).
        out: the dataset root.
        opts: the converter options (``size``, ``margin``, ``workers``, ``val_fraction``, ``seed``, ``overwrite``).
        sources: paths ``out`` must stay apart from (default ``[src]``).

    Returns:
        the ``counts.json`` dict: ``classes``, ``splits`` (clips per class), ``totals`` (clips), ``frames``
        (per split), ``faceless_frames``, ``split_note``, ``skipped``, ``clip_alignment``.

    Raises:
        OutputError: ``out`` overlaps a source, is a file or a foreign non-empty folder, or cannot be written.
        FileExistsError: ``out`` is a non-empty dataset and ``overwrite`` is False.
        DataError: a clip without any face (without ``--skip-faceless-clips``; the finished clips are kept for
            resuming), or no clip could be written.
    """
    out = Path(out)
    sources = [src] if sources is None else list(sources)
    check_replaceable(out, "dataset", sources, opts.overwrite)
    report = scan.report
    if not scan.clips:
        raise DataError(f"nothing could be written from {src}: no clip found\n{report.summary(max_paths=20)}")
    split_note = _assign_splits(scan, opts)
    partial = out.parent / f".{out.name}.partial"
    _open_partial(partial, _fingerprint(scan, opts, fmt, src), opts.verbose)
    records: dict[int, dict] = {}
    pending = []
    for i, c in enumerate(scan.clips):
        done = partial / _DONE / f"{_clip_key(c)}.json"
        if done.is_file():
            try:
                records[i] = json.loads(done.read_text(encoding="utf-8"))
                continue
            except (OSError, ValueError):
                pass
        pending.append((i, c, partial, scan.align, scan.options, opts.size, opts.margin))
    _run_jobs(pending, records, opts)
    faceless_clips = []
    for i, c in enumerate(scan.clips):
        rec = records[i]
        for kind, path, detail in rec["problems"]:
            report.add(kind, path, detail)
        for n in rec["faceless"]:
            report.add("faceless_frame", f"{c.origin}#{n:06d}", f"clip {c.clip}")
        if rec["frames"] == 0 and rec["source_frames"] > 0 and scan.align:
            faceless_clips.append(c)
    if faceless_clips and not scan.options["skip_faceless_clips"]:
        listed = "\n".join(f"  {c.origin}" for c in faceless_clips[:20])
        raise DataError(f"{len(faceless_clips)} clip(s) without any face:\n{listed}\npass --skip-faceless-clips to "
                        f"leave them out with a count (the finished clips in {partial} are kept: the same command "
                        "resumes after them)")
    for c in faceless_clips:
        report.add("faceless_clip", c.origin, "no frame with a face")
    written = [(c, records[i]) for i, c in enumerate(scan.clips) if records[i]["frames"] > 0]
    if not written:
        shutil.rmtree(partial, ignore_errors=True)
        raise DataError(f"nothing could be written from {src}\n{report.summary(max_paths=20)}")
    counts = _counts(scan, written, fmt, src, out, split_note, report, opts)
    try:
        write_classes(partial, scan.class_names)
        write_clip_table(partial / CLIPS_FILE, [
            {"split": c.split, "label": c.label, "clip": c.clip, "subject": c.subject, "fold": c.fold,
             "frames": r["frames"], "source_frames": r["source_frames"], "faceless_frames": len(r["faceless"]),
             "source": c.origin} for c, r in written])
        atomic_write_json(partial / COUNTS_FILE, counts)
        report.save_json(partial / REPORT_FILE)
        shutil.rmtree(partial / _DONE, ignore_errors=True)
        (partial / _PARTIAL_STATE).unlink(missing_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    write_marker(partial, "dataset", format=fmt, source=str(Path(src).resolve()) if src else "")
    replace_dir(partial, out, "dataset")
    if opts.verbose:
        print(format_counts(counts))
        print(f"frames: {counts['frames']}; frames without a face (left out): {counts['faceless_frames']}")
        print(report.summary())
    return counts


def _run_jobs(pending: list, records: dict, opts: WriteOptions) -> None:
    from tqdm import tqdm

    bar = tqdm(total=len(pending), desc="clips", file=sys.stderr, leave=False, disable=None if opts.verbose else True)
    try:
        if opts.workers > 1 and len(pending) > 1:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            ctx = multiprocessing.get_context("spawn")  # fork after OpenCV/torch thread pools can deadlock
            with ProcessPoolExecutor(max_workers=opts.workers, mp_context=ctx) as pool:
                for i, rec in pool.map(_clip_job, pending):
                    records[i] = rec
                    bar.update(1)
        else:
            for job in pending:
                i, rec = _clip_job(job)
                records[i] = rec
                bar.update(1)
    finally:
        bar.close()


def _counts(scan: ClipScan, written, fmt, src, out, split_note, report, opts: WriteOptions) -> dict:
    names = scan.class_names
    splits = [s for s in SPLITS if any(c.split == s for c, _ in written)]
    splits += sorted({c.split for c, _ in written} - set(splits))
    return {
        "format": fmt,
        "source": str(src),
        "output": str(out),
        "classes": list(names),
        "splits": {s: {names[k]: sum(1 for c, _ in written if c.split == s and c.label == k) for k in range(len(names))}
                   for s in splits},
        "totals": {s: sum(1 for c, _ in written if c.split == s) for s in splits},
        "frames": {s: sum(r["frames"] for c, r in written if c.split == s) for s in splits},
        "faceless_frames": sum(len(r["faceless"]) for _, r in written),
        "split_note": split_note,
        "clip_alignment": scan.options["clip_alignment"] if scan.align else "none",
        "fps": scan.options["fps"],
        "subjects_file": CLIPS_FILE,
        "skipped": report.counts,
        "size": opts.size if scan.align else None,
        "margin": opts.margin if scan.align else None,
    }
