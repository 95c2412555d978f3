"""Batch 3D render of a photo tree: ``render_tree`` (the logic behind ``Smirk_batch_Render.py``).

For every file under ``input_root`` (recursively; the output root is skipped when it lies inside),
the backend writes, under ``output_root`` at the same relative folder and with the same file stem:

- ``<stem>.png``: the render (uint8 RGB, size x size; PNG, low compression for speed);
- ``<stem>.npz``: the backend's per-image parameters (``np.load`` without pickle);

and ``manifest.csv`` at the output root lists every input with columns ``relative_path`` (of the
input file, POSIX separators), ``status``, ``reason``, and ``size`` (bytes) and ``mtime_ns`` of the
input as it was when it was processed:

- ``ok``: render and parameters written;
- ``no_face``: the backend found no face (no render is written; a stale one is removed);
- ``unreadable``: not an image, or an empty, corrupt or truncated one (the reason says which);
- ``error``: anything else that went wrong with this file (exception type and message); two inputs
  that differ only in extension (``a.jpg``, ``a.png``) would share an output stem: the later one in
  sorted order is an ``error``.

Photos are decoded by the toolkit's one image decoder (:func:`if3d.io.images.decode_image`, the one
the dataset uses: 8/16-bit, grey/RGB/RGBA/palette to RGB, EXIF orientation not applied).

Resumable: a re-run skips inputs whose manifest row is ``ok`` (with both output files present) or
``no_face`` *and* whose size and modification time are still those recorded (a manifest of an earlier
version without them: an ``ok`` input newer than its render counts as changed); a changed input is
processed again, so a replaced photo never stays paired with the render of the old one, and when it
no longer gives a render (``unreadable``, ``no_face``, ``error``) its old render and parameter files
are removed (counted in ``RenderSummary.removed``). ``unreadable`` and ``error`` rows are retried;
``overwrite=True`` redoes everything. Every output file is written to a temporary file in the same
folder and moved into place with ``os.replace``, so an interrupted run leaves no half-written render,
parameter file or manifest (the manifest is rewritten every few seconds and at the end, also on
Ctrl-C). Leftover temporary files of a killed run are removed at the next run.

The output folder (:mod:`if3d.outputs`) may not be the input folder or contain it (it may lie inside
it: the input scan skips it), and must be new, empty, or an output folder of this command (it holds
the toolkit's marker file, or a ``manifest.csv`` of an earlier version). A write that fails for the
whole folder (read-only, full disk, no permission) stops the run with an ``OutputError`` naming the
file; the manifest keeps every item finished before.

Parallelism: ``workers`` processes (spawned), each building its own backend (FaceMesh graphs, OpenGL
context) once; items are sent in chunks. ``workers <= 1`` runs in the calling process.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import multiprocessing
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from if3d.atomic import atomic_write_bytes, remove_stale_temporaries
from if3d.io.images import decode_image
from if3d.io.report import CorruptImageError
from if3d.io.text import open_text
from if3d.outputs import MARKER_NAME, OutputError, is_fatal_write_error, prepare_output_dir, write_error

STATUSES = ("ok", "no_face", "unreadable", "error")
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("relative_path", "status", "reason", "size", "mtime_ns")
"""Columns of ``manifest.csv``; manifests of earlier versions have only the first three."""
_LEGACY_FIELDS = MANIFEST_FIELDS[:3]
PNG_COMPRESSION = 1
"""zlib level for render PNGs. Measured on a 224 x 224 render: level 1 1.8 ms / 19.8 kB, OpenCV's
default 3 2.5 ms / 16.7 kB, level 6 4.5 ms / 15.3 kB."""
_MANIFEST_FLUSH_S = 5.0


@dataclass
class RenderSummary:
    """What ``render_tree`` did.

    Attributes:
        counts: status -> number of inputs with that status in the final manifest (all inputs).
        total: number of input files found.
        processed: inputs processed by this run.
        skipped: inputs skipped because an earlier run had finished them.
        elapsed_s: wall time of the processing phase in seconds (excluding the initial scan, including
            the start of the workers).
        images_per_s: ``processed / elapsed_s`` (0 when nothing was processed).
        startup_s: seconds from the start of processing until the last worker had built its backend.
        manifest: path of ``manifest.csv``.
        changed: inputs processed again because they changed (size or modification time) since an
            earlier run finished them.
        removed: stale render and parameter files removed because their input no longer gives a render.
    """

    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    processed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    startup_s: float = 0.0
    manifest: Path | None = None
    changed: int = 0
    removed: int = 0

    def __str__(self) -> str:
        parts = ", ".join(f"{s} {self.counts.get(s, 0)}" for s in STATUSES)
        found = self.counts.get("ok", 0) + self.counts.get("no_face", 0)
        rate = f"; face found in {100.0 * self.counts.get('ok', 0) / found:.1f} % of readable images" if found else ""
        return (
            f"{self.total} inputs: {parts}{rate}. This run: {self.processed} processed in "
            f"{self.elapsed_s:.1f} s ({self.images_per_s:.1f} images/s), {self.skipped} already done"
            + (f", {self.changed} changed since the earlier run" if self.changed else "")
            + (f", {self.removed} stale render/parameter files removed" if self.removed else "")
            + f". Manifest: {self.manifest}"
        )


# ----------------------------------------------------------------------------------------------
# files


def encode_png(image_rgb: np.ndarray) -> bytes:
    """PNG bytes of a uint8 [H, W, 3] RGB image (zlib level ``PNG_COMPRESSION``)."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]),
                           [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def encode_npz(params: dict[str, np.ndarray]) -> bytes:
    """Uncompressed ``.npz`` bytes of a name -> array dict (readable with ``np.load``, no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in params.items()})
    return buf.getvalue()


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """Decode a photo file to uint8 [H, W, 3] RGB with the toolkit's one decoder
    (:func:`if3d.io.images.decode_image`: 8/16-bit, grey/RGB/RGBA/palette; EXIF orientation not applied),
    so that a render is made from exactly the pixels the dataset later loads as its photo.

    Raises:
        CorruptImageError: not an image, empty, truncated or corrupt; the message names the file.
    """
    return decode_image(path)


def read_manifest(path: Path) -> dict[str, tuple[str, str]]:
    """``manifest.csv`` as relative_path -> (status, reason); empty when absent.

    Raises:
        ValueError: when the file exists but lacks the expected columns, or is not UTF-8 text
            (``if3d.io.text.NotUtf8Error``, naming the file and line).
    """
    return {rel: (row[0], row[1]) for rel, row in read_manifest_rows(path).items()}


ManifestRow = tuple[str, str, "int | None", "int | None"]
"""(status, reason, input size in bytes, input mtime in ns); the last two are None in manifests of
earlier versions."""


def read_manifest_rows(path: Path) -> dict[str, ManifestRow]:
    """``manifest.csv`` as relative_path -> (status, reason, size, mtime_ns); empty when absent.

    Raises:
        ValueError: as :func:`read_manifest`.
    """
    if not path.exists():
        return {}
    with open_text(path, "render manifest") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or list(reader.fieldnames)[:3] != list(_LEGACY_FIELDS):
            raise ValueError(f"{path}: not a render manifest (columns {reader.fieldnames}, expected "
                             f"{','.join(MANIFEST_FIELDS)})")
        rows: dict[str, ManifestRow] = {}
        for row in reader:
            rows[row["relative_path"]] = (row["status"], row["reason"] or "", _int_or_none(row.get("size")),
                                          _int_or_none(row.get("mtime_ns")))
        return rows


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text not in (None, "") else None
    except ValueError:
        return None


def write_manifest(path: Path, rows: dict[str, tuple]) -> None:
    """Atomically (re)write ``manifest.csv`` with rows sorted by relative path.

    Args:
        rows: relative_path -> (status, reason[, size, mtime_ns]).
    """
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for rel in sorted(rows):
        status, reason, *stat = rows[rel]
        size, mtime_ns = (list(stat) + [None, None])[:2]
        writer.writerow((rel, status, reason, "" if size is None else size, "" if mtime_ns is None else mtime_ns))
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _is_render_output(folder: Path) -> bool:
    """True when ``folder`` holds a render manifest (an output of an earlier version, before the marker)."""
    try:
        read_manifest_rows(folder / MANIFEST_NAME)
    except ValueError:
        return False
    return (folder / MANIFEST_NAME).is_file()


def _input_stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return int(st.st_size), int(st.st_mtime_ns)


def _unchanged(row: ManifestRow, stat: tuple[int, int] | None, png_path: Path) -> bool:
    """Whether the input of a finished manifest row is the one that was processed."""
    if stat is None:
        return False
    size, mtime_ns = row[2], row[3]
    if size is not None and mtime_ns is not None:
        return (size, mtime_ns) == stat
    if row[0] != "ok":  # an earlier version's no_face row: no render that could be paired with it
        return True
    try:  # an earlier version's ok row: the input must not be newer than its render
        return stat[1] <= png_path.stat().st_mtime_ns
    except OSError:
        return False


def _output_paths(output_root: Path, rel: str) -> tuple[Path, Path]:
    stem = output_root / Path(rel).with_suffix("")
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".npz")


def scan_inputs(input_root: Path, output_root: Path) -> list[str]:
    """Relative POSIX paths of every file under ``input_root`` (sorted), skipping ``output_root`` and the
    toolkit's output marker files."""
    out_resolved = output_root.resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(input_root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != out_resolved)
        for name in sorted(filenames):
            if name != MARKER_NAME:  # the toolkit's marker of a converted dataset root is not a photo
                found.append((here / name).relative_to(input_root).as_posix())
    return sorted(found)


def _remove_stale_temporaries(dirs: set[Path]) -> None:
    for d in dirs:
        remove_stale_temporaries(d)


# ----------------------------------------------------------------------------------------------
# per-item work (runs in the workers, or in-process)

_BACKEND = None
_BACKEND_ERROR: BaseException | None = None
_READY_AT = 0.0


def _init_worker(backend_name: str, backend_kwargs: dict, threads: int | None) -> None:
    global _BACKEND, _BACKEND_ERROR, _READY_AT
    if threads is not None:  # a worker process: Ctrl-C is handled by the parent, which stops the pool
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        # OpenCV and OpenMP (torch, for SMIRK): do not oversubscribe the cores shared by the workers.
        # Mesa's llvmpipe keeps its default threads: LP_NUM_THREADS=0 measured ~2x slower here.
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        cv2.setNumThreads(threads)
    try:
        from if3d.render.backends import get_backend

        _BACKEND = get_backend(backend_name, **backend_kwargs)
    except BaseException as exc:  # reported to the parent on the first task
        _BACKEND_ERROR = exc
    _READY_AT = time.time()


def _close_worker() -> None:
    global _BACKEND, _BACKEND_ERROR
    if _BACKEND is not None:
        _BACKEND.close()
    _BACKEND, _BACKEND_ERROR = None, None


Result = tuple[str, str, str, "int | None", "int | None", int]
"""(relative path, status, reason, input size, input mtime_ns, stale output files removed)."""


def _process_one(backend, input_root: Path, output_root: Path, rel: str) -> Result:
    """Render one input; raises ``OutputError`` when the output folder cannot be written at all."""
    png_path, npz_path = _output_paths(output_root, rel)
    stat = _input_stat(input_root / rel)  # before reading: a change while reading shows at the next run
    size, mtime_ns = stat if stat is not None else (None, None)
    try:
        image = read_photo(input_root / rel)
    except CorruptImageError as exc:
        status, reason = "unreadable", exc.problem.replace("\n", " ")
    except Exception as exc:
        status, reason = "unreadable", f"{type(exc).__name__}: {exc}".replace("\n", " ")
    else:
        try:
            result = backend.process(image)
            if result is None:
                status, reason = "no_face", "no face detected"
            else:
                try:
                    png_path.parent.mkdir(parents=True, exist_ok=True)
                    atomic_write_bytes(npz_path, encode_npz(result.params))
                    atomic_write_bytes(png_path, encode_png(result.render))
                except BaseException as exc:  # incl. Ctrl-C: never leave a parameter file without its render
                    _unlink_quietly(npz_path, png_path)
                    if is_fatal_write_error(exc):
                        raise write_error(png_path, exc) from None
                    raise
                return rel, "ok", "", size, mtime_ns, 0
        except OutputError:
            raise
        except Exception as exc:
            status, reason = "error", f"{type(exc).__name__}: {exc}".replace("\n", " ")
    removed = 0
    for stale in (png_path, npz_path):  # never leave a stale render next to a failed or changed item
        try:
            stale.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as exc:
            if is_fatal_write_error(exc):
                raise write_error(stale, exc) from None
            raise
    return rel, status, reason, size, mtime_ns, removed


def _unlink_quietly(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:
            pass


def _worker_chunk(input_root: Path, output_root: Path, rels: list[str]) -> tuple[list[Result], int, float]:
    """Process a chunk; returns (results, worker pid, wall-clock time the worker's backend was ready)."""
    if _BACKEND_ERROR is not None:
        raise RuntimeError(f"the render backend could not be created: {_BACKEND_ERROR}") from _BACKEND_ERROR
    return [_process_one(_BACKEND, input_root, output_root, rel) for rel in rels], os.getpid(), _READY_AT


# ----------------------------------------------------------------------------------------------
# driver


def render_tree(
    input_root: str | os.PathLike,
    output_root: str | os.PathLike,
    backend: str = "mediapipe",
    size: int = 224,
    workers: int = 1,
    framing: str = "photo",
    overwrite: bool = False,
    backend_kwargs: dict | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
) -> RenderSummary:
    """Render every photo under ``input_root`` into a mirrored tree under ``output_root``.

    Args:
        input_root: folder of photos (any nesting; every file is an input).
        output_root: folder for renders, parameter files and ``manifest.csv`` (created).
        backend: ``"mediapipe"`` or ``"smirk"`` (``backends.get_backend``).
        size: render side in pixels.
        workers: worker processes; ``<= 1`` runs in this process.
        framing: ``"photo"`` or ``"smirk-crop"``.
        overwrite: redo inputs that an earlier run finished.
        backend_kwargs: extra constructor arguments of the backend (e.g. SMIRK's ``checkpoint``,
            ``flame_model``, ``assets_dir``, ``device``).
        progress: show a tqdm progress bar (images/s) on stderr.
        chunk_size: inputs per task sent to a worker (default: between 1 and 32, from the workload).

    Returns:
        ``RenderSummary``.

    Raises:
        FileNotFoundError: ``input_root`` is not a folder.
        ValueError: bad ``size``/``framing``/``backend``, ``output_root`` equals ``input_root``, or the
            manifest is unreadable (not UTF-8, other columns; the message names it).
        OutputError (a ValueError): ``output_root`` contains ``input_root``, is a file, is a non-empty
            folder this command did not write, or cannot be written (read-only, full disk, no
            permission); the message names the path. Items finished before stay in the manifest.
        RuntimeError: the backend cannot be created (e.g. a missing SMIRK checkpoint), or a worker died.
    """
    from tqdm import tqdm

    from if3d.render.backends import FRAMINGS, list_backends

    input_root = Path(input_root)
    output_root = Path(output_root)
    if not input_root.is_dir():
        raise FileNotFoundError(f"input folder {input_root} does not exist or is not a folder")
    if input_root.resolve() == output_root.resolve():
        raise ValueError(f"output folder must differ from the input folder ({input_root})")
    if backend not in list_backends():
        raise ValueError(f"unknown render backend {backend!r}; choose one of {', '.join(list_backends())}")
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    kwargs = {"size": int(size), "framing": framing, **(backend_kwargs or {})}

    prepare_output_dir(output_root, "renders", [input_root], allow_inside_source=True, adopt=_is_render_output,
                       input=str(input_root.resolve()), backend=backend)
    manifest_path = output_root / MANIFEST_NAME
    previous = {} if overwrite else read_manifest_rows(manifest_path)
    inputs = scan_inputs(input_root, output_root)

    rows: dict[str, tuple] = {}
    pending: list[str] = []
    skipped = changed = 0
    stems: dict[Path, str] = {}
    for rel in inputs:
        png_path, npz_path = _output_paths(output_root, rel)
        if png_path in stems:
            rows[rel] = ("error", f"same output stem as {stems[png_path]}: {png_path.relative_to(output_root)}")
            continue
        stems[png_path] = rel
        row = previous.get(rel)
        done = row is not None and (row[0] == "no_face" or (row[0] == "ok" and png_path.exists()
                                                             and npz_path.exists()))
        if done and _unchanged(row, _input_stat(input_root / rel), png_path):
            rows[rel] = row
            skipped += 1
        else:
            if done:  # finished by an earlier run, but the input changed since
                changed += 1
            pending.append(rel)
    try:
        _remove_stale_temporaries({_output_paths(output_root, rel)[0].parent for rel in pending} | {output_root})
    except OSError as e:
        raise write_error(output_root, e) from None

    bar = tqdm(total=len(pending), unit="img", desc=f"render ({backend})", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    start_wall = time.time()
    last_flush = start
    processed = removed = 0
    ready: dict[int, float] = {}

    def record(chunk_result: tuple[list[Result], int, float]) -> None:
        nonlocal last_flush, processed, removed
        results, pid, ready_at = chunk_result
        ready[pid] = ready_at
        for rel, status, reason, in_size, in_mtime, n_removed in results:
            rows[rel] = (status, reason, in_size, in_mtime)
            removed += n_removed
        processed += len(results)
        bar.update(len(results))
        now = time.perf_counter()
        if now - last_flush > _MANIFEST_FLUSH_S:
            _save_manifest(manifest_path, rows)
            last_flush = now

    failed = False
    try:
        if workers <= 1 or len(pending) <= 1:
            _init_worker(backend, kwargs, None)
            try:
                step = chunk_size or 16
                for i in range(0, len(pending), step):
                    record(_worker_chunk(input_root, output_root, pending[i:i + step]))
            finally:
                _close_worker()
        else:
            step = chunk_size or max(1, min(32, len(pending) // (workers * 8)))
            chunks = [pending[i:i + step] for i in range(0, len(pending), step)]
            threads = max(1, (os.cpu_count() or 1) // workers)
            ctx = multiprocessing.get_context("spawn")
            with cf.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init_worker,
                                        initargs=(backend, kwargs, threads)) as pool:
                futures = {pool.submit(_worker_chunk, input_root, output_root, c) for c in chunks}
                try:
                    for fut in cf.as_completed(futures):
                        record(fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    except BaseException:
        failed = True
        raise
    finally:
        bar.close()
        elapsed = time.perf_counter() - start
        try:
            _save_manifest(manifest_path, rows)
        except OutputError:
            if not failed:  # otherwise the first failure is the one to report
                raise

    counts = Counter(row[0] for row in rows.values())
    return RenderSummary(
        counts={s: counts.get(s, 0) for s in STATUSES},
        total=len(inputs),
        processed=processed,
        skipped=skipped,
        elapsed_s=elapsed,
        images_per_s=processed / elapsed if processed and elapsed > 0 else 0.0,
        startup_s=max(0.0, max(ready.values()) - start_wall) if ready else 0.0,
        manifest=manifest_path,
        changed=changed,
        removed=removed,
    )


def _save_manifest(path: Path, rows: dict[str, tuple]) -> None:
    try:
        write_manifest(path, rows)
    except OSError as e:
        raise write_error(path, e) from None
