"""Confusion-matrix heatmaps (seaborn), written atomically as PNG."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the toolkit never opens windows

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402

from if3d.atomic import atomic_write  # noqa: E402


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    normalize: bool = False,
    title: str | None = None,
    accuracy: float | None = None,
    dpi: int = 120,
) -> Path:
    """Draw a confusion matrix as a seaborn heatmap and save it as PNG (atomic write).

    Args:
        matrix: [C, C] counts, rows = true class, columns = predicted class.
        class_names: C names for the axes (canonical AffectNet order).
        path: output ``.png`` path; parent folders are created.
        normalize: divide each row by its total (rows with no samples stay 0), so the diagonal
            is the per-class recall; cells are annotated with 2 decimals instead of counts.
        title: first title line (default "Confusion matrix" / "Confusion matrix (row-normalised)").
        accuracy: when given, appended to the title as "accuracy 0.xxxx".
        dpi: resolution.

    Returns:
        ``path``.

    Raises:
        ValueError: ``matrix`` is not square or does not match ``class_names``.
    """
    cm = np.asarray(matrix, dtype=np.float64)
    c = len(class_names)
    if cm.shape != (c, c):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not match {c} class names")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        cm = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
        fmt = ".2f"
    else:
        fmt = ".0f"
    head = title or ("Confusion matrix (row-normalised)" if normalize else "Confusion matrix")
    if accuracy is not None:
        head = f"{head}\naccuracy {accuracy:.4f}"

    size = max(5.0, 0.75 * c + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.0, size))
    try:
        sns.heatmap(
            cm,
            annot=True,
            fmt=fmt,
            cmap="Blues",
            xticklabels=list(class_names),
            yticklabels=list(class_names),
            vmin=0.0,
            vmax=1.0 if normalize else None,
            square=True,
            cbar=True,
            ax=ax,
        )
        ax.set_xlabel("Predicted")
        ax.set_ylabel("True")
        ax.set_title(head)
        plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
        plt.setp(ax.get_yticklabels(), rotation=0)
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
