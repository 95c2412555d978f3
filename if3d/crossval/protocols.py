"""Split protocols of the benchmark: which samples train, validate and test each run.

Every protocol works on the pooled samples of a canonical dataset (:func:`pooled_samples`: every
photo of every split with its label, subject and original split) and gives, per run, three disjoint
lists of photo paths relative to the dataset root. They are written to disk
(``<out>/splits/<dataset>/<protocol>/run<k>/{train,val,test}.txt``) before any training, so every
model sees identical splits and a result can be audited.

* ``shufflesplit`` (FER-crossval's protocol, the default): all labelled images pooled;
  ``sklearn.model_selection.ShuffleSplit(n_splits=runs, test_size=0.2, random_state=42)``; then 25 % of
  each run's training part held out for validation with the run's own seed (``train_test_split``,
  ``random_state = run``).
* ``official``: the dataset's own ``train`` / ``val`` / ``test`` splits (validation = ``val`` and
  test = ``test`` when both exist; a dataset with only ``train`` + ``val`` uses ``val`` as test and carves
  a validation part from ``train``); the runs differ only by their seed.
* ``subject``: subject-independent folds: ``GroupKFold(n_splits=runs)`` over the subjects
  (``subjects.csv`` written by the converters, e.g. CK+'s ``S<subject>`` file-name prefix, JAFFE's poser
  initials), fold ``k`` is run ``k``'s test part; 25 % of the remaining subjects are held out for
  validation (``GroupShuffleSplit``, ``random_state = run``). No subject is ever on two sides.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from if3d.atomic import atomic_write_text
from if3d.data.layout import SUBJECTS_FILE, is_image_file, read_classes, read_subjects

__all__ = ["PROTOCOLS", "PooledSample", "RunSplit", "load_split", "make_splits", "pooled_samples", "write_split"]

PROTOCOLS = ("shufflesplit", "official", "subject")
SHUFFLESPLIT_SEED = 42
TEST_SIZE = 0.2
VAL_SIZE = 0.25
PARTS = ("train", "val", "test")


@dataclass(frozen=True)
class PooledSample:
    """One labelled photo of a canonical dataset.

    Attributes:
        path: the photo relative to the dataset root (``photos/<split>/<label>/<file>``).
        label: class index (the dataset's ``classes.json`` order).
        split: the dataset's own split of the photo.
        subject: the subject (``subjects.csv``), or None when the dataset records none.
    """

    path: str
    label: int
    split: str
    subject: str | None


@dataclass(frozen=True)
class RunSplit:
    """The three disjoint parts of one run: photo paths relative to the dataset root, sorted."""

    run: int
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def part(self, name: str) -> tuple[str, ...]:
        return getattr(self, name)


def pooled_samples(root: str | os.PathLike) -> list[PooledSample]:
    """Every photo of every split of the canonical dataset at ``root``, sorted by path.

    Raises:
        FileNotFoundError: no ``photos/`` folder; ValueError: a label folder outside the class list.
    """
    root = Path(root)
    photos = root / "photos"
    if not photos.is_dir():
        raise FileNotFoundError(f"{root}: no photos/ folder (a canonical dataset: python -m if3d.data convert ...)")
    num_classes = len(read_classes(root))
    subjects = read_subjects(root)
    out: list[PooledSample] = []
    for split_dir in sorted(p for p in photos.iterdir() if p.is_dir()):
        for label_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            if not label_dir.name.isdigit() or int(label_dir.name) >= num_classes:
                raise ValueError(f"{label_dir}: not a label folder 0..{num_classes - 1} of {root / 'classes.json'}")
            for f in sorted(label_dir.rglob("*")):
                if f.is_file() and is_image_file(f.name) and not f.name.startswith("."):
                    rel = f.relative_to(root).as_posix()
                    out.append(PooledSample(rel, int(label_dir.name), split_dir.name, subjects.get(rel)))
    if not out:
        raise ValueError(f"{root}: no photos under photos/<split>/<label>/")
    return out


def _sorted_paths(samples: list[PooledSample], idx) -> tuple[str, ...]:
    return tuple(sorted(samples[i].path for i in idx))


def make_splits(samples: list[PooledSample], protocol: str, runs: int) -> list[RunSplit]:
    """The ``runs`` splits of a protocol (see the module docstring); deterministic.

    Raises:
        ValueError: unknown protocol, ``runs`` < 1 (< 2 for ``subject``), or a dataset the protocol
            cannot split (no subjects recorded, too few subjects, no held-out split).
    """
    from sklearn.model_selection import GroupKFold, GroupShuffleSplit, ShuffleSplit, train_test_split

    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; protocols: {', '.join(PROTOCOLS)}")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    n = len(samples)
    index = np.arange(n)
    out: list[RunSplit] = []
    if protocol == "shufflesplit":
        splitter = ShuffleSplit(n_splits=runs, test_size=TEST_SIZE, random_state=SHUFFLESPLIT_SEED)
        for k, (train_part, test) in enumerate(splitter.split(index)):
            train, val = train_test_split(train_part, test_size=VAL_SIZE, random_state=k)
            out.append(RunSplit(k, _sorted_paths(samples, train), _sorted_paths(samples, val),
                                _sorted_paths(samples, test)))
        return out
    if protocol == "official":
        splits = {s.split for s in samples}
        test_name = "test" if "test" in splits else "val" if "val" in splits else None
        if test_name is None:
            raise ValueError("the official protocol needs the dataset's own test (or val) split; it has "
                             f"{', '.join(sorted(splits))}")
        test = [i for i in index if samples[i].split == test_name]
        val_own = [i for i in index if samples[i].split == "val"] if test_name == "test" else []
        train_own = [i for i in index if samples[i].split not in (test_name, "val")]
        for k in range(runs):
            if val_own:
                train, val = train_own, val_own
            else:
                train, val = train_test_split(np.asarray(train_own), test_size=VAL_SIZE, random_state=k)
            out.append(RunSplit(k, _sorted_paths(samples, train), _sorted_paths(samples, val),
                                _sorted_paths(samples, test)))
        return out
    groups = np.asarray([s.subject for s in samples], dtype=object)
    if any(g is None for g in groups):
        missing = sum(g is None for g in groups)
        raise ValueError(f"the subject protocol needs the subject of every photo ({SUBJECTS_FILE}); {missing} of "
                         f"{n} photos have none (converters write it for CK+ and JAFFE)")
    if runs < 2 or len(set(groups)) < runs:
        raise ValueError(f"the subject protocol needs >= 2 folds and at least as many subjects; {runs} folds, "
                         f"{len(set(groups))} subjects")
    for k, (train_part, test) in enumerate(GroupKFold(n_splits=runs).split(index, groups=groups)):
        inner = GroupShuffleSplit(n_splits=1, test_size=VAL_SIZE, random_state=k)
        tr, va = next(inner.split(train_part, groups=groups[train_part]))
        out.append(RunSplit(k, _sorted_paths(samples, train_part[tr]), _sorted_paths(samples, train_part[va]),
                            _sorted_paths(samples, test)))
    return out


def write_split(folder: str | os.PathLike, split: RunSplit) -> None:
    """Write ``train.txt``, ``val.txt``, ``test.txt`` (one relative photo path a line) into ``folder``."""
    for part in PARTS:
        atomic_write_text(Path(folder) / f"{part}.txt", "".join(f"{p}\n" for p in split.part(part)))


def load_split(folder: str | os.PathLike, run: int) -> RunSplit | None:
    """The split written by :func:`write_split` in ``folder``, or None when it is not (all) there."""
    folder = Path(folder)
    if not all((folder / f"{part}.txt").is_file() for part in PARTS):
        return None
    parts = {part: tuple((folder / f"{part}.txt").read_text(encoding="utf-8").split()) for part in PARTS}
    return RunSplit(run, parts["train"], parts["val"], parts["test"])
