"""What the toolkit's commands share: their help conventions, and the entry point of ``if3d-train``.

Each command runs as a console script (``pip install -e .`` puts them on PATH) and in its older form, with
the same options and exit statuses: ``if3d-test`` (``affectnet_fusion_test.py``, :mod:`if3d.evaluate`),
``if3d-render`` (``Smirk_batch_Render.py``, :mod:`if3d.render.cli`), ``if3d-analyze``, ``if3d-crossval``,
``if3d-video``, ``if3d-compare3d``, ``if3d-train``, ``if3d-convert`` and ``if3d-export`` (``python -m
if3d.analyze``, ``if3d.crossval``, ``if3d.video``, ``if3d.compare3d``, ``if3d.train``, ``if3d.data``,
``if3d.export``).

``--help`` only builds the parser: the command modules import torch, OpenCV, MediaPipe, matplotlib and
pandas inside the functions that do the work, so help comes back at once. The options speak one vocabulary:
``--out`` is where a command writes, ``--image-size`` the side of the model's input images, ``--threads`` the
CPU threads of a model, ``--no-progress`` turns the progress bars off. Their parsers show each option's default
(:class:`HelpFormatter`) and end the help with the command's exit statuses (:func:`exit_status`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping

__all__ = ["HelpFormatter", "command_name", "exit_status", "one_line_errors", "train", "writing_to"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help with each option's default, and the paragraphs of the description and epilog kept apart.

    The default is added unless the help already says it, or there is none worth showing (no value, an
    empty one, or an off flag).
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text, default = action.help or "", action.default
        if (not text or "default" in text.lower() or default is None or default is False
                or default is argparse.SUPPRESS or (isinstance(default, (str, list, tuple)) and not default)):
            return action.help
        return super()._get_help_string(action)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        fill = super()._fill_text
        return "\n\n".join(fill(paragraph, width, indent) for paragraph in text.split("\n\n"))


def command_name(default: str) -> str:
    """The command's name in usage and error lines: the console script's when run as one (``if3d-…``),
    else ``default`` (``python -m if3d.analyze``, ``Smirk_batch_Render.py``)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name.startswith("if3d-") else default


def exit_status(statuses: Mapping[int, str]) -> str:
    """The help's last paragraph: ``exit status: 0 done; 2 bad options …; 130 interrupted``."""
    return "exit status: " + "; ".join(f"{code} {meaning}" for code, meaning in statuses.items())


def one_line_errors(call, interrupted: str = "interrupted") -> int:
    """Run a command's work and turn its outcome into the exit status: 0 done (or the int ``call`` returns),
    2 for an ``OSError``, ``ValueError``, ``KeyError`` or ``RuntimeError`` (its message on one line of standard
    error, no traceback), 130 on Ctrl-C (``interrupted`` printed)."""
    try:
        return int(call() or 0)
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2


def writing_to(out: str | os.PathLike | None, command: str, work: Callable[[], int]) -> int:
    """Run a command's ``work`` as the one writer of its output ``out`` (:func:`if3d.outputs.exclusive_output`;
    ``None``: no output to guard) and return its status; 2, with one line naming the command and process that
    hold it, when another toolkit command is writing the same output."""
    from if3d.outputs import OutputError, exclusive_output

    if out is None:
        return work()
    try:
        with exclusive_output(out, command):
            return work()
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def train() -> None:
    """Entry point of ``if3d-train``: ``python -m if3d.train`` (default model ``ddamfn``); exits with its status."""
    from if3d.train.cli import main

    main(default_model="ddamfn")
