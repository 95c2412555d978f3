"""Action-unit (AU) intensity data: the canonical AU layout, its dataset, and converters from DISFA and BP4D.

Canonical AU layout (what the converters write and :class:`AUDataset` reads)::

    <root>/au.json                          {"format": "if3d-au", "format_version": 1, "source": "DISFA",
                                             "aus": ["AU1", "AU2", ...], "scale": ...}: the labelled AUs, in
                                             canonical order (:data:`CANONICAL_AUS`)
    <root>/photos/<split>/<subject>/<video>/<frame>.png   eye-levelled face crops (the expression converters'
                                             MediaPipe alignment, 224 px, margin 0.25); <video>: DISFA the
                                             subject's camera video, BP4D the task (T1 … T8); <frame>: the
                                             source's frame number, 5 digits
    <root>/au/<split>.csv                   file,subject,video,frame,<one column per AU of au.json>: file
                                             relative to photos/<split>; intensity 0–5 (FACS A–E = 1–5), empty
                                             where the frame has no label for that AU (BP4D's 9)
    <root>/subjects.csv                     file,subject (file relative to the root): subject-independent folds
    <root>/report.json                      counts: labelled frames, written, without a face, skipped

Canonical AUs (:data:`CANONICAL_AUS`): the union of DISFA's 12 and BP4D's (FERA 2015) 5 intensity AUs,
AU1, AU2, AU4, AU5, AU6, AU9, AU10, AU12, AU14, AU15, AU17, AU20, AU25, AU26, ordered by number; a dataset's
``au.json`` lists the ones it labels, and a model trained on it outputs those, in that order.

Source formats (facts of the distributions; the parsers accept a header line, commas or white space):

- **DISFA** (Mavadati et al., "DISFA: A Spontaneous Facial Action Intensity Database", IEEE TAC 2013):
  ``ActionUnit_Labels/<subject>/<subject>_au<N>.txt`` for N in 1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26, one
  line ``frame,intensity`` per video frame (frame numbers from 1, intensity 0–5); the videos
  ``Videos_LeftCamera/LeftVideo<subject>_comp.avi`` (``Videos_RightCamera/RightVideo<subject>_Comp.avi`` with
  ``camera="right"``), frame k of the labels = the k-th decoded frame.
- **BP4D** intensity (Zhang et al., BP4D-Spontaneous, IVC 2014; the FERA 2015 intensity codes):
  ``<AU folder>/<subject>_<task>_<AU>.csv`` (folders ``AU06``, ``AU10``, ``AU12``, ``AU14``, ``AU17``; e.g.
  ``AU06/F001_T1_AU06.csv``), rows ``frame,intensity`` (0–5; 9 = not coded); the frames
  ``<images>/<subject>/<task>/<frame number>.jpg`` (any zero padding).

Bad input: a label file that does not parse (the file and line are named), an intensity outside 0–5 (9
allowed in BP4D), a subject without its video or a labelled frame without its image (an error, or with
``skip_missing`` a counted, reported skip), frames where MediaPipe finds no face (always a counted skip).
The output follows the toolkit's output guard (:mod:`if3d.outputs`): a new or empty folder, or with
``overwrite`` one an earlier AU conversion wrote; it is built beside and moved into place when complete.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from if3d.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from if3d.io.report import DataError, DataReport

__all__ = [
    "AU_FILE",
    "BP4D_AUS",
    "CANONICAL_AUS",
    "DISFA_AUS",
    "AUDataset",
    "convert_bp4d",
    "convert_disfa",
    "is_au_dataset",
    "open_au_split",
    "read_au_info",
    "read_disfa_labels",
    "read_intensity_file",
]

AU_FILE = "au.json"
AU_FORMAT = "if3d-au"
OUTPUT_KIND = "au-dataset"
CANONICAL_AUS: tuple[str, ...] = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU9", "AU10", "AU12", "AU14", "AU15", "AU17",
                                  "AU20", "AU25", "AU26")
DISFA_AUS: tuple[int, ...] = (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26)
BP4D_AUS: tuple[int, ...] = (6, 10, 12, 14, 17)
SCALE = "FACS intensity 0-5 (0 absent, 1 = A trace ... 5 = E maximum)"


# ---------------------------------------------------------------------------------------------- layout


def is_au_dataset(root: str | os.PathLike | None) -> bool:
    """True when ``root`` holds an ``au.json`` (a canonical AU dataset)."""
    return root is not None and (Path(root) / AU_FILE).is_file()


def read_au_info(root: str | os.PathLike) -> dict:
    """``au.json`` of an AU dataset.

    Raises:
        DataError: missing, not JSON, or without a list of AU names in :data:`CANONICAL_AUS`.
    """
    path = Path(root) / AU_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the AU dataset description: {e}") from None
    aus = info.get("aus") if isinstance(info, dict) else None
    if not (isinstance(aus, list) and aus and all(a in CANONICAL_AUS for a in aus)):
        raise DataError(f"{path}: 'aus' must list AU names among {', '.join(CANONICAL_AUS)}, got {aus!r}")
    return info


class AUDataset(Dataset):
    """The face crops and AU intensities of one split of a canonical AU dataset.

    Samples: ``photo`` uint8 [3, S, S] RGB, ``au`` float32 [A] intensities (NaN where not labelled),
    ``au_mask`` bool [A] (True where labelled), ``index`` int. ``class_names`` are the A AU names (the model's
    outputs); there are no class ``labels``.

    Args:
        root: the dataset root.
        split: ``train``, ``val``, ``test`` …
        image_size: S.

    Raises:
        DataError: a missing or bad ``au.json`` or ``au/<split>.csv`` (the file and line are named), or a
            listed photo that does not exist.
    """

    supports_batches = False

    def __init__(self, root: str | os.PathLike, split: str, image_size: int = 112) -> None:
        self.root = Path(root)
        self.split = split
        self.image_size = int(image_size)
        info = read_au_info(root)
        self.class_names = list(info["aus"])
        self.report = DataReport(f"{Path(root).name}/{split}")
        csv_path = self.root / "au" / f"{split}.csv"
        photo_root = self.root / "photos" / split
        if not csv_path.is_file():
            raise DataError(f"{csv_path}: missing (AU labels of split {split!r})")
        files, values = [], []
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            missing = [a for a in self.class_names if a not in (reader.fieldnames or [])]
            if "file" not in (reader.fieldnames or []) or missing:
                raise DataError(f"{csv_path}: needs the columns file and {', '.join(self.class_names)} "
                                f"(has {', '.join(reader.fieldnames or [])})")
            for line, row in enumerate(reader, start=2):
                vals = []
                for a in self.class_names:
                    cell = (row[a] or "").strip()
                    try:
                        v = float(cell) if cell else math.nan
                    except ValueError:
                        raise DataError(f"{csv_path}:{line}: {a} is {cell!r}, not an intensity") from None
                    if not (math.isnan(v) or 0.0 <= v <= 5.0):
                        raise DataError(f"{csv_path}:{line}: {a} intensity {v} outside 0-5")
                    vals.append(v)
                files.append(row["file"])
                values.append(vals)
        absent = [f for f in files if not (photo_root / f).is_file()]
        if absent:
            raise DataError(f"{photo_root}: {len(absent)} photo(s) listed in {csv_path} are missing, e.g. {absent[0]}")
        self.files = files
        self.paths = [photo_root / f for f in files]
        self.au = np.asarray(values, dtype=np.float32).reshape(len(files), len(self.class_names))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        from if3d.data.dataset import load_image

        au = torch.from_numpy(self.au[index].copy())
        return {"photo": load_image(self.paths[index], self.image_size), "au": au, "au_mask": torch.isfinite(au),
                "index": int(index)}

    def sample_path(self, index: int) -> str:
        return str(self.paths[index])

    def __repr__(self) -> str:
        labelled = np.isfinite(self.au).sum(0)
        return (f"AUDataset({self.root}, {self.split!r}: {len(self)} frames; labelled frames per AU: "
                + ", ".join(f"{a} {int(n)}" for a, n in zip(self.class_names, labelled)) + ")")


def open_au_split(root: str | os.PathLike, split: str, *, image_size: int, streams: Sequence[str],
                  max_samples: int | None = None, seed: int = 0) -> AUDataset:
    """The AU dataset of one split, for a model reading ``streams`` (photo only).

    Args:
        max_samples: keep a seeded random subset of this many frames (in dataset order), as
            ``if3d.data.source.subset_dataset`` does for expression data.

    Raises:
        ValueError: the model reads another stream than ``photo`` (AU datasets have no renders), or
            ``max_samples`` < 1.
    """
    other = [s for s in streams if s != "photo"]
    if other:
        raise ValueError(f"{root}: an AU dataset has face photos only; this model also reads {', '.join(other)}")
    ds = AUDataset(root, split, image_size)
    if max_samples is not None and max_samples < len(ds):
        if max_samples < 1:
            raise ValueError(f"max samples must be >= 1, got {max_samples}")
        keep = np.sort(np.random.default_rng(seed).permutation(len(ds))[:max_samples])
        ds.files = [ds.files[i] for i in keep]
        ds.paths = [ds.paths[i] for i in keep]
        ds.au = ds.au[keep]
    return ds


# ---------------------------------------------------------------------------------------------- label files

_SPLIT = re.compile(r"[,;\s]+")


def read_intensity_file(path: str | os.PathLike, allow_unknown: bool = False) -> dict[int, float]:
    """``frame,intensity`` rows of one label file → frame number → intensity (NaN for BP4D's 9).

    A first line that is not two numbers is taken as a header; empty lines are skipped.

    Args:
        path: the file.
        allow_unknown: 9 means "not coded" (BP4D) instead of an error.

    Raises:
        DataError: a row that is not two numbers, a repeated frame, or an intensity outside 0–5 (the file and
            line are named).
    """
    from if3d.io.text import open_text

    out: dict[int, float] = {}
    with open_text(path, "AU label file") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.strip()
            if not line:
                continue
            parts = [p for p in _SPLIT.split(line) if p]
            try:
                frame, value = int(float(parts[0])), float(parts[1])
                if len(parts) != 2:
                    raise ValueError
            except (ValueError, IndexError):
                if line_no == 1:
                    continue  # a header
                raise DataError(f"{path}:{line_no}: expected 'frame,intensity', got {line!r}") from None
            if allow_unknown and value == 9:
                value = math.nan
            elif not (0 <= value <= 5 and value == int(value)):
                raise DataError(f"{path}:{line_no}: intensity {value:g} outside 0-5")
            if frame in out:
                raise DataError(f"{path}:{line_no}: frame {frame} appears twice")
            out[frame] = value
    return out


def read_disfa_labels(label_dir: str | os.PathLike, subject: str) -> dict[int, dict[str, float]]:
    """DISFA's 12 label files of one subject → frame → {AU name: intensity}.

    Raises:
        DataError: a missing or bad label file.
    """
    frames: dict[int, dict[str, float]] = {}
    for n in DISFA_AUS:
        path = _find(Path(label_dir), f"{subject}_au{n}.txt")
        if path is None:
            raise DataError(f"{label_dir}: {subject}_au{n}.txt is missing (DISFA has 12 label files per subject)")
        for frame, v in read_intensity_file(path).items():
            frames.setdefault(frame, {})[f"AU{n}"] = v
    return frames


def _find(folder: Path, name: str) -> Path | None:
    """``folder/name``, matching the name case-insensitively."""
    direct = folder / name
    if direct.is_file():
        return direct
    if not folder.is_dir():
        return None
    low = name.lower()
    return next((p for p in sorted(folder.iterdir()) if p.name.lower() == low), None)


def _subdir(root: Path, name: str) -> Path | None:
    if (root / name).is_dir():
        return root / name
    low = name.lower()
    return next((p for p in sorted(root.iterdir()) if p.is_dir() and p.name.lower() == low), None) \
        if root.is_dir() else None


# ---------------------------------------------------------------------------------------------- writing


class _Writer:
    """Builds an AU dataset in a temporary folder beside ``out`` and moves it into place at the end."""

    def __init__(self, out: Path, source: str, aus: Sequence[str], sources: Sequence[Path | None], overwrite: bool,
                 size: int, margin: float) -> None:
        from if3d.outputs import check_replaceable

        check_replaceable(out, OUTPUT_KIND, sources, overwrite)
        self.out, self.source, self.size, self.margin = out, source, size, margin
        self.aus = [a for a in CANONICAL_AUS if a in set(aus)]
        out.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
        if self.tmp.exists():
            import shutil

            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        self.rows: dict[str, list[list]] = {}
        self.report = DataReport(out.name)
        self.counts = {"labelled_frames": 0, "written": 0, "no_face": 0, "skipped": 0}
        self._landmarker = None

    def face(self, rgb: np.ndarray) -> np.ndarray | None:
        from if3d.data.converters.align import align_face, detect_landmarks

        if self._landmarker is None:
            from if3d.face.landmarks import FaceLandmarker

            self._landmarker = FaceLandmarker()
        lm = detect_landmarks(self._landmarker, rgb)
        return None if lm is None else align_face(rgb, lm, self.size, self.margin)

    def add(self, split: str, subject: str, video: str, frame: int, rgb: np.ndarray, labels: dict[str, float],
            origin: str) -> None:
        import cv2

        self.counts["labelled_frames"] += 1
        crop = self.face(rgb)
        if crop is None:
            self.counts["no_face"] += 1
            self.report.add("no_face", origin, "MediaPipe found no face")
            return
        rel = f"{subject}/{video}/{frame:05d}.png"
        ok, buf = cv2.imencode(".png", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"{origin}: PNG encoding failed")
        atomic_write_bytes(self.tmp / "photos" / split / rel, buf.tobytes())
        self.rows.setdefault(split, []).append([rel, subject, video, frame, *(labels.get(a, math.nan)
                                                                              for a in self.aus)])
        self.counts["written"] += 1

    def skip(self, kind: str, path: str, detail: str) -> None:
        self.counts["skipped"] += 1
        self.report.add(kind, path, detail)

    def finish(self, verbose: bool) -> dict:
        from if3d.outputs import replace_dir, write_marker

        subjects = []
        for split, rows in sorted(self.rows.items()):
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            w.writerow(["file", "subject", "video", "frame", *self.aus])
            for r in rows:
                w.writerow([*r[:4], *("" if math.isnan(v) else f"{v:g}" for v in r[4:])])
                subjects.append((f"photos/{split}/{r[0]}", r[1]))
            atomic_write_text(self.tmp / "au" / f"{split}.csv", buf.getvalue())
        atomic_write_text(self.tmp / "subjects.csv",
                          "file,subject\n" + "".join(f"{f},{s}\n" for f, s in subjects))
        atomic_write_json(self.tmp / AU_FILE, {"format": AU_FORMAT, "format_version": 1, "source": self.source,
                                               "aus": self.aus, "scale": SCALE,
                                               "splits": {k: len(v) for k, v in sorted(self.rows.items())}})
        atomic_write_json(self.tmp / "report.json", {"counts": self.counts, "report": self.report.to_dict(20)})
        write_marker(self.tmp, OUTPUT_KIND, source=self.source)
        if self._landmarker is not None:
            self._landmarker.close()
        replace_dir(self.tmp, self.out, OUTPUT_KIND)
        if verbose:
            print(f"{self.out}: {self.counts['written']} of {self.counts['labelled_frames']} labelled frames written "
                  f"({', '.join(f'{k} {len(v)}' for k, v in sorted(self.rows.items()))}); "
                  f"{self.counts['no_face']} without a face, {self.counts['skipped']} skipped", flush=True)
            if self.report.total:
                print(self.report.summary(max_paths=5), flush=True)
        return dict(self.counts)

    def abort(self) -> None:
        import shutil

        if self._landmarker is not None:
            self._landmarker.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _split_of(subjects: Sequence[str], val_subjects: Sequence[str] | None, val_fraction: float,
              seed: int) -> dict[str, str]:
    """Subject → split: ``val_subjects`` (or a seeded ``val_fraction`` of the subjects) to ``val``, rest ``train``.

    Raises:
        ValueError: a named validation subject that is not in the data, or a fraction outside [0, 1).
    """
    subjects = sorted(subjects)
    if val_subjects:
        unknown = sorted(set(val_subjects) - set(subjects))
        if unknown:
            raise ValueError(f"validation subject(s) {', '.join(unknown)} not in the data ({', '.join(subjects)})")
        val = set(val_subjects)
    else:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {val_fraction}")
        k = int(math.ceil(val_fraction * len(subjects))) if val_fraction > 0 and len(subjects) > 1 else 0
        order = np.random.default_rng(seed).permutation(len(subjects))
        val = {subjects[i] for i in order[:k]}
    return {s: "val" if s in val else "train" for s in subjects}


def _run(writer: _Writer, work: Callable[[], None], verbose: bool) -> dict:
    try:
        work()
    except BaseException:
        writer.abort()
        raise
    return writer.finish(verbose)


def convert_disfa(src: str | os.PathLike, out: str | os.PathLike, *, camera: str = "left",
                  val_subjects: Sequence[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
                  every: int = 1, size: int = 224, margin: float = 0.25, skip_missing: bool = False,
                  overwrite: bool = False, verbose: bool = True) -> dict:
    """Convert DISFA (labels + one camera's videos) into the canonical AU layout (module docstring).

    Args:
        src: DISFA's root (``ActionUnit_Labels/``, ``Videos_LeftCamera/``, ``Videos_RightCamera/``).
        out: the output root.
        camera: ``left`` or ``right``.
        val_subjects: subjects of the ``val`` split (default: a seeded ``val_fraction`` of them).
        every: keep every n-th labelled frame (DISFA has 4,845 per subject at 20 fps).
        size, margin: face crops (side in pixels, margin around the landmark box).
        skip_missing: a subject without its video is a counted skip instead of an error.
        overwrite: replace an earlier AU conversion at ``out``.

    Returns:
        counts: ``labelled_frames``, ``written``, ``no_face``, ``skipped``.

    Raises:
        DataError: bad or missing label files, a missing video (without ``skip_missing``).
        if3d.outputs.OutputError, FileExistsError: ``out`` may not be written.
    """
    import cv2

    src, out = Path(src), Path(out)
    if camera not in ("left", "right"):
        raise ValueError(f"camera must be left or right, got {camera!r}")
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    labels_root = _subdir(src, "ActionUnit_Labels")
    if labels_root is None:
        raise DataError(f"{src}: no ActionUnit_Labels folder (is this DISFA's root?)")
    video_root = _subdir(src, f"Videos_{camera.capitalize()}Camera")
    subjects = sorted(p.name for p in labels_root.iterdir() if p.is_dir())
    if not subjects:
        raise DataError(f"{labels_root}: no subject folders (SN001 ...)")
    split = _split_of(subjects, val_subjects, val_fraction, seed)
    writer = _Writer(out, "DISFA", [f"AU{n}" for n in DISFA_AUS], [src], overwrite, size, margin)

    def work() -> None:
        for subject in subjects:
            labels = read_disfa_labels(labels_root / subject, subject)
            video = None
            if video_root is not None:
                video = next((p for p in sorted(video_root.iterdir())
                              if subject.lower() in p.name.lower() and p.suffix.lower() in (".avi", ".mp4")), None)
            if video is None:
                where = video_root or src / f"Videos_{camera.capitalize()}Camera"
                if not skip_missing:
                    raise DataError(f"{where}: no video of {subject} ({camera.capitalize()}Video{subject}_comp.avi)")
                writer.skip("missing_video", str(where), f"{subject}: {len(labels)} labelled frames left out")
                continue
            cap = cv2.VideoCapture(str(video))
            if not cap.isOpened():
                raise DataError(f"{video}: cannot be opened as a video")
            keep = sorted(labels)[::every]
            wanted, k = set(keep), 0
            try:
                while wanted:
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    k += 1
                    if k in wanted:
                        wanted.discard(k)
                        writer.add(split[subject], subject, subject, k, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB),
                                   labels[k], f"{video}#{k}")
            finally:
                cap.release()
            if wanted:
                msg = f"{video}: the video ends at frame {k}; {len(wanted)} labelled frames after it"
                if not skip_missing:
                    raise DataError(msg)
                writer.skip("missing_frame", str(video), msg)

    return _run(writer, work, verbose)


_BP4D_FILE = re.compile(r"^(?P<subject>[^_]+)_(?P<task>[^_]+)_AU0*(?P<au>\d+)\.csv$", re.IGNORECASE)


def convert_bp4d(src: str | os.PathLike, images: str | os.PathLike, out: str | os.PathLike, *,
                 val_subjects: Sequence[str] | None = None, val_fraction: float = 0.1, seed: int = 0,
                 every: int = 1, size: int = 224, margin: float = 0.25, skip_missing: bool = False,
                 overwrite: bool = False, verbose: bool = True) -> dict:
    """Convert BP4D's AU intensity codes and frames into the canonical AU layout (module docstring).

    Args:
        src: the intensity codes root (``AU06/``, ``AU10/``, ``AU12/``, ``AU14/``, ``AU17/`` of
            ``<subject>_<task>_AU<nn>.csv``).
        images: the frames root (``<subject>/<task>/<frame number>.jpg``).
        out, val_subjects, val_fraction, seed, every, size, margin, overwrite: as :func:`convert_disfa`.
        skip_missing: a coded frame without its image is a counted skip instead of an error.

    Returns:
        counts as :func:`convert_disfa`.

    Raises:
        DataError: bad label files, a coded frame without its image (without ``skip_missing``), no label file.
    """
    from if3d.io.images import decode_image
    from if3d.io.report import CorruptImageError

    src, images, out = Path(src), Path(images), Path(out)
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    codes: dict[tuple[str, str], dict[int, dict[str, float]]] = {}
    found_aus = set()
    for folder in sorted(p for p in src.iterdir() if p.is_dir()) if src.is_dir() else []:
        for f in sorted(folder.iterdir()):
            m = _BP4D_FILE.match(f.name)
            if not m:
                continue
            au = f"AU{int(m['au'])}"
            if au not in CANONICAL_AUS:
                raise DataError(f"{f}: AU {m['au']} is not among the intensity AUs ({', '.join(CANONICAL_AUS)})")
            found_aus.add(au)
            for frame, v in read_intensity_file(f, allow_unknown=True).items():
                codes.setdefault((m["subject"], m["task"]), {}).setdefault(frame, {})[au] = v
    if not codes:
        raise DataError(f"{src}: no intensity files <subject>_<task>_AU<nn>.csv in AU folders (AU06/ ...)")
    split = _split_of(sorted({s for s, _ in codes}), val_subjects, val_fraction, seed)
    writer = _Writer(out, "BP4D", sorted(found_aus), [src, images], overwrite, size, margin)

    def work() -> None:
        for (subject, task), frames in sorted(codes.items()):
            folder = images / subject / task
            by_number = {}
            if folder.is_dir():
                for p in folder.iterdir():
                    if p.stem.isdigit() and p.is_file():
                        by_number[int(p.stem)] = p
            for frame in sorted(frames)[::every]:
                labels = frames[frame]
                if all(math.isnan(v) for v in labels.values()):
                    continue  # coded 9 for every AU: nothing to learn from
                path = by_number.get(frame)
                if path is None:
                    msg = f"{subject}/{task}: no image of coded frame {frame}"
                    if not skip_missing:
                        raise DataError(f"{folder}: {msg} (give --images, the frames root)")
                    writer.skip("missing_frame", str(folder), msg)
                    continue
                try:
                    rgb = decode_image(path)
                except CorruptImageError as e:
                    if not skip_missing:
                        raise
                    writer.skip("corrupt_image", str(path), e.problem or str(e))
                    continue
                writer.add(split[subject], subject, task, frame, rgb, labels, str(path))

    return _run(writer, work, verbose)
