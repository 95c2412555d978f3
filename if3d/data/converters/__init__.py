"""Converters from the standard FER datasets to the canonical layout (``python -m if3d.data convert``).

Every converter maps the source's class names onto the canonical AffectNet order (if3d.classes),
keeps the official train/val/test split where the source has one, carves a stratified, seeded
validation split from train where it has none, prints a per-split, per-class count table (also written
to ``<out>/counts.json``) and counts every skipped source item in ``<out>/report.json``; every image
is decoded once on the way (one that does not decode is a counted ``corrupt_image``, never written).
Output is written atomically (a temporary folder renamed into place) and marked as the toolkit's
(:data:`if3d.outputs.MARKER_NAME`); ``--overwrite`` replaces only such a folder, and never one that is,
contains or is inside the source (:mod:`if3d.outputs`).

==================  ========================================================  ===============  ========
format              source                                                    splits           faces
==================  ========================================================  ===============  ========
fer2013-csv         fer2013.csv (emotion,pixels,Usage)                          train/val/test   as is
fer2013-folders     {train,test}/<class>/<Usage>_<id>.jpg                      from Usage       as is
ferplus             fer2013new.csv + FER2013{Train,Valid,Test}/ or fer2013.csv   train/val/test   as is
rafdb               EmoLabel/list_patition_label.txt + Image/aligned/          train/test+val   as is
expw                label/label.lst + image/origin/                            carved val       box+align
sfew                Train/<Class>/, Val/<Class>/                               train/val        align
ckplus              <class>/S<subject>_<seq>_<frame>.png                       carved (subject) as is
jaffe               <subj>.<EXPR><n>.<id>.tiff                                 carved (subject) align
affectnet           training.csv/validation.csv + images, or train_set/val_set   train/val        box
folders             [<split>/]<class>/<image>                                  kept / carved    as is
csv                 image folder + CSV of image,label[,split] (--labels)      column / carved  as is
video               [<split>/]<class>/<clip>.<avi|mp4|...> (--fps)            kept / carved    align
afew                <Split>/<Class>/<clip>/<frame>                             Train/Val        align
ckplus-sequences    cohn-kanade-images/S<subj>/<seq>/ + Emotion/ labels         fold 10 = val    align
==================  ========================================================  ===============  ========

"align" = MediaPipe face detection and eye-levelled alignment (``--align none|detect`` overrides).
The last three write a video dataset (``<out>/clips/<split>/<label>/<clip>/<frame>.png`` and ``clips.csv``;
:mod:`if3d.data.converters.video`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from if3d.data.converters.affectnet import scan_affectnet
from if3d.data.converters.base import (
    SourceItem,
    SourceScan,
    WriteOptions,
    format_counts,
    write_dataset,
)
from if3d.data.converters.csvlabels import scan_csv
from if3d.data.converters.expw import scan_expw
from if3d.data.converters.fer import scan_fer2013_csv, scan_fer2013_folders, scan_ferplus
from if3d.data.converters.folders import scan_ckplus, scan_folders, scan_jaffe, scan_sfew
from if3d.data.converters.rafdb import scan_rafdb
from if3d.data.converters.video import (
    VIDEO_OPTIONS,
    ClipScan,
    scan_afew,
    scan_ckplus_sequences,
    scan_video,
    write_clip_dataset,
)
from if3d.outputs import check_replaceable

# format -> (scanner, default alignment, one-line description)
FORMATS: dict[str, tuple[Callable[..., SourceScan], str, str]] = {
    "fer2013-csv": (scan_fer2013_csv, "none", "FER2013 Kaggle CSV (emotion,pixels,Usage)"),
    "fer2013-folders": (scan_fer2013_folders, "none", "FER2013 image folders {train,test}/<class>/"),
    "ferplus": (scan_ferplus, "none", "FERPlus fer2013new.csv majority votes"),
    "rafdb": (scan_rafdb, "none", "RAF-DB basic (list_patition_label.txt, Image/aligned)"),
    "expw": (scan_expw, "detect", "ExpW (label.lst face boxes, image/origin)"),
    "sfew": (scan_sfew, "detect", "SFEW 2.0 (Train/Val class folders of movie frames)"),
    "ckplus": (scan_ckplus, "none", "CK+ class folders (S<subject>_... images)"),
    "jaffe": (scan_jaffe, "detect", "JAFFE (KA.HA1.29.tiff file names)"),
    "affectnet": (scan_affectnet, "none", "AffectNet (training/validation.csv, or train_set/val_set npy)"),
    "folders": (scan_folders, "none", "any [<split>/]<class>/<image> tree"),
    "csv": (scan_csv, "none", "image folder + CSV of image,label rows (--labels), or --src CSV"),
    "video": (scan_video, "detect", "video files [<split>/]<class>/<clip>.<avi|mp4|...> -> clips (--fps)"),
    "afew": (scan_afew, "detect", "AFEW-style frame folders <Split>/<Class>/<clip>/<frame> -> clips"),
    "ckplus-sequences": (scan_ckplus_sequences, "detect",
                         "CK+ cohn-kanade-images/S<subject>/<seq>/ + Emotion/ labels -> clips"),
}

#: formats whose output is a video dataset (clips) and whose options are :data:`VIDEO_OPTIONS`
CLIP_FORMATS = ("video", "afew", "ckplus-sequences")

CSV_OPTIONS = ("labels", "image_column", "label_column", "split_column", "class_map")
"""Options of the ``csv`` format only (``--labels``, ``--image-column``, ...)."""


def scan(fmt: str, src: str | os.PathLike, align: str | None = None, **options) -> SourceScan:
    """Read a source dataset without writing anything.

    Args:
        fmt: a key of :data:`FORMATS`.
        src: the source folder (or file, for CSV formats).
        align: ``"none"``, ``"detect"`` or ``None`` (the format's default).
        **options: the ``csv`` format's :data:`CSV_OPTIONS` (``labels``, ``image_column``,
            ``label_column``, ``split_column``, ``class_map``) or the clip formats' :data:`VIDEO_OPTIONS`
            (``fps``, ``clip_alignment``, ``skip_faceless_clips``, ``last_frames``); None values are ignored.

    Raises:
        ValueError: unknown format or alignment mode.
        FileNotFoundError: ``src`` or a required file in it is missing.
        DataError: the source does not have the format's layout.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    scanner, default_align, _ = FORMATS[fmt]
    align = default_align if align in (None, "auto") else align
    if align not in ("none", "detect"):
        raise ValueError(f"align must be 'none', 'detect' or 'auto', got {align!r}")
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    unknown = set(options) - set(CSV_OPTIONS) - set(VIDEO_OPTIONS)
    if unknown:
        raise ValueError(f"unknown converter option(s) {', '.join(sorted(unknown))}")
    own = VIDEO_OPTIONS if fmt in CLIP_FORMATS else CSV_OPTIONS if fmt == "csv" else ()
    foreign = [k for k in options if k not in own]
    if foreign:
        given = ", ".join("--" + k.replace("_", "-") for k in foreign)
        where = "--format csv" if foreign[0] in CSV_OPTIONS else f"--format {'|'.join(CLIP_FORMATS)}"
        raise ValueError(f"{given} only apply to {where}")
    src = Path(src)
    if not src.exists():
        raise FileNotFoundError(f"{src}: source not found")
    return scanner(src, align=align, **options)


def convert(
    fmt: str,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    val_fraction: float = 0.1,
    calibration_fraction: float = 0.0,
    seed: int = 0,
    overwrite: bool = False,
    align: str | None = None,
    split_by: str = "subject",
    link: str = "hardlink",
    size: int = 224,
    margin: float = 0.25,
    workers: int = 1,
    verbose: bool = True,
    **options,
) -> dict:
    """Convert a source dataset into the canonical layout at ``out``.

    Args:
        fmt: source format (a key of :data:`FORMATS`).
        src: source folder or file.
        out: output dataset root (e.g. ``Dataset/fer2013``).
        val_fraction, seed: the carved validation split (sources without an official one; 0 = none).
        calibration_fraction: share of the training photos (stratified by class, seeded) written as a
            ``calib`` split instead, in [0, 1); 0 = none.
        overwrite: replace a non-empty ``out`` that an earlier conversion wrote (it holds the toolkit's
            marker file); any other folder is never deleted.
        align: ``"none"``/``"detect"``/``None`` (format default) for face detection and alignment.
        split_by: ``"subject"`` (carve validation by subject/source image where the format knows it:
            CK+, JAFFE, ExpW) or ``"sample"``.
        link: how unchanged images are placed: ``"hardlink"`` (copy when impossible), ``"copy"``, ``"symlink"``.
        size, margin: side (pixels) and margin of aligned faces.
        workers: processes for face detection/cropping (threads for linking and checking images).
        verbose: print the count table and the report summary.
        **options: options of the ``csv`` format (:data:`CSV_OPTIONS`): ``labels`` (the label CSV when
            ``src`` is the image folder), ``image_column``, ``label_column``, ``split_column``,
            ``class_map`` (``"NAME=CANONICAL,..."``).

    Returns:
        the ``counts.json`` dict (``classes``, ``splits`` -> class -> count, ``totals``, ``split_note``,
        ``skipped``).

    Raises:
        OutputError: ``out`` is, contains or is inside the source; is a file; is a non-empty folder that
            the toolkit did not write (no :data:`if3d.outputs.MARKER_NAME`, so ``overwrite`` never deletes
            it); or cannot be written (read-only, full disk). The message names the path.
        FileExistsError: ``out`` is a non-empty dataset and ``overwrite`` is False.
        DataError: nothing could be written, or a label file is unreadable (e.g. not UTF-8).
        plus those of :func:`scan`.
    """
    if split_by not in ("subject", "sample"):
        raise ValueError(f"split_by must be 'subject' or 'sample', got {split_by!r}")
    if link not in ("hardlink", "copy", "symlink"):
        raise ValueError(f"link must be 'hardlink', 'copy' or 'symlink', got {link!r}")
    sources = [src, options.get("labels")]
    check_replaceable(out, "dataset", sources, overwrite)  # fail before a long scan
    source = scan(fmt, src, align, **options)
    if not 0.0 <= calibration_fraction < 1.0:
        raise ValueError(f"calibration_fraction must be in [0, 1), got {calibration_fraction}")
    opts = WriteOptions(val_fraction=val_fraction, calibration_fraction=calibration_fraction, seed=seed, group_split=split_by == "subject",
                        overwrite=overwrite, link=link, size=size, margin=margin, workers=workers, verbose=verbose)
    if isinstance(source, ClipScan):
        return write_clip_dataset(source, out, opts, fmt=fmt, src=src, sources=sources)
    return write_dataset(source, out, opts, fmt=fmt, src=src, sources=sources)


__all__ = ["CLIP_FORMATS", "CSV_OPTIONS", "FORMATS", "VIDEO_OPTIONS", "SourceItem", "SourceScan", "WriteOptions", "convert", "format_counts", "scan", "write_dataset"]
