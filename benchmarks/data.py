"""The real data the benchmark trains and loads: a fixed FER2013 subset, converted, rendered and cached.

Steps (each skipped when its output from an earlier run with the same settings exists):

1. a deterministic subset of ``../shared/data/fer2013`` (every k-th file of each class folder, so the
   class proportions are FER2013's) mirrored as symbolic links in FER's own folder layout;
2. ``python -m if3d.data convert --format fer2013-folders`` semantics (:func:`if3d.data.converters.convert`):
   canonical layout, ``train`` and ``val`` (FER's PublicTest);
3. renders with the MediaPipe backend (:func:`if3d.render.batch.render_tree`, 112×112, photo framing);
   when rendering is impossible here (no EGL, no MediaPipe) the photo itself, mirrored, stands in as its
   render, and the report says so;
4. the pre-decoded caches of both splits (:func:`if3d.data.cache.build_cache`, skipping and counting
   photos where no face was found).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from if3d.atomic import atomic_write_json

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared"))
FER = SHARED / "data" / "fer2013"
DEFAULT_WORK_DIR = REPO_ROOT / "runs" / "benchmarks"
SPLIT_DIRS = {"train": "train", "val": "test"}  # canonical split -> FER folder


def _subset_tree(dest: Path, per_split: dict[str, int]) -> dict[str, int]:
    """Symlink every k-th FER2013 image of each class folder into ``dest/{train,test}/<class>/``."""
    counts = {}
    for split, fer_dir in SPLIT_DIRS.items():
        n_want = per_split[split]
        files = sorted((FER / fer_dir).glob("*/*.jpg"))
        if not files:
            raise FileNotFoundError(f"no FER2013 images under {FER / fer_dir}")
        by_class: dict[str, list[Path]] = {}
        for f in files:
            by_class.setdefault(f.parent.name, []).append(f)
        step = len(files) / n_want
        chosen = []
        for cls_files in by_class.values():
            k = max(1, round(len(cls_files) / step))
            stride = len(cls_files) / k
            chosen += [cls_files[int(i * stride)] for i in range(k)]
        for f in chosen:
            link = dest / fer_dir / f.parent.name / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(f.resolve())
        counts[split] = len(chosen)
    return counts


def _stand_in_renders(root: Path) -> None:
    """Mirrored photos saved as PNG renders (only when the real renderer cannot run here)."""
    from PIL import Image, ImageOps

    for photo in sorted((root / "photos").rglob("*")):
        if photo.is_file():
            rel = photo.relative_to(root / "photos")
            out = (root / "renders" / rel).with_suffix(".png")
            out.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(photo) as im:
                ImageOps.mirror(im.convert("RGB").resize((112, 112))).save(out)


def prepare(work_dir: str | os.PathLike = DEFAULT_WORK_DIR, n_train: int = 1024, n_val: int = 512,
            render_workers: int = 2, log=print) -> dict[str, Any]:
    """Build (or reuse) the benchmark dataset; returns its description for the report.

    Returns:
        ``{"root", "counts", "renders" ("mediapipe" or "stand-in: <why>"), "render_summary", "no_face",
        "cache_files" (split -> MiB), "timings_s"}``.

    Raises:
        FileNotFoundError: FER2013 is not under ``../shared/data/fer2013`` (``$IF3D_SHARED``).
    """
    from if3d.data.cache import build_cache, cache_path
    from if3d.data.converters import convert

    if not FER.is_dir():
        raise FileNotFoundError(f"{FER} is absent (set IF3D_SHARED to the shared folder holding data/fer2013)")
    name = f"fer2013_{n_train}_{n_val}"
    root = Path(work_dir) / name
    stamp = root / "benchmark_dataset.json"
    timings: dict[str, float] = {}
    if stamp.is_file():
        info = json.loads(stamp.read_text())
    else:
        if root.exists():
            shutil.rmtree(root)
        src = Path(work_dir) / f"{name}_source"
        if src.exists():
            shutil.rmtree(src)
        t = time.perf_counter()
        counts = _subset_tree(src, {"train": n_train, "val": n_val})
        convert("fer2013-folders", src, root, val_fraction=0.0, link="copy", verbose=False)
        shutil.rmtree(src)
        timings["convert"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        renders, summary = "mediapipe", None
        try:
            from if3d.render.batch import render_tree

            log(f"rendering {sum(counts.values())} photos with MediaPipe ({render_workers} workers)...")
            s = render_tree(root / "photos", root / "renders", backend="mediapipe", size=112,
                            workers=render_workers, framing="photo", progress=False)
            summary = {"counts": s.counts, "images_per_s": round(s.images_per_s, 2)}
        except Exception as e:  # no EGL / MediaPipe on this machine: keep the benchmark usable
            renders = f"stand-in (mirrored photo as PNG): the MediaPipe backend failed here: {type(e).__name__}: {e}"
            shutil.rmtree(root / "renders", ignore_errors=True)
            _stand_in_renders(root)
        timings["render"] = round(time.perf_counter() - t, 2)
        info = {"root": str(root), "counts": counts, "renders": renders, "render_summary": summary,
                "timings_s": timings}
        atomic_write_json(stamp, info)
    t = time.perf_counter()
    caches = {}
    for split in ("train", "val"):
        path = build_cache(root, split, 112, dataset_kwargs={"skip_missing_renders": True},
                           workers=0, progress=False)
        caches[split] = round(path.stat().st_size / 2**20, 1)
    info = dict(info)
    info["cache_check_or_build_s"] = round(time.perf_counter() - t, 2)
    info["cache_files_mib"] = caches
    info["cache_paths"] = {s: str(cache_path(root, s, 112)) for s in ("train", "val")}
    return info


if __name__ == "__main__":
    print(json.dumps(prepare(), indent=2))
    sys.exit(0)
