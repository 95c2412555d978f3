"""Throughput of the video path on this machine: decoding + face alignment, and the video models.

Measures, each the median (min–max) of ``--repeats`` timed runs after one untimed warm-up:

- ``decode``: frames/s of OpenCV decoding the shared CK+ clip (``../shared/data/video/1543684773.avi``,
  720×480, 67 frames);
- ``decode_align``: frames/s of decoding + MediaPipe landmarks + eye-levelled alignment to ``--size`` px, one
  process (what ``python -m if3d.data convert --format video`` does per worker; ``--workers N`` multiplies it
  up to the number of cores);
- ``infer``: frames/s of ``fan_relation`` / ``fan_self`` / ``fan_baseline`` (ResNet-18) evaluating whole clips
  (``--clip-length`` frames, batch 1, no grad) at ``--image-size``; fp32 eager, 2 threads by default;
- ``train``: clips/s of one training step (``--batch`` clips × 3 frames, forward + backward + SGD step);
- ``alignment``: how still the face stays in the aligned frames of the clip, per-frame alignment vs one crop per
  clip (the converter's ``--clip-alignment``): mean distance (output pixels) of rigid landmarks (eye corners,
  nose tip and bridge) from their mean position, their mean frame-to-frame motion, and the spread of the
  per-frame scale. Not a timing: the same on any machine.

Output: JSON on stdout (and ``--json PATH``); the recorded run is in ``benchmarks/RESULTS.md`` (section
"Video"). Timings are only comparable on an idle machine (the load average is in the report).

    python benchmarks/bench_video.py --json benchmarks/video_results.json        # full (≈2 min idle)
    python benchmarks/bench_video.py --smoke                                     # seconds; checks it runs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared"))


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", default=str(SHARED / "data" / "video" / "1543684773.avi"))
    p.add_argument("--size", type=int, default=224, help="aligned face side (converter --size)")
    p.add_argument("--image-size", type=int, default=112, help="model input side")
    p.add_argument("--clip-length", type=int, default=64, help="frames per evaluated clip")
    p.add_argument("--batch", type=int, default=16, help="clips per training step")
    p.add_argument("--models", nargs="+", default=["fan_relation", "fan_self", "fan_baseline"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that it runs")
    return p


def _stats(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        n = fn()
        out.append(n / (time.perf_counter() - t0))
    return out


def bench_decode(video: str, size: int, repeats: int, max_frames: int | None) -> dict:
    from if3d.data.converters.align import align_face, detect_landmarks
    from if3d.data.converters.base import _landmarker
    from if3d.data.converters.video import read_video_frames

    def decode() -> int:
        return sum(1 for i, _ in zip(range(max_frames or 10**9), read_video_frames(video)))

    def decode_align() -> int:
        n = 0
        for _, (_, rgb) in zip(range(max_frames or 10**9), read_video_frames(video)):
            pts = detect_landmarks(_landmarker(), rgb)
            if pts is not None:
                align_face(rgb, pts, size, 0.25)
            n += 1
        return n

    return {"decode_frames_per_s": _stats(_time(decode, repeats)),
            "decode_align_frames_per_s": _stats(_time(decode_align, repeats))}


def alignment_stability(video: str, size: int) -> dict:
    """Rigid-landmark stability of per-frame vs per-clip alignment on ``video`` (see the module docstring)."""
    import numpy as np

    from if3d.data.converters.align import alignment_matrix, detect_landmarks
    from if3d.data.converters.base import _landmarker
    from if3d.data.converters.video import read_video_frames

    found = [detect_landmarks(_landmarker(), rgb) for _, rgb in read_video_frames(video)]
    lms = np.stack([p for p in found if p is not None]).astype(np.float64)
    rigid = [33, 133, 362, 263, 1, 6, 168]

    def moved(m, pts):
        return pts[rigid, :2] @ m[:, :2].T + m[:, 2]

    per_frame = np.stack([moved(alignment_matrix(p, size, 0.25), p) for p in lms])
    clip_m = alignment_matrix(np.median(lms, 0), size, 0.25)
    per_clip = np.stack([moved(clip_m, p) for p in lms])
    scales = [abs(np.linalg.det(alignment_matrix(p, size, 0.25)[:, :2])) ** 0.5 for p in lms]

    def spread(pts):
        return float(np.linalg.norm(pts - pts.mean(0), axis=-1).mean())

    def motion(pts):
        return float(np.linalg.norm(pts[1:] - pts[:-1], axis=-1).mean())

    return {"frames": len(found), "faceless_frames": sum(p is None for p in found), "output_px": size,
            "source_rigid_spread_px": spread(lms[:, rigid, :2]),
            "frame": {"rigid_spread_px": spread(per_frame), "rigid_motion_px": motion(per_frame),
                      "scale_range_rel": float((max(scales) - min(scales)) / np.mean(scales))},
            "clip": {"rigid_spread_px": spread(per_clip), "rigid_motion_px": motion(per_clip)}}


def bench_model(name: str, image_size: int, clip_length: int, batch: int, repeats: int) -> dict:
    """Evaluation frames/s over one whole clip and training clips/s (``batch`` clips × 3 frames) of one model."""
    import torch

    import networks

    torch.manual_seed(0)
    model = networks.create_model(name, num_classes=7)
    clip = torch.randn(1, clip_length, 3, image_size, image_size)
    mask = torch.ones(1, clip_length, dtype=torch.bool)
    tclip = torch.randn(batch, 3, 3, image_size, image_size)
    tmask = torch.ones(batch, 3, dtype=torch.bool)
    label = torch.randint(0, 7, (batch,))
    crit = networks.create_criterion(name)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def infer() -> int:
        model.eval()
        with torch.no_grad():
            model(clip, mask)
        return clip_length

    def train() -> int:
        model.train()
        loss = crit(model(tclip, tmask), {"label": label}).total
        opt.zero_grad()
        loss.backward()
        opt.step()
        return batch

    return {"infer_frames_per_s": _stats(_time(infer, repeats)), "train_clips_per_s": _stats(_time(train, repeats))}


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.smoke:
        args.repeats, args.clip_length, args.batch, args.image_size = 1, 4, 2, 64
    report = {
        "mode": "smoke" if args.smoke else "full",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "threads": args.threads, "torch": torch.__version__,
                    "load_average_start": os.getloadavg()},
        "settings": {k: getattr(args, k) for k in ("size", "image_size", "clip_length", "batch", "repeats")},
    }
    if Path(args.video).is_file():
        report["video"] = {"file": args.video, **bench_decode(args.video, args.size, args.repeats,
                                                              8 if args.smoke else None)}
        report["alignment"] = alignment_stability(args.video, args.size)
    else:
        report["video"] = {"skipped": f"{args.video} is absent"}
    report["models"] = {m: bench_model(m, args.image_size, args.clip_length, args.batch, args.repeats)
                        for m in args.models}
    report["machine"]["load_average_end"] = os.getloadavg()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        from if3d.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
