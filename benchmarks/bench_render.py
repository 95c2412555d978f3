"""Throughput of the MediaPipe render backend end to end (read, detect, render, write): images/s.

Runs ``if3d.render.batch.render_tree`` on a fixed image set (default: all of ``../shared/data/ckplus48``)
with 1 and 2 worker processes, several times each, into fresh temporary folders, and reports per worker
count the median, min and max of:

- ``images_per_s``: images / wall time of the whole run, worker start included (what a user sees);
- ``steady_images_per_s``: images / (wall time - ``startup_s``), i.e. once every worker had built its
  FaceMesh graphs and OpenGL context;
- ``startup_s``: time until the last worker was ready.

Target: >= 50 images/s with 2 workers at 112 x 112 on a 2-core machine. Output: JSON on
stdout (and ``--json PATH``). ``--smoke`` runs a handful of images once, to check that the benchmark
works.

    python benchmarks/bench_render.py --size 112 --workers 1 2 --repeats 3 --json bench_render.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=SHARED / "data" / "ckplus48",
                   help="folder of photos (default: ../shared/data/ckplus48)")
    p.add_argument("--limit", type=int, default=0, help="use at most this many images, spread over the set (0 = all)")
    p.add_argument("--size", type=int, default=112, help="render side in pixels (default 112)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to measure (default 1 2)")
    p.add_argument("--repeats", type=int, default=3, help="runs per worker count (default 3)")
    p.add_argument("--framing", default="photo", choices=["photo", "smirk-crop"])
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--smoke", action="store_true", help="8 images, 1 run, 1 worker: check that it works")
    return p


def select_images(data: Path, limit: int) -> list[Path]:
    files = sorted(p for p in data.rglob("*") if p.is_file())
    if limit and len(files) > limit:
        step = len(files) / limit
        files = [files[int(i * step)] for i in range(limit)]
    return files


def build_input_tree(files: list[Path], data: Path, dest: Path) -> None:
    """Mirror the selected files under ``dest`` (symbolic links, or copies where links fail)."""
    for f in files:
        target = dest / f.relative_to(data)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            target.symlink_to(f.resolve())
        except OSError:
            shutil.copy(f, target)


def stats(values: list[float]) -> dict[str, float | list[float]]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "runs": [round(v, 3) for v in values]}


def gl_renderer_name() -> str:
    from if3d.render.gl import create_context

    ctx = create_context()
    try:
        return f"{ctx.info['GL_RENDERER']} / {ctx.info['GL_VERSION']}"
    finally:
        ctx.release()


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.smoke:
        args.limit, args.repeats, args.workers = 8, 1, [1]
    if not args.data.is_dir():
        print(f"bench_render: data folder {args.data} is absent (set IF3D_SHARED or --data)", file=sys.stderr)
        return 2
    from if3d.render.batch import render_tree

    files = select_images(args.data, args.limit)
    result = {
        "benchmark": "render_tree mediapipe end to end (read, detect, render, write)",
        "config": {"data": str(args.data), "images": len(files), "size": args.size, "framing": args.framing,
                   "repeats": args.repeats},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "gl_renderer": gl_renderer_name()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench_render_") as tmp:
        inputs = Path(tmp) / "photos"
        build_input_tree(files, args.data, inputs)
        for workers in args.workers:
            e2e, steady, startup, counts = [], [], [], None
            for run in range(args.repeats):
                out = Path(tmp) / f"renders_w{workers}_{run}"
                summary = render_tree(inputs, out, backend="mediapipe", size=args.size, workers=workers,
                                      framing=args.framing, overwrite=True, progress=False)
                e2e.append(summary.images_per_s)
                startup.append(summary.startup_s)
                busy = summary.elapsed_s - summary.startup_s
                steady.append(summary.processed / busy if busy > 0 else float("nan"))
                counts = summary.counts
                shutil.rmtree(out)
                print(f"workers={workers} run {run + 1}/{args.repeats}: {summary.images_per_s:.1f} images/s "
                      f"end to end, startup {summary.startup_s:.2f} s", file=sys.stderr)
            result["results"][str(workers)] = {
                "images_per_s": stats(e2e), "steady_images_per_s": stats(steady), "startup_s": stats(startup),
                "counts": counts,
            }
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
