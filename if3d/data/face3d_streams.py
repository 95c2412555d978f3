"""The 3D face representations as dataset streams: a model that names one in its ``input_streams`` gets it
from the one engine (``if3d.data.source.open_split``), batch by batch, beside or instead of the photo.

=====================  ======================  ===================================================================
stream                 per sample              from (:mod:`if3d.data.face3d`)
=====================  ======================  ===================================================================
``landmarks``          float32 [478, 3]        pose-normalised landmark cloud (unit RMS radius)
``voxels<R>``          float32 [1, R, R, R]    landmark occupancy grid, R in :data:`VOXEL_RESOLUTIONS`
                                               (``voxels32`` = 32³)
``distance_map``       float32 [1, K, K]       pairwise distances of the K = 162 region landmarks
``flame_expression``   float32 [53]            FLAME expression (50) + jaw (3); SMIRK-backend renders only
=====================  ======================  ===================================================================

Every stream comes from the ``<stem>.npz`` the render step saved beside the sample's render
(``renders/<split>/<label>/<stem>.npz``), through the split's pre-computed table (:mod:`if3d.data.face3d_cache`).
A sample whose render has no usable ``.npz`` (no face was found, or the file is unreadable) is skipped and
counted in the data report as ``missing_render`` with ``--skip-missing-renders``, and is otherwise an error
naming the files, as a missing render is. ``flame_expression`` on renders of the MediaPipe backend (which
saves no FLAME parameters) is an error that says so.

When the model reads no image stream, the photo is never decoded: the samples carry the stream, ``label``,
``valence``/``arousal``/``has_va`` and ``index`` only. Batches (``ds[list]``) are gathered in one step.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from if3d.data.face3d import canonical_face, distance_map, voxel_occupancy
from if3d.data.face3d_cache import Face3DTable, open_table, table_path
from if3d.data.source import IMAGE_STREAMS, SplitSource, Subset, register_stream_reader, supports_batches
from if3d.io.report import DataError, DataReport, format_paths

__all__ = ["FACE3D_STREAMS", "VOXEL_RESOLUTIONS", "Face3DStreamDataset", "open_face3d_table"]

#: Resolutions R of the registered ``voxels<R>`` streams.
VOXEL_RESOLUTIONS = (16, 24, 32, 48, 64)

#: Every stream this module registers.
FACE3D_STREAMS = ("landmarks", *(f"voxels{r}" for r in VOXEL_RESOLUTIONS), "distance_map", "flame_expression")

_TABLES: dict[tuple[str, str], tuple[tuple, Face3DTable]] = {}


def open_face3d_table(source: SplitSource) -> Face3DTable:
    """The split's 3D face table (cached under ``<root>/cache`` for canonical datasets; see
    :mod:`if3d.data.face3d_cache`), kept for the process while the files are unchanged.

    Raises:
        ValueError: the split has no render folder.
        FileNotFoundError, DataError: the render folder is missing or unreadable.
    """
    if source.render_root is None:
        raise ValueError(f"{source.photo_root}: the 3D streams read the renders' <stem>.npz files; give --data "
                         "ROOT with renders/ or --{train,val}-renders")
    template = canonical_face()
    cache_file = table_path(source.data_root, source.split, template) if source.data_root is not None else None
    key = (str(source.render_root), str(cache_file))
    state = (template.tag if template else None,
             cache_file.stat().st_mtime_ns if cache_file is not None and cache_file.is_file() else None)
    hit = _TABLES.get(key)
    if hit is not None and hit[0] == state and cache_file is not None:
        return hit[1]
    table = open_table(source.render_root, template, cache_file)
    state = (state[0], cache_file.stat().st_mtime_ns if cache_file is not None and cache_file.is_file() else None)
    _TABLES[key] = (state, table)
    return table


# ============================================================================ what a base dataset knows


def _photo_keys(dataset: Dataset, source: SplitSource) -> list[str]:
    """``<label>/<stem>`` of every sample's photo (its relative path without extension)."""
    if isinstance(dataset, (Subset, Face3DStreamDataset)):
        inner = _photo_keys(dataset.base, source)
        return [inner[int(i)] for i in dataset.indices]
    rel = getattr(dataset, "paths", None)
    if rel is None:
        rel = getattr(dataset, "photo_relpaths", None)
    if rel is None and hasattr(dataset, "photo_path"):
        rel = [Path(dataset.photo_path(i)).relative_to(source.photo_root).as_posix() for i in range(len(dataset))]
    if rel is None:
        raise TypeError(f"{type(dataset).__name__}: cannot tell the photo of each sample (no paths, photo_relpaths "
                        "or photo_path)")
    return [os.path.splitext(str(r).replace("\\", "/"))[0] for r in rel]


def _va_arrays(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(valence, arousal, has_va)`` float32/float32/bool [N] of a dataset, or None when it does not expose them."""
    if isinstance(dataset, (Subset, Face3DStreamDataset)):
        inner = _va_arrays(dataset.base)
        return None if inner is None else tuple(a[dataset.indices] for a in inner)
    if all(hasattr(dataset, k) for k in ("valence", "arousal", "has_va")):
        return (np.asarray(dataset.valence, np.float32), np.asarray(dataset.arousal, np.float32),
                np.asarray(dataset.has_va, bool))
    maps = getattr(dataset, "_maps", None)  # the memory-mapped photo cache
    if callable(maps):
        a = maps()
        if all(k in a for k in ("valence", "arousal", "has_va")):
            return (np.asarray(a["valence"], np.float32), np.asarray(a["arousal"], np.float32),
                    np.asarray(a["has_va"], bool))
    return None


def _report_with(report: Any, name: str, skipped: Sequence[tuple[str, str]]) -> Any:
    """A copy of a data report (``DataReport`` or its JSON form) with ``skipped`` counted as ``missing_render``."""
    if not skipped:
        return report
    if isinstance(report, DataReport) or report is None:
        out = DataReport(name) if report is None else copy.deepcopy(report)
        for path, why in skipped:
            out.add("missing_render", path, why)
        if "samples" in out.stats:
            out.stats["samples"] = int(out.stats["samples"]) - len(skipped)
        return out
    out = copy.deepcopy(report) if isinstance(report, dict) else {"name": name, "source_report": report}
    out.setdefault("counts", {})["missing_render"] = out["counts"].get("missing_render", 0) + len(skipped)
    listed = out.setdefault("problems", {}).setdefault("missing_render", [])
    listed += [{"path": p, "detail": d} for p, d in skipped[: max(0, 20 - len(listed))]]
    return out


# ============================================================================ the dataset


class Face3DStreamDataset(Dataset):
    """A split's samples with one 3D stream added (module docstring), restricted to the samples that have it.

    Args:
        base: the split's dataset (photo dataset, photo cache, or another 3D stream dataset).
        indices: int [M] the base samples kept (those with usable render parameters), in order.
        stream: the stream's name.
        values: float32 [N, ...] per-table-row data; ``rows`` int [M] the row of each kept sample.
        transform: ``values[rows of a batch]`` as a tensor [B, ...] → the stream's batch [B, ...].
        with_base: read each sample of ``base`` (for image streams or an earlier 3D stream); else the samples
            are built from the base's labels and valence/arousal arrays, without decoding a photo.

    Attributes:
        labels, class_names, report: as the base's (``report`` counts the skipped samples).
    """

    def __init__(self, base: Dataset, indices: np.ndarray, stream: str, values: np.ndarray, rows: np.ndarray,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None, with_base: bool,
                 report: Any = None) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.rows = np.asarray(rows, dtype=np.int64)
        self.stream = stream
        self.values = values
        self.transform = transform
        self.with_base = with_base
        self.labels = np.asarray(base.labels)[self.indices]
        self.class_names = list(base.class_names)
        self.report = report
        self.supports_batches = True
        va = None if with_base else _va_arrays(base)
        if not with_base and va is None:
            self.with_base = True  # the base does not expose valence/arousal arrays: read its samples
        self._va = None if va is None else tuple(a[self.indices] for a in va)

    def __len__(self) -> int:
        return int(self.indices.size)

    def sample_path(self, i: int) -> str:
        from if3d.data.source import sample_path

        return sample_path(self.base, int(self.indices[i]))

    def stream_batch(self, pos: np.ndarray) -> torch.Tensor:
        """The stream for the samples at positions ``pos`` (int [B]): [B, ...]."""
        x = torch.from_numpy(np.ascontiguousarray(self.values[self.rows[pos]]))
        return self.transform(x) if self.transform is not None else x

    def _metadata(self, pos: np.ndarray) -> dict[str, torch.Tensor]:
        valence, arousal, has_va = (a[pos] for a in self._va)
        return {"label": torch.from_numpy(self.labels[pos].astype(np.int64)),
                "valence": torch.from_numpy(valence.astype(np.float32)),
                "arousal": torch.from_numpy(arousal.astype(np.float32)),
                "has_va": torch.from_numpy(has_va.astype(bool))}

    def __getitem__(self, i):
        if isinstance(i, (list, tuple, np.ndarray, torch.Tensor)):
            pos = np.asarray(i.cpu() if torch.is_tensor(i) else i, dtype=np.int64).reshape(-1)
            if pos.size and (pos.min() < 0 or pos.max() >= len(self)):
                raise IndexError(f"indices out of range for {len(self)} samples")
            if self.with_base:
                base_idx = self.indices[pos].tolist()
                batch = dict(self.base[base_idx]) if supports_batches(self.base) else \
                    default_collate([self.base[j] for j in base_idx])
            else:
                batch = self._metadata(pos)
            batch[self.stream] = self.stream_batch(pos)
            batch["index"] = torch.from_numpy(pos.copy())
            return batch
        n = len(self)
        if not -n <= int(i) < n:
            raise IndexError(f"index {i} out of range for {n} samples")
        p = int(i) % n
        if self.with_base:
            sample = dict(self.base[int(self.indices[p])])
        else:
            sample = {k: v[0] for k, v in self._metadata(np.array([p])).items()}
        sample[self.stream] = self.stream_batch(np.array([p]))[0]
        sample["index"] = p
        return sample


# ============================================================================ the readers


def _missing_reason(source: SplitSource, table: Face3DTable, key: str) -> str:
    if key in table.bad:
        return f"unusable render parameters: {table.bad[key]}"
    from if3d.data.dataset import _render_manifest

    why = _render_manifest(source.render_root).get
    for ext in (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"):
        if why(key + ext):
            return why(key + ext)
    return "no <stem>.npz beside the render (no face found, or not rendered)"


def _open_stream(stream: str, values_of: Callable[[Face3DTable], tuple[np.ndarray, np.ndarray]],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None):
    """A stream reader: ``values_of(table) -> (values [N, ...], usable bool [N])``."""

    def reader(source: SplitSource, dataset: Dataset, *, image_size: int = 112, skip_missing_renders: bool = False,
               streams: Sequence[str] = ()) -> Dataset:
        table = open_face3d_table(source)
        values, usable = values_of(table)
        keys = _photo_keys(dataset, source)
        rows = np.array([table.row_of.get(k, -1) for k in keys], dtype=np.int64)
        ok = rows >= 0
        ok[ok] = usable[rows[ok]]
        missing = np.flatnonzero(~ok)
        skipped = [(str(source.render_root / f"{keys[i]}.npz"), _missing_reason(source, table, keys[i]))
                   for i in missing]
        if skipped and not skip_missing_renders:
            listed = [f"{p}  [{why}]" for p, why in skipped]
            raise DataError(
                f"{len(skipped)} of {len(keys)} samples of {source.photo_root} have no usable 3D face data for the "
                f"{stream} stream:\n{format_paths(listed)}\nRender them (Smirk_batch_Render.py) or pass "
                "--skip-missing-renders to skip them with a count.")
        if skipped:
            print(f"{source.photo_root}: {len(skipped)} samples without usable render parameters left out "
                  f"(--skip-missing-renders) for the {stream} stream", flush=True)
        keep = np.flatnonzero(ok)
        with_base = isinstance(dataset, Face3DStreamDataset) or any(s in IMAGE_STREAMS for s in streams)
        report = _report_with(getattr(dataset, "report", None), str(source.photo_root), skipped)
        return Face3DStreamDataset(dataset, keep, stream, values, rows[keep], transform, with_base, report)

    register_stream_reader(stream)(reader)
    return reader


def _all_rows(table: Face3DTable) -> np.ndarray:
    return np.ones(len(table.keys), dtype=bool)


def _flame_values(table: Face3DTable) -> tuple[np.ndarray, np.ndarray]:
    has = table.has_flame
    if len(has) and not has.any():
        raise ValueError("the flame_expression stream needs renders made by the SMIRK backend "
                         "(Smirk_batch_Render.py --backend smirk): the <stem>.npz files of these renders hold no "
                         "FLAME parameters (MediaPipe backend)")
    return table.flame, has


read_landmarks = _open_stream("landmarks", lambda t: (t.clouds, _all_rows(t)), None)
read_distance_map = _open_stream("distance_map", lambda t: (t.clouds, _all_rows(t)), distance_map)
read_flame_expression = _open_stream("flame_expression", _flame_values, None)
for _r in VOXEL_RESOLUTIONS:
    _open_stream(f"voxels{_r}", lambda t: (t.clouds, _all_rows(t)),
                 lambda clouds, _res=_r: voxel_occupancy(clouds, _res))
