"""The analysis of a video end to end, and the two README pictures it makes.

Run from the repository root::

    python examples/analyze_demo.py                                  # the shipped expression model, AUs, pose, EMFACS
    python examples/analyze_demo.py --checkpoint runs/gate/best.pth  # another model (valence/arousal where it has them)

It runs the ordinary command (printed first)::

    python -m if3d.analyze ../shared/data/video/1543684773.avi --out runs/analyze_demo --checkpoint CKPT

and writes ``docs/analyze_timing.png`` (the video's timing diagram, from ``<out>/<video>/timing.png``) and
``docs/analyze_frame.png`` (frame ``--frame`` of ``<out>/<video>/annotated.mp4``), both downscaled to
``--width`` pixels.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IF3D_SHARED", REPO.parent / "shared"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, default=SHARED / "data" / "video" / "1543684773.avi")
    p.add_argument("--out", type=Path, default=REPO / "runs" / "analyze_demo")
    p.add_argument("--checkpoint", default="default",
                   help="expression model checkpoint (default: the model that ships with the toolkit)")
    p.add_argument("--docs", type=Path, default=REPO / "docs")
    p.add_argument("--frame", type=int, default=50, help="frame of the annotated video shown in the README")
    p.add_argument("--width", type=int, default=960, help="width of the README pictures in pixels")
    args = p.parse_args(argv)
    cmd = [sys.executable, "-m", "if3d.analyze", str(args.video), "--out", str(args.out), "--no-progress",
           "--checkpoint", args.checkpoint]
    print("$ " + shlex.join(["python", *cmd[1:]]), flush=True)
    status = subprocess.run(cmd, cwd=REPO).returncode
    if status:
        return status
    folder = args.out / args.video.stem
    timing = cv2.imread(str(folder / "timing.png"))
    cap = cv2.VideoCapture(str(folder / "annotated.mp4"))
    cap.set(cv2.CAP_PROP_POS_FRAMES, args.frame)
    ok, frame = cap.read()
    cap.release()
    if timing is None or not ok:
        print(f"error: {folder} lacks timing.png or frame {args.frame} of annotated.mp4", file=sys.stderr)
        return 2
    from if3d.atomic import atomic_write_bytes

    for name, image in (("analyze_timing.png", timing), ("analyze_frame.png", frame)):
        h, w = image.shape[:2]
        small = cv2.resize(image, (args.width, round(h * args.width / w)), interpolation=cv2.INTER_AREA)
        ok, buf = cv2.imencode(".png", small, [cv2.IMWRITE_PNG_COMPRESSION, 9])
        atomic_write_bytes(args.docs / name, buf.tobytes())
        print(f"wrote {args.docs / name} ({len(buf) // 1024} KiB)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
