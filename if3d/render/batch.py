"""Batch 3D render of a photo tree: ``render_tree`` (the logic behind ``Smirk_batch_Render.py``).

For every file under ``input_root`` (recursively; the output root is skipped when it lies inside),
the backend writes, under ``output_root`` at the same relative folder and with the same file stem:

- ``<stem>.png``: the render (uint8 RGB, size x size; PNG, low compression for speed);
- ``<stem>.npz``: the backend's per-image parameters (``np.load`` without pickle);

and ``manifest.csv`` at the output root lists every input with columns ``relative_path`` (of the
input file, POSIX separators), ``status`` and ``reason``:

- ``ok``: render and parameters written;
- ``no_face``: the backend found no face (no render is written; a stale one is removed);
- ``unreadable``: not an image, or a corrupt / truncated one (decoded with Pillow, which refuses
  truncated files);
- ``error``: anything else that went wrong with this file (exception type and message); two inputs
  that differ only in extension (``a.jpg``, ``a.png``) would share an output stem: the later one in
  sorted order is an ``error``.

Photos are decoded by the toolkit's one image decoder (:func:`if3d.data.images.decode_image`, the one
the dataset uses: 8/16-bit, grey/RGB/RGBA/palette to RGB, EXIF orientation not applied).

Resumable: a re-run skips inputs whose manifest row is ``ok`` (with both output files present) or
``no_face``; ``unreadable`` and ``error`` rows are retried; ``overwrite=True`` redoes everything.
Every output file is written to a temporary file in the same folder and moved into place with
``os.replace``, so an interrupted run leaves no half-written render, parameter file or manifest (the
manifest is rewritten every few seconds and at the end, also on Ctrl-C). Leftover temporary files of
a killed run are removed at the next run.

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

STATUSES = ("ok", "no_face", "unreadable", "error")
MANIFEST_NAME = "manifest.csv"
MANIFEST_FIELDS = ("relative_path", "status", "reason")
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
    """

    counts: dict[str, int] = field(default_factory=dict)
    total: int = 0
    processed: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    images_per_s: float = 0.0
    startup_s: float = 0.0
    manifest: Path | None = None

    def __str__(self) -> str:
        parts = ", ".join(f"{s} {self.counts.get(s, 0)}" for s in STATUSES)
        found = self.counts.get("ok", 0) + self.counts.get("no_face", 0)
        rate = f"; face found in {100.0 * self.counts.get('ok', 0) / found:.1f} % of readable images" if found else ""
        return (
            f"{self.total} inputs: {parts}{rate}. This run: {self.processed} processed in "
            f"{self.elapsed_s:.1f} s ({self.images_per_s:.1f} images/s), {self.skipped} already done. "
            f"Manifest: {self.manifest}"
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
    (:func:`if3d.data.images.decode_image`: 8/16-bit, grey/RGB/RGBA/palette; EXIF orientation not applied),
    so that a render is made from exactly the pixels the dataset later loads as its photo.

    Raises:
        CorruptImageError: not an image, empty, truncated or corrupt; the message names the file.
    """
    from if3d.data.images import decode_image

    return decode_image(path)


def read_manifest(path: Path) -> dict[str, tuple[str, str]]:
    """``manifest.csv`` as relative_path -> (status, reason); empty when absent.

    Raises:
        ValueError: when the file exists but lacks the expected columns, or is not UTF-8 text
            (``if3d.data.textfiles.NotUtf8Error``, naming the file and line).
    """
    from if3d.data.textfiles import open_text

    if not path.exists():
        return {}
    with open_text(path, "render manifest") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or list(reader.fieldnames)[:3] != list(MANIFEST_FIELDS):
            raise ValueError(f"{path}: not a render manifest (columns {reader.fieldnames}, expected {MANIFEST_FIELDS})")
        return {row["relative_path"]: (row["status"], row["reason"] or "") for row in reader}


def write_manifest(path: Path, rows: dict[str, tuple[str, str]]) -> None:
    """Atomically (re)write ``manifest.csv`` with rows sorted by relative path."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for rel in sorted(rows):
        status, reason = rows[rel]
        writer.writerow((rel, status, reason))
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def _output_paths(output_root: Path, rel: str) -> tuple[Path, Path]:
    stem = output_root / Path(rel).with_suffix("")
    return stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".npz")


def scan_inputs(input_root: Path, output_root: Path) -> list[str]:
    """Relative POSIX paths of every file under ``input_root`` (sorted), skipping ``output_root``."""
    out_resolved = output_root.resolve()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(input_root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if (here / d).resolve() != out_resolved)
        for name in sorted(filenames):
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


def _process_one(backend, input_root: Path, output_root: Path, rel: str) -> tuple[str, str, str]:
    png_path, npz_path = _output_paths(output_root, rel)
    try:
        image = read_photo(input_root / rel)
    except Exception as exc:
        status, reason = "unreadable", f"{type(exc).__name__}: {exc}".replace("\n", " ")
    else:
        try:
            result = backend.process(image)
            if result is None:
                status, reason = "no_face", "no face detected"
            else:
                png_path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    atomic_write_bytes(npz_path, encode_npz(result.params))
                    atomic_write_bytes(png_path, encode_png(result.render))
                except BaseException:  # incl. Ctrl-C: never leave a parameter file without its render
                    npz_path.unlink(missing_ok=True)
                    png_path.unlink(missing_ok=True)
                    raise
                return rel, "ok", ""
        except Exception as exc:
            status, reason = "error", f"{type(exc).__name__}: {exc}".replace("\n", " ")
    png_path.unlink(missing_ok=True)  # never leave a stale render next to a failed item
    npz_path.unlink(missing_ok=True)
    return rel, status, reason


def _worker_chunk(input_root: Path, output_root: Path, rels: list[str]) -> tuple[list[tuple[str, str, str]], int, float]:
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
        ValueError: bad ``size``/``framing``/``backend``, or ``output_root`` equals ``input_root``.
        RuntimeError: the backend cannot be created (e.g. a missing SMIRK checkpoint), or a worker died.
    """
    from tqdm import tqdm

    from if3d.render.backends import BACKENDS, FRAMINGS

    input_root = Path(input_root)
    output_root = Path(output_root)
    if not input_root.is_dir():
        raise FileNotFoundError(f"input folder {input_root} does not exist or is not a folder")
    if input_root.resolve() == output_root.resolve():
        raise ValueError(f"output folder must differ from the input folder ({input_root})")
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if framing not in FRAMINGS:
        raise ValueError(f"unknown framing {framing!r}; choose one of {', '.join(FRAMINGS)}")
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    kwargs = {"size": int(size), "framing": framing, **(backend_kwargs or {})}

    output_root.mkdir(parents=True, exist_ok=True)
    manifest_path = output_root / MANIFEST_NAME
    previous = {} if overwrite else read_manifest(manifest_path)
    inputs = scan_inputs(input_root, output_root)

    rows: dict[str, tuple[str, str]] = {}
    pending: list[str] = []
    skipped = 0
    stems: dict[Path, str] = {}
    for rel in inputs:
        png_path, npz_path = _output_paths(output_root, rel)
        if png_path in stems:
            rows[rel] = ("error", f"same output stem as {stems[png_path]}: {png_path.relative_to(output_root)}")
            continue
        stems[png_path] = rel
        status = previous.get(rel, ("", ""))[0]
        if status == "no_face" or (status == "ok" and png_path.exists() and npz_path.exists()):
            rows[rel] = previous[rel]
            skipped += 1
        else:
            pending.append(rel)
    _remove_stale_temporaries({_output_paths(output_root, rel)[0].parent for rel in pending} | {output_root})

    bar = tqdm(total=len(pending), unit="img", desc=f"render ({backend})", disable=not progress,
               file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    start_wall = time.time()
    last_flush = start
    processed = 0
    ready: dict[int, float] = {}

    def record(chunk_result: tuple[list[tuple[str, str, str]], int, float]) -> None:
        nonlocal last_flush, processed
        results, pid, ready_at = chunk_result
        ready[pid] = ready_at
        for rel, status, reason in results:
            rows[rel] = (status, reason)
        processed += len(results)
        bar.update(len(results))
        now = time.perf_counter()
        if now - last_flush > _MANIFEST_FLUSH_S:
            write_manifest(manifest_path, rows)
            last_flush = now

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
    finally:
        bar.close()
        elapsed = time.perf_counter() - start
        write_manifest(manifest_path, rows)

    counts = Counter(status for status, _ in rows.values())
    return RenderSummary(
        counts={s: counts.get(s, 0) for s in STATUSES},
        total=len(inputs),
        processed=processed,
        skipped=skipped,
        elapsed_s=elapsed,
        images_per_s=processed / elapsed if processed and elapsed > 0 else 0.0,
        startup_s=max(0.0, max(ready.values()) - start_wall) if ready else 0.0,
        manifest=manifest_path,
    )
