"""Datasets: the canonical layout, converters for the standard FER datasets, paired loading and augmentation.

* :mod:`if3d.data.layout` — ``<root>/photos|renders/<split>/<label>/<file>``, annotations, classes.json,
  and If3D's original paths (:func:`if3d_paths`).
* :mod:`if3d.data.converters` — ``python -m if3d.data convert --format F --src S --out Dataset/NAME``.
* :class:`PairedDataset` — (photo, render, label, valence, arousal, has_va) uint8 samples.
* :class:`PairedAugment` / :func:`normalize` — batched paired augmentation on any device.
* :class:`ClassBalancedSampler` — inverse-frequency sampling, DDP-aware.
* :class:`DataReport` — counted, named bad input.

Submodules import torch/torchvision; ``converters`` is imported lazily by the CLI.
"""

from if3d.data.dataset import PairedDataset, load_image, read_image
from if3d.data.layout import if3d_paths, read_classes
from if3d.data.report import CorruptImageError, DataError, DataReport, LayoutError, MissingRenderError
from if3d.data.sampler import ClassBalancedSampler
from if3d.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, PairedAugment, normalize

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "ClassBalancedSampler",
    "CorruptImageError",
    "DataError",
    "DataReport",
    "LayoutError",
    "MissingRenderError",
    "PairedAugment",
    "PairedDataset",
    "if3d_paths",
    "load_image",
    "normalize",
    "read_classes",
    "read_image",
]
