"""The timing diagram of one face over a video: what happened when, frame by frame.

Panels, sharing the time axis (seconds):

1. **Action units**: one lane per AU (FACS timing diagrams draw AUs as lanes); the smoothed intensity is
   the filled area, the per-frame value the thin grey line, so the effect of the smoothing is visible.
2. **Expression** (with an expression model): the probability of each class, smoothed (solid) and per frame
   (faint).
3. **Valence and arousal** (models with VA outputs): smoothed (solid) and per frame (faint), on [−1, 1].
4. **Labels**: the model's class of the smoothed probabilities and the EMFACS expression as coloured bands,
   side by side.

:func:`timing_figure` draws it with matplotlib (Agg, no display needed); :class:`TimingPanel` renders it at a
given pixel size and draws the moving cursor of the annotated video onto copies of it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from if3d.atomic import atomic_write

__all__ = ["EXPRESSION_COLOURS", "TimingPanel", "save_timing_diagram", "timing_figure"]

#: one colour per expression (AffectNet order), plus EMFACS' Other
EXPRESSION_COLOURS = {
    "Neutral": "#9e9e9e", "Happy": "#f2c12e", "Sad": "#3b6fb6", "Surprise": "#9c5fc4", "Fear": "#2a9d8f",
    "Disgust": "#6a994e", "Angry": "#d62828", "Contempt": "#e76f51", "Other": "#dddddd", "": "#ffffff",
}


def _colour(name: str) -> str:
    from if3d.classes import AFFECTNET8, canonical_label

    if name in EXPRESSION_COLOURS:
        return EXPRESSION_COLOURS[name]
    try:
        return EXPRESSION_COLOURS[AFFECTNET8[canonical_label(name)]]
    except (KeyError, IndexError):
        return "#555555"


def _bands(ax, t: np.ndarray, labels: Sequence[str], y: float, height: float, dt: float) -> None:
    """Draw consecutive equal labels as one coloured bar each."""
    if not len(t):
        return
    start = 0
    for i in range(1, len(t) + 1):
        if i == len(t) or labels[i] != labels[start] or t[i] - t[i - 1] > 1.5 * dt:
            ax.broken_barh([(t[start] - dt / 2, t[i - 1] - t[start] + dt)], (y, height),
                           facecolors=_colour(str(labels[start])), edgecolor="none")
            start = i


def timing_figure(table: pd.DataFrame, face_id: int, aus: Sequence[str], class_names: Sequence[str],
                  fps: float, title: str = "", size_px: tuple[int, int] = (1600, 1000), dpi: int = 100):
    """The timing diagram of one face (module docstring).

    Args:
        table: the analysis table (:class:`if3d.analyze.pipeline.AnalysisResult` ``table``).
        face_id: the face to draw.
        aus: AU columns (``AU01`` …) in lane order.
        class_names: the expression model's classes ([] without a model).
        fps: frames per second (the band width of one frame is ``1 / fps``).
        title: figure title.
        size_px: (width, height) in pixels.
        dpi: resolution.

    Returns:
        ``(figure, time axis)``: the matplotlib figure and the axes whose data x is the time in seconds (all
        panels share it).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    rows = table[table["face_detected"].astype(bool) & (table["face_id"] == face_id)]
    aus = [a for a in aus if "_" not in a]  # one lane per AU; the one-sided AU12_R/AU12_L stay in the table
    frames_all = table["frame"].to_numpy()
    t_end = (frames_all.max() + 1) / fps if len(frames_all) else 1.0
    t = rows["time_s"].to_numpy(dtype=np.float64)
    dt = 1.0 / fps
    has_expr = bool(class_names) and f"prob_{class_names[0]}" in rows
    has_va = "valence" in rows and rows["valence"].notna().any()
    heights = [max(3.0, 0.32 * len(aus))] + ([1.6] if has_expr else []) + ([1.2] if has_va else []) + [0.7]
    fig, axes = plt.subplots(len(heights), 1, sharex=True, figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi,
                             gridspec_kw={"height_ratios": heights})
    axes = list(np.atleast_1d(axes))
    ax = axes[0]
    for lane, au in enumerate(reversed(list(aus))):
        raw = rows[au].to_numpy(dtype=np.float64) / 5.0 * 0.9
        smooth = rows[f"{au}_smooth"].to_numpy(dtype=np.float64) / 5.0 * 0.9 if f"{au}_smooth" in rows else raw
        ax.axhline(lane, color="#cccccc", linewidth=0.5)
        ax.fill_between(t, lane, lane + np.nan_to_num(smooth), color="#3d5a80", alpha=0.8, linewidth=0)
        ax.plot(t, lane + raw, color="#222222", linewidth=0.6, alpha=0.8)
    ax.set_yticks(np.arange(len(aus)) + 0.4)
    ax.set_yticklabels(list(reversed(list(aus))), fontsize=8)
    ax.set_ylim(0, len(aus))
    ax.set_ylabel("AU intensity (lane = 0–5)")
    source = str(rows["au_source"].iloc[0]) if len(rows) and "au_source" in rows else ""
    ax.set_title(f"{title}\naction units ({source}): filled = smoothed, line = per frame", fontsize=10)
    k = 1
    if has_expr:
        ax = axes[k]
        k += 1
        for c in class_names:
            col = _colour(c)
            ax.plot(t, rows[f"prob_{c}"], color=col, linewidth=0.6, alpha=0.35)
            ax.plot(t, rows[f"prob_{c}_smooth"], color=col, linewidth=1.6, label=c)
        ax.set_ylim(0, 1)
        ax.set_ylabel("probability")
        ax.legend(loc="upper left", fontsize=7, ncol=min(8, len(class_names)), frameon=False)
    if has_va:
        ax = axes[k]
        k += 1
        for name, col in (("valence", "#e07a5f"), ("arousal", "#3d405b")):
            ax.plot(t, rows[name], color=col, linewidth=0.6, alpha=0.35)
            ax.plot(t, rows[f"{name}_smooth"], color=col, linewidth=1.6, label=name)
        ax.axhline(0, color="#999999", linewidth=0.5)
        ax.set_ylim(-1, 1)
        ax.set_ylabel("VA")
        ax.legend(loc="upper left", fontsize=7, ncol=2, frameon=False)
    ax = axes[k]
    names = ["EMFACS"] + (["model"] if has_expr else [])
    _bands(ax, t, rows["emfacs"].fillna("").to_numpy(), 0.05, 0.4, dt)
    if has_expr:
        _bands(ax, t, rows["expression_smooth"].fillna("").to_numpy(), 0.55, 0.4, dt)
    ax.set_yticks([0.25, 0.75][: len(names)])
    ax.set_yticklabels(names, fontsize=8)
    ax.set_ylim(0, 1)
    shown = sorted({str(v) for v in rows["emfacs"].dropna()} | ({str(v) for v in rows["expression_smooth"].dropna()}
                                                                 if has_expr else set()))
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=_colour(s), label=s) for s in shown if s], loc="upper center",
              bbox_to_anchor=(0.5, -0.6), ncol=min(9, max(1, len(shown))), fontsize=7, frameon=False)
    ax.set_xlim(0, t_end)
    ax.set_xlabel("time (s)")
    fig.tight_layout()
    return fig, axes[0]


def save_timing_diagram(path: str | os.PathLike, table: pd.DataFrame, face_id: int, aus: Sequence[str],
                        class_names: Sequence[str], fps: float, title: str = "",
                        size_px: tuple[int, int] = (1600, 1000)) -> None:
    """Write the timing diagram as a PNG (atomically)."""
    import matplotlib.pyplot as plt

    fig, _ = timing_figure(table, face_id, aus, class_names, fps, title, size_px)
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


class TimingPanel:
    """The timing diagram as an image of a fixed size, with a cursor at any time (for the annotated video).

    Args:
        table, face_id, aus, class_names, fps, title: as :func:`timing_figure`.
        size_px: (width, height) of the panel.

    Attributes:
        image: uint8 [H, W, 3] BGR (OpenCV's order) without cursor.
    """

    def __init__(self, table: pd.DataFrame, face_id: int, aus: Sequence[str], class_names: Sequence[str],
                 fps: float, title: str, size_px: tuple[int, int]) -> None:
        import cv2
        import matplotlib.pyplot as plt

        dpi = 100 if size_px[1] >= 600 else 72
        fig, ax = timing_figure(table, face_id, aus, class_names, fps, title, size_px, dpi=dpi)
        try:
            fig.canvas.draw()
            rgba = np.asarray(fig.canvas.buffer_rgba())
            h = rgba.shape[0]
            x0 = ax.transData.transform((0.0, 0.0))[0]
            x1 = ax.transData.transform((1.0, 0.0))[0]
            top = h - max(a.get_window_extent().y1 for a in fig.axes)
            bottom = h - min(a.get_window_extent().y0 for a in fig.axes if a.get_visible())
        finally:
            plt.close(fig)
        image = cv2.cvtColor(np.ascontiguousarray(rgba[..., :3]), cv2.COLOR_RGB2BGR)
        if image.shape[1] != size_px[0] or image.shape[0] != size_px[1]:
            sx, sy = size_px[0] / image.shape[1], size_px[1] / image.shape[0]
            image = cv2.resize(image, size_px, interpolation=cv2.INTER_AREA)
            x0, x1, top, bottom = x0 * sx, x1 * sx, top * sy, bottom * sy
        self.image = image
        self._x0, self._dx = float(x0), float(x1 - x0)
        self._top, self._bottom = int(max(0, top)), int(min(size_px[1] - 1, bottom))

    def at(self, time_s: float) -> np.ndarray:
        """A copy of the panel with a vertical cursor at ``time_s`` seconds."""
        import cv2

        out = self.image.copy()
        x = int(round(self._x0 + self._dx * time_s))
        cv2.line(out, (x, self._top), (x, self._bottom), (0, 0, 230), 2)
        return out
