"""Reading the toolkit's text inputs (label files, annotation CSVs, render manifests) as UTF-8.

Every CSV or label file is opened through :func:`open_text`: UTF-8 (a byte-order mark, as Excel
writes, is accepted and dropped), universal newlines handled by the :mod:`csv` module. A file that is
not valid UTF-8 raises :class:`~if3d.io.report.DataError` naming the file, the line and the
offending byte, wherever in the file the bad byte is, instead of a ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from if3d.io.report import DataError

__all__ = ["NotUtf8Error", "open_text"]


class NotUtf8Error(DataError):
    """A text file (CSV, label list, manifest) is not valid UTF-8; the message names the file and line."""


def _first_bad_line(path: Path) -> tuple[int, int] | None:
    """(line number, first invalid byte) of the first line of ``path`` that is not UTF-8, or None."""
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    return number, raw[e.start]
    except OSError:
        return None
    return None


@contextmanager
def open_text(path: str | os.PathLike, what: str = "text file") -> Iterator[TextIO]:
    """Open ``path`` for reading as UTF-8 text (``newline=""``, ready for :mod:`csv`).

    Args:
        path: the file.
        what: what the file is, for the error message (e.g. ``"annotation CSV"``).

    Yields:
        the open text file.

    Raises:
        NotUtf8Error: the file (anywhere the block reads) is not valid UTF-8; the message names the
            file, the line and the byte, and says to save it as UTF-8.
        OSError: the file cannot be opened (missing, a folder, no permission).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            yield f
    except UnicodeDecodeError as e:
        where = _first_bad_line(path)
        at = f"line {where[0]}, byte 0x{where[1]:02x}" if where else f"byte 0x{e.object[e.start]:02x}"
        raise NotUtf8Error(f"{path}: {what} is not UTF-8 text ({at}); save it as UTF-8") from None
