"""AffectNet (Mollahosseini et al., "AffectNet: A Database for Facial Expression, Valence, and Arousal
Computing in the Wild", IEEE TAC 2017).

Two distributions are read:

* the original one: ``training.csv`` and ``validation.csv`` (columns ``subDirectory_filePath, face_x,
  face_y, face_width, face_height, facial_landmarks, expression, valence, arousal``) and the images in
  ``Manually_Annotated_Images/<subDirectory_filePath>``; each face is cut out by its box
  (``--align detect`` detects and aligns it instead).
* the re-packaged one DDAMFN/If3D worked from: ``train_set/`` and ``val_set/``, each with
  ``images/<n>.jpg`` (aligned faces, hard-linked as they are) and ``annotations/<n>_exp.npy``,
  ``<n>_val.npy``, ``<n>_aro.npy`` (If3D's ``*_set_annotation_without_lnd.csv`` was made from these).

Expression codes 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt are the
canonical order; 8 None, 9 Uncertain, 10 No-Face are dropped and counted. Valence and arousal (in
[-1, 1]; -2 = none) go to ``annotations/<split>.csv``. Splits: training -> train, validation -> val
(AffectNet's test set is not public; the validation set is what papers report on).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from if3d.classes import AFFECTNET8
from if3d.data.converters.base import SourceItem, SourceScan, find_file, list_images
from if3d.io.report import DataError, DataReport
from if3d.io.text import open_text

_CSV_SPLITS = (("training.csv", "train"), ("validation.csv", "val"))
_NPY_SPLITS = (("train_set", "train"), ("val_set", "val"))
_IMAGE_DIRS = ("Manually_Annotated_Images", "Manually_Annotated/Manually_Annotated_Images", ".")


def _va(value: float) -> float | None:
    return value if math.isfinite(value) and -1.0 <= value <= 1.0 else None


def scan_affectnet(src: Path, align: str = "none", **_) -> SourceScan:
    """``--src``: the AffectNet folder (either distribution, see the module docstring)."""
    report = DataReport(f"affectnet {src}")
    if any((src / d).is_dir() for d, _ in _NPY_SPLITS):
        items = _scan_npy(src, report)
        note = "official splits: train_set->train, val_set->val"
    else:
        items = _scan_csv(src, report, align == "detect")
        note = "official splits: training.csv->train, validation.csv->val"
    return SourceScan(items, report, list(AFFECTNET8), note)


def _scan_csv(src: Path, report: DataReport, detect: bool) -> list[SourceItem]:
    found = []
    for name, split in _CSV_SPLITS:
        try:
            found.append((find_file(src, (name, f"Manually_Annotated_file_lists/{name}"), name), split))
        except FileNotFoundError:
            continue
    if not found:
        raise DataError(f"{src}: neither training.csv/validation.csv nor train_set/val_set folders found")
    items = []
    for csv_path, split in found:
        image_root = next((csv_path.parent / d for d in _IMAGE_DIRS
                           if d != "." and (csv_path.parent / d).is_dir()), None)
        if image_root is None:
            image_root = next((src / d for d in _IMAGE_DIRS if d != "." and (src / d).is_dir()), src)
        with open_text(csv_path, "AffectNet CSV") as f:
            reader = csv.DictReader(f)
            need = {"subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "expression",
                    "valence", "arousal"}
            if not need <= set(reader.fieldnames or ()):
                raise DataError(f"{csv_path}: expected columns {', '.join(sorted(need))}, got {reader.fieldnames}")
            for line, row in enumerate(reader, start=2):
                where = f"{csv_path}:{line}"
                try:
                    rel = row["subDirectory_filePath"].strip()
                    x, y = float(row["face_x"]), float(row["face_y"])
                    w, h = float(row["face_width"]), float(row["face_height"])
                    code = int(float(row["expression"]))
                    val, aro = float(row["valence"]), float(row["arousal"])
                except (TypeError, ValueError) as e:
                    report.add("bad_label_row", where, str(e))
                    continue
                if code in (8, 9, 10):
                    report.add("not_an_expression", where, f"{rel}: {('None', 'Uncertain', 'No-Face')[code - 8]}")
                    continue
                if not 0 <= code <= 7:
                    report.add("unknown_class", where, f"expression {code}")
                    continue
                path = image_root / rel
                if not path.is_file():
                    report.add("missing_source_image", where, str(path))
                    continue
                if w <= 0 or h <= 0:
                    report.add("bad_box", where, f"face box {x},{y},{w},{h}")
                    continue
                items.append(SourceItem(label=code, name=Path(rel).name, split=split, source=path,
                                        box=(x, y, x + w, y + h), align=detect, valence=_va(val), arousal=_va(aro),
                                        origin=where))
    return items


def _scan_npy(src: Path, report: DataReport) -> list[SourceItem]:
    items = []
    for folder, split in _NPY_SPLITS:
        root = src / folder
        if not root.is_dir():
            continue
        ann = root / "annotations"
        for p in list_images(root / "images", report):
            stem = p.stem
            try:
                code = int(np.load(ann / f"{stem}_exp.npy").item())
                val = float(np.load(ann / f"{stem}_val.npy").item())
                aro = float(np.load(ann / f"{stem}_aro.npy").item())
            except FileNotFoundError as e:
                report.add("unlabelled_image", p, f"missing annotation {Path(e.filename or '').name}")
                continue
            except (ValueError, OSError) as e:
                report.add("bad_label_row", p, f"unreadable annotation ({e})")
                continue
            if code in (8, 9, 10):
                report.add("not_an_expression", p, ("None", "Uncertain", "No-Face")[code - 8])
                continue
            if not 0 <= code <= 7:
                report.add("unknown_class", p, f"expression {code}")
                continue
            items.append(SourceItem(label=code, name=p.name, split=split, source=p, valence=_va(val),
                                    arousal=_va(aro), origin=str(p)))
    return items
