"""Class-folder datasets (CK+, SFEW 2.0, any ``<class>/<image>`` tree) and JAFFE.

* ``folders``: ``<src>/<class>/...`` or ``<src>/<split>/<class>/...`` with class names in any common
  spelling (``if3d.classes.canonical_label``); split folders train/training, val/valid/validation,
  test are kept, a validation split is carved from train when there is none.
* ``ckplus`` (Lucey et al., CK+, CVPR-W 2010): the common ``<class>/S<subject>_<seq>_<frame>.png``
  image folders (anger, contempt, disgust, fear, happy, sadness, surprise; 8-class labels, no
  Neutral). No official split: the validation split is carved by subject (no subject in both).
* ``sfew`` (Dhall et al., SFEW 2.0, EmotiW 2015): ``Train/<Class>/`` and ``Val/<Class>/`` (Angry, Disgust,
  Fear, Happy, Neutral, Sad, Surprise) -> train/val; the unlabelled ``Test`` images are counted and
  skipped. SFEW's images are movie frames, so faces are detected and aligned by default
  (``--align none`` for the distributed aligned faces).
* ``jaffe`` (Lyons et al., JAFFE, FG 1998): ``<subject>.<EXPR><n>.<id>.tiff`` files (expression codes
  NE, HA, SA, SU, AN, DI, FE), 256x256 grey portraits with background: faces are detected and aligned
  by default; the validation split is carved by subject.
"""

from __future__ import annotations

import re
from pathlib import Path

from if3d.classes import AFFECTNET7, AFFECTNET8, canonical_label
from if3d.data.converters.base import SPLIT_ALIASES, SourceItem, SourceScan, list_images
from if3d.io.report import DataError, DataReport

_CK_SUBJECT = re.compile(r"^(S\d+)_", re.IGNORECASE)
_JAFFE_NAME = re.compile(r"^([A-Za-z]{2})\.([A-Za-z]{2})(\d*)\.(\d+)\.[A-Za-z]+$")
JAFFE_CODES = {"NE": "neutral", "HA": "happy", "SA": "sad", "SU": "surprise", "AN": "angry", "DI": "disgust",
               "FE": "fear"}


def _class_dirs(folder: Path, report: DataReport) -> list[tuple[int, Path]]:
    out = []
    for d in sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            out.append((canonical_label(d.name), d))
        except KeyError:
            report.add("unknown_class", d, "class folder name not a known expression")
    return out


def scan_class_tree(src: Path, report: DataReport, align: bool, group_re: re.Pattern | None = None,
                    ) -> list[SourceItem]:
    """Items of ``<src>/<class>/...`` or ``<src>/<split>/<class>/...`` (see the module docstring).

    Raises:
        DataError: ``src`` holds neither class folders nor split folders.
    """
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    subdirs = [d for d in sorted(src.iterdir()) if d.is_dir()]
    split_dirs = [d for d in subdirs if d.name.lower() in SPLIT_ALIASES]
    layout: list[tuple[str | None, Path]]
    if split_dirs:
        layout = [(SPLIT_ALIASES[d.name.lower()], d) for d in split_dirs]
        for d in subdirs:
            if d not in split_dirs:
                report.add("unknown_label_folder", d, "neither a split folder nor used")
    else:
        layout = [(None, src)]
    items: list[SourceItem] = []
    for split, folder in layout:
        classes = _class_dirs(folder, report)
        if not classes and split is not None:
            for p in list_images(folder, report):
                report.add("unlabelled_image", p, f"{folder.name}/ has no class folders")
            continue
        for label, cd in classes:
            for p in list_images(cd, report):
                group = None
                if group_re is not None:
                    m = group_re.match(p.name)
                    group = m.group(1).upper() if m else p.stem
                items.append(SourceItem(label=label, name=p.name, split=split, source=p, align=align,
                                        group=group, origin=str(p)))
        for p in sorted(f for f in folder.iterdir() if f.is_file()):
            report.add("unlabelled_image", p, "file outside a class folder")
    if not items and not report.total:
        raise DataError(f"{src}: no class folders found (expected <class>/<image> or <split>/<class>/<image>)")
    return items


def _names_for(items: list[SourceItem]) -> list[str]:
    return list(AFFECTNET8 if any(it.label == 7 for it in items) else AFFECTNET7)


def scan_folders(src: Path, align: str = "none", **_) -> SourceScan:
    """Generic class-folder tree."""
    report = DataReport(f"folders {src}")
    items = scan_class_tree(src, report, align == "detect")
    return SourceScan(items, report, _names_for(items), "split folders kept")


def scan_ckplus(src: Path, align: str = "none", **_) -> SourceScan:
    """CK+ class folders; groups = subject (``S005``) for a subject-independent validation split."""
    report = DataReport(f"ckplus {src}")
    items = scan_class_tree(src, report, align == "detect", _CK_SUBJECT)
    return SourceScan(items, report, list(AFFECTNET8), "no official split")


def scan_sfew(src: Path, align: str = "detect", **_) -> SourceScan:
    """SFEW 2.0 ``Train``/``Val`` class folders."""
    report = DataReport(f"sfew {src}")
    items = scan_class_tree(src, report, align == "detect")
    return SourceScan(items, report, list(AFFECTNET7), "official splits: Train->train, Val->val")


def scan_jaffe(src: Path, align: str = "detect", **_) -> SourceScan:
    """JAFFE ``KA.HA1.29.tiff``-style files anywhere under ``src``; groups = subject."""
    report = DataReport(f"jaffe {src}")
    if not src.is_dir():
        raise DataError(f"{src}: not a folder")
    items = []
    for p in list_images(src, report):
        m = _JAFFE_NAME.match(p.name)
        if m is None:
            report.add("unlabelled_image", p, "file name is not <subject>.<EXPR><n>.<id>.<ext>")
            continue
        code = m.group(2).upper()
        if code not in JAFFE_CODES:
            report.add("unknown_class", p, f"expression code {code}")
            continue
        items.append(SourceItem(label=canonical_label(JAFFE_CODES[code]), name=p.name, source=p,
                                align=align == "detect", group=m.group(1).upper(), origin=str(p)))
    return SourceScan(items, report, list(AFFECTNET7), "no official split")
