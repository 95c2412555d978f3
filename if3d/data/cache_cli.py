"""The ``cache`` subcommand of ``python -m if3d.data``: its options and its run, importable without torch.

``python -m if3d.data`` registers every subcommand for every run; the cache module itself
(:mod:`if3d.data.cache`, which needs torch) is imported only when ``cache`` runs, so that ``convert``,
``check`` and ``formats`` start in a fraction of the time. The command stands above the cache: this module
imports :mod:`if3d.data.cache`, never the reverse.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

__all__ = ["add_cli"]


def add_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``cache`` subcommand of ``python -m if3d.data``.

    ``python -m if3d.data cache --data ROOT --split train [--split test] --size 112
    [--photo-only] [--cache-dir DIR] [--workers N] [--rebuild] [--check]``
    """
    p = subparsers.add_parser(
        "cache",
        help="pre-decode a split into a memory-mapped uint8 cache used by training",
        description="Decode every photo (and render) of a split once, resized to the training "
        "resolution, into <ROOT>/cache/<split>-s<size>.if3dcache. Training uses it when present; "
        "it is refused when the source files change (rebuild with --rebuild).",
    )
    p.add_argument("--data", required=True, help="dataset root in the canonical layout")
    p.add_argument("--split", action="append", required=True, help="split name (repeatable)")
    p.add_argument("--size", type=int, default=112, help="image side in pixels (default 112)")
    p.add_argument("--photo-only", action="store_true", help="cache photos only (no renders)")
    p.add_argument("--skip-missing-renders", action="store_true",
                   help="skip (and count) photos without a render, as training with --skip-missing-renders")
    p.add_argument("--cache-dir", default=None, help="where to write caches (default ROOT/cache)")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="decoding worker processes")
    p.add_argument("--rebuild", action="store_true", help="rebuild even when the cache is up to date")
    p.add_argument("--check", action="store_true", help="only check whether the caches are valid (exit 1 if not)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    """Build (or ``--check``) the cache of every ``--split``; returns the exit status."""
    from if3d.data.cache import CachedPairedDataset, CacheError, build_cache, cache_path, open_cache

    status = 0
    kwargs = {"skip_missing_renders": True} if args.skip_missing_renders else {}
    try:
        for split in args.split:
            path = cache_path(args.data, split, args.size, photo_only=args.photo_only, cache_dir=args.cache_dir)
            if args.check:
                try:
                    ds = open_cache(args.data, split, args.size, photo_only=args.photo_only,
                                    cache_dir=args.cache_dir, dataset_kwargs=kwargs)
                    print(f"{path}: valid, {len(ds)} samples")
                except CacheError as e:
                    print(f"{path}: NOT valid: {e}")
                    status = 1
                continue
            t0 = time.perf_counter()
            build_cache(args.data, split, args.size, photo_only=args.photo_only, cache_dir=args.cache_dir,
                        workers=args.workers, rebuild=args.rebuild, dataset_kwargs=kwargs)
            ds = CachedPairedDataset(path)
            mb = path.stat().st_size / 2**20
            print(f"{path}: {len(ds)} samples, {mb:.1f} MiB, {time.perf_counter() - t0:.1f} s")
    except CacheError as e:  # e.g. the tree changed during the build: one line, exit status 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return status
