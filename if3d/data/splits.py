"""Where the samples of a split are, and the data section of a training configuration: :class:`DataConfig`
(the options), :class:`SplitSource` (one split's folders) and :func:`resolve_val_split`.

Free of torch, so that the training command line builds its parser (and answers ``--help``) without it;
:mod:`if3d.data.source` opens the samples.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from if3d.classes import AFFECTNET8
from if3d.data import layout

__all__ = ["DataConfig", "SplitSource", "resolve_val_split"]


@dataclass
class DataConfig:
    """The data of a training run (a section of the training configuration).

    Either ``data`` (a canonical dataset root, with ``train_split``/``val_split``) or the explicit
    If3D-style paths ``train_photos``, ``train_renders``, ``train_annotations``, ``val_photos``,
    ``val_renders``, ``val_annotations``.
    """

    data: str | None = None
    """canonical dataset root (photos/, renders/, annotations/, classes.json)"""
    train_split: str = "train"
    """training split of --data"""
    val_split: str | None = None
    """validation split of --data (default val, else test)"""
    train_photos: str | None = None
    """train photos <DIR>/<label>/<file> (instead of --data)"""
    train_renders: str | None = None
    """train renders, same relative paths and stems"""
    train_annotations: str | None = None
    """train valence/arousal CSV (file,valence,arousal or If3D's number,exp,val,aro)"""
    val_photos: str | None = None
    """val photos <DIR>/<label>/<file>"""
    val_renders: str | None = None
    """val renders, same relative paths and stems"""
    val_annotations: str | None = None
    """val valence/arousal CSV"""
    image_size: int = 112
    """model input side in pixels"""
    skip_missing_renders: bool = False
    """skip (and count) photos without a render instead of stopping"""
    max_train_samples: int | None = None
    """seeded random subset of the training split"""
    max_val_samples: int | None = None
    """seeded random subset of the validation split"""
    cache: Literal["auto", "off"] = "auto"
    """use the pre-decoded cache when present"""
    augment: bool = True
    """training augmentation (--no-augment: none)"""

    def source(self, role: str) -> SplitSource:
        """The :class:`SplitSource` of the ``"train"`` or ``"val"`` role.

        Raises:
            ValueError: no data given for the role, or an unknown role.
            FileNotFoundError: no validation split exists under ``--data``.
        """
        if role not in ("train", "val"):
            raise ValueError(f"role must be 'train' or 'val', got {role!r}")
        if self.data is not None:
            split = self.train_split if role == "train" else resolve_val_split(self.data, self.val_split)
            return SplitSource.from_root(self.data, split)
        photos = getattr(self, f"{role}_photos")
        if photos is None:
            raise ValueError(f"no {role} data: give --data ROOT or --{role}-photos (and --{role}-renders)")
        return SplitSource.from_paths(photos, getattr(self, f"{role}_renders"),
                                      getattr(self, f"{role}_annotations"), name=role)


@dataclass(frozen=True)
class SplitSource:
    """Where the samples of one split are.

    Attributes:
        split: the split's name (``train``, ``val``, ``test`` …; for explicit paths a label such as ``val``).
        photo_root: folder of ``<label>/<file>`` photos.
        render_root: folder of renders with the same relative paths and stems, or None.
        annotations_csv: valence/arousal CSV, or None.
        data_root: the canonical dataset root (``classes.json``, caches), or None for explicit paths.
    """

    split: str
    photo_root: Path
    render_root: Path | None
    annotations_csv: Path | None
    data_root: Path | None

    @classmethod
    def from_root(cls, root: str | os.PathLike, split: str) -> SplitSource:
        """A split of a canonical dataset (``<root>/photos/<split>``, ``renders/<split>``, ``annotations``)."""
        ann = layout.annotations_path(root, split)
        return cls(split, layout.photos_dir(root, split), layout.renders_dir(root, split),
                   ann if ann.is_file() else None, Path(root))

    @classmethod
    def from_paths(cls, photos: str | os.PathLike, renders: str | os.PathLike | None = None,
                   annotations: str | os.PathLike | None = None, name: str = "test") -> SplitSource:
        """Explicit If3D-style folders of one split (``Dataset/affectnet_clean/val`` …)."""
        return cls(name, Path(photos), Path(renders) if renders else None,
                   Path(annotations) if annotations else None, None)

    @property
    def has_renders(self) -> bool:
        return self.render_root is not None and self.render_root.is_dir()

    def class_names(self) -> list[str]:
        """The split's class names in label order: ``classes.json`` of the root, else AffectNet-8.

        An AU dataset's "classes" are its AUs (``au.json``, :mod:`if3d.data.au`): the outputs of a model
        trained on it.

        Raises:
            if3d.io.report.LayoutError: a canonical root without a readable ``classes.json``.
        """
        from if3d.data.au import is_au_dataset, read_au_info

        if is_au_dataset(self.data_root):
            return list(read_au_info(self.data_root)["aus"])
        return layout.read_classes(self.data_root) if self.data_root is not None else list(AFFECTNET8)


def resolve_val_split(root: str | os.PathLike, val_split: str | None = None) -> str:
    """The validation split of a canonical dataset: ``val_split`` when given, else ``val`` when present, else ``test``
    (a split is present when ``<root>/photos/<split>`` or, for video datasets, ``<root>/clips/<split>`` is).

    Raises:
        FileNotFoundError: no candidate split exists.
    """
    if val_split is not None:
        return val_split
    for split in ("val", "test"):
        if layout.split_exists(root, split):
            return split
    raise FileNotFoundError(f"{root}: no val or test split (photos/ or clips/) for validation; give --val-split NAME")
