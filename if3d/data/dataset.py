"""PairedDataset: (photo, render, label, valence, arousal) samples from a canonical or If3D dataset tree.

Each sample is a dict of uint8 images at ``image_size`` (no augmentation here: the paired augmentation
runs batched in the training loop, :mod:`if3d.data.transforms`)::

    photo    uint8 [3, S, S]  RGB (grey sources are replicated to 3 channels)
    render   uint8 [3, S, S]  RGB render of the same face (absent for photo-only datasets)
    label    int64 []         class index (AffectNet-8 order, if3d.classes)
    valence  float32 []       in [-1, 1]; NaN when the sample has none
    arousal  float32 []       in [-1, 1]; NaN when the sample has none
    has_va   bool []          False when valence/arousal are NaN (mask them out of losses and metrics)
    index    int              position of the sample in the dataset (``dataset.paths[index]``)

Images of any size are resized (squashed, as DDAMFN's and If3D's ``Resize((112, 112))``) with
antialiasing. Pairing follows If3D: the render of ``<label>/<stem>.<ext>`` is
``<render_root>/<label>/<stem>.<any image ext>`` (what ``Smirk_batch_Render.py`` writes).

Bad input (see :class:`~if3d.io.report.DataReport`): cheap checks (extension, size > 0, label folder)
at index time, every problem counted in ``dataset.report`` and printed as a summary. Photos without a
render are an error (:class:`~if3d.io.report.MissingRenderError`, listing them) unless
``skip_missing_renders=True``. Full decode errors surface when a sample is loaded, as a
:class:`~if3d.io.report.CorruptImageError` naming the file; build with ``verify=True`` to decode every
image once at construction and skip (and report) the corrupt ones instead. No sample is ever replaced by
a zero image.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from if3d.classes import AFFECTNET8, class_names_for
from if3d.data.layout import (
    RENDER_SIDE_EXTENSIONS,
    annotations_path,
    photos_dir,
    read_annotations,
    read_classes,
    renders_dir,
    scan_label_tree,
)
from if3d.io.images import decode_image
from if3d.io.report import (
    CorruptImageError,
    DataError,
    DataReport,
    LayoutError,
    MissingRenderError,
    format_paths,
)

logger = logging.getLogger("if3d.data")

# Preferred render extension when a photo has several renders (the render batch writes PNG).
_RENDER_EXT_PRIORITY = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


def read_image(path: str | os.PathLike, min_size: int | None = None) -> torch.Tensor:
    """Decode an image file to an RGB tensor with the toolkit's one decoder
    (:func:`if3d.io.images.decode_image`: 8/16-bit, grey/RGB/RGBA/palette, EXIF orientation not applied).

    Args:
        path: any image file Pillow reads (JPEG, PNG, BMP, TIFF, WebP, GIF...).
        min_size: when given, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling,
            ``Image.draft``) as long as both sides stay >= ``min_size``; much faster for large photos
            that are resized to ``min_size`` anyway.

    Returns:
        uint8 [3, H, W] RGB tensor (grey is replicated to three channels, alpha is dropped, 16-bit
        images are scaled to 8 bits).

    Raises:
        CorruptImageError: the file is missing, empty, truncated, corrupt or not an image; the message
            names it.
    """
    return torch.from_numpy(decode_image(path, min_size=min_size)).permute(2, 0, 1).contiguous()


def load_image(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """:func:`read_image` then resize to ``[3, image_size, image_size]`` (bilinear, antialiased; aspect
    ratio not kept, as DDAMFN's and If3D's ``Resize((112, 112))``).

    Returns:
        uint8 [3, S, S] RGB.

    Raises:
        CorruptImageError: as :func:`read_image`.
    """
    img = read_image(path, min_size=image_size)
    if img.shape[-2:] != (image_size, image_size):
        img = TF.resize(img, [image_size, image_size], antialias=True)
    return img


class PairedDataset(Dataset):
    """Photos, their renders, labels and valence/arousal of one split.

    Two ways to build one:

    * canonical layout: ``PairedDataset("Dataset/fer2013", "train")`` (or ``from_root``) reads
      ``photos/train``, ``renders/train``, ``annotations/train.csv`` (if present) and ``classes.json``;
    * explicit folders, e.g. If3D's: ``PairedDataset(photo_root=..., render_root=..., annotations_csv=...)``
      (or ``from_paths(**if3d_paths("train"))``).

    Args:
        root, split: canonical dataset root and split name.
        photo_root: folder of ``<label>/<file>`` photos of one split (e.g. If3D's
            ``Dataset/affectnet_clean/train``); ``root`` without ``split`` is taken as ``photo_root``.
        render_root: folder of the renders with the same relative paths (If3D's
            ``Dataset/affectnet_smirk/train``); ``None`` for a photo-only dataset.
        annotations_csv: optional valence/arousal CSV: canonical ``file,valence,arousal`` or If3D's
            ``number,exp,val,aro`` (matched on the integer photo stem).
        annotations: canonical layout only: read ``annotations/<split>.csv`` when it exists.
        size, photo_only: aliases of ``image_size`` and ``not require_renders``.
        image_size: side ``S`` of the returned images in pixels.
        require_renders: ``False`` builds a photo-only dataset (no ``render`` key, e.g. for the DDAMFN
            baseline) even when renders exist; ``None`` (default) means "renders iff a render folder is
            given" (always, for the canonical layout); ``True`` with no ``render_root`` is an error.
        skip_missing_renders: skip (and report) photos without a render instead of raising
            :class:`MissingRenderError`.
        verify: decode every photo and render once now; corrupt ones are skipped and reported
            (otherwise they raise :class:`CorruptImageError` when loaded).
        class_names: names of the labels in order (default: AffectNet-8); label folders must be
            ``0..len(class_names)-1``.
        num_classes: keep only labels ``< num_classes`` (e.g. 7 drops Contempt as DDAMFN's AffectNet-7);
            the others are skipped and counted as ``excluded_class``. Default: all.
        strict: raise :class:`DataError` (with the report summary) if any problem was found.
        workers: threads for ``verify``.
        name: name shown in the report (default: ``photo_root``).

    Attributes also include ``split`` (None for explicit folders), ``photo_root``, ``render_root``,
    ``image_size``, ``has_renders``.

    Attributes:
        labels: int64 [N] labels; class_names: list of names; paths: photo paths relative to
        ``photo_root`` ('/' separators); render_paths: same for renders (None when photo-only);
        valence, arousal: float32 [N] (NaN when absent); has_va: bool [N]; report: DataReport.

    Raises:
        LayoutError: a root is not a folder, or the annotation CSV has unknown columns.
        MissingRenderError: photos without a render (unless ``skip_missing_renders``).
        DataError: ``strict`` and problems found, or no sample left.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        split: str | None = None,
        *,
        photo_root: str | os.PathLike | None = None,
        render_root: str | os.PathLike | None = None,
        annotations_csv: str | os.PathLike | None = None,
        image_size: int = 112,
        require_renders: bool | None = None,
        skip_missing_renders: bool = False,
        verify: bool = False,
        class_names: list[str] | tuple[str, ...] | None = None,
        num_classes: int | None = None,
        strict: bool = False,
        workers: int | None = None,
        name: str | None = None,
        annotations: bool = True,
        size: int | None = None,
        photo_only: bool | None = None,
    ) -> None:
        if size is not None:
            if image_size not in (112, size):
                raise ValueError(f"size={size} and image_size={image_size} disagree (size is an alias)")
            image_size = size
        if photo_only is not None:
            if require_renders is not None and require_renders == photo_only:
                raise ValueError(f"photo_only={photo_only} contradicts require_renders={require_renders}")
            require_renders = not photo_only
        if root is not None and split is not None:
            if photo_root is not None or render_root is not None:
                raise ValueError("give either root + split (canonical layout) or photo_root/render_root, not both")
            root = Path(root)
            names = read_classes(root)
            pdir = photos_dir(root, split)
            if not pdir.is_dir():
                have = sorted(p.name for p in (root / "photos").iterdir()) if (root / "photos").is_dir() else []
                raise LayoutError(f"{pdir}: no such split folder (splits present: {', '.join(have) or 'none'})")
            ann = annotations_path(root, split)
            photo_root = pdir
            require_renders = True if require_renders is None else require_renders
            render_root = renders_dir(root, split) if require_renders else None
            if annotations_csv is None and annotations and ann.is_file():
                annotations_csv = ann
            class_names = names if class_names is None else class_names
            name = name or f"{root} [{split}]"
        elif root is not None:
            if (Path(root) / "photos").is_dir():
                raise ValueError(f"{root} is a canonical dataset root: give the split, e.g. PairedDataset(root, 'train')")
            if photo_root is not None:
                raise ValueError("give either root or photo_root, not both")
            photo_root = root
        elif photo_root is None:
            raise ValueError("give root + split (canonical layout) or photo_root (explicit paths)")
        self.split = split
        self._build(Path(photo_root), render_root, annotations_csv, image_size, require_renders, skip_missing_renders,
                    verify, class_names, num_classes, strict, workers, name)

    def _build(self, photo_root, render_root, annotations_csv, image_size, require_renders, skip_missing_renders,
               verify, class_names, num_classes, strict, workers, name) -> None:
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.image_size = int(image_size)
        self.photo_root = Path(photo_root)
        if require_renders is None:
            require_renders = render_root is not None
        if require_renders and render_root is None:
            raise ValueError("require_renders=True needs a render_root")
        self.render_root = Path(render_root) if require_renders else None
        self.has_renders = bool(require_renders)
        names = list(class_names) if class_names is not None else class_names_for(len(AFFECTNET8))
        if num_classes is not None and not 1 <= num_classes <= len(names):
            raise ValueError(f"num_classes must be in 1..{len(names)}, got {num_classes}")
        keep_classes = num_classes if num_classes is not None else len(names)
        self.class_names = names[:keep_classes]
        self.report = DataReport(name or str(self.photo_root))
        report = self.report
        if self.has_renders and not self.render_root.is_dir():
            raise MissingRenderError(
                f"{self.render_root}: render folder not found. Render the photos of {self.photo_root} "
                "(Smirk_batch_Render.py) or build a photo-only dataset (require_renders=False)."
            )

        photos = scan_label_tree(self.photo_root, len(names), report).files
        keep = np.ones(len(photos), dtype=bool)

        # renders: same label folder and stem, any image extension
        render_rel: list[str | None] = [None] * len(photos)
        if self.has_renders:
            render_problems = DataReport()
            renders = scan_label_tree(self.render_root, len(names), render_problems, RENDER_SIDE_EXTENSIONS)
            report.merge(render_problems)
            by_stem: dict[str, str] = {}
            for rel, _ in sorted(renders.files, key=lambda f: _render_priority(f[0])):
                key = os.path.splitext(rel)[0]
                if key in by_stem:
                    report.add("duplicate_render", self.render_root / rel, f"using {by_stem[key]}")
                    continue
                by_stem[key] = rel
            used: set[str] = set()
            missing: list[int] = []
            for i, (rel, _) in enumerate(photos):
                key = os.path.splitext(rel)[0]
                r = by_stem.get(key)
                if r is None:
                    missing.append(i)
                else:
                    render_rel[i] = r
                    used.add(key)
            for key, rel in by_stem.items():
                if key not in used:
                    report.add("render_without_photo", self.render_root / rel)
            if missing:
                why = _render_manifest(self.render_root)
                missing_paths = [str(self.photo_root / photos[i][0]) for i in missing]
                reasons = [why.get(photos[i][0], "not rendered") for i in missing]
                if not skip_missing_renders:
                    listed = [f"{p}  [{r}]" for p, r in zip(missing_paths, reasons)]
                    raise MissingRenderError(
                        f"{len(missing)} of {len(photos)} photos under {self.photo_root} have no render under "
                        f"{self.render_root} (expected <label>/<stem>.<image ext>):\n{format_paths(listed)}\n"
                        "Render them (Smirk_batch_Render.py) or pass skip_missing_renders=True "
                        "(--skip-missing-renders) to skip them with a count."
                    )
                for p, r in zip(missing_paths, reasons):
                    report.add("missing_render", p, r)
                keep[missing] = False

        # valence / arousal
        n = len(photos)
        valence = np.full(n, np.nan, dtype=np.float32)
        arousal = np.full(n, np.nan, dtype=np.float32)
        if annotations_csv is not None:
            self._match_annotations(Path(annotations_csv), photos, valence, arousal)

        # classes beyond num_classes
        if keep_classes < len(names):
            for i, (rel, label) in enumerate(photos):
                if label >= keep_classes and keep[i]:
                    report.add("excluded_class", self.photo_root / rel, f"label {label} >= num_classes {keep_classes}")
                    keep[i] = False

        if verify:
            self._verify(photos, render_rel, keep, workers)

        idx = np.flatnonzero(keep)
        self.paths = np.array([photos[i][0] for i in idx], dtype=str)
        self.render_paths = np.array([render_rel[i] for i in idx], dtype=str) if self.has_renders else None
        self.labels = np.array([photos[i][1] for i in idx], dtype=np.int64)
        self.valence = valence[idx]
        self.arousal = arousal[idx]
        self.has_va = np.isfinite(self.valence) & np.isfinite(self.arousal)
        report.stats["samples"] = len(idx)
        report.stats["with_valence_arousal"] = int(self.has_va.sum())

        if strict and not report.ok:
            raise DataError(f"problems found (strict=True):\n{report.summary(max_paths=20)}")
        if len(idx) == 0:
            raise DataError(f"no samples left under {self.photo_root}\n{report.summary(max_paths=20)}")
        if not report.ok:
            logger.warning("%s", report.summary())

    @classmethod
    def from_root(cls, root: str | os.PathLike, split: str, **kwargs) -> PairedDataset:
        """Build from a canonical dataset root: ``PairedDataset(root, split, **kwargs)``.

        Args:
            root: the dataset root, e.g. ``Dataset/fer2013`` (``photos/``, ``renders/``, ``annotations/``,
                ``classes.json``).
            split: ``train``, ``val`` or ``test`` (any folder name under ``photos/``).
            **kwargs: the other constructor arguments (``require_renders=False`` for photo-only, ...).

        Raises:
            LayoutError: missing ``classes.json`` or ``photos/<split>``; plus those of the constructor.
        """
        return cls(root, split, **kwargs)

    @classmethod
    def from_paths(
        cls,
        photo_root: str | os.PathLike,
        render_root: str | os.PathLike | None = None,
        annotations_csv: str | os.PathLike | None = None,
        **kwargs,
    ) -> PairedDataset:
        """Build from explicit folders of one split, e.g. If3D's (:func:`if3d.data.layout.if3d_paths`).

        ``PairedDataset.from_paths(**if3d_paths("train"))`` loads If3D's ``Dataset/affectnet_clean/train``,
        ``Dataset/affectnet_smirk/train`` and ``train_set_annotation_without_lnd.csv`` as they are.
        """
        return cls(photo_root=photo_root, render_root=render_root, annotations_csv=annotations_csv, **kwargs)

    # ------------------------------------------------------------------------------------------------

    def _match_annotations(self, path: Path, photos: list[tuple[str, int]], valence: np.ndarray,
                           arousal: np.ndarray) -> None:
        report = self.report
        table = read_annotations(path, report)
        matched: set = set()
        for i, (rel, label) in enumerate(photos):
            if table.key == "file":
                key = rel
            else:
                stem = os.path.splitext(os.path.basename(rel))[0]
                key = int(stem) if stem.isdigit() else None
            row = table.rows.get(key) if key is not None else None
            if row is None:
                report.add("photo_without_annotation", self.photo_root / rel)
                continue
            matched.add(key)
            valence[i], arousal[i] = row[0], row[1]
            if row[2] is not None and row[2] != label:
                report.add("label_mismatch", self.photo_root / rel,
                           f"annotation {table.key}={key} says {row[2]}, folder says {label}")
        for key in table.rows:
            if key not in matched:
                report.add("annotation_without_photo", path, f"{table.key}={key}")

    def _verify(self, photos, render_rel, keep: np.ndarray, workers: int | None) -> None:
        jobs: list[tuple[int, Path]] = []
        for i in np.flatnonzero(keep):
            jobs.append((i, self.photo_root / photos[i][0]))
            if self.has_renders:
                jobs.append((i, self.render_root / render_rel[i]))

        def check(job):
            try:
                read_image(job[1])
                return None
            except CorruptImageError as e:
                return job[0], job[1], str(e)

        n_workers = workers or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            for bad in pool.map(check, jobs, chunksize=64):
                if bad is not None:
                    i, path, msg = bad
                    self.report.add("corrupt_image", path, msg.split(": ", 1)[-1])
                    keep[i] = False

    # ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(class_names)``)."""
        return len(self.class_names)

    def class_counts(self) -> np.ndarray:
        """int64 [num_classes]: samples per class."""
        return np.bincount(self.labels, minlength=self.num_classes).astype(np.int64)

    def photo_path(self, index: int) -> Path:
        """Absolute path of the photo of sample ``index``."""
        return self.photo_root / str(self.paths[index])

    def render_path(self, index: int) -> Path:
        """Absolute path of the render of sample ``index``.

        Raises:
            ValueError: the dataset is photo-only.
        """
        if self.render_paths is None:
            raise ValueError("photo-only dataset: no renders")
        return self.render_root / str(self.render_paths[index])

    def __getitem__(self, index: int) -> dict:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} samples")
        index = int(index) % len(self)
        sample = {"photo": load_image(self.photo_path(index), self.image_size)}
        if self.has_renders:
            sample["render"] = load_image(self.render_path(index), self.image_size)
        sample["label"] = torch.tensor(self.labels[index], dtype=torch.int64)
        sample["valence"] = torch.tensor(self.valence[index], dtype=torch.float32)
        sample["arousal"] = torch.tensor(self.arousal[index], dtype=torch.float32)
        sample["has_va"] = torch.tensor(bool(self.has_va[index]))
        sample["index"] = index
        return sample

    def __repr__(self) -> str:
        counts = ", ".join(f"{n}={c}" for n, c in zip(self.class_names, self.class_counts()))
        return (f"PairedDataset({self.photo_root}, renders={self.render_root}, samples={len(self)}, "
                f"image_size={self.image_size}, classes: {counts})")


def _render_manifest(render_root: Path) -> dict[str, str]:
    """photo path relative to the photo root -> why the render batch wrote no render (from manifest.csv).

    Reads ``<render_root>/manifest.csv`` (``relative_path,status,reason``, written by
    ``if3d.render.batch.render_tree``) or, when the whole dataset was rendered at once, the parent's
    manifest with ``<split>/`` prefixed paths. Unreadable or absent manifests give an empty dict.
    """
    import csv

    out: dict[str, str] = {}
    for manifest, prefix in ((render_root / "manifest.csv", ""), (render_root.parent / "manifest.csv",
                                                                   f"{render_root.name}/")):
        if not manifest.is_file():
            continue
        try:
            with open(manifest, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    rel = (row.get("relative_path") or "").replace("\\", "/")
                    status = row.get("status") or ""
                    if status and status != "ok" and rel.startswith(prefix):
                        reason = row.get("reason") or ""
                        out[rel[len(prefix):]] = f"render batch: {status}" + (f" ({reason})" if reason else "")
        except (OSError, csv.Error, UnicodeDecodeError):
            continue
    return out


def _render_priority(rel: str) -> tuple[str, int]:
    stem, ext = os.path.splitext(rel)
    ext = ext.lower()
    rank = _RENDER_EXT_PRIORITY.index(ext) if ext in _RENDER_EXT_PRIORITY else len(_RENDER_EXT_PRIORITY)
    return stem, rank

