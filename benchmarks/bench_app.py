"""The web app's responsiveness (``python -m if3d.app``): startup time and per-photo latency.

- ``startup``: from the start of the ``python -m if3d.app`` process to its page served (the first HTTP 200 on
  ``/``: Python, torch, Gradio, the shipped model and the server all loaded), then the server is stopped
  with SIGTERM; ``--starts`` times.
- ``photo``: the latency of the Photo tab's handler (:func:`if3d.app.handlers.analyse_photo`: decode, face
  detection and landmarks, the expression model, the annotated picture) on FER2013 PublicTest photos
  (default ``../shared/data/fer2013/test``), each photo once after ``--warmup`` untimed ones; the page adds
  Gradio's upload and transfer on top (a few ms on 127.0.0.1).

Figures are median, 90th percentile and min–max. Timings are only comparable on an idle machine: the load
averages at the start and the end are in the result. ``--smoke`` (one start, three photos) checks that the
benchmark works; its figures mean nothing.

    python benchmarks/bench_app.py --starts 5 --photos 50 --threads 1 --json benchmarks/app_results.json
    python benchmarks/bench_app.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photos-dir", type=Path, default=SHARED / "data" / "fer2013" / "test",
                   help="photos, searched recursively (default: FER2013's test split)")
    p.add_argument("--starts", type=int, default=5, help="timed app starts (default 5)")
    p.add_argument("--photos", type=int, default=50, help="timed photos (default 50)")
    p.add_argument("--warmup", type=int, default=2, help="untimed photos first (default 2)")
    p.add_argument("--threads", type=int, help="CPU threads of the model (default: torch's)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds an app start may take at most")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--smoke", action="store_true", help="one start, three photos: check that it works")
    return p


def _stats(values: list[float]) -> dict:
    """:func:`benchmarks.measure.stats` with the 90th percentile."""
    from benchmarks.measure import stats

    ordered = sorted(values)
    return {**stats(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_startup(threads: int | None, timeout: float) -> float:
    """Seconds from the app's process start to its page served."""
    port = _free_port()
    cmd = [sys.executable, "-m", "if3d.app", "--port", str(port)] + (["--threads", str(threads)] if threads else [])
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"the app exited with status {proc.returncode}: {proc.stderr.read()[-2000:]}")
            if time.perf_counter() - start > timeout:
                raise RuntimeError(f"the app did not serve its page within {timeout:g} s")
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def time_photos(photos: list[Path], warmup: int, threads: int | None) -> list[float]:
    """Milliseconds of the Photo tab's handler per photo (the first ``warmup`` photos untimed)."""
    from if3d.app.handlers import AnalyzerPool, AppOptions, analyse_photo

    options = AppOptions(threads=threads)
    pool = AnalyzerPool(options)
    analyzer = pool.get()
    out = []
    try:
        for i, path in enumerate(photos):
            t0 = time.perf_counter()
            analyse_photo(path, analyzer, options)
            if i >= warmup:
                out.append(1000 * (time.perf_counter() - t0))
    finally:
        pool.close()
    return out


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.smoke:
        args.starts, args.photos, args.warmup = 1, 3, 1
    from if3d.data.layout import IMAGE_EXTENSIONS

    photos = sorted(p for p in args.photos_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS) \
        if args.photos_dir.is_dir() else []
    if len(photos) < args.photos + args.warmup:
        print(f"error: {args.photos_dir}: fewer than {args.photos + args.warmup} photos (set IF3D_SHARED or pass "
              "--photos-dir)", file=sys.stderr)
        return 2
    step = len(photos) // (args.photos + args.warmup)  # spread over the classes of the folder
    photos = photos[::step][: args.photos + args.warmup]
    from benchmarks.env import environment, load_average

    load_start = load_average()
    started = time.time()
    starts = [time_startup(args.threads, args.timeout) for _ in range(args.starts)]
    print(f"startup: median {statistics.median(starts):.2f} s over {len(starts)} start(s)", flush=True)
    latency = time_photos(photos, args.warmup, args.threads)
    print(f"photo: median {statistics.median(latency):.1f} ms over {len(latency)} photo(s)", flush=True)
    report = {"benchmark": "bench_app", "smoke": args.smoke, "threads": args.threads,
              "startup_s": _stats(starts), "photo_ms": _stats(latency), "photos_dir": str(args.photos_dir),
              "load_average_start": load_start, "load_average_end": load_average(),
              "seconds": round(time.time() - started, 1), "environment": environment()}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from if3d.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
