"""RAF-DB basic emotions (Li et al., "Reliable Crowdsourcing and Deep Locality-Preserving Learning for
Expression Recognition in the Wild", CVPR 2017).

Source layout: ``EmoLabel/list_patition_label.txt`` (sic) with lines ``train_00001.jpg 5`` and
``test_0001.jpg 1``; labels 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral;
aligned 100x100 faces ``Image/aligned/<stem>_aligned.jpg`` (used as they are, hard-linked) and the
original photos ``Image/original/<name>`` (used with ``--align detect``). The official split is kept:
``train_*`` -> train, ``test_*`` -> test; RAF-DB has no validation split, so one is carved from train.
"""

from __future__ import annotations

from pathlib import Path

from if3d.classes import AFFECTNET7, canonical_label
from if3d.data.converters.base import SourceItem, SourceScan, find_file, label_lines
from if3d.io.report import DataReport

RAFDB_CLASSES = {1: "surprise", 2: "fear", 3: "disgust", 4: "happiness", 5: "sadness", 6: "anger", 7: "neutral"}


def scan_rafdb(src: Path, align: str = "none", **_) -> SourceScan:
    """``--src``: the RAF-DB ``basic`` folder (holding ``EmoLabel/`` and ``Image/``)."""
    report = DataReport(f"rafdb {src}")
    labels_file = find_file(src, ("EmoLabel/list_patition_label.txt", "list_patition_label.txt"),
                            "list_patition_label.txt")
    base = labels_file.parent.parent if labels_file.parent.name == "EmoLabel" else labels_file.parent
    detect = align == "detect"
    image_dir = base / "Image" / ("original" if detect else "aligned")
    items = []
    for where, parts in label_lines(labels_file):
        try:
            if len(parts) != 2:
                raise ValueError(f"expected '<file> <label>', got {' '.join(parts)!r}")
            name, code = parts[0], int(parts[1])
        except ValueError as e:
            report.add("bad_label_row", where, str(e))
            continue
        if code not in RAFDB_CLASSES:
            report.add("unknown_class", where, f"label {code} outside 1..7")
            continue
        split = {"train": "train", "test": "test"}.get(name.split("_", 1)[0].lower())
        if split is None:
            report.add("bad_label_row", where, f"{name}: neither train_ nor test_")
            continue
        path = image_dir / (name if detect else f"{Path(name).stem}_aligned.jpg")
        if not path.is_file():
            report.add("missing_source_image", where, str(path))
            continue
        items.append(SourceItem(label=canonical_label(RAFDB_CLASSES[code]), name=path.name, split=split,
                                source=path, align=detect, origin=where))
    return SourceScan(items, report, list(AFFECTNET7), "official splits: train_*->train, test_*->test")
