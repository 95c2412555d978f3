"""Datasets: the canonical layout, converters for the standard FER datasets, paired loading and augmentation.

* :mod:`if3d.data.layout` — ``<root>/photos|renders/<split>/<label>/<file>``, annotations, classes.json,
  and If3D's original paths (:func:`if3d_paths`).
* :mod:`if3d.data.converters` — ``python -m if3d.data convert --format F --src S --out Dataset/NAME``.
* :mod:`if3d.io.images` — the one image decoder (:func:`decode_image`) of the whole toolkit.
* :class:`PairedDataset` — (photo, render, label, valence, arousal, has_va) uint8 samples.
* :class:`PairedAugment` / :func:`normalize` — batched paired augmentation on any device.
* :class:`ClassBalancedSampler` — inverse-frequency sampling, DDP-aware.
* :class:`DataReport` — counted, named bad input.

The names below are imported on first use, so that the torch-free parts (the image decoder, the
converters, the render batch, the data command line) start without loading torch.
"""

from __future__ import annotations

from if3d.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "IMAGENET_MEAN": "if3d.data.transforms",
    "IMAGENET_STD": "if3d.data.transforms",
    "PRESETS": "if3d.data.transforms",
    "ClassBalancedSampler": "if3d.data.sampler",
    "ClipDataset": "if3d.data.clips",
    "CorruptImageError": "if3d.io.report",
    "DataError": "if3d.io.report",
    "DataReport": "if3d.io.report",
    "LayoutError": "if3d.io.report",
    "MissingRenderError": "if3d.io.report",
    "PairedAugment": "if3d.data.transforms",
    "PairedDataset": "if3d.data.dataset",
    "decode_image": "if3d.io.images",
    "if3d_paths": "if3d.data.layout",
    "load_image": "if3d.data.dataset",
    "normalize": "if3d.data.transforms",
    "read_classes": "if3d.data.layout",
    "read_clip_table": "if3d.data.clips",
    "read_image": "if3d.data.dataset",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
