"""Shared machinery of the converters: source items, split carving, the atomic writer and the count table.

A converter reads a source dataset into a :class:`SourceScan` (one :class:`SourceItem` per output photo,
plus a :class:`~if3d.io.report.DataReport` of what it had to skip); :func:`write_dataset` then assigns
splits (official ones kept; a stratified, seeded validation split carved from ``train`` when the source
has none), writes the canonical tree into a temporary folder next to ``--out`` and renames it into place
only when everything is written (so an interrupted conversion never leaves a half-written dataset).

Files that need no change are hard-linked (falling back to a copy across file systems), so already
aligned datasets convert in seconds; pixel arrays (FER2013's CSV) are written as PNG; crops and aligned
faces as JPEG (quality 95). Every image is decoded once on the way (:func:`if3d.io.images.verify_image`):
a source that does not decode is a counted ``corrupt_image`` and is never placed in the output.

Where the output may go is decided by :mod:`if3d.outputs`: never onto, around or inside the source,
and ``--overwrite`` replaces only a folder holding the toolkit's dataset marker. A write that fails
(read-only, full disk) raises :class:`~if3d.outputs.OutputError` naming the file, after the temporary
folder was removed.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import shutil
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from if3d.atomic import atomic_copy, atomic_write_bytes, atomic_write_json
from if3d.data.layout import (
    COUNTS_FILE,
    IGNORED_NAMES,
    IMAGE_EXTENSIONS,
    REPORT_FILE,
    SPLITS,
    annotations_path,
    photos_dir,
    write_annotations,
    write_classes,
    write_subjects,
)
from if3d.face.landmarks import FaceLandmarker
from if3d.io.images import decode_image, verify_image
from if3d.io.report import CorruptImageError, DataError, DataReport
from if3d.io.text import open_text
from if3d.outputs import check_replaceable, is_fatal_write_error, replace_dir, write_error, write_marker

JPEG_QUALITY = 95


@dataclass
class SourceItem:
    """One photo of the output dataset, as found in the source.

    Exactly one of ``source`` (an image file) and ``pixels`` (a uint8 [H, W] or [H, W, 3] RGB array) is set.
    ``box`` (left, top, right, bottom, source pixels) crops the source; ``align`` runs MediaPipe face
    detection and alignment (inside ``box``, enlarged, when both are set). ``group`` (e.g. the subject)
    keeps related photos in one split when a validation split is carved. ``origin`` names the source
    (file or CSV row) in reports.
    """

    label: int
    name: str
    split: str | None = None
    source: Path | None = None
    pixels: np.ndarray | None = None
    box: tuple[float, float, float, float] | None = None
    align: bool = False
    valence: float | None = None
    arousal: float | None = None
    group: str | None = None
    origin: str = ""


@dataclass
class SourceScan:
    """What a converter found: items, problems, class names (label order) and how splits were decided."""

    items: list[SourceItem]
    report: DataReport
    class_names: list[str]
    split_note: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class WriteOptions:
    """Options of :func:`write_dataset`.

    ``val_fraction``/``seed``: the carved validation split (when the source has no official one; 0
    disables); ``calibration_fraction``: a stratified, seeded share of the training photos written as a
    ``calib`` split (0: none) -- held out from training so that probabilities can be calibrated and
    checkpoints followed on photos that neither the model nor the reported split has seen; ``group_split``: carve by ``SourceItem.group`` (subject-independent); ``overwrite``: replace
    a non-empty ``out``; ``link``: ``"hardlink"`` (falls back to copy), ``"copy"`` or ``"symlink"``;
    ``size``/``margin``: output side and margin of aligned faces; ``workers``: processes for face
    detection/cropping; ``verbose``: print the count table and the report summary.
    """

    val_fraction: float = 0.1
    calibration_fraction: float = 0.0
    seed: int = 0
    group_split: bool = True
    overwrite: bool = False
    link: str = "hardlink"
    size: int = 224
    margin: float = 0.25
    workers: int = 1
    verbose: bool = True


# ----------------------------------------------------------------------------------------------------
# splits


def carve_validation(labels: np.ndarray, fraction: float, seed: int, groups: list | None = None) -> np.ndarray:
    """bool [N]: which samples go to the validation split, stratified by label and seeded.

    Without ``groups``: scikit-learn ``train_test_split(stratify=labels)`` (classes with a single sample
    stay in train). With ``groups``: ``StratifiedGroupKFold(n_splits=round(1/fraction))`` and its first
    fold, so no group (subject, source image) is in both splits; the validation share is then about
    ``1 / n_splits``.

    Raises:
        DataError: the split is impossible (e.g. too few samples or groups for the fraction).
    """
    from sklearn.model_selection import StratifiedGroupKFold, train_test_split

    labels = np.asarray(labels)
    n = len(labels)
    is_val = np.zeros(n, dtype=bool)
    if n == 0 or fraction <= 0:
        return is_val
    if not 0 < fraction < 1:
        raise DataError(f"val fraction must be in (0, 1), got {fraction}")
    if groups is not None and len(set(groups)) >= 2:
        n_splits = max(2, int(round(1.0 / fraction)))
        n_groups = len(set(groups))
        if n_groups < n_splits:
            raise DataError(
                f"cannot carve a {fraction:.0%} validation split by subject: only {n_groups} groups "
                f"(need {n_splits}); use a larger --val-fraction or --split-by sample"
            )
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, val_idx = next(cv.split(np.zeros(n), labels, groups))
        is_val[val_idx] = True
        return is_val
    counts = Counter(labels.tolist())
    pool = np.array([i for i in range(n) if counts[labels[i]] >= 2])
    if len(pool) == 0:
        return is_val
    try:
        _, val_idx = train_test_split(pool, test_size=fraction, stratify=labels[pool], random_state=seed)
    except ValueError as e:
        raise DataError(f"cannot carve a stratified {fraction:.0%} validation split from {n} samples: {e}") from e
    is_val[val_idx] = True
    return is_val


def assign_splits(scan: SourceScan, opts: WriteOptions) -> str:
    """Set ``split`` on every item (None -> train; carve ``val`` from train when no item is in val; carve
    ``calib`` from train when ``opts.calibration_fraction`` > 0).

    Returns:
        a one-line description of how the validation (and calibration) splits were obtained.
    """
    for it in scan.items:
        if it.split is None:
            it.split = "train"
    note = _assign_val(scan, opts)
    if opts.calibration_fraction > 0:
        train = [i for i, it in enumerate(scan.items) if it.split == "train"]
        labels = np.array([scan.items[i].label for i in train], dtype=np.int64)
        # its own seed stream: the calibration photos do not depend on whether val was carved too
        is_cal = carve_validation(labels, opts.calibration_fraction, opts.seed + 7919)
        for i, c in zip(train, is_cal):
            if c:
                scan.items[i].split = "calib"
        note += (f"; calibration split 'calib' carved from train: fraction {opts.calibration_fraction}, "
                 f"stratified, seed {opts.seed}")
    return note


def _assign_val(scan: SourceScan, opts: WriteOptions) -> str:
    if any(it.split == "val" for it in scan.items):
        return "official validation split"
    if opts.val_fraction <= 0:
        return "no validation split (--val-fraction 0)"
    train = [i for i, it in enumerate(scan.items) if it.split == "train"]
    labels = np.array([scan.items[i].label for i in train], dtype=np.int64)
    groups = None
    if opts.group_split and all(scan.items[i].group is not None for i in train):
        groups = [scan.items[i].group for i in train]
    is_val = carve_validation(labels, opts.val_fraction, opts.seed, groups)
    for i, v in zip(train, is_val):
        if v:
            scan.items[i].split = "val"
    how = "grouped by subject/source (StratifiedGroupKFold)" if groups is not None else "stratified (train_test_split)"
    return f"validation carved from train: fraction {opts.val_fraction}, seed {opts.seed}, {how}"


# ----------------------------------------------------------------------------------------------------
# per-item work (module-level so that it runs in worker processes)

_LANDMARKER = None


def _landmarker():
    global _LANDMARKER
    if _LANDMARKER is None:
        _LANDMARKER = FaceLandmarker()
    return _LANDMARKER


def _read_rgb(path: Path) -> np.ndarray:
    return decode_image(path)


def _encode(path: Path, rgb: np.ndarray) -> None:
    """Write ``rgb`` (uint8 [H, W] or [H, W, 3] RGB) to ``path`` (format from its extension), atomically."""
    img = rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, buf = cv2.imencode(path.suffix.lower(), img, params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode a {img.shape} image as {path.suffix}")
    atomic_write_bytes(path, buf.tobytes())


def _place(src: Path, dest: Path, link: str) -> None:
    if link == "symlink":
        os.symlink(os.path.abspath(src), dest)
        return
    if link == "hardlink":
        try:
            os.link(src, dest)
            return
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    atomic_copy(src, dest)


def process_item(item: SourceItem, dest: Path, link: str, size: int, margin: float) -> tuple[str, str] | None:
    """Write one item to ``dest`` and check that what was written decodes.

    A source image placed unchanged (linked or copied) is decoded first and never placed when it does
    not decode; an image the converter encodes (pixels, crops, aligned faces) is decoded after writing
    and removed when it does not.

    Returns:
        ``None`` on success, else ``(problem kind, detail)`` (nothing is left at ``dest``).

    Raises:
        OutputError: ``dest`` cannot be written (full disk, read-only, no permission); names ``dest``.
    """
    try:
        if item.pixels is None and item.box is None and not item.align:
            verify_image(item.source)
            _place(item.source, dest, link)
            return None
        problem = _encode_item(item, dest, size, margin)
        if problem is None:
            try:
                verify_image(dest)
            except CorruptImageError as e:
                dest.unlink(missing_ok=True)
                return "corrupt_image", f"written as {dest.name} but does not decode: {e.problem}"
        return problem
    except CorruptImageError as e:
        if e.problem == "file not found":
            return "missing_source_image", str(e)
        return "corrupt_image", e.problem
    except FileNotFoundError as e:
        return "missing_source_image", str(e)
    except OSError as e:
        if is_fatal_write_error(e):
            raise write_error(dest, e) from None
        raise


def _encode_item(item: SourceItem, dest: Path, size: int, margin: float) -> tuple[str, str] | None:
    """Write a pixel array, a crop or an aligned face to ``dest``; ``None`` or ``(problem kind, detail)``."""
    from if3d.data.converters.align import align_face, detect_landmarks, enlarge_box

    if item.pixels is not None:
        _encode(dest, item.pixels)
        return None
    rgb = _read_rgb(item.source)
    h, w = rgb.shape[:2]
    if item.box is not None:
        left, top, right, bottom = item.box
        left, top = max(0.0, left), max(0.0, top)
        right, bottom = min(float(w), right), min(float(h), bottom)
        if right - left < 2 or bottom - top < 2:
            return "bad_box", f"box {item.box} outside the {w}x{h} image"
    if not item.align:
        crop = rgb[int(round(top)):int(round(bottom)), int(round(left)):int(round(right))]
        _encode(dest, np.ascontiguousarray(crop))
        return None
    # detect in the (enlarged) box, then align in the full image
    x0, y0 = 0, 0
    region = rgb
    if item.box is not None:
        x0, y0, x1, y1 = enlarge_box((left, top, right, bottom), 0.5, w, h)
        region = np.ascontiguousarray(rgb[y0:y1, x0:x1])
    landmarks = detect_landmarks(_landmarker(), region)
    if landmarks is None:
        return "no_face", "MediaPipe found no face"
    landmarks = landmarks.copy()
    landmarks[:, 0] += x0
    landmarks[:, 1] += y0
    _encode(dest, align_face(rgb, landmarks, size, margin))
    return None


def _process_star(args):
    return process_item(*args)


# ----------------------------------------------------------------------------------------------------
# the writer


def write_dataset(scan: SourceScan, out: str | os.PathLike, opts: WriteOptions, fmt: str = "",
                  src: str | os.PathLike = "", sources: list[str | os.PathLike] | None = None) -> dict:
    """Write ``scan`` as a canonical dataset at ``out`` (atomically) and return the counts dict.

    Writes ``photos/<split>/<label>/<name>`` (every image decoded once: one that does not decode is a
    counted ``corrupt_image`` and is not written), ``annotations/<split>.csv`` (when items carry valence
    and arousal), ``classes.json``, ``subjects.csv`` (when every item names its subject or source image),
    ``counts.json`` (the count table and how the splits were made),
    ``report.json`` (every skipped source item, by kind) and the toolkit's output marker
    (:data:`if3d.outputs.MARKER_NAME`). Everything goes into a temporary folder next to ``out`` that is
    renamed into place at the end; on any failure it is removed and ``out`` is left as it was.

    Args:
        sources: the source paths ``out`` must stay apart from (default: ``[src]``).

    Raises:
        OutputError: ``out`` overlaps a source, is a file, is a non-empty folder the toolkit did not
            write, or cannot be written (read-only, full disk); the message names the path.
        FileExistsError: ``out`` is a non-empty dataset and ``opts.overwrite`` is False.
        DataError: no item could be written.
    """
    out = Path(out)
    sources = [src] if sources is None else list(sources)
    check_replaceable(out, "dataset", sources, opts.overwrite)
    report = scan.report
    split_note = assign_splits(scan, opts)
    names = scan.class_names

    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as e:
        raise write_error(out, e) from None
    try:
        # destinations, unique per folder
        taken: set[tuple[str, int, str]] = set()
        jobs: list[tuple[int, Path]] = []
        for i, it in enumerate(scan.items):
            name = it.name
            if it.pixels is not None or it.box is not None or it.align:
                ext = ".png" if it.pixels is not None else ".jpg"
                name = os.path.splitext(name)[0] + ext
            stem, ext = os.path.splitext(name)
            k = 1
            while (it.split, it.label, name.lower()) in taken:
                k += 1
                name = f"{stem}_{k}{ext}"
            if k > 1:
                report.add("renamed_duplicate", it.origin or it.name, f"written as {name}")
            taken.add((it.split, it.label, name.lower()))
            it.name = name
            folder = photos_dir(tmp, it.split) / str(it.label)
            jobs.append((i, folder / name))
        for folder in {d.parent for _, d in jobs}:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise write_error(folder, e) from None

        ok = np.ones(len(scan.items), dtype=bool)
        heavy = [(i, d) for i, d in jobs if scan.items[i].box is not None or scan.items[i].align]
        light = [(i, d) for i, d in jobs if not (scan.items[i].box is not None or scan.items[i].align)]
        results: list[tuple[int, tuple[str, str] | None]] = []
        light_args = [(scan.items[i], d, opts.link, opts.size, opts.margin) for i, d in light]
        if opts.workers > 1 and len(light) > 1:
            # linking and decoding to verify: I/O and libjpeg/libpng release the GIL
            with ThreadPoolExecutor(max_workers=opts.workers) as pool:
                res = list(_progress(pool.map(_process_star, light_args), opts.verbose, "writing",
                                     total=len(light_args)))
        else:
            res = [_process_star(a) for a in _progress(light_args, opts.verbose, "writing")]
        results.extend((i, r) for (i, _), r in zip(light, res))
        if heavy:
            args = [(scan.items[i], d, opts.link, opts.size, opts.margin) for i, d in heavy]
            if opts.workers > 1 and len(heavy) > 1:
                # spawn, not fork: forking after OpenCV/torch started their thread pools can deadlock
                ctx = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(max_workers=opts.workers, mp_context=ctx) as pool:
                    res = list(_progress(pool.map(_process_star, args, chunksize=16), opts.verbose,
                                         "cropping/aligning", total=len(args)))
            else:
                res = [_process_star(a) for a in _progress(args, opts.verbose, "cropping/aligning")]
            results.extend((i, r) for (i, _), r in zip(heavy, res))
        for i, r in results:
            if r is not None:
                report.add(r[0], scan.items[i].origin or str(scan.items[i].source), r[1])
                ok[i] = False

        written = [it for it, good in zip(scan.items, ok) if good]
        if not written:
            raise DataError(f"nothing could be written from {src}\n{report.summary(max_paths=20)}")

        splits = [s for s in SPLITS if any(it.split == s for it in written)]
        splits += sorted({it.split for it in written} - set(splits))
        counts = {
            "format": fmt,
            "source": str(src),
            "output": str(out),
            "classes": list(names),
            "splits": {
                s: {names[c]: sum(1 for it in written if it.split == s and it.label == c) for c in range(len(names))}
                for s in splits
            },
            "totals": {s: sum(1 for it in written if it.split == s) for s in splits},
            "split_note": f"{scan.split_note}; {split_note}" if scan.split_note else split_note,
            "skipped": report.counts,
        }
        if scan.extra.get("unknown_class_names"):
            counts["unknown_class_names"] = dict(scan.extra["unknown_class_names"])
        report.stats["written"] = len(written)
        try:
            for split in splits:
                rows = [(f"{it.label}/{it.name}", it.valence, it.arousal) for it in written
                        if it.split == split and it.valence is not None and it.arousal is not None]
                if rows:
                    write_annotations(annotations_path(tmp, split), rows)
            write_classes(tmp, names)
            if written and all(it.group is not None for it in written):
                write_subjects(tmp, [(f"photos/{it.split}/{it.label}/{it.name}", str(it.group)) for it in written])
            atomic_write_json(tmp / COUNTS_FILE, counts)
            report.save_json(tmp / REPORT_FILE)
        except OSError as e:
            raise write_error(out, e) from None
        write_marker(tmp, "dataset", format=fmt, source=str(Path(src).resolve()) if src else "")
        replace_dir(tmp, out, "dataset")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if opts.verbose:
        print(format_counts(counts))
        print(report.summary())
    return counts


def _progress(iterable, verbose: bool, desc: str, total: int | None = None):
    if not verbose:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False, mininterval=1.0,
                disable=None)


def format_counts(counts: dict) -> str:
    """The per-split, per-class count table of a ``counts.json`` dict, as text."""
    names = counts["classes"]
    splits = list(counts["splits"])
    width = max(8, *(len(n) for n in names)) + 2
    lines = [f"{counts.get('format', '')}: {counts.get('source', '')} -> {counts.get('output', '')}"]
    header = f"{'label':<6}{'class':<{width}}" + "".join(f"{s:>9}" for s in splits) + f"{'total':>9}"
    lines.append(header)
    lines.append("-" * len(header))
    for c, n in enumerate(names):
        row = [counts["splits"][s][n] for s in splits]
        lines.append(f"{c:<6}{n:<{width}}" + "".join(f"{v:>9}" for v in row) + f"{sum(row):>9}")
    lines.append("-" * len(header))
    tot = [counts["totals"][s] for s in splits]
    lines.append(f"{'':<6}{'total':<{width}}" + "".join(f"{v:>9}" for v in tot) + f"{sum(tot):>9}")
    if counts.get("split_note"):
        lines.append(f"splits: {counts['split_note']}")
    if counts.get("unknown_class_names"):
        listed = ", ".join(f"{name!r} {n}" for name, n in counts["unknown_class_names"].items())
        lines.append(f"unknown class names (rows skipped): {listed}; map them with --class-map NAME=CANONICAL")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# helpers for the scanners


SPLIT_ALIASES: dict[str, str] = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "publictest": "val",
    "test": "test", "privatetest": "test",
}
"""Source split folder names (lower case) onto canonical splits."""


def list_images(folder: Path, report: DataReport) -> list[Path]:
    """Image files under ``folder`` (recursive, sorted); other files are reported as ``non_image_file``."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if name in IGNORED_NAMES:
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                try:
                    size = p.stat().st_size
                except OSError as e:  # a dangling link or a symbolic link loop
                    report.add("corrupt_image", p, f"cannot read: {e.strerror or e}")
                    continue
                if size == 0:
                    report.add("empty_image", p)
                else:
                    out.append(p)
            else:
                report.add("non_image_file", p)
    return out


def label_lines(path: Path):
    """Yield ``(where, fields)`` for each non-empty line of a whitespace-separated label file
    (``where`` = ``path:line`` for reports)."""
    with open_text(path, "label file") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.split()
            if fields:
                yield f"{path}:{line_no}", fields


def find_file(src: Path, names: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` (relative paths) found under ``src`` (or ``src`` itself if it is such a file).

    Raises:
        FileNotFoundError: none found; the message lists what was looked for.
    """
    if src.is_file() and src.name in {Path(n).name for n in names}:
        return src
    for n in names:
        p = src / n
        if p.is_file():
            return p
    for n in names:  # one level deeper (archives often unpack into a folder)
        hits = sorted(src.glob(f"*/{n}"))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{src}: {what} not found (looked for {', '.join(names)})")
