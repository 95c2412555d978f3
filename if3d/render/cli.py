"""Command line of ``Smirk_batch_Render.py``: batch 3D render of a photo tree (``batch.render_tree``).

Example::

    python Smirk_batch_Render.py --input Dataset/photos --out Dataset/renders --backend mediapipe
    if3d-render --input Dataset/photos --out Dataset/renders --backend smirk \\
        --smirk-checkpoint pretrained/SMIRK_em1.pt --flame-model pretrained/FLAME2020/generic_model.pkl \\
        --smirk-assets ../shared/assets/smirk
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from if3d.console import HelpFormatter, command_name, exit_status
from if3d.outputs import exclusive_output
from if3d.render.backends import FRAMINGS, backend_names

_SMIRK_OPTIONS = {"smirk_checkpoint": "checkpoint", "flame_model": "flame_model", "smirk_assets": "assets_dir",
                  "device": "device"}

EXIT_STATUS = {0: "done", 2: "bad options or setup (an output folder that is refused or cannot be written, an "
               "unreadable manifest, a missing backend file: the message names the file)",
               130: "interrupted (the finished items are kept: run the same command again to resume)"}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("Smirk_batch_Render.py"), formatter_class=HelpFormatter,
        description="Render the reconstructed 3D face of every photo under --input into a mirrored tree under "
        "--out (<stem>.png render, <stem>.npz parameters, manifest.csv). Resumable.",
        epilog=exit_status(EXIT_STATUS),
    )
    p.add_argument("--input", required=True, help="folder of photos (every file under it is an input)")
    # --output, the option's earlier name, still works (hidden); a required group lets either one satisfy it
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out", help="folder for renders, parameter files and manifest.csv: new, empty, or an earlier "
                     "output of this command")
    out.add_argument("--output", dest="out", help=argparse.SUPPRESS)
    p.add_argument("--backend", choices=backend_names(), default="mediapipe",
                   help="3D backend: mediapipe (offline, default) or smirk (needs the SMIRK checkpoint and FLAME)")
    p.add_argument("--size", type=int, default=224, help="render side in pixels (default 224)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: number of CPU cores, at most 8, for mediapipe; 1 for smirk)")
    p.add_argument("--framing", choices=FRAMINGS, default="photo",
                   help="photo: render pixel-aligned with the photo resized to size x size (default); "
                   "smirk-crop: SMIRK's landmark-box crop")
    p.add_argument("--overwrite", action="store_true",
                   help="redo inputs that an earlier run finished (changed inputs are always redone)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    smirk = p.add_argument_group("SMIRK backend")
    smirk.add_argument("--smirk-checkpoint", help="path to SMIRK_em1.pt")
    smirk.add_argument("--flame-model", help="path to FLAME 2020 generic_model.pkl")
    smirk.add_argument("--smirk-assets", help="folder with SMIRK's assets (FLAME_masks.pkl, head_template.obj, ...)")
    smirk.add_argument("--device", help="torch device for SMIRK, e.g. cuda or cpu (default: the backend's choice)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the batch render; returns the process exit code (:data:`EXIT_STATUS`: 0 done, 2 bad arguments or
    setup, one line naming the file on stderr, 130 interrupted)."""
    parser = get_args_parser()
    args = parser.parse_args(argv)
    backend_kwargs = {key: getattr(args, opt) for opt, key in _SMIRK_OPTIONS.items() if getattr(args, opt) is not None}
    if args.backend != "smirk" and backend_kwargs:
        parser.error(f"--{', --'.join(k.replace('_', '-') for k in _SMIRK_OPTIONS if getattr(args, k) is not None)} "
                     "only apply to --backend smirk")
    if args.size < 1:
        parser.error(f"--size must be positive, got {args.size}")
    workers = args.workers
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if args.backend == "mediapipe" else 1
    from if3d.render.batch import render_tree  # loads OpenCV: not needed for --help or bad options

    try:
        with exclusive_output(args.out, parser.prog):  # one writer per render folder
            summary = render_tree(
                args.input, args.out, backend=args.backend, size=args.size, workers=workers,
                framing=args.framing, overwrite=args.overwrite, backend_kwargs=backend_kwargs,
                progress=not args.no_progress,
            )
    except (OSError, ValueError, RuntimeError, pickle.UnpicklingError) as exc:
        # ValueError includes OutputError (output refused or not writable) and an unreadable manifest;
        # UnpicklingError: a weight file refused by the allow-list loaders (names the global).
        if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
            exc = f"{exc.filename}: {exc.strerror}"
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted; finished items are recorded in {args.out}/manifest.csv, "
              "run the same command again to resume", file=sys.stderr)
        return 130
    print(summary)
    return 0
