"""Open the samples of one split for training or evaluation: a canonical dataset or If3D's folders.

One function, :func:`open_split`, turns "where the split is" (:class:`SplitSource`), the streams a
model reads and the sample settings into a dataset of sample dicts (``photo`` uint8 [3,S,S], ``render``
uint8 [3,S,S] when the model reads renders, ``label`` int64, ``valence``/``arousal`` float32 with NaN
where absent, ``has_va`` bool, ``index`` int, plus any other stream the model reads) with ``.labels``,
``.class_names`` and ``.report``. Photos and renders come from the pre-decoded cache
(:mod:`if3d.data.cache`) when one exists for the split and is current, else from the image files
(:class:`~if3d.data.dataset.PairedDataset`); every other stream is added by the reader registered for
it (:func:`register_stream_reader`). A model that reads clips (:data:`CLIP_STREAMS`: the video models)
gets the split's clips instead (:class:`~if3d.data.clips.ClipDataset`, ``<root>/clips/<split>``, decoded from
the frame files: the pre-decoded cache holds photo datasets only). A canonical AU dataset (``au.json``,
:mod:`if3d.data.au`) opens as its face photos with AU-intensity targets (``au``, ``au_mask``). The training
engine, the test script and the benchmarks all open their data here. :class:`SplitSource`,
:class:`DataConfig` and :func:`resolve_val_split` are defined in the torch-free :mod:`if3d.data.splits`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from if3d.data.splits import DataConfig, SplitSource, resolve_val_split

#: Streams that are face images (uint8 [3, S, S] per sample): read from the photo and render trees.
IMAGE_STREAMS = ("photo", "render")

#: Streams of video models: ``clip`` uint8 [T, 3, S, S] per sample, ``render_clip`` the renders of its frames,
#: ``frame_mask`` bool [T] (False on padding in a batch): read from ``<root>/clips/<split>`` (:mod:`if3d.data.clips`).
CLIP_STREAMS = ("clip", "render_clip", "frame_mask")

#: stream name → reader ``(source, dataset, image_size=...) -> dataset`` that adds the stream to each sample
_STREAM_READERS: dict[str, Callable[..., Dataset]] = {}

#: Modules whose import registers the toolkit's own stream readers (the 3D face representations); imported
#: the first time a split is opened with a stream that no reader registered so far provides.
_BUILTIN_READER_MODULES = ("if3d.data.face3d_streams",)

__all__ = [
    "CLIP_STREAMS",
    "IMAGE_STREAMS",
    "DataConfig",
    "SplitSource",
    "Subset",
    "dataset_report",
    "open_split",
    "register_stream_reader",
    "resolve_val_split",
    "sample_path",
    "subset_dataset",
    "supports_batches",
]


class Subset(Dataset):
    """A fixed subset of a dataset that keeps ``labels``, ``class_names`` and ``report``.

    ``index`` of a sample is its position in the subset; :func:`sample_path` names its photo.
    Batch reads (``ds[list]``) are passed on when the base dataset supports them (the cache).
    """

    def __init__(self, base: Dataset, indices: Sequence[int]) -> None:
        self.base = base
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(base.labels)[self.indices]
        self.class_names = list(base.class_names)
        self.report = getattr(base, "report", None)
        self.supports_batches = supports_batches(base)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i):
        if isinstance(i, (list, tuple, np.ndarray, torch.Tensor)):
            pos = np.asarray(i, dtype=np.int64).reshape(-1)
            batch = dict(self.base[self.indices[pos].tolist()])
            batch["index"] = torch.from_numpy(pos.copy())
            return batch
        sample = dict(self.base[int(self.indices[i])])
        sample["index"] = int(i)
        return sample

    def sample_path(self, i: int) -> str:
        return sample_path(self.base, int(self.indices[i]))


def supports_batches(dataset: Dataset) -> bool:
    """True when ``dataset[list_of_indices]`` returns a collated batch (the memory-mapped cache)."""
    return bool(getattr(dataset, "supports_batches", False)) or hasattr(dataset, "get_batch")


def sample_path(dataset: Dataset, i: int) -> str:
    """A readable identifier of sample ``i``: its photo path when the dataset exposes it, else ``str(i)``."""
    if hasattr(dataset, "sample_path"):
        return str(dataset.sample_path(i))
    if hasattr(dataset, "photo_path"):
        return str(dataset.photo_path(i))
    rel = getattr(dataset, "photo_relpaths", None)
    if rel is not None:
        return str(rel[i])
    return str(i)


def dataset_report(dataset: Dataset) -> Any:
    """The dataset's data report (skipped files, counted) as JSON-able data, or None.

    Reports with more than 20 paths per kind are cut to 20 (the counts stay whole).
    """
    rep = getattr(dataset, "report", None)
    if rep is None or isinstance(rep, (dict, list, str)):
        return rep
    return rep.to_dict(max_paths=20) if hasattr(rep, "to_dict") else str(rep)


def subset_dataset(dataset: Dataset, max_samples: int | None, seed: int) -> Dataset:
    """The first ``max_samples`` of a seeded permutation of ``dataset`` (kept in dataset order).

    Returns ``dataset`` itself when ``max_samples`` is None or not smaller than its length.

    Raises:
        ValueError: ``max_samples`` < 1.
    """
    n = len(dataset)
    if max_samples is None or max_samples >= n:
        return dataset
    if max_samples < 1:
        raise ValueError(f"max samples must be >= 1, got {max_samples}")
    rng = np.random.default_rng(seed)
    return Subset(dataset, np.sort(rng.permutation(n)[:max_samples]))


def register_stream_reader(stream: str):
    """Register the reader that adds ``stream`` to a split's samples (decorator).

    The reader is called as ``reader(source, dataset, image_size=S)`` with the split's photo dataset
    (:class:`~if3d.data.dataset.PairedDataset` or the cache, in sample order) and returns a dataset whose
    samples carry the stream under its name (and keep ``labels``, ``class_names``, ``report``). A reader
    whose signature names them also gets ``skip_missing_renders`` (skip and count samples it has no data
    for, instead of raising) and ``streams`` (every stream the model reads: without an image stream among
    them, the photo need not be decoded).

    Raises:
        ValueError: the stream is an image stream or is registered twice.
    """

    def decorate(reader: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if stream in IMAGE_STREAMS or stream in _STREAM_READERS:
            raise ValueError(f"a reader for the {stream!r} stream is registered twice (or it is an image stream)")
        _STREAM_READERS[stream] = reader
        return reader

    return decorate


def open_split(
    source: SplitSource,
    *,
    image_size: int,
    streams: Sequence[str] = IMAGE_STREAMS,
    skip_missing_renders: bool = False,
    num_classes: int | None = None,
    cache: str = "auto",
    max_samples: int | None = None,
    seed: int = 0,
) -> Dataset:
    """The samples of one split for a model that reads ``streams`` (see the module docstring).

    Args:
        source: where the split is.
        image_size: side S of the images in pixels.
        streams: the model's input streams (``model.input_streams``); ``render`` among them makes the
            renders required. Without it the render tree still filters the samples when
            ``skip_missing_renders`` is set and renders exist, so a photo-only baseline sees exactly the
            fusion models' samples.
        skip_missing_renders: skip (and count) photos without a render instead of raising.
        num_classes: keep only labels below it (e.g. 7 drops Contempt, counted as ``excluded_class``).
        cache: ``"auto"`` reads the pre-decoded cache when one is current; ``"off"`` never.
        max_samples: a seeded random subset of this many samples (:func:`subset_dataset`).
        seed: the subset's seed.

    Raises:
        ValueError: a model that needs renders on a split without them, or a stream no reader provides.
        FileNotFoundError, if3d.io.report.DataError: missing or bad files (the message names them).
        if3d.data.cache.StaleCacheError: a cache exists but its source files changed (rebuild it).
    """
    if any(s in CLIP_STREAMS for s in streams):
        return subset_dataset(_open_clips(source, image_size, "render_clip" in streams, skip_missing_renders,
                                          num_classes), max_samples, seed)

    from if3d.data.au import is_au_dataset, open_au_split

    if is_au_dataset(source.data_root):  # face photos with AU intensity targets (au, au_mask), no class labels
        return open_au_split(source.data_root, source.split, image_size=image_size, streams=streams,
                             max_samples=max_samples, seed=seed)
    others = [s for s in streams if s not in IMAGE_STREAMS]
    if any(s not in _STREAM_READERS for s in others):
        import importlib

        for module in _BUILTIN_READER_MODULES:
            importlib.import_module(module)
    unknown = [s for s in others if s not in _STREAM_READERS]
    if unknown:
        raise ValueError(f"no reader provides the stream(s) {', '.join(unknown)} (readers: "
                         f"{', '.join(sorted(_STREAM_READERS)) or 'none'}; image streams: {', '.join(IMAGE_STREAMS)})")
    photo_only = "render" not in streams
    dataset = _open_cached(source, image_size, photo_only, skip_missing_renders, num_classes) \
        if cache != "off" else None
    if dataset is None:
        dataset = _open_paired(source, image_size, photo_only, skip_missing_renders, num_classes)
    for stream in others:
        reader = _STREAM_READERS[stream]
        options = {"skip_missing_renders": skip_missing_renders, "streams": tuple(streams)}
        dataset = reader(source, dataset, image_size=image_size, **_accepted(reader, options))
    return subset_dataset(dataset, max_samples, seed)


def _accepted(reader: Callable[..., Dataset], options: dict[str, Any]) -> dict[str, Any]:
    """The ``options`` the reader's signature takes (by name or through ``**kwargs``)."""
    import inspect

    params = inspect.signature(reader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


def _open_clips(source: SplitSource, image_size: int, with_renders: bool, skip_missing_renders: bool,
                num_classes: int | None) -> Dataset:
    """:class:`~if3d.data.clips.ClipDataset` of one split: ``<root>/clips/<split>`` (renders from
    ``<root>/render_clips/<split>``), or for explicit paths the photo folder as the clip folder and the
    render folder as its renders."""
    from if3d.data.clips import ClipDataset

    kwargs: dict[str, Any] = {"image_size": image_size, "with_renders": with_renders,
                              "skip_missing_renders": skip_missing_renders, "num_classes": num_classes}
    if source.data_root is not None:
        return ClipDataset(source.data_root, source.split, **kwargs)
    return ClipDataset(clip_root=source.photo_root, render_root=source.render_root, **kwargs)


def _open_paired(source: SplitSource, image_size: int, photo_only: bool, skip_missing_renders: bool,
                 num_classes: int | None) -> Dataset:
    """:class:`~if3d.data.dataset.PairedDataset` of one split (JPEG/PNG files)."""
    from if3d.data.dataset import PairedDataset

    kwargs: dict[str, Any] = {"image_size": image_size, "skip_missing_renders": skip_missing_renders}
    names = source.class_names()
    if num_classes is not None and num_classes < len(names):
        kwargs["num_classes"] = num_classes  # e.g. 7 drops Contempt (counted as excluded_class)

    def open_with(with_renders: bool) -> Dataset:
        if source.data_root is not None:
            return PairedDataset(source.data_root, source.split, require_renders=with_renders, **kwargs)
        return PairedDataset.from_paths(source.photo_root, source.render_root if with_renders else None,
                                        source.annotations_csv, require_renders=with_renders, **kwargs)

    if not photo_only:
        if source.render_root is None:
            raise ValueError(f"{source.photo_root}: this model needs renders; give --data ROOT with renders/ "
                             "or --{train,val}-renders")
        return open_with(True)
    dataset = open_with(False)
    if skip_missing_renders and source.has_renders:
        # The photo-only baseline sees exactly the fusion models' samples: photos that have a render.
        paired = open_with(True)
        keep = np.flatnonzero(np.isin(dataset.paths, paired.paths))
        if keep.size < len(dataset):
            print(f"{source.photo_root}: {len(dataset) - keep.size} photos without a render left out "
                  "(--skip-missing-renders), as for the fusion models", flush=True)
            subset = Subset(dataset, keep)
            subset.report = paired.report
            return subset
    return dataset


def _open_cached(source: SplitSource, image_size: int, photo_only: bool, skip_missing_renders: bool,
                 num_classes: int | None) -> Dataset | None:
    """The pre-decoded cache of the split when one exists and is current, else None.

    Only canonical datasets have caches. The photo-only baseline reads the paired cache when there
    is one (same samples as the fusion models), else a photo-only cache.
    """
    if source.data_root is None:
        return None
    from if3d.data.cache import open_cache_if_valid

    candidates = [(False, {"skip_missing_renders": True} if skip_missing_renders else {})]
    if photo_only and not (skip_missing_renders and source.has_renders):
        candidates.append((True, {}))  # no render filter to reproduce: a photo-only cache will do
    for cache_photo_only, dataset_kwargs in candidates:
        ds = open_cache_if_valid(source.data_root, source.split, image_size, photo_only=cache_photo_only,
                                 dataset_kwargs=dataset_kwargs)
        if ds is None:
            continue
        print(f"using the pre-decoded cache {ds.path} for split {source.split}", flush=True)
        if num_classes is not None and len(ds.class_names) > num_classes:
            keep = np.flatnonzero(np.asarray(ds.labels) < num_classes)
            ds = Subset(ds, keep)
            ds.class_names = ds.class_names[:num_classes]
        return ds
    return None
