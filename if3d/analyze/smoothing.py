"""Temporal smoothing of per-frame signals of one face track.

Filters (``FILTERS``), applied to each signal over the frames of one face track, separately on every run
of consecutive frames where the face was measured (a frame without the face splits the run; nothing is
interpolated across it):

- ``savgol`` (default): Savitzky–Golay, a local least-squares polynomial of order 2 over a centred window
  (Savitzky & Golay, *Analytical Chemistry* 36(8), 1964; ``scipy.signal.savgol_filter``, ``mode="interp"``
  at the ends). It keeps the height and timing of peaks better than a moving mean of the same width.
- ``median``: centred running median (``scipy.ndimage.median_filter``, ends reflected); removes single-frame
  spikes (a blink misread as an expression) without blurring steps.
- ``mean``: centred running mean (``scipy.ndimage.uniform_filter1d``, ends reflected).
- ``none``: the signal as measured.

The window is ``window_s`` seconds (default 0.3 s), i.e. ``round(window_s · fps)`` frames made odd; runs
shorter than the window use the largest odd window that fits (and no smoothing below 3 frames, or below
order + 2 frames for Savitzky–Golay).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FILTERS", "smooth_signal", "smooth_track", "window_frames"]

FILTERS = ("savgol", "median", "mean", "none")


def window_frames(window_s: float, fps: float) -> int:
    """Odd window length in frames for ``window_s`` seconds at ``fps`` (at least 1).

    Raises:
        ValueError: a negative or non-finite window, or fps ≤ 0.
    """
    if not (np.isfinite(window_s) and window_s >= 0):
        raise ValueError(f"the smoothing window must be a finite number of seconds >= 0, got {window_s}")
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be > 0, got {fps}")
    n = max(1, int(round(window_s * fps)))
    return n if n % 2 else n + 1


def smooth_signal(values: np.ndarray, window: int, method: str = "savgol", order: int = 2) -> np.ndarray:
    """Smooth one run of consecutive frames.

    Args:
        values: [T] or [T, K] float signal (no NaN; the caller splits runs at gaps).
        window: odd window length in frames.
        method: one of :data:`FILTERS`.
        order: polynomial order of ``savgol``.

    Returns:
        float64 array of the same shape.

    Raises:
        ValueError: an unknown method.
    """
    from scipy.ndimage import median_filter, uniform_filter1d
    from scipy.signal import savgol_filter

    if method not in FILTERS:
        raise ValueError(f"unknown smoothing filter {method!r}; choose one of {', '.join(FILTERS)}")
    x = np.asarray(values, dtype=np.float64)
    t = x.shape[0]
    w = min(int(window), t if t % 2 else t - 1)
    if method == "none" or w < 3 or (method == "savgol" and w < order + 2):
        return x.copy()
    if method == "savgol":
        return savgol_filter(x, w, order, axis=0, mode="interp")
    if method == "median":
        size = (w,) + (1,) * (x.ndim - 1)
        return median_filter(x, size=size, mode="reflect")
    return uniform_filter1d(x, size=w, axis=0, mode="reflect")


def smooth_track(values: np.ndarray, frames: np.ndarray, window: int, method: str = "savgol") -> np.ndarray:
    """Smooth the signals of one face track, run by run of consecutive frames.

    Args:
        values: [T, K] float, one row per measurement of the track, in frame order; NaN entries stay NaN
            and split runs for their column.
        frames: [T] int frame indices of the rows (increasing).
        window: odd window length in frames (:func:`window_frames`).
        method: one of :data:`FILTERS`.

    Returns:
        float64 [T, K].
    """
    x = np.asarray(values, dtype=np.float64)
    x2 = x.reshape(x.shape[0], -1)
    out = np.full_like(x2, np.nan)
    f = np.asarray(frames, dtype=np.int64)
    breaks = np.flatnonzero(np.diff(f) != 1) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(f)]):
        block = x2[start:stop]
        ok = np.isfinite(block)
        if ok.all():
            out[start:stop] = smooth_signal(block, window, method)
            continue
        for k in range(block.shape[1]):  # columns with gaps: smooth each finite run on its own
            col = block[:, k]
            good = np.isfinite(col)
            idx = np.flatnonzero(good)
            if idx.size == 0:
                continue
            cuts = np.flatnonzero(np.diff(idx) != 1) + 1
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, idx.size]):
                seg = idx[a:b]
                out[start + seg, k] = smooth_signal(col[seg], window, method)
    return out.reshape(x.shape)
