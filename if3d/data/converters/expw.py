"""ExpW, Expression in-the-Wild (Zhang et al., "From Facial Expression Recognition to Interpersonal Relation
Prediction", IJCV 2018).

Source layout: ``label/label.lst`` with one line per face ``image_name face_id_in_image face_box_top
face_box_left face_box_right face_box_bottom face_box_cofidence expression_label`` (labels 0 angry,
1 disgust, 2 fear, 3 happy, 4 sad, 5 surprise, 6 neutral) and the full scenes in ``image/origin/``.
Each face is cut out by its box (enlarged by half its size for context), MediaPipe landmarks are
detected in it, and the face is aligned in the full image (``--align none``: the plain box crop).
Faces where no face is found are counted and skipped. Output names: ``<image stem>_<face id>.jpg``.
No official split: the validation split is carved grouped by source image (faces of one photo stay
together).
"""

from __future__ import annotations

from pathlib import Path

from if3d.classes import AFFECTNET7, canonical_label
from if3d.data.converters.base import SourceItem, SourceScan, find_file, label_lines
from if3d.io.report import DataReport

EXPW_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


def scan_expw(src: Path, align: str = "detect", **_) -> SourceScan:
    """``--src``: the ExpW folder (``label/label.lst`` and ``image/origin/``)."""
    report = DataReport(f"expw {src}")
    label_file = find_file(src, ("label/label.lst", "label.lst"), "label.lst")
    base = label_file.parent.parent if label_file.parent.name == "label" else label_file.parent
    image_dir = next((d for d in (base / "image" / "origin", base / "origin", base / "image") if d.is_dir()),
                     base / "image" / "origin")
    items = []
    for where, parts in label_lines(label_file):
        try:
            if len(parts) != 8:
                raise ValueError(f"expected 8 fields, got {len(parts)}")
            name, face_id = parts[0], int(parts[1])
            top, left, right, bottom = (float(v) for v in parts[2:6])
            code = int(parts[7])
        except ValueError as e:
            report.add("bad_label_row", where, str(e))
            continue
        if not 0 <= code < len(EXPW_CLASSES):
            report.add("unknown_class", where, f"label {code} outside 0..6")
            continue
        if right <= left or bottom <= top:
            report.add("bad_box", where, f"top {top} left {left} right {right} bottom {bottom}")
            continue
        path = image_dir / name
        if not path.is_file():
            report.add("missing_source_image", where, str(path))
            continue
        items.append(SourceItem(label=canonical_label(EXPW_CLASSES[code]), name=f"{path.stem}_{face_id}.jpg",
                                source=path, box=(left, top, right, bottom), align=align == "detect",
                                group=name, origin=where))
    return SourceScan(items, report, list(AFFECTNET7), "no official split")
