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


def plot_frame_attention(
    self_weights: Sequence[float] | np.ndarray,
    final_weights: Sequence[float] | np.ndarray | None,
    path: str | os.PathLike,
    *,
    frame_labels: Sequence[str] | None = None,
    title: str | None = None,
    dpi: int = 120,
) -> Path:
    """Bars of the frame attention weights of one clip, as Emotion-FAN's figure (blue: self-attention,
    orange: final weights of self- and relation-attention), saved as PNG (atomic write).

    Args:
        self_weights: [T] the self-attention weights α_i, normalised over the clip (α_i / Σα).
        final_weights: [T] the final aggregation weights α_iβ_i / Σαβ (relation-attention models), or None.
        path: output ``.png`` path; parent folders are created.
        frame_labels: T tick labels (frame numbers); default 0..T-1.
        title: the plot title.
        dpi: resolution.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: empty weights, or weights and labels of different lengths.
    """
    a = np.asarray(self_weights, dtype=np.float64).reshape(-1)
    b = None if final_weights is None else np.asarray(final_weights, dtype=np.float64).reshape(-1)
    if a.size == 0 or (b is not None and b.shape != a.shape):
        raise ValueError(f"need T >= 1 self weights and as many final weights, got {a.shape} and "
                         f"{None if b is None else b.shape}")
    labels = [str(i) for i in range(a.size)] if frame_labels is None else [str(x) for x in frame_labels]
    if len(labels) != a.size:
        raise ValueError(f"{len(labels)} frame labels for {a.size} frames")
    x = np.arange(a.size)
    fig, ax = plt.subplots(figsize=(max(5.0, min(16.0, 2.0 + 0.25 * a.size)), 3.2))
    width = 0.4 if b is not None else 0.8
    ax.bar(x - (width / 2 if b is not None else 0), a, width, color="tab:blue", label="self-attention")
    if b is not None:
        ax.bar(x + width / 2, b, width, color="tab:orange", label="final (self × relation)")
    step = max(1, a.size // 20)
    ax.set_xticks(x[::step])
    ax.set_xticklabels(labels[::step], rotation=90 if step == 1 and a.size > 20 else 0, fontsize=8)
    ax.set_xlabel("frame")
    ax.set_ylabel("weight (sums to 1 over the clip)")
    ax.legend(loc="upper left", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=dpi, format="png")

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)


def plot_reliability_diagram(
    bins: dict,
    path: str | os.PathLike,
    *,
    title: str | None = None,
    ece: float | None = None,
    before: dict | None = None,
    dpi: int = 120,
) -> Path:
    """Reliability diagram (Guo et al. 2017, figure 1): accuracy against mean confidence per confidence bin,
    with the diagonal of perfect calibration and the share of samples per bin, saved as PNG (atomic write).

    Args:
        bins: :func:`if3d.metrics.reliability_bins` of the probabilities shown.
        path: output ``.png`` path; parent folders are created.
        title: first title line; ``ece``, when given, is appended to it.
        before: the same bins before calibration (temperature 1), drawn as a line for comparison.

    Returns:
        ``path``.
    """
    edges = np.asarray(bins["edges"], dtype=np.float64)
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([np.nan if a is None else a for a in bins["accuracy"]], dtype=np.float64)
    counts = np.asarray(bins["count"], dtype=np.float64)
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.5, 6.5), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    try:
        ax.bar(centers, np.nan_to_num(acc), width=width * 0.95, color="#4c72b0", edgecolor="white",
               label="accuracy per bin")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        if before is not None:
            conf_b = [c for c in before["confidence"] if c is not None]
            acc_b = [a for a, c in zip(before["accuracy"], before["confidence"]) if c is not None]
            ax.plot(conf_b, acc_b, "o-", color="#dd8452", ms=3, label="before calibration")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left", fontsize=8)
        head = title or "Reliability diagram"
        if ece is not None:
            head = f"{head}\nECE {ece:.4f} ({len(counts)} bins)"
        ax.set_title(head)
        axh.bar(centers, counts / max(counts.sum(), 1.0), width=width * 0.95, color="#55a868")
        axh.set_xlabel("confidence (top class probability)")
        axh.set_ylabel("share")
        fig.tight_layout()
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        plt.close(fig)
