"""``csv``: an image folder with a CSV of ``image,label`` rows, the most common ad-hoc layout.

Two ways to point at it:

* ``--src IMAGE_FOLDER --labels LABELS.csv``: image paths in the CSV are relative to the image folder;
* ``--src LABELS.csv``: image paths are relative to the CSV's own folder.

Absolute image paths are used as they are. Columns are found by name (case-insensitive; a name
matches when it, or one of its ``_``/``-``/space-separated words, is one of the words below) unless
given with ``--image-column`` / ``--label-column`` / ``--split-column``:

=========  ============================================  =========
column     detected names                                required
=========  ============================================  =========
image      image, img, file, filename, path, filepath     yes
label      label, emotion, expression, class              yes
split      split, usage, subset, partition                no
=========  ============================================  =========

Labels are class names in any spelling :func:`if3d.classes.canonical_label` knows (``happiness``,
``Happy``, ``anger``, ...); ``--class-map NAME=CANONICAL,...`` adds or overrides names (e.g. numeric
codes: ``--class-map 0=angry,1=disgust``). A label that maps to no class is an ``unknown_class`` skip,
counted with its row and listed by name in the count table, never silently dropped. Split values are
``train``/``val``/``test`` in the usual spellings (``training``, ``validation``, ``PublicTest``, ...);
without a split column a validation split is carved from train (stratified, seeded). An image listed
twice is used once (``duplicate_label_row``).
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

from if3d.classes import AFFECTNET7, AFFECTNET8, canonical_label
from if3d.data.converters.base import SPLIT_ALIASES, SourceItem, SourceScan
from if3d.io.report import DataError, DataReport
from if3d.io.text import open_text

COLUMN_WORDS: dict[str, tuple[str, ...]] = {
    "image": ("image", "img", "file", "filename", "path", "filepath"),
    "label": ("label", "emotion", "expression", "class"),
    "split": ("split", "usage", "subset", "partition"),
}
"""Words that identify each column (see the module docstring)."""


def parse_class_map(text: str | dict | None) -> dict[str, int]:
    """``"NAME=CANONICAL,..."`` -> {lower-case NAME: canonical index}.

    ``CANONICAL`` is any class name :func:`if3d.classes.canonical_label` accepts, or an index 0..7.

    Raises:
        ValueError: an entry without ``=``, or an unknown ``CANONICAL``.
    """
    if not text:
        return {}
    if isinstance(text, dict):
        pairs = list(text.items())
    else:
        pairs = []
        for entry in text.split(","):
            if entry.strip():
                name, sep, target = entry.partition("=")
                pairs.append((name, target if sep else None))
    out: dict[str, int] = {}
    for name, target in pairs:
        if target is None or not str(name).strip():
            raise ValueError(f"--class-map entry {name!r} is not NAME=CANONICAL")
        target = str(target).strip()
        if target.isdigit() and 0 <= int(target) < len(AFFECTNET8):
            index = int(target)
        else:
            try:
                index = canonical_label(target)
            except KeyError as e:
                raise ValueError(f"--class-map {name}={target}: {e.args[0]}") from None
        out[str(name).strip().lower()] = index
    return out


def _words(name: str) -> set[str]:
    low = name.strip().lower()
    return {low, *(w for w in re.split(r"[^a-z0-9]+", low) if w)}


def find_column(header: list[str], kind: str, given: str | None, path: Path, required: bool = True) -> int | None:
    """Index of the ``kind`` column (``image``, ``label``, ``split``) in ``header``.

    Raises:
        DataError: ``given`` is not a column, or no / several columns match (the message lists them and
            names the option that chooses one).
    """
    option = f"--{kind}-column"
    names = [h.strip() for h in header]
    if given is not None:
        for i, h in enumerate(names):
            if h.lower() == given.strip().lower():
                return i
        raise DataError(f"{path}: no column {given!r} ({option}); columns: {', '.join(names)}")
    words = set(COLUMN_WORDS[kind])
    exact = [i for i, h in enumerate(names) if h.lower() in words]
    loose = [i for i, h in enumerate(names) if _words(h) & words]
    hits = exact if len(exact) == 1 else loose
    if len(hits) == 1:
        return hits[0]
    if not hits and not required:
        return None
    if not hits:
        raise DataError(f"{path}: no {kind} column among {', '.join(names)}; name it with {option}")
    raise DataError(f"{path}: several {kind} columns ({', '.join(names[i] for i in hits)}) among "
                    f"{', '.join(names)}; choose one with {option}")


def scan_csv(src: Path, align: str = "none", labels: str | Path | None = None, image_column: str | None = None,
             label_column: str | None = None, split_column: str | None = None,
             class_map: str | dict | None = None, **_) -> SourceScan:
    """``--src``: an image folder (with ``labels``: the CSV) or the CSV itself (see the module docstring).

    Raises:
        DataError: no CSV given, a column missing or ambiguous, the CSV not UTF-8.
        ValueError: a bad ``class_map``.
        FileNotFoundError: ``labels`` does not exist.
    """
    mapping = parse_class_map(class_map)
    if src.is_file():
        if labels is not None:
            raise DataError(f"{src}: give either --src CSV or --src IMAGE_FOLDER --labels CSV, not both")
        csv_path, base = src, src.parent
    else:
        if labels is None:
            raise DataError(f"{src}: is a folder; give the label CSV with --labels (image paths relative to "
                            f"{src}), or --src LABELS.csv (paths relative to the CSV's folder)")
        csv_path, base = Path(labels), src
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path}: label CSV not found (--labels)")
    report = DataReport(f"csv {csv_path}")
    items: list[SourceItem] = []
    unknown: Counter[str] = Counter()
    seen: dict[Path, tuple[str, int]] = {}
    detect = align == "detect"
    with open_text(csv_path, "label CSV") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise DataError(f"{csv_path}: empty file; expected a header such as image,label")
        i_img = find_column(header, "image", image_column, csv_path)
        i_lab = find_column(header, "label", label_column, csv_path)
        i_split = find_column(header, "split", split_column, csv_path, required=False)
        if i_img == i_lab:
            raise DataError(f"{csv_path}: the image and label columns are the same ({header[i_img]!r})")
        need = max(i for i in (i_img, i_lab, i_split) if i is not None) + 1
        for row in reader:
            where = f"{csv_path}:{reader.line_num}"
            if not any(cell.strip() for cell in row):
                continue
            if len(row) < need:
                report.add("bad_label_row", where, f"{len(row)} field(s), the header has {len(header)}")
                continue
            rel, raw = row[i_img].strip(), row[i_lab].strip()
            if not rel:
                report.add("bad_label_row", where, "no image path")
                continue
            label = mapping.get(raw.lower())
            if label is None:
                try:
                    label = canonical_label(raw)
                except KeyError:
                    unknown[raw] += 1
                    report.add("unknown_class", where,
                               f"class {raw!r} (map it with --class-map '{raw}=CANONICAL')")
                    continue
            split = None
            if i_split is not None:
                value = row[i_split].strip()
                split = SPLIT_ALIASES.get(value.lower().replace(" ", ""))
                if split is None:
                    report.add("bad_label_row", where, f"split {value!r} is not train, val or test")
                    continue
            path = Path(rel) if Path(rel).is_absolute() else base / rel
            if path in seen:
                first, first_label = seen[path]
                differs = "" if first_label == label else f" with another label ({AFFECTNET8[first_label]})"
                report.add("duplicate_label_row", where, f"{rel} is already listed at {first}{differs}")
                continue
            if not path.is_file():
                report.add("missing_source_image", where, f"{path} not found")
                continue
            seen[path] = (where, label)
            items.append(SourceItem(label=label, name=path.name, split=split, source=path, align=detect,
                                    origin=where))
    names = list(AFFECTNET8 if any(it.label == 7 for it in items) else AFFECTNET7)
    note = "splits from the split column" if i_split is not None else "no split column"
    if items and all(it.split is not None for it in items) and not any(it.split == "val" for it in items):
        note += " (no val rows)"
    return SourceScan(items, report, names, note, extra={"unknown_class_names": dict(unknown.most_common())})
