"""Output folders: the one guard every command applies before it writes into, replaces or deletes one.

The converters (``python -m if3d.data convert``), the render batch (``Smirk_batch_Render.py``) and the
data cache (``python -m if3d.data cache``) decide where they may write through this module:

1. **Never touch a source.** An output is refused when it *is* a source, *contains* one or *is inside*
   one (paths compared after resolving symbolic links), so that replacing it can never delete or
   overwrite the data it is made from. (The render batch accepts an output folder inside its input
   folder, which its input scan skips, but not an input inside its output.)
2. **Replace only what the toolkit wrote.** Every output root gets a marker file, :data:`MARKER_NAME`
   (JSON: ``{"written_by": "if3d", "kind": ..., "created": ..., ...}``). A non-empty folder is replaced
   (``--overwrite``) or written into only when it holds the marker of the same kind; anything else is
   refused, whatever the options.
3. **Fail cleanly.** A folder that cannot be written (read-only, no permission, full disk) raises
   :class:`OutputError` naming the path and the cause; callers write atomically
   (:mod:`if3d.atomic`), so nothing half-written is left behind.
4. **One writer at a time.** A command holds :func:`exclusive_output` on its output for as long as it
   writes; a second toolkit command given the same output (the same path after resolving symbolic links)
   is refused at once, naming the command and process that holds it, instead of interleaving files with
   it. The lock is an advisory ``flock`` on a file of the user's temporary folder, released by the
   operating system when the holder exits, crashes or is killed, so it never needs cleaning up.

:class:`OutputError` is a ``ValueError``: the command lines report it in one line with exit status 2.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from if3d.atomic import atomic_write_json

__all__ = [
    "MARKER_NAME",
    "OutputError",
    "check_apart",
    "check_replaceable",
    "exclusive_output",
    "is_fatal_write_error",
    "overlap",
    "prepare_output_dir",
    "read_marker",
    "replace_dir",
    "write_error",
    "write_marker",
]

MARKER_NAME = ".if3d-output.json"
"""Marker file written into every output root the toolkit creates (hidden: not a dataset file)."""

_WRITE_ERRNOS = {
    code: text
    for code, text in (
        (errno.ENOSPC, "no space left on the device"),
        (getattr(errno, "EDQUOT", None), "disk quota exceeded"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "operation not permitted"),
    )
    if code is not None
}


class OutputError(ValueError):
    """An output path cannot be used or written; the message names it and says why.

    Attributes:
        path: the output path concerned (str).
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)

    def __reduce__(self):  # picklable across process pools
        return (type(self), (str(self), self.path))


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(os.path.abspath(path)))


def overlap(path: str | os.PathLike, source: str | os.PathLike) -> str | None:
    """How ``path`` relates to ``source`` after resolving symbolic links.

    Returns:
        ``"is"`` (the same path), ``"is inside"`` (``path`` lies under ``source``), ``"contains"``
        (``source`` lies under ``path``) or ``None`` (apart).
    """
    a, b = _real(path), _real(source)
    if a == b:
        return "is"
    if b in a.parents:
        return "is inside"
    if a in b.parents:
        return "contains"
    return None


def check_apart(out: str | os.PathLike, sources: Iterable[str | os.PathLike | None], *,
                allow_inside: bool = False, what: str = "output") -> None:
    """Refuse an output that is, contains, or (unless ``allow_inside``) is inside one of ``sources``.

    Raises:
        OutputError: one line naming the output and the source.
    """
    for src in sources:
        if src is None:
            continue
        rel = overlap(out, src)
        if rel is None or (allow_inside and rel == "is inside"):
            continue
        raise OutputError(f"{out}: refused as {what}: it {rel} the source {src} "
                          "(the toolkit never writes over, replaces or deletes its input)", out)


def read_marker(folder: str | os.PathLike) -> dict | None:
    """The marker of an output root written by :func:`write_marker`, or None (absent or not ours)."""
    path = Path(folder) / MARKER_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("written_by") != "if3d" or not isinstance(info.get("kind"), str):
        return None
    return info


def write_marker(folder: str | os.PathLike, kind: str, **info) -> Path:
    """Write (atomically) the marker that says the toolkit wrote ``folder`` as a ``kind`` output.

    Args:
        folder: the output root (must exist).
        kind: ``"dataset"`` (a converter's output), ``"renders"`` (the render batch's), ...
        **info: JSON-able details recorded with it (e.g. the source).

    Raises:
        OutputError: the folder cannot be written (read-only, full, no permission).
    """
    record = {"written_by": "if3d", "kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}
    path = Path(folder) / MARKER_NAME
    try:
        return atomic_write_json(path, record)
    except OSError as e:
        raise write_error(folder, e) from None


def is_fatal_write_error(exc: BaseException) -> bool:
    """True for write failures that no other file would escape (full disk, read-only, no permission)."""
    return isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS


def write_error(path: str | os.PathLike, exc: OSError) -> OutputError:
    """An :class:`OutputError` ``"<path>: cannot write: <cause>"`` for a failed write to ``path``."""
    cause = _WRITE_ERRNOS.get(exc.errno) or exc.strerror or str(exc)
    return OutputError(f"{path}: cannot write: {cause}", path)


def _entries(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name != MARKER_NAME]


def _describe(marker: dict | None, kind: str) -> str:
    if marker is None:
        return f"it holds no {MARKER_NAME}, so the toolkit did not write it"
    return f"its {MARKER_NAME} marks it as a {marker['kind']} output, not a {kind} output"


def check_replaceable(out: str | os.PathLike, kind: str, sources: Iterable[str | os.PathLike | None],
                      overwrite: bool) -> None:
    """Check, before any work, that ``out`` may become (or be replaced by) a ``kind`` output.

    Allowed: a path that does not exist, an empty folder, or (with ``overwrite``) a folder holding the
    marker of the same ``kind``. Never one that overlaps a source.

    Raises:
        OutputError: ``out`` overlaps a source, is a file or a symbolic link, or is a non-empty folder
            the toolkit did not write (or wrote as another kind).
        FileExistsError: ``out`` is a non-empty ``kind`` output and ``overwrite`` is False.
    """
    out = Path(out)
    check_apart(out, sources)
    if not os.path.lexists(out):
        return
    if out.is_symlink():
        raise OutputError(f"{out}: is a symbolic link; give the folder it points to ({_real(out)})", out)
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder", out)
    if not _entries(out):
        return
    marker = read_marker(out)
    if marker is None or marker.get("kind") != kind:
        raise OutputError(f"{out}: refused: the folder is not empty and {_describe(marker, kind)}; "
                          "move it away or choose another output (it is never deleted)", out)
    if not overwrite:
        raise FileExistsError(f"{out}: exists and is not empty; pass --overwrite to replace it")


def replace_dir(tmp: str | os.PathLike, out: str | os.PathLike, kind: str) -> None:
    """Move the finished folder ``tmp`` onto ``out``, deleting the previous ``out`` only when it is an
    empty folder or a ``kind`` output of the toolkit (checked again here, just before deleting it).

    Raises:
        OutputError: the previous ``out`` may not be replaced (see :func:`check_replaceable`) or the
            rename fails; ``tmp`` is left for the caller to remove and ``out`` is unchanged.
    """
    tmp, out = Path(tmp), Path(out)
    try:
        if not os.path.lexists(out):
            os.replace(tmp, out)
            return
        if out.is_symlink() or not out.is_dir():
            raise OutputError(f"{out}: exists and is not a folder", out)
        marker = read_marker(out)
        if _entries(out) and (marker is None or marker.get("kind") != kind):
            raise OutputError(f"{out}: refused: the folder is not empty and {_describe(marker, kind)}", out)
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise write_error(out, e) from None


def prepare_output_dir(out: str | os.PathLike, kind: str, sources: Iterable[str | os.PathLike | None], *,
                       allow_inside_source: bool = False, adopt: Callable[[Path], bool] | None = None,
                       **info) -> Path:
    """Create (or reuse) the output folder of a command that writes into it file by file.

    The folder may not overlap a source (see :func:`check_apart`; ``allow_inside_source`` accepts an
    output inside a source folder), must be empty, or hold the marker of the same ``kind``, or be
    accepted by ``adopt`` (an output of an earlier version of the toolkit, recognised by its own files).
    The marker is (re)written on every call, which also proves the folder writable before any work.

    Returns:
        ``out`` as a Path.

    Raises:
        OutputError: overlap, a file or a foreign non-empty folder in the way, or the folder cannot
            be created or written.
    """
    out = Path(out)
    sources = list(sources)
    check_apart(out, sources, allow_inside=allow_inside_source)
    if os.path.lexists(out) and not out.is_dir():
        raise OutputError(f"{out}: exists and is not a folder", out)
    if out.is_dir() and _entries(out):
        marker = read_marker(out)
        foreign = marker.get("kind") != kind if marker is not None else not (adopt is not None and adopt(out))
        if foreign:
            raise OutputError(f"{out}: refused: the folder is not empty and {_describe(marker, kind)}; "
                              "choose an empty or new folder", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise write_error(out, e) from None
    write_marker(out, kind, **info)
    return out


def lock_dir() -> Path:
    """The folder of the output locks: ``<temporary folder>/if3d-locks-<user id>`` (``IF3D_LOCK_DIR``
    overrides it, e.g. a folder on a file system that several machines share)."""
    env = os.environ.get("IF3D_LOCK_DIR")
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"if3d-locks-{uid}"


@contextlib.contextmanager
def exclusive_output(out: str | os.PathLike, command: str) -> Iterator[Path]:
    """Hold the toolkit's exclusive lock on the output ``out`` (a folder or a file) while the body runs.

    Two toolkit commands writing the same output at once would interleave their files (two trainings
    appending to one ``metrics.csv``, two analyses replacing each other's per-input folders). The lock
    key is ``out`` after resolving symbolic links (so ``runs/a`` and a link to it are the same output);
    outputs nested in one another are different outputs. The lock is advisory: it guards toolkit commands
    against each other, not against other programs, and covers the processes of one user on one machine
    (or, with ``IF3D_LOCK_DIR`` on a shared file system that supports ``flock``, several machines).

    Args:
        out: the output path; it need not exist yet.
        command: what holds it, for the refusal message (e.g. ``"if3d-analyze"``).

    Yields:
        the resolved output path.

    Raises:
        OutputError: another toolkit process holds the lock (the message names its command, process id
            and start time), or the lock folder cannot be written.
    """
    real = _real(out)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): commands run unguarded, as before
        yield real
        return
    folder = lock_dir()
    path = folder / (hashlib.sha256(os.fsencode(real)).hexdigest()[:32] + ".lock")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output lock {path}: {exc.strerror or exc}", out) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise OutputError(f"{out}: cannot lock {path}: {exc.strerror or exc}", out) from None
            raise OutputError(f"{out} is being written by another if3d command ({_holder(path)}); wait for it "
                              "to finish or choose another output", out) from None
        record = {"pid": os.getpid(), "command": command, "out": str(real),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        yield real
    finally:
        os.close(fd)  # releases the flock


def _holder(path: Path) -> str:
    """``if3d-train, process 1234, since 2026-01-01 10:00:00`` from a lock file (best effort)."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return f"{info['command']}, process {info['pid']}, since {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its process is still running"
