"""A run's dataset view: a canonical dataset whose train/val/test splits are one run's file lists.

The view links (symbolic links, absolute) to the pooled dataset's photos and renders; nothing is
copied. Its folders are exactly the lists of :mod:`if3d.crossval.protocols`, so the training engine
and the test script read it like any converted dataset::

    <view>/classes.json, subjects.csv (when the dataset has one), annotations/<part>.csv
    <view>/photos/<part>/<label>/<file>  -> <root>/photos/<split>/<label>/<file>
    <view>/renders/<part>/<label>/<stem>.<ext> -> <root>/renders/<split>/<label>/<stem>.<ext>
    <view>/renders/<part>/<label>/<stem>.npz   -> the render's parameters, when the render step saved them

A photo whose file name already exists in the same view folder (two original splits with the same
name) is linked as ``<split>_<file>``. The view is built in a temporary folder and renamed into
place, so a killed sweep never leaves half a view.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from pathlib import Path

from if3d.atomic import atomic_write_json
from if3d.crossval.protocols import PARTS, RunSplit
from if3d.data.layout import (
    CLASSES_FILE,
    annotations_path,
    is_image_file,
    read_annotations,
    read_classes,
    read_subjects,
    write_annotations,
    write_subjects,
)
from if3d.io.report import DataReport

__all__ = ["build_view"]

_DONE = ".view.json"


def _render_index(root: Path) -> dict[str, Path]:
    """``photos/<split>/<label>/<stem>`` → the render file of that stem (any image extension)."""
    index: dict[str, Path] = {}
    renders = root / "renders"
    if renders.is_dir():
        for f in renders.rglob("*"):
            if f.is_file() and is_image_file(f.name):
                rel = f.relative_to(renders).with_suffix("").as_posix()
                index.setdefault(f"photos/{rel}", f)
    return index


def build_view(root: str | os.PathLike, split: RunSplit, view: str | os.PathLike) -> Path:
    """Build (or reuse, when complete and of the same split) the view of ``split`` at ``view``.

    Returns:
        ``view``.

    Raises:
        FileNotFoundError: a listed photo does not exist in ``root``.
    """
    root, view = Path(root).resolve(), Path(view)
    record = {"root": str(root), **{p: len(split.part(p)) for p in PARTS},
              "first": {p: list(split.part(p)[:3]) for p in PARTS}}
    done = view / _DONE
    if done.is_file() and json.loads(done.read_text(encoding="utf-8")) == record:
        return view
    tmp = view.parent / f".{view.name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _populate(root, split, tmp)
        atomic_write_json(tmp / _DONE, record)
        if view.exists():
            shutil.rmtree(view)
        os.replace(tmp, view)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return view


def _populate(root: Path, split: RunSplit, tmp: Path) -> None:
    renders = _render_index(root)
    subjects = read_subjects(root)
    annotations: dict[str, dict] = {}
    tmp.mkdir(parents=True)
    (tmp / CLASSES_FILE).write_text(json.dumps(read_classes(root)), encoding="utf-8")
    view_subjects: list[tuple[str, str]] = []
    for part in PARTS:
        taken: dict[str, set[str]] = defaultdict(set)
        va_rows: list[tuple[str, float, float]] = []
        for rel in split.part(part):
            _, orig_split, label, name = rel.split("/", 3)
            src = root / rel
            if not src.is_file():
                raise FileNotFoundError(f"{src}: listed in the split of run {split.run} but missing")
            new = name if name not in taken[label] else f"{orig_split}_{name}"
            taken[label].add(new)
            dst = tmp / "photos" / part / label / new
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(src, dst)
            render = renders.get(str(Path(rel).with_suffix("")))
            if render is not None:
                rdst = tmp / "renders" / part / label / (Path(new).stem + render.suffix)
                rdst.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(render, rdst)
                params = render.with_suffix(".npz")  # the render step's parameters: the 3D face streams read them
                if params.is_file():
                    os.symlink(params, rdst.with_suffix(".npz"))
            if rel in subjects:
                view_subjects.append((f"photos/{part}/{label}/{new}", subjects[rel]))
            if orig_split not in annotations:
                ann = annotations_path(root, orig_split)
                annotations[orig_split] = read_annotations(ann, DataReport()).rows if ann.is_file() else {}
            va = annotations[orig_split].get(f"{label}/{name}")
            if va is not None:
                va_rows.append((f"{label}/{new}", va[0], va[1]))
        if va_rows:
            write_annotations(annotations_path(tmp, part), va_rows)
    if view_subjects:
        write_subjects(tmp, view_subjects)
