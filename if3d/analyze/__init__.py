"""Analysis of a user's own images, videos and camera: faces, 478 3D landmarks, head pose, action units,
expression, valence/arousal, EMFACS expressions, smoothed over time, with a timing diagram and an
annotated video.

Python::

    from if3d.analyze import Analyzer
    with Analyzer(checkpoint="runs/gate/best.pth") as analyzer:
        df = analyzer.analyze("my_video.mp4")       # pandas DataFrame, one row per face per frame

Command line: ``python -m if3d.analyze INPUT [INPUT ...] --out DIR [--checkpoint CKPT] [--au-checkpoint CKPT]``
(``python -m if3d.analyze --help``; :mod:`if3d.analyze.cli`). The pieces: :mod:`.sources` (frames),
:mod:`.faces` (detection, landmarks, tracking), :mod:`.au_geometry` (geometric AUs), :mod:`.models`
(expression and AU models), :mod:`.smoothing`, :mod:`.emfacs`, :mod:`.pipeline` (the analysis),
:mod:`.report` (tables and summary), :mod:`.timing` (timing diagram), :mod:`.annotate` (annotated video and images).

This package uses ``if3d.runtime``, ``if3d.render``, ``if3d.data`` and ``networks``; never ``if3d.train``.
The names below are imported on first use, so that ``python -m if3d.analyze --help`` loads neither OpenCV nor
pandas.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from if3d.lazy import lazy_exports

if TYPE_CHECKING:
    from if3d.analyze.pipeline import AnalysisResult, Analyzer, AnalyzerConfig, analyze_paths
    from if3d.analyze.sources import InputError

_EXPORTS = {"AnalysisResult": "if3d.analyze.pipeline", "Analyzer": "if3d.analyze.pipeline",
            "AnalyzerConfig": "if3d.analyze.pipeline", "analyze_paths": "if3d.analyze.pipeline",
            "InputError": "if3d.analyze.sources"}

__all__ = ["AnalysisResult", "Analyzer", "AnalyzerConfig", "InputError", "analyze_paths"]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
