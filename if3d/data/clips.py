"""Video datasets: clips of face frames, their renders, and the per-clip table (subjects, folds).

Layout (written by ``python -m if3d.data convert --format video|afew|ckplus-sequences``)::

    <root>/classes.json
    <root>/clips/<split>/<label>/<clip>/<frame>.png          aligned face frames, time order = file-name order
    <root>/render_clips/<split>/<label>/<clip>/<stem>.png    their renders (Smirk_batch_Render.py --input
                                                             <root>/clips/<split> --output <root>/render_clips/<split>)
    <root>/clips.csv                                         one row per clip (see CLIP_COLUMNS)

:class:`ClipDataset` gives one sample per clip::

    clip        uint8 [T, 3, S, S]  every frame of the clip, resized to S (T varies from clip to clip)
    render_clip uint8 [T, 3, S, S]  the renders of the same frames (``with_renders=True``)
    frame_mask  bool  [T]           True (every frame is real; padding in a batch is False)
    label       int64 []            class index (AffectNet-8 order)
    valence, arousal float32 []     NaN (clips carry no valence/arousal); has_va bool [] False
    index       int

``dataset[list_of_indices]`` returns a collated batch in which shorter clips are padded at the end with
zero frames and ``frame_mask`` False, so clips of any length share a batch (the loaders read batches this
way, :func:`if3d.data.source.supports_batches`). The subject of each clip (``clips.csv``) is
``dataset.subjects``: the cross-validation command groups folds by it.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from if3d.atomic import atomic_write_text
from if3d.classes import AFFECTNET8
from if3d.data.dataset import load_image
from if3d.data.layout import (
    CLIPS_FILE,
    IGNORED_NAMES,
    IMAGE_EXTENSIONS,
    RENDER_SIDE_EXTENSIONS,
    clips_dir,
    read_classes,
    render_clips_dir,
)
from if3d.io.report import DataError, DataReport, LayoutError, MissingRenderError, format_paths
from if3d.io.text import open_text

__all__ = [
    "CLIP_COLUMNS",
    "ClipDataset",
    "collate_clips",
    "read_clip_table",
    "sample_segment_frames",
    "write_clip_table",
]

#: Columns of ``<root>/clips.csv``: the split, label (index) and clip folder name; the subject (``""`` when
#: unknown) and the subject-independent fold (``""`` when none); the frames written, the source frames
#: seen, the frames without a face; and the source (video file or frame folder).
CLIP_COLUMNS = ("split", "label", "clip", "subject", "fold", "frames", "source_frames", "faceless_frames", "source")


def write_clip_table(path: str | os.PathLike, rows: list[dict]) -> None:
    """Write ``clips.csv`` (atomically): one dict per clip with the keys of :data:`CLIP_COLUMNS`."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CLIP_COLUMNS), lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row.get(k) for k in CLIP_COLUMNS})
    atomic_write_text(path, buf.getvalue())


def read_clip_table(root: str | os.PathLike) -> dict[tuple[str, str, str], dict[str, str]]:
    """``clips.csv`` of a video dataset as ``{(split, label, clip): row}``; ``{}`` when the file is absent.

    Raises:
        LayoutError: the file lacks the ``split``, ``label`` or ``clip`` column.
        NotUtf8Error: the file is not UTF-8 text.
    """
    path = Path(root) / CLIPS_FILE
    if not path.is_file():
        return {}
    with open_text(path, "clip table") as f:
        reader = csv.DictReader(f)
        missing = {"split", "label", "clip"} - set(reader.fieldnames or ())
        if missing:
            raise LayoutError(f"{path}: missing column(s) {', '.join(sorted(missing))}; expected {','.join(CLIP_COLUMNS)}")
        return {(r["split"], r["label"], r["clip"]): r for r in reader}


def _frames(folder: Path, report: DataReport, side: frozenset[str] = frozenset()) -> list[str]:
    """Image file names of a clip folder, sorted; other files reported (``side`` extensions ignored)."""
    names = []
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            if entry.name in IGNORED_NAMES:
                continue
            ext = os.path.splitext(entry.name)[1].lower()
            if entry.is_dir() or ext not in IMAGE_EXTENSIONS:
                if ext not in side:
                    report.add("non_image_file", entry.path, "clip folders hold frames only")
                continue
            if entry.stat().st_size == 0:
                report.add("empty_image", entry.path)
                continue
            names.append(entry.name)
    return names


class ClipDataset(Dataset):
    """The clips of one split of a video dataset (see the module docstring for the sample).

    Args:
        root, split: canonical video dataset root and split (``<root>/clips/<split>``); or
        clip_root: an explicit ``<label>/<clip>/<frame>`` folder (with ``render_root`` for its renders).
        image_size: side S of the returned frames.
        with_renders: also read the render of every frame (``render_clip``).
        skip_missing_renders: leave out (and count) frames without a render instead of raising; a clip
            left without frames is counted as ``empty_clip``.
        num_classes: keep only labels below it (the others are counted as ``excluded_class``).
        class_names: label names (default: the root's ``classes.json``, else AffectNet-8).

    Attributes:
        labels: int64 [N]; class_names; clip_paths: clip folders relative to the clip root;
        frame_names: per clip, its frame file names; subjects: per clip, the subject in ``clips.csv``
        (None when the dataset has no table); report: :class:`~if3d.io.report.DataReport`.

    Raises:
        LayoutError: no such split folder, or a bad ``classes.json``/``clips.csv``.
        MissingRenderError: frames without a render (unless ``skip_missing_renders``).
        DataError: no clip left.
    """

    supports_batches = True

    def __init__(self, root: str | os.PathLike | None = None, split: str | None = None, *,
                 clip_root: str | os.PathLike | None = None, render_root: str | os.PathLike | None = None,
                 image_size: int = 112, with_renders: bool = False, skip_missing_renders: bool = False,
                 num_classes: int | None = None, class_names: list[str] | None = None) -> None:
        table: dict = {}
        if root is not None:
            if split is None:
                raise ValueError("give the split of the video dataset, e.g. ClipDataset(root, 'train')")
            clip_root = clips_dir(root, split)
            render_root = render_clips_dir(root, split) if render_root is None else render_root
            class_names = read_classes(root) if class_names is None else class_names
            table = read_clip_table(root)
        elif clip_root is None:
            raise ValueError("give root + split or clip_root")
        self.split = split
        self.clip_root = Path(clip_root)
        self.image_size = int(image_size)
        self.with_renders = bool(with_renders)
        self.render_root = Path(render_root) if (render_root is not None and with_renders) else None
        names = list(class_names) if class_names is not None else list(AFFECTNET8)
        keep_classes = min(num_classes, len(names)) if num_classes is not None else len(names)
        self.class_names = names[:keep_classes]
        self.report = DataReport(f"{self.clip_root}")
        if not self.clip_root.is_dir():
            raise LayoutError(f"{self.clip_root}: no such clip folder (expected <label>/<clip>/<frame> folders)")
        if self.with_renders and (self.render_root is None or not self.render_root.is_dir()):
            raise MissingRenderError(f"{self.render_root}: render folder not found; render the frames with "
                                     f"Smirk_batch_Render.py --input {self.clip_root} --output <that folder>")
        self._index(names, keep_classes, skip_missing_renders)
        self.subjects = None
        if table:
            self.subjects = [table.get((split, rel.split("/")[0], rel.split("/")[1]), {}).get("subject") or None
                             for rel in self.clip_paths]

    def _index(self, names: list[str], keep_classes: int, skip_missing_renders: bool) -> None:
        report = self.report
        clips: list[str] = []
        labels: list[int] = []
        frames: list[list[str]] = []
        renders: list[list[str]] = []
        missing: list[str] = []
        for entry in sorted(os.scandir(self.clip_root), key=lambda e: e.name):
            if entry.name in IGNORED_NAMES:
                continue
            if not entry.is_dir():
                report.add("stray_file", entry.path, "not inside a label folder")
                continue
            if not (entry.name.isdigit() and str(int(entry.name)) == entry.name and int(entry.name) < len(names)):
                report.add("unknown_label_folder", entry.path, f"labels are 0..{len(names) - 1}")
                continue
            label = int(entry.name)
            for clip in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if clip.name in IGNORED_NAMES:
                    continue
                if not clip.is_dir():
                    report.add("stray_file", clip.path, "frames belong in a clip folder <label>/<clip>/")
                    continue
                rel = f"{entry.name}/{clip.name}"
                if label >= keep_classes:
                    report.add("excluded_class", clip.path, f"label {label} >= num_classes {keep_classes}")
                    continue
                names_here = _frames(Path(clip.path), report)
                render_names: list[str] = []
                if self.with_renders:
                    rdir = self.render_root / rel
                    have = {}
                    if rdir.is_dir():
                        for r in _frames(rdir, DataReport(), RENDER_SIDE_EXTENSIONS):
                            have.setdefault(os.path.splitext(r)[0], r)
                    kept = []
                    for f in names_here:
                        r = have.get(os.path.splitext(f)[0])
                        if r is None:
                            missing.append(f"{self.clip_root / rel / f}")
                            continue
                        kept.append(f)
                        render_names.append(r)
                    names_here = kept
                if not names_here:
                    report.add("empty_clip", clip.path)
                    continue
                clips.append(rel)
                labels.append(label)
                frames.append(names_here)
                renders.append(render_names)
        if missing:
            if not skip_missing_renders:
                raise MissingRenderError(
                    f"{len(missing)} frames under {self.clip_root} have no render under {self.render_root}:\n"
                    f"{format_paths(missing)}\nRender them (Smirk_batch_Render.py) or pass "
                    "--skip-missing-renders to leave those frames out with a count.")
            report.extend("missing_render", missing, "frame left out of its clip")
        self.clip_paths = clips
        self.labels = np.asarray(labels, dtype=np.int64)
        self.frame_names = frames
        self.render_names = renders if self.with_renders else None
        report.stats["clips"] = len(clips)
        report.stats["frames"] = int(sum(len(f) for f in frames))
        if not clips:
            raise DataError(f"no clips left under {self.clip_root}\n{report.summary(max_paths=20)}")

    def __len__(self) -> int:
        return len(self.clip_paths)

    def num_frames(self, index: int) -> int:
        """T of clip ``index``."""
        return len(self.frame_names[index])

    def sample_path(self, index: int) -> Path:
        """The folder of clip ``index``."""
        return self.clip_root / self.clip_paths[index]

    def frame_paths(self, index: int) -> list[Path]:
        """The frame files of clip ``index``, in time order."""
        folder = self.sample_path(index)
        return [folder / f for f in self.frame_names[index]]

    def _read(self, index: int) -> dict:
        folder = self.sample_path(index)
        sample = {"clip": torch.stack([load_image(folder / f, self.image_size) for f in self.frame_names[index]])}
        if self.with_renders:
            rfolder = self.render_root / self.clip_paths[index]
            sample["render_clip"] = torch.stack([load_image(rfolder / f, self.image_size)
                                                 for f in self.render_names[index]])
        t = sample["clip"].shape[0]
        sample["frame_mask"] = torch.ones(t, dtype=torch.bool)
        sample["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        sample["valence"] = torch.tensor(float("nan"), dtype=torch.float32)
        sample["arousal"] = torch.tensor(float("nan"), dtype=torch.float32)
        sample["has_va"] = torch.tensor(False)
        sample["index"] = index
        return sample

    def __getitem__(self, index):
        if isinstance(index, (list, tuple, np.ndarray, torch.Tensor)):
            return collate_clips([self._read(int(i)) for i in np.asarray(index).reshape(-1)])
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} clips")
        return self._read(int(index) % len(self))

    def __repr__(self) -> str:
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        listed = ", ".join(f"{n}={c}" for n, c in zip(self.class_names, counts))
        return (f"ClipDataset({self.clip_root}, renders={self.render_root}, clips={len(self)}, "
                f"frames={self.report.stats['frames']}, image_size={self.image_size}, classes: {listed})")


def collate_clips(samples: list[dict]) -> dict:
    """Collate clip samples of different lengths: frames padded at the end to the longest clip.

    Returns:
        ``clip`` uint8 [B, T_max, 3, S, S] (padding 0), ``render_clip`` likewise when present,
        ``frame_mask`` bool [B, T_max] (False on padding), ``label``, ``valence``, ``arousal``, ``has_va``
        [B], ``index`` int64 [B].
    """
    t_max = max(s["clip"].shape[0] for s in samples)
    out: dict = {}
    for key in ("clip", "render_clip"):
        if key in samples[0]:
            first = samples[0][key]
            batch = first.new_zeros((len(samples), t_max, *first.shape[1:]))
            for i, s in enumerate(samples):
                batch[i, : s[key].shape[0]] = s[key]
            out[key] = batch
    mask = torch.zeros(len(samples), t_max, dtype=torch.bool)
    for i, s in enumerate(samples):
        mask[i, : s["clip"].shape[0]] = True
    out["frame_mask"] = mask
    for key in ("label", "valence", "arousal", "has_va"):
        out[key] = torch.stack([s[key] for s in samples])
    out["index"] = torch.tensor([int(s["index"]) for s in samples], dtype=torch.int64)
    return out


def sample_segment_frames(frame_mask: torch.Tensor, k: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices of ``k`` training frames per clip, one drawn uniformly from each of ``k`` equal segments.

    Emotion-FAN's training sampler (its ``load_imgs_tsn``: three segments, one random frame each; TSN,
    Wang et al. 2016): frame ``floor((j + u_j) · T / k)`` for segment ``j``, ``u_j ~ U[0, 1)``, T the clip's
    length. Clips shorter than ``k`` repeat frames. Draws from the global torch RNG (or ``generator``), which
    the training engine reseeds every step, so a resumed run draws the same frames.

    Args:
        frame_mask: bool [B, T_max], True on the first T frames of each clip (padding at the end).
        k: frames per clip.

    Returns:
        int64 [B, k] frame indices, non-decreasing along k.

    Raises:
        ValueError: a clip without frames, or frames that are not a prefix of the row.
    """
    lengths = frame_mask.sum(1)
    if bool((lengths < 1).any()):
        raise ValueError("every clip needs at least one frame")
    prefix = torch.arange(frame_mask.shape[1], device=frame_mask.device)[None, :] < lengths[:, None]
    if not bool((prefix == frame_mask).all()):
        raise ValueError("frame_mask must mark the first T frames of each clip (padding at the end)")
    u = torch.rand(frame_mask.shape[0], k, generator=generator, dtype=torch.float64)
    seg = torch.arange(k, dtype=torch.float64)[None, :]
    idx = torch.floor((seg + u) * lengths.cpu().double()[:, None] / k).long()
    return torch.minimum(idx, lengths.cpu()[:, None] - 1).to(frame_mask.device)
