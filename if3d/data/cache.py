"""Pre-decoded dataset cache: every photo and render of a split decoded once, resized to the
training resolution and stored as uint8 arrays in one memory-mapped file per split.

Why: the original If3D loader decodes two JPEG/PNG files per sample in Python workers for every
epoch; on a 2-core CPU those workers compete with the model for the same cores, and on a GPU they
starve it. Reading a pre-decoded uint8 sample from a memory-mapped file costs a memcpy.

The images are produced by :class:`if3d.data.dataset.PairedDataset` itself (same decoding, same
colour conversion, same resize), so a :class:`CachedPairedDataset` yields exactly the samples the
JPEG path yields, as the same dict:

- ``photo``: uint8 ``[3, S, S]`` RGB,
- ``render``: uint8 ``[3, S, S]`` RGB (absent for photo-only caches),
- ``label``: int64 ``[]`` canonical AffectNet-order class index,
- ``valence``, ``arousal``: float32 ``[]``, NaN when absent,
- ``has_va``: bool ``[]``,
- ``index``: int64 ``[]`` the sample's index in the split.

File format (one file per split, ``<cache_dir>/<split>-s<S>[-photo].if3dcache``)::

    bytes 0..7     magic  b"IF3DCAC1"            (written last: a partial file has no magic)
    bytes 8..15    uint64 little-endian offset of the JSON header
    bytes 16..23   uint64 little-endian length of the JSON header
    byte  4096...  arrays, each 4096-aligned, C order, little-endian:
                   photo  uint8   [N, 3, S, S]
                   render uint8   [N, 3, S, S]   (omitted when photo-only)
                   label  int64   [N]
                   valence float32 [N], arousal float32 [N], has_va bool [N]
    JSON header    format version, size, N, array offsets/shapes/dtypes, class names, the source
                   dataset's report, relative paths of every sample, and the source fingerprint.

Invalidation: the header stores a fingerprint of the source tree — relative path, size in bytes
and modification time (ns) of every file under ``photos/<split>/``, ``renders/<split>/``, of
``annotations/<split>.csv`` and ``classes.json``. Opening compares it with the tree on disk and
refuses a stale cache with :class:`StaleCacheError` naming the added, removed and changed files
and the exact command that rebuilds it (or rebuilds it when asked). A symbolic link loop in the
tree is a :class:`~if3d.io.report.DataError` naming the link.

What the fingerprint cannot see: a file whose content is replaced while its size *and* its
modification time stay the same (a copy with ``cp -p``/``rsync -t`` of another file of equal size,
``touch -r``, a restore from an archive). This is the same quick check as ``make`` and ``rsync``, and
a deliberate trade-off: it costs one ``stat`` per file when training starts, where a content check
would read every photo and render again (the work the cache exists to avoid), and the inode change
time, the other cheap signal, also changes when a hard link to the file is made or removed, which
the converters do to the source images, so it would reject valid caches. After replacing files that
way, rebuild with ``--rebuild``.

Where the cache may be written is decided by :mod:`if3d.outputs`: never inside the files it is
built from, and an existing file at the cache path is only replaced when it is an If3D cache. A
cache that cannot be written (read-only folder, full disk; the space is reserved before writing)
raises :class:`~if3d.outputs.OutputError` naming it.

Atomicity: a cache is written to a temporary file in the same folder and moved into place with
``os.replace`` after an ``fsync``; the magic bytes are written last. An interrupted build leaves at
most a temporary file (:mod:`if3d.atomic`), which is never opened (and is removed by the next build).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shlex
import struct
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from if3d.atomic import atomic_write, remove_stale_temporaries
from if3d.data.layout import is_image_file
from if3d.io.report import DataError
from if3d.outputs import OutputError, check_apart, write_error

log = logging.getLogger(__name__)

MAGIC = b"IF3DCAC1"
FORMAT_VERSION = 1
SUFFIX = ".if3dcache"
_ALIGN = 4096
_PREAMBLE = struct.Struct("<8sQQ")  # magic, header offset, header length

#: Default folder of the caches, relative to the dataset root.
DEFAULT_CACHE_DIRNAME = "cache"


class CacheError(RuntimeError):
    """A cache file is missing, malformed, or was built with other settings."""


class StaleCacheError(CacheError):
    """The source tree changed since the cache was built.

    Attributes:
        path: the cache file.
        diff: the :class:`FingerprintDiff` between the cache and the tree on disk.
    """

    def __init__(self, path: Path, diff: FingerprintDiff, rebuild_hint: str):
        self.path = path
        self.diff = diff
        super().__init__(f"cache {path} is stale, the source tree changed since it was built: {diff.summary()}. "
                         f"Rebuild it: {rebuild_hint}")


# ----------------------------------------------------------------------------- fingerprint


def source_files(root: str | os.PathLike, split: str, photo_only: bool = False) -> list[Path]:
    """The files and folders whose state decides a split's samples (the fingerprint's scope).

    Returns (relative to ``root``): ``photos/<split>``, ``renders/<split>`` (unless
    ``photo_only``), ``annotations/<split>.csv`` and ``classes.json``. Folders are walked
    recursively by :func:`fingerprint`; paths that do not exist are simply absent from it.
    """
    parts = [Path("photos") / split]
    if not photo_only:
        parts.append(Path("renders") / split)
    parts += [Path("annotations") / f"{split}.csv", Path("classes.json")]
    return parts


def fingerprint(root: str | os.PathLike, split: str, photo_only: bool = False) -> dict[str, list[int]]:
    """Fingerprint of a split's source files: ``{relative_posix_path: [size_bytes, mtime_ns]}``.

    Walks ``photos/<split>/``, ``renders/<split>/`` recursively (every image file, hidden ones
    excluded: the render step's ``manifest.csv`` and ``.npz`` parameter files do not decide samples, so
    re-running it over unchanged photos keeps the cache current) and stats ``annotations/<split>.csv``
    and ``classes.json``. Cost: one ``stat``
    per file (about 0.2 s for FER2013's 57k train files). Symbolically linked folders are followed.

    Raises:
        DataError: a symbolic link loop (a link to itself, or a folder link leading back to a folder
            it is in) or an unreadable folder; the message names the link or folder.
    """
    root = Path(root)
    out: dict[str, list[int]] = {}

    def add(path: Path, st: os.stat_result) -> None:
        out[path.relative_to(root).as_posix()] = [int(st.st_size), int(st.st_mtime_ns)]

    def walk(folder: Path, ancestors: dict[tuple[int, int], Path]) -> None:
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except FileNotFoundError:
            return
        except OSError as e:
            raise _tree_error(folder, e) from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=True):
                    st = entry.stat(follow_symlinks=True)
                    key = (st.st_dev, st.st_ino)
                    if key in ancestors:
                        raise DataError(f"{entry.path}: symbolic link loop (leads back to {ancestors[key]}); "
                                        "remove or fix the link")
                    walk(Path(entry.path), {**ancestors, key: Path(entry.path)})
                elif entry.is_file(follow_symlinks=True) and is_image_file(entry.name):
                    add(Path(entry.path), entry.stat(follow_symlinks=True))
            except OSError as e:
                raise _tree_error(Path(entry.path), e) from None

    for rel in source_files(root, split, photo_only):
        p = root / rel
        try:
            if p.is_dir():
                st = p.stat()
                walk(p, {(st.st_dev, st.st_ino): p})
            elif p.is_file():
                add(p, p.stat())
        except OSError as e:
            raise _tree_error(p, e) from None
    return out


def _tree_error(path: Path, exc: OSError) -> DataError:
    if exc.errno == errno.ELOOP:
        return DataError(f"{path}: symbolic link loop (too many levels of symbolic links); remove or fix the link")
    return DataError(f"{path}: cannot read: {exc.strerror or exc}")


@dataclass
class FingerprintDiff:
    """Difference between a stored fingerprint and the tree on disk (relative paths, sorted)."""

    added: list[str]
    removed: list[str]
    changed: list[str]

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)

    def summary(self, limit: int = 5) -> str:
        """One line naming what changed, e.g. ``2 added (photos/train/a.jpg, ...), 1 removed (...)``."""
        parts = []
        for what, items in (("added", self.added), ("removed", self.removed), ("changed", self.changed)):
            if items:
                shown = ", ".join(items[:limit]) + (", ..." if len(items) > limit else "")
                parts.append(f"{len(items)} {what} ({shown})")
        return "; ".join(parts) if parts else "no change"


def compare_fingerprints(stored: dict[str, list[int]], current: dict[str, list[int]]) -> FingerprintDiff:
    """Files added, removed, or changed (size or mtime) from ``stored`` to ``current``."""
    added = sorted(set(current) - set(stored))
    removed = sorted(set(stored) - set(current))
    changed = sorted(k for k in set(stored) & set(current) if list(stored[k]) != list(current[k]))
    return FingerprintDiff(added, removed, changed)


# ----------------------------------------------------------------------------- paths


def cache_path(
    root: str | os.PathLike,
    split: str,
    size: int = 112,
    *,
    photo_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Where the cache of ``split`` at ``size`` lives: ``<cache_dir or root/cache>/<split>-s<size>[-photo].if3dcache``."""
    folder = Path(cache_dir) if cache_dir is not None else Path(root) / DEFAULT_CACHE_DIRNAME
    return folder / f"{split}-s{int(size)}{'-photo' if photo_only else ''}{SUFFIX}"


def _rebuild_hint(root: Path, split: str, size: int, photo_only: bool, cache_dir: Path | None,
                  dataset_kwargs: dict[str, Any] | None = None) -> str:
    """The ``python -m if3d.data cache`` command that rebuilds this cache with the settings it was built
    with (so that the rebuilt cache is the one that was asked for)."""
    kw = dict(dataset_kwargs or {})
    cmd = ["python", "-m", "if3d.data", "cache", "--data", str(root), "--split", split, "--size", str(size)]
    if photo_only:
        cmd.append("--photo-only")
    if kw.pop("skip_missing_renders", False):
        cmd.append("--skip-missing-renders")
    if cache_dir is not None:
        cmd += ["--cache-dir", str(cache_dir)]
    cmd.append("--rebuild")
    hint = shlex.join(cmd)
    if kw:  # options the command line does not have: build_cache(..., dataset_kwargs=...) takes them
        hint += f" (or build_cache() with dataset_kwargs={kw!r})"
    return hint


# ----------------------------------------------------------------------------- source dataset


def _open_source(root: Path, split: str, size: int, photo_only: bool, dataset_kwargs: dict[str, Any]):
    """The JPEG-path dataset the cache is decoded from (the one place that constructs it)."""
    from if3d.data.dataset import PairedDataset

    return PairedDataset(root, split, size=size, photo_only=photo_only, **dataset_kwargs)


def _relpaths(ds) -> tuple[list[str], list[str] | None]:
    """Relative photo and render paths of every sample of a ``PairedDataset`` (``paths``, ``render_paths``)."""
    photos = [str(p) for p in ds.paths]
    renders = getattr(ds, "render_paths", None)
    return photos, (None if renders is None else [str(p) for p in renders])


def _jsonable(obj: Any) -> Any:
    """Best-effort conversion of a dataset report to JSON (dataclasses, paths, numpy scalars)."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "to_dict"):  # DataReport
        return _jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return _jsonable(asdict(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


# ----------------------------------------------------------------------------- writing


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _layout(n: int, size: int, has_render: bool) -> dict[str, dict[str, Any]]:
    """Array name → {offset, shape, dtype} for a cache of ``n`` samples at side ``size``."""
    specs = [("photo", "|u1", [n, 3, size, size])]
    if has_render:
        specs.append(("render", "|u1", [n, 3, size, size]))
    specs += [("label", "<i8", [n]), ("valence", "<f4", [n]), ("arousal", "<f4", [n]), ("has_va", "|b1", [n])]
    offset = _ALIGN
    out = {}
    for name, dtype, shape in specs:
        out[name] = {"offset": offset, "dtype": dtype, "shape": shape}
        offset = _aligned(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
    return out


def write_cache(
    path: str | os.PathLike,
    batches: Iterable[dict[str, torch.Tensor]],
    n: int,
    size: int,
    *,
    has_render: bool,
    meta: dict[str, Any],
) -> Path:
    """Write a cache file atomically from an iterable of collated sample batches.

    Args:
        path: destination file; written to a temporary file in the same folder, then renamed
            (:func:`if3d.atomic.atomic_write`).
        batches: dicts with ``photo`` uint8 ``[b,3,S,S]``, ``render`` (if ``has_render``),
            ``label`` int64 ``[b]``, ``valence``/``arousal`` float32 ``[b]``, ``has_va`` bool
            ``[b]`` and ``index`` int64 ``[b]`` (the sample indices, in order 0..n-1).
        n: number of samples; the batches must cover exactly indices ``0..n-1`` in order.
        size: image side ``S`` in pixels.
        has_render: whether batches carry renders.
        meta: JSON-able extra header fields (fingerprint, relative paths, class names, report...).

    Returns:
        The final path.

    Raises:
        CacheError: a batch has the wrong shape/dtype, or the batches do not cover ``0..n-1``.
        Any exception from ``batches`` propagates; the temporary file is removed and no cache is left.
    """
    layout = _layout(n, size, has_render)
    end = max(spec["offset"] + int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize for spec in layout.values())
    header_offset = _aligned(end)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.truncate(header_offset)
            _reserve(f.fileno(), header_offset)
        arrays = {
            name: np.memmap(tmp, dtype=spec["dtype"], mode="r+", offset=spec["offset"], shape=tuple(spec["shape"]))
            for name, spec in layout.items()
            if int(np.prod(spec["shape"])) > 0
        }
        pos = 0
        for batch in batches:
            index = batch["index"].numpy() if torch.is_tensor(batch["index"]) else np.asarray(batch["index"])
            b = len(index)
            if not np.array_equal(index, np.arange(pos, pos + b)):
                raise CacheError(f"building {path}: samples arrived out of order (expected {pos}..{pos + b - 1})")
            for name, arr in arrays.items():
                value = batch[name]
                value = value.numpy() if torch.is_tensor(value) else np.asarray(value)
                if value.shape != (b, *arr.shape[1:]) or value.dtype != arr.dtype:
                    raise CacheError(
                        f"building {path}: field {name!r} of samples {pos}..{pos + b - 1} has shape "
                        f"{value.shape} {value.dtype}, expected {(b, *arr.shape[1:])} {arr.dtype}"
                    )
                arr[pos : pos + b] = value
            pos += b
        if pos != n:
            raise CacheError(f"building {path}: got {pos} samples, expected {n}")
        for arr in arrays.values():
            arr.flush()
        del arrays
        header = dict(meta)
        header.update(format_version=FORMAT_VERSION, size=int(size), num_samples=int(n), arrays=layout,
                      has_render=bool(has_render), created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
        with open(tmp, "r+b") as f:
            f.seek(header_offset)
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
            f.seek(0)
            f.write(_PREAMBLE.pack(MAGIC, header_offset, len(blob)))  # magic last: a partial file is never valid

    return atomic_write(path, write, fsync=True)


def _reserve(fd: int, nbytes: int) -> None:
    """Allocate the file's blocks now, so that a full disk is an ``OSError`` (ENOSPC) here and not a
    SIGBUS when the memory map is written (file systems without ``fallocate`` are left sparse)."""
    if nbytes <= 0 or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise


def _is_cache_file(path: Path) -> bool:
    """Whether ``path`` starts with the cache magic (an If3D cache, possibly damaged)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def build_cache(
    root: str | os.PathLike,
    split: str,
    size: int = 112,
    *,
    photo_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    workers: int = 0,
    batch_size: int = 256,
    rebuild: bool = False,
    progress: bool = True,
    dataset_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Decode a split once through :class:`~if3d.data.dataset.PairedDataset` and write its cache.

    Args:
        root: dataset root in the canonical layout (``photos/``, ``renders/``, ``annotations/``).
        split: split name, e.g. ``"train"``.
        size: training resolution ``S`` in pixels (images are resized by ``PairedDataset``).
        photo_only: cache photos only (for the photo-only DDAMFN baseline, or trees without renders).
        cache_dir: folder of the cache file; default ``<root>/cache``.
        workers: DataLoader worker processes used for decoding (0 = in this process).
        batch_size: samples decoded per batch while building.
        rebuild: rebuild even if a valid cache exists. Without it a valid cache is kept as is
            and a stale one is rebuilt (building is always what the caller asked for).
        progress: show a tqdm progress bar.
        dataset_kwargs: extra keyword arguments for ``PairedDataset`` (recorded in the header).

    Returns:
        Path of the cache file.

    Raises:
        OutputError: the cache path is inside the source files, an existing file there is not an If3D
            cache, or the cache cannot be written (read-only, full disk); the message names the path.
        DataError: a symbolic link loop or unreadable folder in the source tree (names it).
        CacheError: the source tree changed during the build.
        Whatever ``PairedDataset`` raises for a bad tree (missing folders, unreadable files);
        no cache file is left behind in that case.
    """
    from torch.utils.data import DataLoader

    root = Path(root)
    dataset_kwargs = {k: v for k, v in dict(dataset_kwargs or {}).items()
                      if not (k == "skip_missing_renders" and not v)}  # False is the default: same samples
    path = cache_path(root, split, size, photo_only=photo_only, cache_dir=cache_dir)
    check_apart(path, [root / rel for rel in source_files(root, split, photo_only)], what="cache file")
    if os.path.lexists(path) and not _is_cache_file(path):
        raise OutputError(f"{path}: refused: the file exists and is not an If3D cache, so it is not replaced; "
                          "move it away or choose another --cache-dir", path)
    try:
        remove_stale_temporaries(path.parent)  # leftovers of an interrupted build whose process died
    except OSError as e:
        raise write_error(path.parent, e) from None
    if not rebuild and path.exists():
        try:
            _check(path, root, split, size, photo_only, cache_dir, dataset_kwargs)
            log.info("cache %s is up to date", path)
            return path
        except CacheError as e:
            log.info("rebuilding cache: %s", e)

    fp_before = fingerprint(root, split, photo_only)
    ds = _open_source(root, split, size, photo_only, dataset_kwargs)
    n = len(ds)
    photos, renders = _relpaths(ds)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers, drop_last=False)
    it: Iterable = loader
    if progress:
        from tqdm import tqdm

        it = tqdm(loader, total=len(loader), desc=f"cache {split} s{size}", unit="batch", file=sys.stderr)
    meta = {
        "root": str(root.resolve()),
        "split": split,
        "photo_only": bool(photo_only),
        "dataset_kwargs": _jsonable(dataset_kwargs),
        "class_names": list(getattr(ds, "class_names", []) or []),
        "report": _jsonable(getattr(ds, "report", None)),
        "photo_relpaths": photos,
        "render_relpaths": renders,
        "fingerprint": fp_before,
    }
    try:
        write_cache(path, it, n, size, has_render=not photo_only, meta=meta)
    except OSError as e:
        raise write_error(path, e) from None
    fp_after = fingerprint(root, split, photo_only)
    diff = compare_fingerprints(fp_before, fp_after)
    if diff:
        path.unlink(missing_ok=True)
        raise CacheError(f"the source tree changed while the cache {path} was being built ({diff.summary()}); "
                         "no cache was written, run the build again")
    return path


# ----------------------------------------------------------------------------- reading


def _read_header(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            pre = f.read(_PREAMBLE.size)
            if len(pre) < _PREAMBLE.size:
                raise CacheError(f"{path} is not an If3D cache (truncated preamble)")
            magic, offset, length = _PREAMBLE.unpack(pre)
            if magic != MAGIC:
                raise CacheError(f"{path} is not a complete If3D cache (bad magic {magic!r}; "
                                 "an interrupted build or another file)")
            f.seek(offset)
            blob = f.read(length)
    except FileNotFoundError:
        raise CacheError(f"cache {path} does not exist") from None
    if len(blob) != length:
        raise CacheError(f"{path} is truncated (header ends past the end of the file)")
    try:
        header = json.loads(blob)
    except json.JSONDecodeError as e:
        raise CacheError(f"{path} has a malformed header: {e}") from None
    if header.get("format_version") != FORMAT_VERSION:
        raise CacheError(f"{path} has format version {header.get('format_version')}, this toolkit reads {FORMAT_VERSION}")
    file_size = path.stat().st_size
    for name, spec in header["arrays"].items():
        nbytes = int(np.prod(spec["shape"])) * np.dtype(spec["dtype"]).itemsize
        if spec["offset"] + nbytes > file_size:
            raise CacheError(f"{path} is truncated (array {name!r} ends past the end of the file)")
    return header


def _settings_mismatch(header: dict[str, Any], split: str, size: int, photo_only: bool,
                       dataset_kwargs: dict[str, Any] | None) -> str | None:
    """Why a cache built as ``header`` does not hold the requested samples (``None`` when it does).

    ``skip_missing_renders`` only matters when the build actually skipped photos: a cache without
    skipped photos holds the same samples either way.
    """
    want_kw = _jsonable(dict(dataset_kwargs or {}))
    got_kw = dict(header.get("dataset_kwargs") or {})
    want_skip = bool(want_kw.pop("skip_missing_renders", False))
    got_skip = bool(got_kw.pop("skip_missing_renders", False))
    want = {"split": split, "size": int(size), "photo_only": bool(photo_only), "dataset_kwargs": want_kw}
    got = {"split": header.get("split"), "size": header.get("size"), "photo_only": header.get("photo_only"),
           "dataset_kwargs": got_kw}
    if got != want:
        return f"it was built with {got}, requested {want}"
    skipped = ((header.get("report") or {}).get("counts") or {}).get("missing_render", 0)
    if got_skip and not want_skip and skipped:
        return (f"it was built with skip_missing_renders (it leaves out {skipped} photos without a render); "
                "pass --skip-missing-renders to train on it, or render the missing photos and rebuild")
    return None


def _check(path: Path, root: Path, split: str, size: int, photo_only: bool, cache_dir, dataset_kwargs) -> dict:
    """Read and validate a cache header against the request and the tree on disk.

    Raises:
        CacheError: incomplete/malformed file, or built with other settings.
        StaleCacheError: the source tree changed since the build.
    """
    header = _read_header(path)
    why = _settings_mismatch(header, split, size, photo_only, dataset_kwargs)
    if why:
        raise CacheError(f"cache {path} does not match: {why}")
    diff = compare_fingerprints(header["fingerprint"], fingerprint(root, split, photo_only))
    if diff:
        raise StaleCacheError(path, diff, _rebuild_hint(root, split, size, photo_only,
                                                        None if cache_dir is None else Path(cache_dir),
                                                        dataset_kwargs))
    return header


class CachedPairedDataset(Dataset):
    """A split read from its memory-mapped cache; yields the same dict as ``PairedDataset``.

    ``ds[i]`` returns one sample (``photo`` uint8 ``[3,S,S]``, ``render`` uint8 ``[3,S,S]``
    unless photo-only, ``label`` int64, ``valence``/``arousal`` float32 (NaN when absent),
    ``has_va`` bool, ``index`` int64). ``ds[list_of_indices]`` and :meth:`get_batch` return a
    whole collated batch (``photo`` ``[B,3,S,S]`` ...) with one memory-mapped gather, so a
    ``DataLoader(ds, sampler=BatchSampler(sampler, B, drop_last), batch_size=None)`` yields
    batches without per-sample collation.

    The memory maps are opened lazily per process (pickling the dataset for DataLoader workers
    sends only the path and header, never the arrays).

    Attributes:
        path: the cache file.
        size: image side ``S``.
        labels: int64 numpy array ``[N]`` of class indices (for samplers).
        class_names: class names in label order, as recorded from ``PairedDataset``.
        report: the source dataset's report (JSON form), e.g. counted skips.
        photo_relpaths, render_relpaths: relative paths of each sample's files.
        has_render: whether renders are stored.
    """

    def __init__(self, path: str | os.PathLike, header: dict[str, Any] | None = None):
        self.path = Path(path)
        self.header = header if header is not None else _read_header(self.path)
        self.size = int(self.header["size"])
        self.has_render = bool(self.header["has_render"])
        self.class_names = list(self.header.get("class_names") or [])
        self.report = self.header.get("report")
        self.photo_relpaths = self.header.get("photo_relpaths")
        self.render_relpaths = self.header.get("render_relpaths")
        self._n = int(self.header["num_samples"])
        self._arrays: dict[str, np.ndarray] | None = None
        self.supports_batches = True  # ds[list_of_indices] returns a collated batch
        self.labels = np.array(self._maps()["label"], dtype=np.int64) if self._n else np.zeros(0, np.int64)

    def _maps(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = {
                name: np.memmap(self.path, dtype=spec["dtype"], mode="r", offset=spec["offset"],
                                shape=tuple(spec["shape"]))
                for name, spec in self.header["arrays"].items()
                if int(np.prod(spec["shape"])) > 0
            }
        return self._arrays

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, (list, tuple, np.ndarray, torch.Tensor)):
            return self.get_batch(index)
        i = int(index)
        if not -self._n <= i < self._n:
            raise IndexError(f"index {index} out of range for {self._n} cached samples ({self.path})")
        i %= self._n
        a = self._maps()
        out = {"photo": torch.from_numpy(np.array(a["photo"][i]))}
        if self.has_render:
            out["render"] = torch.from_numpy(np.array(a["render"][i]))
        out["label"] = torch.tensor(int(a["label"][i]), dtype=torch.int64)
        out["valence"] = torch.tensor(float(a["valence"][i]), dtype=torch.float32)
        out["arousal"] = torch.tensor(float(a["arousal"][i]), dtype=torch.float32)
        out["has_va"] = torch.tensor(bool(a["has_va"][i]))
        out["index"] = torch.tensor(i, dtype=torch.int64)
        return out

    def get_batch(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        """A collated batch: ``photo`` uint8 ``[B,3,S,S]``, ``render`` uint8 ``[B,3,S,S]``,
        ``label`` int64 ``[B]``, ``valence``/``arousal`` float32 ``[B]``, ``has_va`` bool ``[B]``,
        ``index`` int64 ``[B]`` — equal to ``default_collate([ds[i] for i in indices])``.

        Raises:
            IndexError: an index is out of range.
        """
        idx = indices.cpu().numpy() if torch.is_tensor(indices) else np.asarray(indices)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"indices out of range for {self._n} cached samples ({self.path})")
        idx = idx % max(self._n, 1)
        a = self._maps()
        # Gathering in sorted order reads the file sequentially; the result is put back in request order.
        order = np.argsort(idx, kind="stable")
        sorted_idx = idx[order]
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))

        def gather(name: str) -> torch.Tensor:
            return torch.from_numpy(np.ascontiguousarray(np.asarray(a[name][sorted_idx])[inverse]))

        out = {"photo": gather("photo")}
        if self.has_render:
            out["render"] = gather("render")
        for name in ("label", "valence", "arousal", "has_va"):
            out[name] = gather(name)
        out["index"] = torch.from_numpy(idx.copy())
        return out


def open_cache(
    root: str | os.PathLike,
    split: str,
    size: int = 112,
    *,
    photo_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    rebuild_if_stale: bool = False,
    dataset_kwargs: dict[str, Any] | None = None,
    **build_kwargs: Any,
) -> CachedPairedDataset:
    """Open the cache of ``split``, checking it against the tree on disk.

    Raises:
        CacheError: the cache does not exist, is incomplete/malformed, or was built with other settings.
        StaleCacheError: the source tree changed (the message names the files) and
            ``rebuild_if_stale`` is false; with it the cache is rebuilt and opened.
    """
    root = Path(root)
    path = cache_path(root, split, size, photo_only=photo_only, cache_dir=cache_dir)
    try:
        header = _check(path, root, split, size, photo_only, cache_dir, dataset_kwargs)
    except StaleCacheError:
        if not rebuild_if_stale:
            raise
        build_cache(root, split, size, photo_only=photo_only, cache_dir=cache_dir, rebuild=True,
                    dataset_kwargs=dataset_kwargs, **build_kwargs)
        header = _check(path, root, split, size, photo_only, cache_dir, dataset_kwargs)
    return CachedPairedDataset(path, header)


def open_cache_if_valid(
    root: str | os.PathLike,
    split: str,
    size: int = 112,
    *,
    photo_only: bool = False,
    cache_dir: str | os.PathLike | None = None,
    on_stale: str = "error",
    dataset_kwargs: dict[str, Any] | None = None,
) -> CachedPairedDataset | None:
    """The training engine's entry point: the cached split when a cache exists, else ``None``.

    Args:
        root, split, size, photo_only, cache_dir: as in :func:`build_cache`.
        on_stale: what to do when a cache exists but the source tree changed since it was built:
            ``"error"`` (default) raises :class:`StaleCacheError` naming the changed files (the
            user either rebuilds it or deletes it), ``"rebuild"`` rebuilds and opens it,
            ``"ignore"`` logs a warning and returns ``None`` (the caller falls back to JPEG).
        dataset_kwargs: ``PairedDataset`` keyword arguments the cache must have been built with.

    Returns:
        A :class:`CachedPairedDataset`, or ``None`` when there is no cache file, or when the file
        is not a usable cache (interrupted build, other settings; logged as a warning).

    Raises:
        StaleCacheError: see ``on_stale``.
        ValueError: unknown ``on_stale``.
    """
    if on_stale not in ("error", "rebuild", "ignore"):
        raise ValueError(f"on_stale must be 'error', 'rebuild' or 'ignore', got {on_stale!r}")
    path = cache_path(root, split, size, photo_only=photo_only, cache_dir=cache_dir)
    if not path.exists():
        return None
    try:
        return open_cache(root, split, size, photo_only=photo_only, cache_dir=cache_dir,
                          rebuild_if_stale=on_stale == "rebuild", dataset_kwargs=dataset_kwargs)
    except StaleCacheError as e:
        if on_stale == "error":
            raise
        log.warning("%s; using the image files instead", e)
        return None
    except CacheError as e:
        log.warning("not using cache: %s", e)
        return None


__all__: list[str] = [
    "CacheError",
    "CachedPairedDataset",
    "FingerprintDiff",
    "StaleCacheError",
    "build_cache",
    "cache_path",
    "compare_fingerprints",
    "fingerprint",
    "open_cache",
    "open_cache_if_valid",
    "write_cache",
]
