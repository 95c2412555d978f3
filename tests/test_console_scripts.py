"""The console scripts (pyproject's ``[project.scripts]``): each one's ``--help`` exits 0, names the command,
ends with its exit statuses, and comes back at once, without loading torch, MediaPipe, OpenCV, matplotlib or
pandas just to print the options.

A script that ``pip install -e .`` has put next to this Python is run as installed; one that is not installed
(yet) is run the way the installed one runs its entry point.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

COMMANDS = ("if3d-test", "if3d-render", "if3d-analyze", "if3d-crossval", "if3d-video", "if3d-compare3d", "if3d-ensemble",
            "if3d-train", "if3d-app", "if3d-export")
#: What no command's help may load.
HEAVY = ("torch", "mediapipe", "cv2", "matplotlib", "pandas")
#: Most CPU seconds a ``--help`` may take.
LIMIT_S = 3.0


def _entry_points() -> dict[str, str]:
    """``[project.scripts]`` of pyproject.toml: name → ``module:function``."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    table = re.search(r"^\[project\.scripts\]\n(.*?)(?=^\[)", text, re.S | re.M)
    assert table, "pyproject.toml has no [project.scripts] table"
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', table.group(1), re.M))


def _command(name: str) -> list[str]:
    """The installed console script, run by this Python; else the same call of its entry point."""
    installed = shutil.which(name, path=str(Path(sys.executable).parent))
    if installed:
        return [sys.executable, installed]
    module, function = _entry_points()[name].split(":")
    return [sys.executable, "-c", f"import sys; from {module} import {function}; sys.argv[0] = {name!r}; "
            f"sys.exit({function}())"]


@dataclass
class HelpRun:
    returncode: int
    stdout: str
    stderr: str
    cpu_s: float

    def imported(self) -> set[str]:
        """Top-level packages imported (from ``-X importtime``'s report on stderr)."""
        return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in self.stderr.splitlines()
                if line.startswith("import time:") and line.count("|") == 2}


def _help(name: str, *args: str) -> HelpRun:
    """Run ``NAME [ARGS] --help`` with ``-X importtime``; CPU seconds (user + system) from the child's rusage."""
    resource = pytest.importorskip("resource")
    cmd = _command(name)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:], *args, "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return HelpRun(proc.returncode, proc.stdout, proc.stderr, cpu)


def test_pyproject_declares_every_command():
    import importlib

    entries = _entry_points()
    assert {*COMMANDS, "if3d-convert"} <= set(entries)
    for name, target in entries.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


@pytest.mark.parametrize(("name", "args"), [
    *[(name, ()) for name in COMMANDS],
    ("if3d-video", ("predict",)),
])
def test_help_names_the_command_and_its_exit_statuses(name, args):
    run = _help(name, *args)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: {' '.join((name, *args))} ")
    assert "exit status" in run.stdout.lower()


@pytest.mark.parametrize("name", COMMANDS)
def test_help_is_quick_and_loads_no_heavy_library(name):
    """At most LIMIT_S CPU seconds on the fastest of up to 3 tries. CPU time, not wall time: a machine busy with
    other jobs stretches the wall time of a help that costs a fraction of a second, its CPU time not."""
    runs = [_help(name)]
    while runs[-1].cpu_s >= LIMIT_S and len(runs) < 3:
        runs.append(_help(name))
    assert runs[0].returncode == 0, runs[0].stderr[-2000:]
    assert not runs[0].imported() & set(HEAVY), f"{name} --help imports {sorted(runs[0].imported() & set(HEAVY))}"
    fastest = min(r.cpu_s for r in runs)
    assert fastest < LIMIT_S, f"{name} --help took {fastest:.2f} CPU seconds (tries: {[r.cpu_s for r in runs]})"


def test_render_backend_choices_are_the_registered_backends():
    """The render command's ``--backend`` choices are named without importing the backends; they are the same."""
    from if3d.render.backends import backend_names, list_backends

    assert backend_names() == list_backends()


def test_earlier_option_names_still_work_unlisted():
    from if3d.analyze.cli import get_args_parser as analyze_parser
    from if3d.render.cli import get_args_parser as render_parser

    assert render_parser().parse_args(["--input", "in", "--output", "out"]).out == "out"
    assert analyze_parser().parse_args(["in.mp4", "--out", "out", "--quiet"]).no_progress
    for parser, old in ((render_parser(), "--output"), (analyze_parser(), "--quiet")):
        assert old not in parser.format_help()
