"""The canonical dataset layout, If3D's original layout, and the annotation CSV formats.

Canonical layout (``Dataset/README.md``); a video dataset has ``clips/`` instead of ``photos/``::

    <root>/classes.json                      class names in label order (JSON list)
    <root>/photos/<split>/<label>/<file>     <label> = integer class index (AffectNet-8 order, if3d.classes)
    <root>/renders/<split>/<label>/<stem>.<image ext>   what Smirk_batch_Render.py writes (+ .npz params,
                                             manifest.csv at the renders root; those are not images)
    <root>/annotations/<split>.csv           optional: file,valence,arousal (file relative to photos/<split>)
    <root>/subjects.csv                      optional: file,subject (file relative to the root, e.g.
                                             photos/train/6/S010_004_00000017.png) where the source names the
                                             person (CK+, JAFFE) or the source image (ExpW: the faces of one
                                             photo): the unit that subject-independent splits keep together
    <root>/counts.json, <root>/report.json   written by the converters
    <root>/clips/<split>/<label>/<clip>/<frame>.png         video datasets: one folder of face frames per
                                             clip, frames in time order by file name
    <root>/render_clips/<split>/<label>/<clip>/<frame>.png  renders of the frames (Smirk_batch_Render.py)
    <root>/clips.csv                         video datasets: split,label,clip,subject,fold,frames,... per clip

If3D's original layout (loaded as it is, through explicit paths)::

    Dataset/affectnet_clean/{train,val}/<0..7>/<number>.jpg         photos
    Dataset/affectnet_smirk/{train,val}/<0..7>/<number>.<ext>       renders (same relative path and stem)
    Dataset/affectnet_annotations/{train,val}_set_annotation_without_lnd.csv   number,exp,val,aro

Valence and arousal are in [-1, 1] (AffectNet's convention); AffectNet's -2 ("no value") and anything
outside [-1, 1] is reported as a bad annotation.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from if3d.atomic import atomic_write_json, atomic_write_text
from if3d.io.report import DataReport, LayoutError
from if3d.io.text import open_text

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
)
"""File extensions (lower case) treated as images."""

RENDER_SIDE_EXTENSIONS: frozenset[str] = frozenset({".npz", ".csv", ".json", ".txt", ".log"})
"""By-products of the render batch (parameters, manifest) that live in render trees; not reported."""

IGNORED_NAMES: frozenset[str] = frozenset({".DS_Store", "Thumbs.db", "desktop.ini", ".if3d-output.json"})
"""Operating-system clutter, and the toolkit's output marker (``if3d.outputs.MARKER_NAME``), skipped
without a report."""

SPLITS: tuple[str, ...] = ("train", "val", "test")
"""Canonical split names."""

CLASSES_FILE = "classes.json"
SUBJECTS_FILE = "subjects.csv"
CLIPS_FILE = "clips.csv"
COUNTS_FILE = "counts.json"
REPORT_FILE = "report.json"


def is_image_file(name: str) -> bool:
    """True when ``name`` has an image extension (case-insensitive)."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def photos_dir(root: str | os.PathLike, split: str) -> Path:
    """``<root>/photos/<split>``."""
    return Path(root) / "photos" / split


def renders_dir(root: str | os.PathLike, split: str) -> Path:
    """``<root>/renders/<split>``."""
    return Path(root) / "renders" / split


def clips_dir(root: str | os.PathLike, split: str) -> Path:
    """``<root>/clips/<split>`` (a video dataset's split: ``<label>/<clip>/<frame>`` folders)."""
    return Path(root) / "clips" / split


def render_clips_dir(root: str | os.PathLike, split: str) -> Path:
    """``<root>/render_clips/<split>`` (the renders of a video dataset's frames)."""
    return Path(root) / "render_clips" / split


def split_exists(root: str | os.PathLike, split: str) -> bool:
    """True when ``<root>/photos/<split>`` or ``<root>/clips/<split>`` is a folder."""
    return photos_dir(root, split).is_dir() or clips_dir(root, split).is_dir()


def annotations_path(root: str | os.PathLike, split: str) -> Path:
    """``<root>/annotations/<split>.csv``."""
    return Path(root) / "annotations" / f"{split}.csv"


def read_classes(root: str | os.PathLike) -> list[str]:
    """Class names in label order from ``<root>/classes.json``.

    Raises:
        LayoutError: the file is missing or is not a JSON list of strings.
    """
    path = Path(root) / CLASSES_FILE
    if not path.is_file():
        raise LayoutError(f"{path}: missing; a canonical dataset root holds classes.json (class names in label order)")
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise LayoutError(f"{path}: not valid JSON ({e})") from e
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise LayoutError(f"{path}: expected a non-empty JSON list of class names, got {names!r}")
    return names


def write_classes(root: str | os.PathLike, names: list[str] | tuple[str, ...]) -> None:
    """Write ``<root>/classes.json`` (atomically; creates ``root``)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(root) / CLASSES_FILE, list(names))


def write_subjects(root: str | os.PathLike, rows: list[tuple[str, str]]) -> None:
    """Write ``subjects.csv`` (``file,subject``; file relative to ``root``), atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(("file", "subject"))
    w.writerows(sorted(rows))
    atomic_write_text(Path(root) / SUBJECTS_FILE, buf.getvalue())


def read_subjects(root: str | os.PathLike) -> dict[str, str]:
    """``{file relative to root: subject}`` from ``subjects.csv``; empty when the dataset has none.

    Raises:
        LayoutError: the file exists but is not a ``file,subject`` CSV (the message names it).
    """
    path = Path(root) / SUBJECTS_FILE
    if not path.is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "subject"} <= set(reader.fieldnames):
            raise LayoutError(f"{path}: expected the columns file,subject, got {reader.fieldnames}")
        return {row["file"]: row["subject"] for row in reader}


def if3d_paths(split: str, base: str | os.PathLike = "Dataset") -> dict[str, Path]:
    """If3D's original paths for one split (``train`` or ``val``), as keyword arguments of ``PairedDataset``.

    Returns:
        ``{"photo_root": base/affectnet_clean/<split>, "render_root": base/affectnet_smirk/<split>,
        "annotations_csv": base/affectnet_annotations/<split>_set_annotation_without_lnd.csv}``
    """
    base = Path(base)
    return {
        "photo_root": base / "affectnet_clean" / split,
        "render_root": base / "affectnet_smirk" / split,
        "annotations_csv": base / "affectnet_annotations" / f"{split}_set_annotation_without_lnd.csv",
    }


@dataclass
class TreeIndex:
    """Image files of a ``<label>/<file>`` tree.

    ``files``: (path relative to the tree root with '/' separators, label) in sorted order.
    """

    root: Path
    files: list[tuple[str, int]] = field(default_factory=list)


def scan_label_tree(
    root: str | os.PathLike,
    num_labels: int,
    report: DataReport,
    side_extensions: frozenset[str] = frozenset(),
) -> TreeIndex:
    """Index the images of a ``<root>/<label>/...`` tree, ``<label>`` an integer in ``[0, num_labels)``.

    Files may sit in sub-folders of a label folder (their relative path is kept). Problems go to
    ``report``: ``unknown_label_folder`` (one entry per folder, detail = number of files skipped),
    ``stray_file`` (files directly under ``root``), ``non_image_file`` (anything without an image
    extension, except ``side_extensions`` and OS clutter), ``empty_image`` (size 0; dropped).

    Raises:
        LayoutError: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a directory (expected <label>/<file> image folders)")
    index = TreeIndex(root=root)
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        if entry.name in IGNORED_NAMES:
            continue
        if not entry.is_dir():
            if os.path.splitext(entry.name)[1].lower() not in side_extensions:
                report.add("stray_file", entry.path, "not inside a label folder")
            continue
        label = _parse_label(entry.name, num_labels)
        files = _walk_files(Path(entry.path))
        if label is None:
            n_img = sum(1 for f in files if is_image_file(f))
            report.add("unknown_label_folder", entry.path,
                       f"{n_img} image(s) skipped; labels are 0..{num_labels - 1}")
            continue
        for rel in files:
            full = root / entry.name / rel
            ext = os.path.splitext(rel)[1].lower()
            if ext not in IMAGE_EXTENSIONS:
                if ext not in side_extensions and os.path.basename(rel) not in IGNORED_NAMES:
                    report.add("non_image_file", full)
                continue
            try:
                size = full.stat().st_size
            except OSError as e:
                report.add("corrupt_image", full, f"cannot stat: {e}")
                continue
            if size == 0:
                report.add("empty_image", full)
                continue
            index.files.append((f"{entry.name}/{rel}", label))
    return index


def _parse_label(name: str, num_labels: int) -> int | None:
    if not name.isdigit():
        return None
    label = int(name)
    return label if 0 <= label < num_labels and str(label) == name else None


def _walk_files(folder: Path) -> list[str]:
    """All files under ``folder``, relative with '/' separators, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, folder)
        for name in filenames:
            out.append(name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/"))
    out.sort()
    return out


# ----------------------------------------------------------------------------------------------------
# Annotations


@dataclass
class Annotations:
    """Valence/arousal rows of one split.

    ``key``: ``"file"`` (canonical CSV: rows keyed by the path relative to ``photos/<split>``) or
    ``"number"`` (If3D's CSV: rows keyed by the integer file stem). ``rows`` maps the key to
    ``(valence, arousal, label or None)``; ``path`` is the CSV it came from.
    """

    path: Path
    key: str
    rows: dict[str | int, tuple[float, float, int | None]]


_CANONICAL_COLUMNS = ("file", "valence", "arousal")
_IF3D_COLUMNS = ("number", "val", "aro")


def read_annotations(path: str | os.PathLike, report: DataReport) -> Annotations:
    """Read a canonical (``file,valence,arousal[,label]``) or If3D (``number,exp,val,aro``) annotation CSV.

    Rows with an unparsable number, a non-finite value or a value outside [-1, 1] (AffectNet's -2 means
    "no value") are reported as ``bad_annotation`` and ignored; repeated keys as
    ``duplicate_annotation`` (the first row is kept).

    Raises:
        LayoutError: the file is missing or has neither column set.
        NotUtf8Error: the file is not UTF-8 text (a :class:`DataError` naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise LayoutError(f"{path}: annotation CSV not found")
    with open_text(path, "annotation CSV") as f:
        reader = csv.DictReader(f)
        columns = tuple(c.strip() for c in (reader.fieldnames or ()))
        reader.fieldnames = list(columns)
        if all(c in columns for c in _CANONICAL_COLUMNS):
            key_col, v_col, a_col, l_col, key = "file", "valence", "arousal", "label", "file"
        elif all(c in columns for c in _IF3D_COLUMNS):
            key_col, v_col, a_col, l_col, key = "number", "val", "aro", "exp", "number"
        else:
            raise LayoutError(
                f"{path}: unknown annotation columns {list(columns)}; expected "
                f"{','.join(_CANONICAL_COLUMNS)} (canonical) or number,exp,val,aro (If3D)"
            )
        has_label = l_col in columns
        rows: dict[str | int, tuple[float, float, int | None]] = {}
        for line_no, row in enumerate(reader, start=2):
            where = f"{path}:{line_no}"
            raw_key = (row.get(key_col) or "").strip()
            try:
                k: str | int = int(float(raw_key)) if key == "number" else raw_key.replace("\\", "/")
                if k == "":
                    raise ValueError("empty key")
                val = float(row[v_col])
                aro = float(row[a_col])
                lab = int(float(row[l_col])) if has_label and (row.get(l_col) or "").strip() != "" else None
            except (TypeError, ValueError) as e:
                report.add("bad_annotation", where, f"unparsable row ({e})")
                continue
            if not (math.isfinite(val) and math.isfinite(aro) and -1.0 <= val <= 1.0 and -1.0 <= aro <= 1.0):
                report.add("bad_annotation", where, f"{key}={k}: valence {val}, arousal {aro} outside [-1, 1]")
                continue
            if k in rows:
                report.add("duplicate_annotation", where, f"{key}={k}")
                continue
            rows[k] = (val, aro, lab)
    return Annotations(path=path, key=key, rows=rows)


def write_annotations(path: str | os.PathLike, rows: list[tuple[str, float, float]]) -> None:
    """Write a canonical annotation CSV (``file,valence,arousal``), atomically.

    Args:
        rows: (file relative to ``photos/<split>``, valence, arousal), valence/arousal in [-1, 1].
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CANONICAL_COLUMNS)
    for file, val, aro in rows:
        w.writerow((file, f"{val:.6g}", f"{aro:.6g}"))
    atomic_write_text(path, buf.getvalue())
