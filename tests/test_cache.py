"""The pre-decoded dataset cache (if3d.data.cache) on a small real FER2013 tree.

The tree is canonical (``photos/train/<label>/``, ``renders/train/<label>/``, ``annotations/train.csv``,
``classes.json``) with real FER2013 photos; each render is a stand-in made from its photo (mirrored, PNG),
so photo and render differ and a swap would show.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler
from torch.utils.data._utils.collate import default_collate

from if3d.classes import AFFECTNET8, canonical_label
from if3d.data import cache as cache_mod
from if3d.data.cache import (
    MAGIC,
    CachedPairedDataset,
    CacheError,
    StaleCacheError,
    build_cache,
    cache_path,
    open_cache,
    open_cache_if_valid,
)
from if3d.data.dataset import PairedDataset
from if3d.data.layout import write_annotations, write_classes

SIZE = 112
FER_CLASSES = ("happy", "sad", "angry")
PER_CLASS = 4


def _make_tree(root: Path, fer: Path) -> Path:
    from PIL import Image, ImageOps

    va_rows = []
    for name in FER_CLASSES:
        label = canonical_label(name)
        files = sorted((fer / "train" / name).glob("*.jpg"))[:PER_CLASS]
        assert len(files) == PER_CLASS, f"FER2013 {name} has too few images"
        for k, f in enumerate(files):
            photo = root / "photos" / "train" / str(label) / f.name
            photo.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, photo)
            render = root / "renders" / "train" / str(label) / (f.stem + ".png")
            render.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(f) as im:
                ImageOps.mirror(im.convert("RGB")).save(render)
            if k % 2 == 0:  # half of the samples have valence/arousal
                va_rows.append((f"{label}/{f.name}", 0.1 * k - 0.2, 0.5 - 0.1 * k))
    write_annotations(root / "annotations" / "train.csv", va_rows)
    write_classes(root, list(AFFECTNET8))
    return root


@pytest.fixture
def tree(tmp_path, data_dir) -> Path:
    fer = data_dir / "fer2013"
    if not fer.is_dir():
        pytest.skip(f"{fer} is absent")
    return _make_tree(tmp_path / "ds", fer)


def _assert_sample_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        x, y = torch.as_tensor(a[key]), torch.as_tensor(b[key])
        assert x.dtype == y.dtype, key
        assert x.shape == y.shape, key
        torch.testing.assert_close(x, y, rtol=0, atol=0, equal_nan=True, msg=key)


def test_cached_samples_equal_paired_dataset(tree):
    path = build_cache(tree, "train", SIZE, progress=False)
    assert path == cache_path(tree, "train", SIZE)
    ref = PairedDataset(tree, "train", image_size=SIZE)
    ds = open_cache(tree, "train", SIZE)
    assert isinstance(ds, CachedPairedDataset)
    assert len(ds) == len(ref) == len(FER_CLASSES) * PER_CLASS
    np.testing.assert_array_equal(ds.labels, ref.labels)
    assert ds.class_names == ref.class_names
    assert ds.photo_relpaths == [str(p) for p in ref.paths]
    assert ds.render_relpaths == [str(p) for p in ref.render_paths]
    for i in range(len(ref)):
        _assert_sample_equal(ds[i], ref[i])
    # the cache holds the samples with and without VA, and photo != render (no swap)
    assert ds.get_batch(range(len(ds)))["has_va"].any()
    assert not ds.get_batch(range(len(ds)))["has_va"].all()
    assert not torch.equal(ds[0]["photo"], ds[0]["render"])

    # a batch (any order, repeats allowed) equals the default collation of the single samples
    idx = [5, 0, 11, 5, 3]
    _assert_sample_equal(ds.get_batch(idx), default_collate([ref[i] for i in idx]))
    _assert_sample_equal(ds[idx], default_collate([ref[i] for i in idx]))
    _assert_sample_equal(ds.get_batch(torch.tensor([-1])), default_collate([ref[len(ref) - 1]]))
    with pytest.raises(IndexError):
        ds[len(ds)]
    with pytest.raises(IndexError):
        ds.get_batch([0, len(ds)])

    # batched DataLoader path (no per-sample collation) in a worker process: the pickled dataset
    # carries no image arrays, the worker reopens the memory map
    assert len(pickle.dumps(ds)) < path.stat().st_size / 4
    loader = DataLoader(ds, batch_size=None, sampler=BatchSampler(SequentialSampler(ds), 5, drop_last=False),
                        num_workers=1)
    batches = list(loader)
    assert [len(b["label"]) for b in batches] == [5, 5, 2]
    full = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    _assert_sample_equal(full, default_collate([ref[i] for i in range(len(ref))]))


def test_photo_only_cache_and_cli(tree, capsys):
    from if3d.data.__main__ import main as data_main

    assert data_main(["cache", "--data", str(tree), "--split", "train", "--size", "64", "--photo-only",
                      "--workers", "0"]) == 0
    assert "12 samples" in capsys.readouterr().out
    ds = open_cache_if_valid(tree, "train", 64, photo_only=True)
    ref = PairedDataset(tree, "train", image_size=64, require_renders=False)
    assert ds is not None
    assert "render" not in ds[0]
    for i in (0, 7):
        _assert_sample_equal(ds[i], ref[i])
    # no cache for the other settings
    assert open_cache_if_valid(tree, "train", 64) is None
    assert open_cache_if_valid(tree, "train", 112, photo_only=True) is None
    assert data_main(["cache", "--data", str(tree), "--split", "train", "--size", "64", "--photo-only",
                      "--check"]) == 0
    assert data_main(["cache", "--data", str(tree), "--split", "train", "--size", "64", "--check"]) == 1


def _bump(path: Path, new_bytes: bytes | None = None) -> None:
    """Rewrite ``path`` (optionally with new content) and move its mtime forward."""
    if new_bytes is not None:
        path.write_bytes(new_bytes)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))


@pytest.mark.parametrize("change", ["photo_modified", "render_touched", "photo_added", "render_removed",
                                    "annotations_modified"])
def test_stale_cache_is_refused_with_the_changed_file_named(tree, change):
    build_cache(tree, "train", SIZE, progress=False)
    assert open_cache_if_valid(tree, "train", SIZE) is not None
    photo = sorted((tree / "photos" / "train" / "1").glob("*.jpg"))[0]
    render = tree / "renders" / "train" / "1" / (photo.stem + ".png")
    if change == "photo_modified":
        other = sorted((tree / "photos" / "train" / "2").glob("*.jpg"))[0]
        _bump(photo, other.read_bytes())
        named, what = f"photos/train/1/{photo.name}", "changed"
    elif change == "render_touched":  # same bytes, new mtime: conservatively stale
        _bump(render)
        named, what = f"renders/train/1/{render.name}", "changed"
    elif change == "photo_added":  # a new pair
        shutil.copyfile(photo, photo.with_name("extra.jpg"))
        shutil.copyfile(render, render.with_name("extra.png"))
        named, what = "photos/train/1/extra.jpg", "added"
    elif change == "render_removed":
        render.unlink()
        named, what = f"renders/train/1/{render.name}", "removed"
    else:
        csv = tree / "annotations" / "train.csv"
        _bump(csv, csv.read_bytes() + b"1/" + photo.name.encode() + b",0.9,0.9\n")
        named, what = "annotations/train.csv", "changed"

    with pytest.raises(StaleCacheError) as err:
        open_cache_if_valid(tree, "train", SIZE)
    msg = str(err.value)
    assert named in msg
    assert f" {what} (" in msg
    assert "--rebuild" in msg
    assert named in getattr(err.value.diff, what)
    assert open_cache_if_valid(tree, "train", SIZE, on_stale="ignore") is None

    if change == "render_removed":  # the tree no longer builds: rebuilding surfaces the dataset's own error
        with pytest.raises(Exception, match="no render"):
            open_cache_if_valid(tree, "train", SIZE, on_stale="rebuild")
        return
    ds = open_cache_if_valid(tree, "train", SIZE, on_stale="rebuild")
    ref = PairedDataset(tree, "train", image_size=SIZE)
    assert len(ds) == len(ref)
    for i in range(len(ref)):
        _assert_sample_equal(ds[i], ref[i])


class _FailingSource(torch.utils.data.Dataset):
    """Wraps a PairedDataset and fails at one index, as a crash or Ctrl-C in the middle of a build."""

    def __init__(self, base, fail_at: int, exc: BaseException):
        self.base, self.fail_at, self.exc = base, fail_at, exc
        self.paths, self.render_paths = base.paths, base.render_paths
        self.class_names, self.report = base.class_names, base.report

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        if i == self.fail_at:
            raise self.exc
        return self.base[i]


def test_interrupted_build_leaves_no_valid_cache(tree, monkeypatch):
    real_open = cache_mod._open_source

    def failing(*args, **kwargs):
        return _FailingSource(real_open(*args, **kwargs), fail_at=7, exc=KeyboardInterrupt())

    monkeypatch.setattr(cache_mod, "_open_source", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tree, "train", SIZE, batch_size=2, progress=False)
    folder = cache_path(tree, "train", SIZE).parent
    assert list(folder.iterdir()) == []  # neither the cache nor its temporary file
    assert open_cache_if_valid(tree, "train", SIZE) is None

    # an interrupted REbuild keeps the previous (valid) cache untouched
    monkeypatch.setattr(cache_mod, "_open_source", real_open)
    path = build_cache(tree, "train", SIZE, progress=False)
    before = path.read_bytes()
    monkeypatch.setattr(cache_mod, "_open_source", failing)
    with pytest.raises(KeyboardInterrupt):
        build_cache(tree, "train", SIZE, batch_size=2, rebuild=True, progress=False)
    assert path.read_bytes() == before
    assert open_cache_if_valid(tree, "train", SIZE) is not None


def test_partial_or_foreign_files_are_never_taken_for_a_cache(tree, caplog):
    path = build_cache(tree, "train", SIZE, progress=False)
    blob = path.read_bytes()
    assert blob.startswith(MAGIC)

    # a process killed before the final rename: magic bytes not written yet
    path.write_bytes(b"\0" * 8 + blob[8:])
    assert open_cache_if_valid(tree, "train", SIZE) is None
    assert "not a complete If3D cache" in caplog.text
    with pytest.raises(CacheError, match="bad magic"):
        open_cache(tree, "train", SIZE)

    # a truncated copy
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CacheError, match="truncated"):
        open_cache(tree, "train", SIZE)

    # a leftover temporary file of a dead process is removed by the next build and never opened
    path.unlink()
    leftover = path.with_name(f".{path.name}.999999999.x1y2.tmp-if3d")
    leftover.write_bytes(blob)
    assert open_cache_if_valid(tree, "train", SIZE) is None
    build_cache(tree, "train", SIZE, progress=False)
    assert not leftover.exists()
    assert open_cache_if_valid(tree, "train", SIZE) is not None


def test_skip_missing_renders_setting_is_respected(tree):
    render = sorted((tree / "renders" / "train" / "2").glob("*.png"))[0]
    render.unlink()
    with pytest.raises(Exception, match="no render"):
        build_cache(tree, "train", SIZE, progress=False)
    assert not cache_path(tree, "train", SIZE).exists()
    build_cache(tree, "train", SIZE, progress=False, dataset_kwargs={"skip_missing_renders": True})
    ds = open_cache_if_valid(tree, "train", SIZE, dataset_kwargs={"skip_missing_renders": True})
    assert ds is not None
    assert len(ds) == len(FER_CLASSES) * PER_CLASS - 1
    assert ds.report["counts"]["missing_render"] == 1
    # a run that did not ask to skip photos must not silently train on the reduced set
    assert open_cache_if_valid(tree, "train", SIZE) is None


def test_stale_hint_is_the_command_that_rebuilds_it(tree, capsys):
    """A cache built with --skip-missing-renders: the stale message prints the exact command that rebuilds
    it (with --skip-missing-renders), and that command works."""
    import shlex

    from if3d.data.__main__ import main as data_main

    sorted((tree / "renders" / "train" / "2").glob("*.png"))[0].unlink()
    assert data_main(["cache", "--data", str(tree), "--split", "train", "--workers", "0",
                      "--skip-missing-renders"]) == 0
    photo = sorted((tree / "photos" / "train" / "1").glob("*.jpg"))[0]
    _bump(photo)
    kwargs = {"skip_missing_renders": True}
    with pytest.raises(StaleCacheError) as err:
        open_cache_if_valid(tree, "train", SIZE, dataset_kwargs=kwargs)
    hint = str(err.value).split("Rebuild it: ", 1)[1]
    argv = shlex.split(hint)
    assert argv[:4] == ["python", "-m", "if3d.data", "cache"]
    assert "--skip-missing-renders" in argv
    assert "--rebuild" in argv
    capsys.readouterr()
    assert data_main(argv[3:] + ["--workers", "0"]) == 0
    ds = open_cache_if_valid(tree, "train", SIZE, dataset_kwargs=kwargs)
    assert ds is not None
    assert len(ds) == len(FER_CLASSES) * PER_CLASS - 1


@pytest.mark.parametrize("loop", ["file_to_itself", "folder_to_parent"])
def test_symbolic_link_loop_is_an_error_naming_the_link(tree, capsys, loop):
    from if3d.data.__main__ import main as data_main
    from if3d.io.report import DataError

    folder = tree / "photos" / "train" / "1"
    link = folder / ("loop.jpg" if loop == "file_to_itself" else "up")
    os.symlink(link.name if loop == "file_to_itself" else "..", link)
    with pytest.raises(DataError, match="symbolic link loop"):
        build_cache(tree, "train", SIZE, progress=False)
    assert data_main(["cache", "--data", str(tree), "--split", "train", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"{link}: symbolic link loop" in err
    assert not cache_path(tree, "train", SIZE).exists()


def test_cache_path_is_guarded(tree, monkeypatch):
    """Never a cache file inside the source files; never replaces a file that is not a cache; a full disk is
    an OutputError naming the file, with nothing left behind."""
    import errno

    from if3d.outputs import OutputError

    with pytest.raises(OutputError, match="is inside the source"):
        build_cache(tree, "train", SIZE, cache_dir=tree / "photos" / "train" / "1", progress=False)
    assert not list((tree / "photos" / "train" / "1").glob("*.if3dcache"))
    path = cache_path(tree, "train", SIZE)
    path.parent.mkdir()
    path.write_bytes(b"someone else's file")
    with pytest.raises(OutputError, match="not an If3D cache"):
        build_cache(tree, "train", SIZE, rebuild=True, progress=False)
    assert path.read_bytes() == b"someone else's file"
    path.unlink()

    def disk_full(fd, nbytes):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "_reserve", disk_full)
    with pytest.raises(OutputError, match=f"{path}: cannot write: no space left on the device"):
        build_cache(tree, "train", SIZE, progress=False)
    assert list(path.parent.iterdir()) == []


def test_same_size_and_mtime_replacement_is_not_seen_as_documented(tree):
    """The fingerprint is size + mtime (see the module docstring): a photo replaced by another of the same
    size with its mtime restored keeps the cache 'valid'; --rebuild is the documented remedy."""
    build_cache(tree, "train", SIZE, progress=False)
    a, b = sorted((tree / "photos" / "train" / "1").glob("*.jpg"))[:2]
    st = a.stat()
    a.write_bytes(b.read_bytes()[: st.st_size].ljust(st.st_size, b"\0"))
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert open_cache_if_valid(tree, "train", SIZE) is not None
    build_cache(tree, "train", SIZE, rebuild=True, progress=False)
    ds = open_cache(tree, "train", SIZE)
    i = [Path(p).name for p in ds.photo_relpaths].index(a.name)
    ref = PairedDataset(tree, "train", image_size=SIZE)
    _assert_sample_equal(ds[i], ref[i])


def test_rerunning_the_render_step_over_unchanged_photos_keeps_the_cache_current(tree):
    """Only image files decide the samples: the render step's manifest.csv and .npz files may be rewritten."""
    build_cache(tree, "train", SIZE, progress=False)
    renders = tree / "renders" / "train"
    (renders / "manifest.csv").write_text("relative_path,status,reason\n")
    (renders / "params.npz").write_bytes(b"new parameters")
    assert open_cache_if_valid(tree, "train", SIZE) is not None
    photo = sorted((tree / "photos" / "train" / "2").glob("*"))[0]
    os.utime(photo, ns=(1, 1))  # an image that changed is still noticed
    with pytest.raises(StaleCacheError):
        open_cache_if_valid(tree, "train", SIZE)
