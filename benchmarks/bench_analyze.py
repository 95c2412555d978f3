"""Throughput of the analysis of a video (``if3d.analyze``): frames/s end to end, per stage.

Three pipelines over the same video (default: ``../shared/data/video/1543684773.avi``, 720×480, 67 frames),
each timed with :meth:`if3d.analyze.Analyzer.run` (decode → faces → models → smoothing, EMFACS, table;
loading the models and writing files are not timed):

- ``faces``: face detection and scores, 478 landmarks, head pose, geometric AUs (no checkpoint);
- ``photo_model``: the same plus a DDAMFN-size photo-only expression model (``ddamfn``, 7 classes, random
  weights: the speed does not depend on them), crops batched (``--batch-size``);
- ``default_model``: the same with the expression model that ships with the toolkit (``default``: DDAMFN on
  MobileNetV2 with horizontal-flip averaging, so two forward passes per face, docs/MODEL_CARD.md);
- ``fusion_model``: the same plus a fusion model (``--fusion``, default ``if3d_linear``) whose render is made on
  the fly for every face (MediaPipe render backend, moderngl over EGL).

Every figure is the median (min–max) of ``--repeats`` timed runs after one untimed warm-up run (graphs,
oneDNN primitives). Target (``benchmarks/RESULTS.md``): ``faces`` and ``photo_model`` ≥ 30 frames/s on the
2-core CPU. Timings are only comparable on an idle machine: the load averages at the start and the end are in
the result. ``--smoke`` runs 8 frames once to check that the benchmark works (its figures mean nothing).

    python benchmarks/bench_analyze.py --repeats 3 --json benchmarks/analyze_results.json
    python benchmarks/bench_analyze.py --repeats 3 --threads 1 --amp bf16     # a shared machine, bf16 autocast
    python benchmarks/bench_analyze.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared"))
PIPELINES = ("faces", "photo_model", "default_model", "fusion_model")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, default=SHARED / "data" / "video" / "1543684773.avi")
    p.add_argument("--pipelines", nargs="+", choices=PIPELINES, default=list(PIPELINES))
    p.add_argument("--fusion", default="if3d_linear", help="fusion model of the fusion_model pipeline")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per pipeline (default 3)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), help="autocast of the models (default: the device's)")
    p.add_argument("--max-frames", type=int, help="analyse only the first N frames")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--smoke", action="store_true", help="8 frames, 1 run: check that it works")
    return p


class _Head:
    """The first frames of a video source (``--max-frames``), with the source's attributes."""

    def __init__(self, source, n: int | None) -> None:
        self.source, self.n = source, n
        self.kind, self.fps = source.kind, source.fps
        self.frame_count = min(source.frame_count, n) if n else source.frame_count

    def __iter__(self):
        for i, frame in enumerate(self.source):
            if self.n is not None and i >= self.n:
                self.source.close()
                return
            yield frame


def _checkpoint(folder: Path, name: str) -> str:
    import torch

    import networks
    from if3d.checkpoint import make_checkpoint, save_checkpoint
    from if3d.classes import AFFECTNET7

    torch.manual_seed(0)
    model = networks.create_model(name, num_classes=7)
    path = folder / f"{name}.pth"
    save_checkpoint(make_checkpoint(model_name=name, model_kwargs={"num_classes": 7}, model_state=model.state_dict(),
                                    class_names=list(AFFECTNET7)), path)
    return str(path)


def measure(pipeline: str, args, folder: Path) -> dict:
    from if3d.analyze import Analyzer
    from if3d.analyze.sources import VideoSource

    ckpt = {"faces": None, "photo_model": "ddamfn", "default_model": "default", "fusion_model": args.fusion}[pipeline]
    checkpoint = ckpt if ckpt in (None, "default") else _checkpoint(folder, ckpt)
    runs, stages = [], []
    with Analyzer(checkpoint=checkpoint, device=args.device, batch_size=args.batch_size,
                  threads=args.threads, amp=args.amp) as analyzer:
        for i in range(args.repeats + 1):
            result = analyzer.run(_Head(VideoSource(args.video), args.max_frames), str(args.video))
            frames = result.frames
            fps = frames / result.timings["total"]
            result.close()
            if i == 0:
                continue  # warm-up
            runs.append(fps)
            stages.append({k: round(1000 * v / frames, 2) for k, v in result.timings.items()})
    return {"pipeline": pipeline, "model": ckpt, "frames": frames, "device": str(analyzer.device),
            "frames_per_s": {"median": round(statistics.median(runs), 2), "min": round(min(runs), 2),
                             "max": round(max(runs), 2), "runs": [round(r, 2) for r in runs]},
            "ms_per_frame_by_stage": stages[len(stages) // 2]}


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.smoke:
        args.repeats, args.max_frames = 1, 8
    if not args.video.is_file():
        print(f"error: {args.video}: no such video (set IF3D_SHARED or pass --video)", file=sys.stderr)
        return 2
    import torch

    started = time.time()
    load_start = os.getloadavg()
    results = []
    with tempfile.TemporaryDirectory(prefix="if3d_bench_analyze_") as tmp:
        for p in args.pipelines:
            r = measure(p, args, Path(tmp))
            print(f"{p:>13}: {r['frames_per_s']['median']:7.2f} frames/s (min {r['frames_per_s']['min']}, max "
                  f"{r['frames_per_s']['max']}); ms/frame {r['ms_per_frame_by_stage']}", flush=True)
            results.append(r)
    report = {
        "benchmark": "bench_analyze", "smoke": args.smoke, "video": str(args.video), "repeats": args.repeats,
        "batch_size": args.batch_size, "threads": args.threads or torch.get_num_threads(), "amp": args.amp,
        "load_average_start": [round(x, 2) for x in load_start],
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.time() - started, 1), "python": platform.python_version(),
        "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "results": results,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from if3d.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
