"""Bad-input accounting for datasets and converters: every problem is counted and named, never dropped silently.

A :class:`DataReport` collects problems by *kind* (corrupt image, photo without a render, annotation row
without a photo, ...), each with the path it concerns and a short detail. Datasets and converters fill one
while they index or convert, print its :meth:`DataReport.summary`, and expose it (``dataset.report``,
``<out>/report.json``) so that users can see exactly what was skipped and why.

The errors raised for bad input all derive from :class:`DataError` (a ``ValueError``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from if3d.atomic import atomic_write_json

# kind -> one-line description (the order is the order of the printed summary).
PROBLEM_KINDS: dict[str, str] = {
    "non_image_file": "file that is not an image (by extension) in an image tree; ignored",
    "empty_image": "image file of size 0; skipped",
    "corrupt_image": "image that cannot be decoded (corrupt, truncated or not an image); skipped",
    "unknown_label_folder": "label folder outside the class list; its files are skipped",
    "stray_file": "file outside any label folder; ignored",
    "missing_render": "photo without a render; skipped (skip_missing_renders) or an error",
    "render_without_photo": "render without a photo; ignored",
    "duplicate_render": "several renders for one photo (same stem, different extension); the first is used",
    "annotation_without_photo": "annotation row whose photo is not in the dataset; ignored",
    "photo_without_annotation": "photo without an annotation row; valence/arousal are NaN (has_va False)",
    "bad_annotation": "annotation row with an unparsable or out-of-range value; ignored",
    "duplicate_annotation": "several annotation rows for one photo; the first is used",
    "label_mismatch": "annotation class differs from the label folder; the folder label is used",
    "excluded_class": "sample of a class outside num_classes (e.g. Contempt for 7 classes); skipped",
    # converters
    "unknown_class": "source class name or code outside the canonical classes; skipped",
    "missing_source_image": "label row whose image file is missing in the source; skipped",
    "unlabelled_image": "source image without a label (e.g. an unlabelled test set); skipped",
    "bad_label_row": "unparsable row in a label file; skipped",
    "duplicate_label_row": "image listed more than once in a label file; the first row is used",
    "bad_box": "face box outside the image or empty; skipped",
    "no_face": "no face found by the MediaPipe landmarker; skipped",
    "vote_unknown": "FERPlus: majority vote is 'unknown'; dropped",
    "vote_not_face": "FERPlus: majority vote is 'not a face' (NF); dropped",
    "vote_no_majority": "FERPlus: no class has more than half of the votes; dropped",
    "not_an_expression": "AffectNet: None/Uncertain/No-Face label; dropped",
    "renamed_duplicate": "two source files map to the same output name; the later one was renamed",
    # clips (video datasets and the video converters)
    "empty_clip": "clip folder without frames (or every frame skipped); skipped",
    "faceless_frame": "video frame in which the MediaPipe landmarker found no face; left out of its clip",
    "faceless_clip": "clip in which no frame has a face; skipped (--skip-faceless-clips) or an error",
    "unreadable_video": "video file that cannot be opened or decoded; skipped",
    "truncated_video": "video that ends before the frame count its header announces; its decoded frames are kept",
    "unlabelled_clip": "clip without a label (e.g. a CK+ sequence without an emotion file); skipped",
    # AU converters (if3d.data.au)
    "missing_video": "AU labels whose video is missing; skipped (skip_missing) or an error",
    "missing_frame": "labelled frame without its image, or past the video's end; skipped (skip_missing) or an error",
}


class DataError(ValueError):
    """Bad input data: the message names the file(s) and the problem."""


class CorruptImageError(DataError):
    """An image file cannot be decoded (corrupt, truncated, empty, unreadable or not an image).

    The message is ``"<path>: <problem>"``; the attributes ``path`` (str or None) and ``problem``
    (the part after the path) give the two halves.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.problem = problem if problem is not None else message.split(": ", 1)[-1]

    def __reduce__(self):  # keep path and problem across process pools
        return (type(self), (str(self), self.path, self.problem))


class MissingRenderError(DataError):
    """Photos without a render (the default is to refuse them; ``skip_missing_renders=True`` skips them)."""


class LayoutError(DataError):
    """A dataset folder does not have the expected layout."""


def format_paths(paths: list[str], limit: int = 20) -> str:
    """``limit`` paths, one per line, then ``... and N more`` when there are more."""
    shown = "\n".join(f"  {p}" for p in paths[:limit])
    if len(paths) > limit:
        shown += f"\n  ... and {len(paths) - limit} more"
    return shown


class DataReport:
    """Counts and paths of every problem met while indexing or converting a dataset.

    Args:
        name: what the report is about (a dataset root or a conversion), shown in the summary.

    ``add(kind, path, detail)`` records one problem; ``count(kind)``, ``paths(kind)``, ``counts`` read
    them back; ``summary()`` is the human-readable text; ``to_dict()``/``save_json()`` the machine one.
    ``stats`` holds plain counters that are not problems (e.g. the number of samples kept).
    """

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._problems: dict[str, list[tuple[str, str]]] = {}
        self.stats: dict[str, int] = {}

    def add(self, kind: str, path: str | os.PathLike, detail: str = "") -> None:
        """Record one problem of ``kind`` (a key of :data:`PROBLEM_KINDS`) about ``path``.

        Raises:
            KeyError: ``kind`` is not a known problem kind.
        """
        if kind not in PROBLEM_KINDS:
            raise KeyError(f"unknown problem kind {kind!r}; known: {', '.join(PROBLEM_KINDS)}")
        self._problems.setdefault(kind, []).append((str(path), detail))

    def count(self, kind: str) -> int:
        """Number of problems of ``kind`` (0 when none)."""
        return len(self._problems.get(kind, ()))

    def paths(self, kind: str) -> list[str]:
        """Paths of the problems of ``kind``, in the order they were found."""
        return [p for p, _ in self._problems.get(kind, ())]

    def details(self, kind: str) -> list[tuple[str, str]]:
        """(path, detail) pairs of the problems of ``kind``."""
        return list(self._problems.get(kind, ()))

    @property
    def counts(self) -> dict[str, int]:
        """kind -> count, only kinds that occurred, in :data:`PROBLEM_KINDS` order."""
        return {k: len(self._problems[k]) for k in PROBLEM_KINDS if self._problems.get(k)}

    @property
    def total(self) -> int:
        """Total number of problems of all kinds."""
        return sum(len(v) for v in self._problems.values())

    @property
    def ok(self) -> bool:
        """True when no problem was recorded."""
        return self.total == 0

    def merge(self, other: DataReport) -> None:
        """Add all problems and stats of ``other`` to this report."""
        for kind, items in other._problems.items():
            self._problems.setdefault(kind, []).extend(items)
        for key, value in other.stats.items():
            self.stats[key] = self.stats.get(key, 0) + value

    def extend(self, kind: str, paths: Iterable[str | os.PathLike], detail: str = "") -> None:
        """Record one problem of ``kind`` per path."""
        for p in paths:
            self.add(kind, p, detail)

    def summary(self, max_paths: int = 5) -> str:
        """Multi-line text: stats, then for each problem kind its count, meaning and first paths."""
        head = f"data report{f' for {self.name}' if self.name else ''}"
        lines = [head]
        for key, value in self.stats.items():
            lines.append(f"  {key}: {value}")
        if self.ok:
            lines.append("  no problems")
            return "\n".join(lines)
        for kind, n in self.counts.items():
            lines.append(f"  {kind}: {n} ({PROBLEM_KINDS[kind]})")
            for path, detail in self._problems[kind][:max_paths]:
                lines.append(f"      {path}{f'  [{detail}]' if detail else ''}")
            if n > max_paths:
                lines.append(f"      ... and {n - max_paths} more")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"DataReport(name={self.name!r}, counts={self.counts}, stats={self.stats})"

    def to_dict(self, max_paths: int | None = None) -> dict:
        """JSON-able dict: ``name``, ``stats``, ``counts`` and ``problems`` (kind -> [{path, detail}])."""
        return {
            "name": self.name,
            "stats": dict(self.stats),
            "counts": self.counts,
            "problems": {
                k: [{"path": p, "detail": d} for p, d in self._problems[k][:max_paths]]
                for k in self.counts
            },
        }

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` as JSON, atomically (:func:`if3d.atomic.atomic_write_json`)."""
        atomic_write_json(path, self.to_dict())
