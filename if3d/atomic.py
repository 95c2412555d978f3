"""Atomic file writes: the one way every part of the toolkit writes a file.

Every write goes to a temporary file in the destination folder (same file system) and is moved
into place with :func:`os.replace`, so a reader, an interrupted job or a crash never sees a
half-written file: the previous version stays intact until the new one is complete. On any
exception the temporary file is removed and the destination is left as it was.

Temporary files are named ``.<name>.<pid>.<random>.tmp-if3d`` so that :func:`remove_stale_temporaries`
can recognise (and only those) leftovers of a process that was killed in the middle of a write, and
leave alone those of a process that is still writing.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Suffix of every temporary file this module creates.
TMP_SUFFIX = ".tmp-if3d"

__all__ = [
    "TMP_SUFFIX",
    "atomic_copy",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "is_temporary",
    "remove_stale_temporaries",
]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], *, fsync: bool = False) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then move it onto ``path``.

    Args:
        path: destination; its folder is created when missing.
        write: writes the whole content to the temporary path it is given.
        fsync: flush the file to the disk before the rename (for large files that must survive a
            power cut, such as the data cache).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` or the file system raises (``OSError`` for a read-only folder or a full
        disk); ``path`` is then unchanged and no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        # mkstemp makes the file private (0600); the result gets the permissions of a plain open()
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    try:
        write(tmp)
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def _umask() -> int:
    """The process's umask, read without changing it where Linux reports it (/proc), else set and reset."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return atomic_write(path, _write)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON (UTF-8, trailing newline) to ``path`` atomically.

    Non-finite floats are written as ``NaN``/``Infinity`` (Python's JSON); callers that need strict
    JSON replace them first.
    """
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy the file ``src`` onto ``dst`` atomically."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)`` atomically."""
    import torch

    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def is_temporary(name: str) -> bool:
    """True when ``name`` (a file name) is one of this module's temporary files."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _writer_alive(name: str) -> bool:
    """Whether the process that created the temporary file ``name`` is still running."""
    parts = name[: -len(TMP_SUFFIX)].split(".")
    try:
        pid = int(parts[-2])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False  # our own leftover: nothing of ours writes while we clean up
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that an interrupted write left in ``folder`` (not recursive).

    Only names that :func:`is_temporary` recognises are touched, and only those whose writing process
    (the pid in the name) no longer runs, so a concurrent writer in the same folder is safe.

    Returns:
        The removed paths (empty when the folder does not exist).
    """
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in os.scandir(folder):
        if is_temporary(entry.name) and entry.is_file(follow_symlinks=False) and not _writer_alive(entry.name):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed
