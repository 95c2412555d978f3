"""Command line of the web app: ``python -m if3d.app [--host 127.0.0.1] [--port 7860] [--checkpoint default|PATH]``.

The server listens on 127.0.0.1 (this computer only) unless ``--host`` names another address. It is local in
every other way too: Gradio's analytics are off, no share link is made, the page's fonts and scripts come
from the Gradio package itself, and the models load from files on this computer.

Uploads and results live in one temporary folder (``if3d-app-*`` under the system's temporary directory),
removed when the server stops; a video's results are removed an hour after its analysis.

Exit status: 0 stopped (Ctrl-C or SIGTERM); 2 bad options, a checkpoint that does not load or fit, or a
port that cannot be bound — one line naming the problem.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EXIT_STATUS", "get_args_parser", "main", "run"]

EXIT_STATUS = {0: "stopped (Ctrl-C or SIGTERM)",
               2: "bad options, a checkpoint that does not load or fit, or a port that cannot be bound"}


def get_args_parser() -> argparse.ArgumentParser:
    from if3d.console import HelpFormatter, command_name, exit_status

    p = argparse.ArgumentParser(
        prog=command_name("python -m if3d.app"), formatter_class=HelpFormatter,
        description="A local web app of the analysis: upload a photo or a video, or use the camera, and see each "
                    "face's expression probabilities, valence/arousal, action units and head pose in the browser. "
                    "It runs the same analysis as if3d-analyze, one request at a time.",
        epilog="Example: if3d-app, then open http://127.0.0.1:7860 (details: docs/APP.md)\n\n"
               + exit_status(EXIT_STATUS))
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on; anything but 127.0.0.1/localhost lets other computers of the network "
                   "upload files and run analyses here, without a password (docs/APP.md)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--checkpoint", default="default",
                   help="expression model: 'default' (the model that ships with the toolkit) or any checkpoint the "
                   "toolkit trains or loads; the page offers it and 'default'")
    p.add_argument("--min-detection-confidence", type=float, default=0.5,
                   help="face detector threshold, the page's starting value")
    p.add_argument("--no-aus", action="store_true", help="the page starts with the action units hidden")
    p.add_argument("--max-upload-mb", type=float, default=50.0, help="largest upload, megabytes")
    p.add_argument("--max-video-s", type=float, default=120.0, help="longest video, seconds")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads of the models (default: torch's)")
    return p


def is_loopback(host: str) -> bool:
    """True for addresses only this computer reaches (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(argv: Sequence[str] | None = None) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns the exit status."""
    args = get_args_parser().parse_args(argv)
    from if3d.app.handlers import AppOptions  # after the parse: --help loads neither torch nor OpenCV

    options = AppOptions(checkpoint=args.checkpoint, min_detection_confidence=args.min_detection_confidence,
                         show_aus=not args.no_aus, max_upload_mb=args.max_upload_mb, max_video_s=args.max_video_s,
                         device=args.device, threads=args.threads)
    bad = options.problems()
    if not 1 <= args.port <= 65535:
        bad.append(f"--port must be in 1 … 65535, got {args.port}")
    if args.checkpoint != "default" and not Path(args.checkpoint).is_file():
        bad.append(f"{args.checkpoint}: no such checkpoint file")
    if bad:
        print(f"error: {'; '.join(bad)}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="if3d-app-"))
    try:
        return _serve(args, options, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _serve(args, options, root: Path) -> int:
    # before Gradio is imported: its uploads go to our folder, and it reports nothing anywhere
    os.environ["GRADIO_TEMP_DIR"] = str(root / "uploads")
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from if3d.app.handlers import AnalyzerPool, AppInputError

    pool = AnalyzerPool(options)
    try:
        pool.get()  # a checkpoint that does not load stops the server before it serves
    except AppInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from if3d.app.ui import build_app

    local = is_loopback(args.host)
    if not local:
        print(f"warning: listening on {args.host}: anyone who reaches this address can upload files and run "
              "analyses on this computer, without a password (docs/APP.md)", file=sys.stderr, flush=True)
    (root / "work").mkdir()
    app = build_app(options, pool, root / "work", allow_custom_checkpoint=local)
    app.queue(default_concurrency_limit=1, max_size=32)
    signal.signal(signal.SIGTERM, _stop)
    try:
        app.launch(server_name=args.host, server_port=args.port, share=False, show_error=False, ssr_mode=False,
                   max_file_size=int(options.max_upload_mb * 1e6), allowed_paths=[str(root / "work")],
                   mcp_server=False, pwa=False, inbrowser=False)
    except OSError as e:  # Gradio's "Cannot find empty port", or an address that is not this computer's
        print(f"error: {args.host}:{args.port}: cannot listen there (the port is in use, or the address is not "
              f"this computer's); choose another --port or --host ({e.strerror or type(e).__name__})",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        pool.close()
    return 0


def _stop(signum, frame) -> None:
    """SIGTERM stops the server as Ctrl-C does (the temporary folder is removed)."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``python -m if3d.app`` and ``if3d-app``; exits with the status."""
    sys.exit(run(argv))
