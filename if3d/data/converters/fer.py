"""FER2013 (Kaggle CSV and image folders) and FERPlus.

FER2013 (Goodfellow et al., "Challenges in Representation Learning", ICONIP 2013): 35,887 48x48 grey
faces; ``fer2013.csv`` has ``emotion,pixels,Usage`` with emotion 0 Angry, 1 Disgust, 2 Fear, 3 Happy,
4 Sad, 5 Surprise, 6 Neutral and Usage Training / PublicTest / PrivateTest. Official splits are kept:
Training -> train, PublicTest -> val, PrivateTest -> test (FERPlus's FER2013Train/Valid/Test). Images
are written as ``fer<row:07d>.png``, the names FERPlus gives the same rows.

The image-folder layout (``{train,test}/<class>/<Usage>_<id>.jpg``) takes the split from the file
name's Usage prefix when it has one (so an image lands in the same split as from the CSV: the common
Kaggle ``test`` folder holds PublicTest images -> val), otherwise from the folder name.

FERPlus (Barsoum et al., "Training Deep Networks for Facial Expression Recognition with Crowd-Sourced
Label Distribution", ICMI 2016): ``fer2013new.csv`` (``Usage,Image name,neutral,happiness,surprise,
sadness,anger,disgust,fear,contempt,unknown,NF``, ten votes per row, rows in fer2013.csv order). Labels
follow the official ``majority`` mode of microsoft/FERPlus: votes of 1 are dropped as outliers, the
class with more than half of the remaining votes wins; rows whose winner is ``unknown`` or ``NF`` and
rows without such a majority are dropped and counted. Images come from ``FER2013Train/Valid/Test``
folders (generate_training_data.py) or, when absent, from ``fer2013.csv`` next to ``fer2013new.csv``.
"""

from __future__ import annotations

import csv
import re
import warnings
from pathlib import Path

import numpy as np

from if3d.classes import AFFECTNET7, AFFECTNET8, canonical_label
from if3d.data.converters.base import SPLIT_ALIASES, SourceItem, SourceScan, find_file, list_images
from if3d.io.report import DataError, DataReport
from if3d.io.text import open_text

FER2013_SIDE = 48
"""FER2013 faces are 48 x 48 grey."""
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
"""FER2013 emotion codes 0..6."""
FER2013_USAGE = {"training": "train", "publictest": "val", "privatetest": "test"}
FERPLUS_COLUMNS = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                   "unknown", "NF")
FERPLUS_FOLDERS = {"FER2013Train": "train", "FER2013Valid": "val", "FER2013Test": "test"}
_USAGE_PREFIX = re.compile(r"^(training|publictest|privatetest)_", re.IGNORECASE)


def _parse_pixels(text: str) -> np.ndarray:
    """uint8 [48, 48] from FER2013's space-separated pixel string.

    Raises:
        ValueError: not exactly 48 x 48 integers in 0..255 (a cut-off row, a non-number, another size).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy < 2.3 only warns on unparsable text
            arr = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning) as e:
        raise ValueError("pixels are not all integers") from e
    if arr.size != FER2013_SIDE * FER2013_SIDE:
        raise ValueError(f"expected {FER2013_SIDE}x{FER2013_SIDE} = {FER2013_SIDE * FER2013_SIDE} pixel values, "
                         f"got {arr.size}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(f"pixel values {arr.min()}..{arr.max()} outside 0..255")
    return arr.astype(np.uint8).reshape(FER2013_SIDE, FER2013_SIDE)


_FER2013_COLUMNS = ("emotion", "pixels", "Usage")


def read_fer2013_csv(path: Path, report: DataReport) -> list[tuple[int, str, np.ndarray] | None]:
    """Rows of fer2013.csv as (label, split, pixels uint8 [48, 48]) or None for a bad row.

    Bad rows (an emotion outside 0..6, an unknown Usage, pixels that are not 48 x 48 values in 0..255,
    a row cut short or with extra fields, as the last row of a truncated download) are reported as
    ``bad_label_row`` with the file and line.

    Raises:
        DataError: the header lacks ``emotion,pixels,Usage``, or the file is not UTF-8.
    """
    rows: list[tuple[int, str, np.ndarray] | None] = []
    with open_text(path, "FER2013 CSV") as f:
        reader = csv.DictReader(f)
        if not set(_FER2013_COLUMNS) <= set(reader.fieldnames or ()):
            raise DataError(f"{path}: expected columns emotion,pixels,Usage, got {reader.fieldnames}")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                missing = [c for c in _FER2013_COLUMNS if row.get(c) is None]
                if missing:
                    raise ValueError(f"row cut short: no {', '.join(missing)} field (truncated file?)")
                if None in row:
                    raise ValueError(f"{len(row[None])} field(s) more than the header")
                code = int(row["emotion"])
                if not 0 <= code < len(FER2013_CLASSES):
                    raise ValueError(f"emotion {code} outside 0..6")
                usage = row["Usage"].strip()
                if usage.lower() not in FER2013_USAGE:
                    raise ValueError(f"Usage {usage!r} is not Training, PublicTest or PrivateTest")
                split = FER2013_USAGE[usage.lower()]
                pixels = _parse_pixels(row["pixels"])
            except ValueError as e:
                report.add("bad_label_row", where, str(e))
                rows.append(None)
                continue
            rows.append((canonical_label(FER2013_CLASSES[code]), split, pixels))
    return rows


def scan_fer2013_csv(src: Path, **_) -> SourceScan:
    """``--src``: a CSV file in FER2013's format (any name), or a folder holding ``fer2013.csv``."""
    report = DataReport(f"fer2013-csv {src}")
    path = src if src.is_file() else find_file(src, ("fer2013.csv", "fer2013/fer2013.csv"), "fer2013.csv")
    items = []
    for row_no, row in enumerate(read_fer2013_csv(path, report)):
        if row is None:
            continue
        label, split, pixels = row
        items.append(SourceItem(label=label, name=f"fer{row_no:07d}.png", split=split, pixels=pixels,
                                origin=f"{path}:{row_no + 2}"))
    return SourceScan(items, report, list(AFFECTNET7),
                      "official splits: Training->train, PublicTest->val, PrivateTest->test")


def scan_fer2013_folders(src: Path, **_) -> SourceScan:
    """``--src``: folder with split folders (train/test/...) of class folders (angry, ..., neutral)."""
    report = DataReport(f"fer2013-folders {src}")
    items = []
    split_dirs = [d for d in sorted(src.iterdir()) if d.is_dir()]
    for sd in split_dirs:
        folder_split = SPLIT_ALIASES.get(sd.name.lower())
        if folder_split is None:
            report.add("unknown_label_folder", sd, "neither a split folder (train/val/test) nor known")
            continue
        for cd in sorted(d for d in sd.iterdir() if d.is_dir()):
            try:
                label = canonical_label(cd.name)
            except KeyError:
                report.add("unknown_class", cd, "class folder name")
                continue
            for p in list_images(cd, report):
                m = _USAGE_PREFIX.match(p.name)
                split = FER2013_USAGE[m.group(1).lower()] if m else folder_split
                items.append(SourceItem(label=label, name=p.name, split=split, source=p, origin=str(p)))
        for p in sorted(f for f in sd.iterdir() if f.is_file()):
            report.add("unlabelled_image", p, "file outside a class folder")
    if not items and not split_dirs:
        raise DataError(f"{src}: no split folders (expected train/, test/ ... with class folders inside)")
    return SourceScan(items, report, list(AFFECTNET7),
                      "split from the Usage file-name prefix (Training->train, PublicTest->val, "
                      "PrivateTest->test), else from the folder name")


def ferplus_majority(votes: list[float]) -> int | str:
    """FERPlus ``majority`` label of ten vote counts (FERPLUS_COLUMNS order).

    Returns:
        the winning column index 0..7, or ``"unknown"``, ``"NF"`` or ``"no_majority"``.
    """
    v = [0.0 if x <= 1.0 else float(x) for x in votes]  # single votes are outliers (microsoft/FERPlus)
    total = sum(v)
    best = int(np.argmax(v))
    if total <= 0 or v[best] <= 0.5 * total:
        return "no_majority"
    if best == 8:
        return "unknown"
    if best == 9:
        return "NF"
    return best


def scan_ferplus(src: Path, **_) -> SourceScan:
    """``--src``: folder with fer2013new.csv and either FER2013Train/Valid/Test image folders or fer2013.csv."""
    report = DataReport(f"ferplus {src}")
    new_csv = find_file(src, ("fer2013new.csv",), "fer2013new.csv")
    base = new_csv.parent
    folders = {name: base / name for name in FERPLUS_FOLDERS if (base / name).is_dir()}
    pixels_rows = None
    if not folders:
        fer_csv = find_file(src, ("fer2013.csv", "fer2013/fer2013.csv"), "fer2013.csv (or FER2013Train/... folders)")
        pixels_rows = read_fer2013_csv(fer_csv, DataReport())
    usage_folder = {"training": "FER2013Train", "publictest": "FER2013Valid", "privatetest": "FER2013Test"}
    items = []
    with open_text(new_csv, "FERPlus CSV") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        want = ["Usage", "Image name", *FERPLUS_COLUMNS]
        if header[: len(want)] != want:
            raise DataError(f"{new_csv}: expected columns {','.join(want)}, got {','.join(header)}")
        for row_no, row in enumerate(reader):
            where = f"{new_csv}:{row_no + 2}"
            row = [c.strip() for c in row]
            try:
                usage = row[0].lower()
                split = FER2013_USAGE[usage]
                name = row[1]
                votes = [float(x) for x in row[2:12]]
                if len(votes) != 10:
                    raise ValueError(f"expected 10 vote counts, got {len(votes)}")
            except (KeyError, ValueError, IndexError) as e:
                report.add("bad_label_row", where, str(e))
                continue
            if not name:
                report.add("unlabelled_image", where, "no image name (row removed by FERPlus)")
                continue
            winner = ferplus_majority(votes)
            if winner == "unknown":
                report.add("vote_unknown", where, name)
                continue
            if winner == "NF":
                report.add("vote_not_face", where, name)
                continue
            if winner == "no_majority":
                report.add("vote_no_majority", where, name)
                continue
            label = canonical_label(FERPLUS_COLUMNS[winner])
            if pixels_rows is not None:
                pr = pixels_rows[row_no] if row_no < len(pixels_rows) else None
                if pr is None:
                    report.add("missing_source_image", where, f"{name}: no valid fer2013.csv row {row_no + 2}")
                    continue
                items.append(SourceItem(label=label, name=name, split=split, pixels=pr[2], origin=where))
            else:
                folder = folders.get(usage_folder[usage])
                path = folder / name if folder is not None else None
                if path is None or not path.is_file():
                    report.add("missing_source_image", where, str(path or f"{usage_folder[usage]}/{name}"))
                    continue
                items.append(SourceItem(label=label, name=name, split=split, source=path, origin=where))
    return SourceScan(items, report, list(AFFECTNET8),
                      "official splits: Training->train, PublicTest->val, PrivateTest->test; majority vote")


__all__ = ["scan_fer2013_csv", "scan_fer2013_folders", "scan_ferplus", "ferplus_majority", "read_fer2013_csv"]
