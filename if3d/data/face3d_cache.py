"""Per-split table of the 3D face data the render step saved, pre-computed once and reused while current.

Reading 28,709 small ``<stem>.npz`` files and aligning every landmark cloud costs about a minute on two
cores; a training run needs them every epoch. So, like the photo cache (:mod:`if3d.data.cache`), the
split's parameters are read once into one file, ``<root>/cache/<split>-face3d-<target>.npz``, and reused
while the render tree is unchanged:

==============  ======================  ================================================================
array           dtype / shape           content
==============  ======================  ================================================================
keys            str [N]                 ``<label>/<stem>``: the npz path relative to ``renders/<split>``
                                        without ``.npz`` (the photo's relative path without extension)
clouds          float32 [N, 478, 3]     pose-normalised landmark clouds (:func:`if3d.data.face3d.
                                        normalise_landmarks`)
flame           float32 [N, 53]         FLAME expression + jaw (:func:`if3d.data.face3d.flame_expression`),
                                        NaN rows where the file has none (MediaPipe-backend renders)
bad_keys        str [M]                 npz files that could not be used, with ``bad_reasons`` str [M]
header          str []                  JSON: format version, alignment target (``head-pose-frame`` or
                                        ``mediapipe-canonical:<sha1>``), fingerprint
==============  ======================  ================================================================

The voxel grids and distance maps are not stored: they are functions of the clouds that cost
microseconds per face (a 32³ occupancy grid of 28,709 faces would be 0.9 GB even as bytes), and are
computed batch by batch by :mod:`if3d.data.face3d_streams`.

Invalidation: the header holds the fingerprint of the split's parameter files — relative path, size and
modification time (ns) of every ``*.npz`` under ``renders/<split>/`` — and the alignment target; a table
whose fingerprint or target differs from the tree on disk is rebuilt (and rewritten) when opened, with one
line saying why. The same quick check as the photo cache, with the same blind spot (a file replaced by
another of equal size and modification time). The file is written atomically (:mod:`if3d.atomic`); an
interrupted build leaves only a temporary file, removed by the next one. A dataset root that cannot be
written keeps the table in memory for the run, with a warning. Explicit render folders (no dataset root)
are read into memory every run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from if3d.atomic import atomic_write, remove_stale_temporaries
from if3d.data.face3d import (
    FLAME_EXPRESSION_WIDTH,
    NUM_LANDMARKS,
    CanonicalFace,
    flame_expression,
    normalise_landmarks,
)
from if3d.io.report import DataError

__all__ = ["FORMAT_VERSION", "Face3DTable", "build_table", "open_table", "params_fingerprint", "table_path"]

FORMAT_VERSION = 1
_CACHE_DIRNAME = "cache"


@dataclass
class Face3DTable:
    """The 3D data of one split's renders (module docstring).

    Attributes:
        keys: str [N] ``<label>/<stem>`` of every usable parameter file.
        clouds: float32 [N, 478, 3] pose-normalised clouds.
        flame: float32 [N, 53], NaN rows without FLAME parameters.
        bad: ``{key: reason}`` of files that could not be used.
        target: the alignment target (``head-pose-frame`` or ``mediapipe-canonical:<sha1>``).
        path: the cache file, or None when the table lives in memory only.
    """

    keys: np.ndarray
    clouds: np.ndarray
    flame: np.ndarray
    bad: dict[str, str]
    target: str
    path: Path | None = None

    def __post_init__(self) -> None:
        self.row_of = {str(k): i for i, k in enumerate(self.keys)}

    @property
    def has_flame(self) -> np.ndarray:
        """bool [N]: the row has FLAME parameters."""
        return np.isfinite(self.flame).all(1)


def target_tag(template: CanonicalFace | None) -> str:
    """The alignment target's name in a cache header."""
    return template.tag if template is not None else "head-pose-frame"


def params_fingerprint(render_root: str | os.PathLike) -> dict[str, list[int]]:
    """``{relative_posix_path: [size_bytes, mtime_ns]}`` of every ``*.npz`` under ``render_root`` (hidden
    entries skipped, linked folders followed once).

    Raises:
        DataError: a folder cannot be read (the message names it).
    """
    root = Path(render_root)
    out: dict[str, list[int]] = {}
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True, onerror=_raise_walk_error):
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:  # a link back into the tree
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith(".") or not name.endswith(".npz"):
                continue
            path = Path(folder) / name
            st = path.stat()
            out[path.relative_to(root).as_posix()] = [int(st.st_size), int(st.st_mtime_ns)]
    return out


def _raise_walk_error(e: OSError) -> None:
    raise DataError(f"{e.filename}: cannot read: {e.strerror or e}")


def table_path(data_root: str | os.PathLike, split: str, template: CanonicalFace | None) -> Path:
    """``<data_root>/cache/<split>-face3d-<target>.npz``."""
    tag = target_tag(template).replace(":", "-")
    return Path(data_root) / _CACHE_DIRNAME / f"{split}-face3d-{tag}.npz"


def _read_one(path: Path, template: CanonicalFace | None) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        params = {k: z[k] for k in z.files}
    if "landmarks" not in params:
        raise ValueError("no 'landmarks' array")
    landmarks = np.asarray(params["landmarks"], dtype=np.float32)
    if landmarks.shape != (NUM_LANDMARKS, 3):
        raise ValueError(f"'landmarks' is {landmarks.shape}, expected ({NUM_LANDMARKS}, 3)")
    return normalise_landmarks(landmarks, template), flame_expression(params)


def build_table(render_root: str | os.PathLike, template: CanonicalFace | None,
                fingerprint: dict[str, list[int]] | None = None,
                progress: Callable[[int, int], None] | None = None) -> Face3DTable:
    """Read every ``*.npz`` under ``render_root`` into a :class:`Face3DTable` (in memory).

    A file that cannot be read, has no ``landmarks`` [478, 3] or holds non-finite values is not an error
    here: it is listed in ``bad`` with the reason, and the samples that need it are skipped and counted (or
    stop the run) where the split is opened.

    Args:
        render_root: ``renders/<split>`` (or an explicit render folder).
        template: the canonical face, or None for the head-pose frame.
        fingerprint: :func:`params_fingerprint` of the tree when already taken.
        progress: called as ``progress(done, total)`` every 1000 files.
    """
    root = Path(render_root)
    fp = params_fingerprint(root) if fingerprint is None else fingerprint
    keys, clouds, flames, bad = [], [], [], {}
    nan_flame = np.full(FLAME_EXPRESSION_WIDTH, np.nan, dtype=np.float32)
    for n, rel in enumerate(sorted(fp)):
        key = rel[: -len(".npz")]
        try:
            cloud, flame = _read_one(root / rel, template)
        except (OSError, ValueError, KeyError) as e:
            bad[key] = f"{root / rel}: {e}"
            continue
        keys.append(key)
        clouds.append(cloud)
        flames.append(nan_flame if flame is None else flame)
        if progress is not None and (n + 1) % 1000 == 0:
            progress(n + 1, len(fp))
    return Face3DTable(
        keys=np.asarray(keys, dtype=str),
        clouds=np.stack(clouds) if clouds else np.zeros((0, NUM_LANDMARKS, 3), np.float32),
        flame=np.stack(flames) if flames else np.zeros((0, FLAME_EXPRESSION_WIDTH), np.float32),
        bad=bad,
        target=target_tag(template),
    )


def _write(table: Face3DTable, path: Path, fingerprint: dict[str, list[int]]) -> None:
    header = {"format_version": FORMAT_VERSION, "target": table.target, "fingerprint": fingerprint}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, keys=table.keys, clouds=table.clouds, flame=table.flame,
                     bad_keys=np.asarray(list(table.bad), dtype=str),
                     bad_reasons=np.asarray(list(table.bad.values()), dtype=str),
                     header=np.asarray(json.dumps(header)))

    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent)
    atomic_write(path, write, fsync=True)


def _read(path: Path) -> tuple[dict, Face3DTable] | None:
    """The stored header and table, or None when the file is missing or not a readable table."""
    try:
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            table = Face3DTable(keys=z["keys"], clouds=z["clouds"], flame=z["flame"],
                                bad=dict(zip(z["bad_keys"].tolist(), z["bad_reasons"].tolist(), strict=True)),
                                target=str(header["target"]), path=path)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return header, table


def open_table(render_root: str | os.PathLike, template: CanonicalFace | None,
               cache_file: str | os.PathLike | None = None) -> Face3DTable:
    """The split's :class:`Face3DTable`: read from ``cache_file`` when it is current, else built (and written
    there when ``cache_file`` is given).

    Raises:
        FileNotFoundError: ``render_root`` is not a folder.
        DataError: a folder of the tree cannot be read.
    """
    root = Path(render_root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: render folder not found (the 3D streams read the <stem>.npz files the "
                                "render step writes beside each render; run Smirk_batch_Render.py first)")
    fp = params_fingerprint(root)
    tag = target_tag(template)
    path = Path(cache_file) if cache_file is not None else None
    why = "none yet"
    if path is not None and path.is_file():
        stored = _read(path)
        if stored is None:
            why = "unreadable"
        else:
            header, table = stored
            if header.get("format_version") != FORMAT_VERSION:
                why = f"format {header.get('format_version')} (now {FORMAT_VERSION})"
            elif header.get("target") != tag:
                why = f"aligned to {header.get('target')} (now {tag})"
            elif header.get("fingerprint") != fp:
                why = "the render parameter files changed"
            else:
                return table
    print(f"{root}: reading {len(fp)} render parameter files into the 3D face table ({tag}; cache: {why})",
          flush=True)
    table = build_table(root, template, fp, progress=lambda done, total: print(
        f"  {done}/{total}", file=sys.stderr, flush=True))
    if path is not None:
        try:
            _write(table, path, fp)
            table.path = path
            print(f"  wrote {path} ({len(table.keys)} faces, {len(table.bad)} unusable files)", flush=True)
        except OSError as e:
            print(f"warning: cannot write the 3D face table {path} ({e}); it is kept in memory for this run",
                  file=sys.stderr, flush=True)
    return table
