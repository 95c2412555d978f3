"""Command line of the data pipeline: ``python -m if3d.data {convert,convert-au,check,formats[,cache]} ...``.

Examples::

    python -m if3d.data convert --format fer2013-folders --src ../shared/data/fer2013 --out Dataset/fer2013
    python -m if3d.data convert --format ckplus --src ../shared/data/ckplus48 --out Dataset/ckplus --val-fraction 0.1
    python -m if3d.data convert --format csv --src ../shared/data/wild/images --labels ../shared/data/wild/labels.csv \\
        --out Dataset/wild
    python -m if3d.data convert-au --format disfa --src DISFA --out Dataset/disfa --every 5
    python -m if3d.data convert-au --format bp4d --src BP4D/AUCoding/AU_INT --images BP4D/2D+3D --out Dataset/bp4d
    python -m if3d.data check --root Dataset/fer2013 --split train --no-renders
    python -m if3d.data check --photo-root Dataset/affectnet_clean/train --render-root Dataset/affectnet_smirk/train \\
        --annotations Dataset/affectnet_annotations/train_set_annotation_without_lnd.csv
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys

from if3d.outputs import exclusive_output


def _add_convert(sub) -> None:
    from if3d.data.converters import FORMATS

    p = sub.add_parser(
        "convert",
        help="convert a source dataset into the canonical layout",
        description="Convert a source dataset into <out>/photos/<split>/<label>/..., classes.json, "
        "counts.json, report.json (and annotations/<split>.csv when the source has valence/arousal).",
        epilog="formats:\n" + "\n".join(f"  {k:<16} {v[2]} (align: {v[1]})" for k, v in FORMATS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--format", required=True, choices=list(FORMATS), help="source format")
    p.add_argument("--src", required=True, help="source folder (or CSV file for fer2013-csv and csv)")
    p.add_argument("--out", required=True, help="output dataset root, e.g. Dataset/fer2013")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation share carved from train when the source has no validation split (0: none)")
    p.add_argument("--calibration-fraction", type=float, default=0.0,
                   help="share of the training photos (stratified by class) written as a 'calib' split for "
                   "temperature scaling and following a run, never trained on (0: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the carved validation and calibration splits")
    p.add_argument("--split-by", choices=("subject", "sample"), default="subject",
                   help="carve validation by subject/source image where known (CK+, JAFFE, ExpW) or by sample")
    p.add_argument("--align", choices=("auto", "none", "detect"), default="auto",
                   help="MediaPipe face detection + alignment (auto: the format's default)")
    p.add_argument("--size", type=int, default=224, help="side of aligned face crops in pixels")
    p.add_argument("--margin", type=float, default=0.25, help="margin around the landmark box of aligned faces")
    p.add_argument("--link", choices=("hardlink", "copy", "symlink"), default="hardlink",
                   help="how unchanged images are placed (hardlink falls back to copy)")
    p.add_argument("--workers", type=int, default=1, help="processes for face detection/cropping")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out that an earlier conversion wrote (never a source, never a "
                   "folder without the toolkit's marker)")
    p.add_argument("--quiet", action="store_true", help="do not print the count table and report")
    g = p.add_argument_group("--format csv (an image folder and a CSV of image,label rows)")
    g.add_argument("--labels", help="the label CSV when --src is the image folder (paths relative to --src); "
                   "without it --src is the CSV (paths relative to its folder)")
    g.add_argument("--image-column", help="image path column (default: detected: image, file, path, ...)")
    g.add_argument("--label-column", help="class name column (default: detected: label, emotion, expression, class)")
    g.add_argument("--split-column", help="optional split column (default: detected: split, usage, subset)")
    g.add_argument("--class-map", help="extra class names: NAME=CANONICAL,... (e.g. 0=angry,1=disgust or "
                   "joyful=happy); CANONICAL is any known spelling or an index 0..7")
    v = p.add_argument_group("--format video|afew|ckplus-sequences (clips of face frames: <out>/clips/...)")
    v.add_argument("--fps", type=float, help="frames kept per second of video (default: every frame)")
    v.add_argument("--clip-alignment", choices=("frame", "clip"),
                   help="align every frame on its own landmarks (frame, default) or crop a whole clip with one "
                   "alignment from its median landmarks (clip)")
    v.add_argument("--skip-faceless-clips", action="store_true",
                   help="leave out (and count) clips in which no frame has a face instead of stopping")
    v.add_argument("--last-frames", type=int, help="keep only the last N frames of each sequence (default: all)")
    p.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from if3d.data.converters import convert

    convert(args.format, args.src, args.out, val_fraction=args.val_fraction,
            calibration_fraction=args.calibration_fraction, seed=args.seed,
            overwrite=args.overwrite, align=args.align, split_by=args.split_by, link=args.link, size=args.size,
            margin=args.margin, workers=args.workers, verbose=not args.quiet, labels=args.labels,
            image_column=args.image_column, label_column=args.label_column, split_column=args.split_column,
            class_map=args.class_map, fps=args.fps, clip_alignment=args.clip_alignment,
            skip_faceless_clips=args.skip_faceless_clips, last_frames=args.last_frames)
    return 0


def _add_check(sub) -> None:
    p = sub.add_parser(
        "check",
        help="index a dataset and print its report (pairs, annotations, bad input)",
        description="Build the PairedDataset of a canonical root (--root/--split) or of explicit paths "
        "(--photo-root/--render-root/--annotations, e.g. If3D's Dataset/affectnet_*) and print its report.",
    )
    p.add_argument("--root", help="canonical dataset root")
    p.add_argument("--split", action="append", help="split(s) to check (default: all under photos/)")
    p.add_argument("--photo-root", help="explicit photo folder of one split (<label>/<file>)")
    p.add_argument("--render-root", help="explicit render folder of one split")
    p.add_argument("--annotations", help="explicit annotation CSV (canonical or If3D number,exp,val,aro)")
    p.add_argument("--no-renders", action="store_true", help="photo-only")
    p.add_argument("--skip-missing-renders", action="store_true", help="count photos without a render instead of failing")
    p.add_argument("--verify", action="store_true", help="decode every image")
    p.add_argument("--num-classes", type=int, default=None, help="keep labels < N (e.g. 7 drops Contempt)")
    p.add_argument("--max-paths", type=int, default=10, help="paths shown per problem kind")
    p.set_defaults(func=_run_check)


def _run_check(args) -> int:
    from pathlib import Path

    from if3d.data.dataset import PairedDataset
    from if3d.io.report import DataError

    kw = dict(skip_missing_renders=args.skip_missing_renders, verify=args.verify, num_classes=args.num_classes)
    datasets = []
    try:
        if args.root:
            splits = args.split or sorted(p.name for p in (Path(args.root) / "photos").iterdir() if p.is_dir())
            for split in splits:
                datasets.append(PairedDataset(args.root, split, require_renders=not args.no_renders, **kw))
        elif args.photo_root:
            datasets.append(PairedDataset.from_paths(args.photo_root, None if args.no_renders else args.render_root,
                                          args.annotations, **kw))
        else:
            print("check: give --root or --photo-root", file=sys.stderr)
            return 2
    except (DataError, OSError) as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    for ds in datasets:
        print(ds)
        print(ds.report.summary(max_paths=args.max_paths))
    return 0


def _add_convert_au(sub) -> None:
    p = sub.add_parser(
        "convert-au",
        help="convert an AU-intensity dataset (DISFA, BP4D) into the canonical AU layout",
        description="Convert DISFA (labels + videos) or BP4D (intensity codes + frames) into <out>/au.json, "
        "<out>/photos/<split>/<subject>/<video>/<frame>.png (aligned face crops) and <out>/au/<split>.csv "
        "(module if3d.data.au).",
    )
    p.add_argument("--format", required=True, choices=("disfa", "bp4d"), help="source format")
    p.add_argument("--src", required=True, help="DISFA's root (ActionUnit_Labels/, Videos_LeftCamera/) or BP4D's "
                   "intensity codes root (AU06/, AU10/ ...)")
    p.add_argument("--images", help="bp4d: the frames root <subject>/<task>/<frame>.jpg")
    p.add_argument("--out", required=True, help="output dataset root, e.g. Dataset/disfa")
    p.add_argument("--camera", choices=("left", "right"), default="left", help="disfa: the camera's videos")
    p.add_argument("--val-subjects", help="comma-separated subjects of the val split (default: --val-fraction)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="seeded share of subjects for validation")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation subjects")
    p.add_argument("--every", type=int, default=1, help="keep every n-th labelled frame")
    p.add_argument("--size", type=int, default=224, help="side of the face crops in pixels")
    p.add_argument("--margin", type=float, default=0.25, help="margin around the landmark box")
    p.add_argument("--skip-missing", action="store_true",
                   help="count and skip subjects without a video and coded frames without an image")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier AU conversion at --out")
    p.add_argument("--quiet", action="store_true", help="no summary")
    p.set_defaults(func=_run_convert_au)


def _run_convert_au(args) -> int:
    from if3d.data.au import convert_bp4d, convert_disfa

    val = [s.strip() for s in args.val_subjects.split(",") if s.strip()] if args.val_subjects else None
    common = dict(val_subjects=val, val_fraction=args.val_fraction, seed=args.seed, every=args.every,
                  size=args.size, margin=args.margin, skip_missing=args.skip_missing, overwrite=args.overwrite,
                  verbose=not args.quiet)
    if args.format == "disfa":
        convert_disfa(args.src, args.out, camera=args.camera, **common)
    else:
        if not args.images:
            print("error: --format bp4d needs --images (the frames root <subject>/<task>/<frame>.jpg)",
                  file=sys.stderr)
            return 2
        convert_bp4d(args.src, args.images, args.out, **common)
    return 0


def _run_formats(args) -> int:
    from if3d.data.converters import FORMATS

    for k, v in FORMATS.items():
        print(f"{k:<16} {v[2]} (align: {v[1]})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m if3d.data`` parser (no torch is imported until ``cache`` or ``check`` runs)."""
    from if3d.console import command_name, exit_status

    parser = argparse.ArgumentParser(
        prog=command_name("python -m if3d.data"), description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=exit_status({0: "done", 1: "cache --check found a missing or stale cache",
                            2: "bad input or options, or a refused or unwritable output (one line naming the file)",
                            130: "interrupted"}))
    sub = parser.add_subparsers(dest="command", required=True)
    _add_convert(sub)
    _add_convert_au(sub)
    _add_check(sub)
    sub.add_parser("formats", help="list the source formats").set_defaults(func=_run_formats)
    from if3d.data.cache_cli import add_cli as add_cache

    add_cache(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status: 0 done, 1 ``cache --check`` found a cache not valid, 2 bad
    options or bad input, a refused or unwritable output (one line naming the file and the problem on
    stderr, nothing half-written left), 130 interrupted."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    if argv is None:
        argv = sys.argv[1:]
        # the ``if3d-convert`` console script: ``if3d-convert --format F --src S --out O`` means ``convert``
        if os.path.basename(sys.argv[0]).startswith("if3d-convert") and (not argv or argv[0].startswith("-")) \
                and argv[:1] not in (["-h"], ["--help"]):
            argv = ["convert", *argv]
    args = parser.parse_args(argv)
    out = getattr(args, "out", None)
    try:
        # one writer per output dataset: a second conversion into the same --out is refused
        with exclusive_output(out, f"{parser.prog} {args.command}") if out else contextlib.nullcontext():
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{parser.prog} {args.command}: interrupted; nothing half-written was left behind", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # bad input, a refused or unwritable output, a file that cannot be read: one line naming it
        # (ValueError covers DataError, OutputError, NotUtf8Error)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2


def _one_line(exc: BaseException) -> str:
    """The message of ``exc``; an OSError without its own message gets its path and cause."""
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        return f"{exc.filename}: {exc.strerror}"
    return str(exc) or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
