"""Expression-classification, valence/arousal and AU-intensity metrics (scikit-learn for the classification
part; ICC(3,1) after Shrout & Fleiss 1979 for AU intensities).

The dicts returned here are what ``metrics.json`` of the test script holds and what the
training engine logs per epoch; every value is a plain Python number, list or dict, ready for
``json.dump``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
)

CLASSIFICATION_KEYS = (
    "accuracy",
    "balanced_accuracy",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "precision_weighted",
    "recall_weighted",
    "f1_weighted",
    "per_class",
    "confusion_matrix",
)


def classification_metrics(
    labels: Sequence[int] | np.ndarray,
    predictions: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> dict:
    """Accuracy, balanced accuracy, macro/weighted precision, recall, F1, per class, confusion matrix.

    Args:
        labels: [N] true class indices in ``range(len(class_names))``.
        predictions: [N] predicted class indices, same range.
        class_names: the model's class names; index ``i`` names class ``i``.

    Returns:
        ``{'num_samples', 'accuracy', 'balanced_accuracy', 'precision_macro', 'recall_macro',
        'f1_macro', 'precision_weighted', 'recall_weighted', 'f1_weighted',
        'per_class': {name: {'precision', 'recall', 'f1', 'support'}},
        'confusion_matrix': [[count]] (rows true, columns predicted, all classes)}``.
        Macro and weighted averages run over the classes that occur in ``labels`` or
        ``predictions`` (scikit-learn's default), so a class the dataset lacks (e.g. Contempt on
        FER2013) does not count as a zero unless the model predicts it. Balanced accuracy is the
        mean recall over the classes present in ``labels``. Undefined ratios (no predictions
        of a class) count as 0.

    Raises:
        ValueError: empty input, length mismatch, or an index outside ``class_names``.
    """
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    p = np.asarray(predictions, dtype=np.int64).reshape(-1)
    c = len(class_names)
    if y.size == 0:
        raise ValueError("classification_metrics: no samples")
    if y.shape != p.shape:
        raise ValueError(f"classification_metrics: {y.size} labels but {p.size} predictions")
    for name, arr in (("labels", y), ("predictions", p)):
        if arr.min() < 0 or arr.max() >= c:
            raise ValueError(f"classification_metrics: {name} outside [0, {c}) for {c} class names")

    present = np.union1d(y, p)
    out: dict = {"num_samples": int(y.size), "accuracy": float(accuracy_score(y, p))}
    with warnings.catch_warnings():  # "y_pred contains classes not in y_true" is an expected case
        warnings.simplefilter("ignore", UserWarning)
        # balanced accuracy = mean recall over the classes present in the labels
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, p))
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = precision_recall_fscore_support(y, p, labels=present, average=avg, zero_division=0)
        out[f"precision_{avg}"] = float(pr)
        out[f"recall_{avg}"] = float(rc)
        out[f"f1_{avg}"] = float(f1)
    all_classes = np.arange(c)
    pr, rc, f1, sup = precision_recall_fscore_support(
        y, p, labels=all_classes, average=None, zero_division=0
    )
    out["per_class"] = {
        str(name): {
            "precision": float(pr[i]),
            "recall": float(rc[i]),
            "f1": float(f1[i]),
            "support": int(sup[i]),
        }
        for i, name in enumerate(class_names)
    }
    out["confusion_matrix"] = confusion_matrix(y, p, labels=all_classes).astype(int).tolist()
    return out


def va_metrics(predictions: Sequence[float] | np.ndarray, targets: Sequence[float] | np.ndarray) -> dict:
    """RMSE, PCC, CCC and SAGR of one affect dimension (valence or arousal).

    Args:
        predictions: [N] predicted values (AffectNet scale, nominally [−1, 1]).
        targets: [N] true values; pairs where either value is NaN are left out and counted.

    Returns:
        ``{'num_samples', 'rmse', 'pcc', 'ccc', 'sagr'}``: root mean squared error; Pearson
        correlation; concordance correlation ``2ρσ_xσ_y / (σ_x² + σ_y² + (μ_x − μ_y)²)``
        (Lin 1989, population moments); sign agreement ``mean(sign(pred) == sign(target))``
        (Nicolaou et al. 2011). PCC is NaN when either input is constant; all are NaN with no
        valid pair.
    """
    x = np.asarray(predictions, dtype=np.float64).reshape(-1)
    y = np.asarray(targets, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"va_metrics: {x.size} predictions but {y.size} targets")
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n == 0:
        nan = float("nan")
        return {"num_samples": 0, "rmse": nan, "pcc": nan, "ccc": nan, "sagr": nan}
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    denom = vx + vy + (mx - my) ** 2
    return {
        "num_samples": n,
        "rmse": float(np.sqrt(np.mean((x - y) ** 2))),
        "pcc": float(cov / np.sqrt(vx * vy)) if vx > 0 and vy > 0 else float("nan"),
        "ccc": float(2.0 * cov / denom) if denom > 0 else 1.0,
        "sagr": float(np.mean(np.sign(x) == np.sign(y))),
    }


def icc_3_1(ratings: Sequence[Sequence[float]] | np.ndarray) -> float:
    """Intraclass correlation ICC(3,1): two-way mixed, consistency, single rater (Shrout & Fleiss 1979).

    ``ICC(3,1) = (MS_R − MS_E) / (MS_R + (k − 1) MS_E)`` with ``MS_R`` the between-targets mean square and
    ``MS_E`` the residual mean square of the two-way ANOVA of the ratings (Shrout & Fleiss, "Intraclass
    correlations: uses in assessing rater reliability", *Psychological Bulletin* 86(2):420–428, 1979, Table 1;
    their Table 2 example gives 0.71). For AU intensity the two "raters" are the prediction and the label
    (FERA 2015).

    Args:
        ratings: [n targets, k raters], no NaN; n ≥ 2, k ≥ 2.

    Returns:
        ICC(3,1) in [−1/(k−1), 1]; NaN when undefined (a zero denominator: every target rated alike and no
        residual).

    Raises:
        ValueError: fewer than 2 targets or raters, or NaN.
    """
    y = np.asarray(ratings, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"icc_3_1 needs ratings [n >= 2 targets, k >= 2 raters], got shape {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError("icc_3_1: ratings hold NaN or infinity")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * ((y.mean(1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(0) - grand) ** 2).sum()
    ss_err = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_err = ss_err / ((n - 1) * (k - 1))
    denom = ms_rows + (k - 1) * ms_err
    return float((ms_rows - ms_err) / denom) if denom > 0 else float("nan")


def au_metrics(predictions: np.ndarray, targets: np.ndarray, au_names: Sequence[str]) -> dict:
    """AU-intensity metrics per AU and their means: ICC(3,1), Pearson correlation (PCC), mean absolute error.

    Args:
        predictions: [N, A] predicted intensities (0–5 scale).
        targets: [N, A] labelled intensities; NaN where a frame has no label for an AU (left out of that AU).
        au_names: the A AU names.

    Returns:
        ``{'per_au': {name: {'icc', 'pcc', 'mae', 'num_samples'}}, 'icc_mean', 'pcc_mean', 'mae_mean',
        'num_samples'}``; the means run over the AUs whose value is defined (ICC and PCC are NaN for an AU
        with fewer than 2 labelled frames or a constant prediction or label; the means are NaN when no AU
        has a value).

    Raises:
        ValueError: shapes that do not match ``au_names``.
    """
    x = np.asarray(predictions, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 2 or x.shape[1] != len(au_names):
        raise ValueError(f"au_metrics: predictions {x.shape} and targets {y.shape} must be [N, {len(au_names)}]")
    per: dict[str, dict] = {}
    for j, name in enumerate(au_names):
        ok = np.isfinite(x[:, j]) & np.isfinite(y[:, j])
        p, t = x[ok, j], y[ok, j]
        n = int(ok.sum())
        icc = pcc = float("nan")
        if n >= 2:
            icc = icc_3_1(np.stack([p, t], 1))
            if p.std() > 0 and t.std() > 0:
                pcc = float(np.corrcoef(p, t)[0, 1])
        per[str(name)] = {"icc": icc, "pcc": pcc, "mae": float(np.abs(p - t).mean()) if n else float("nan"),
                          "num_samples": n}

    def mean(key: str) -> float:
        vals = [v[key] for v in per.values() if np.isfinite(v[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {"per_au": per, "icc_mean": mean("icc"), "pcc_mean": mean("pcc"), "mae_mean": mean("mae"),
            "num_samples": int(x.shape[0])}


#: Confidence bins of the expected calibration error (Guo et al. 2017, section 2, M = 15).
ECE_BINS = 15


def _checked_probabilities(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or len(p) != len(y):
        raise ValueError(f"probabilities must be [N, C] with N = {len(y)} labels, got shape {p.shape}")
    if len(y) == 0:
        raise ValueError("no samples: calibration metrics need at least one prediction")
    if not np.isfinite(p).all():
        raise ValueError("probabilities hold NaN or infinity")
    if y.min() < 0 or y.max() >= p.shape[1]:
        raise ValueError(f"labels must be class indices in [0, {p.shape[1] - 1}], got {y.min()}..{y.max()}")
    return p, y


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, list]:
    """Confidence histogram of a classifier: the top probability of each sample in ``bins`` equal-width bins
    of (0, 1] (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017, eq. 2-3).

    Args:
        probabilities: [N, C] class probabilities (rows sum to 1).
        labels: [N] true class indices.
        bins: number of bins M.

    Returns:
        ``{'edges' [M + 1], 'count' [M], 'confidence' [M] mean top probability, 'accuracy' [M]}``; empty bins
        have count 0 and confidence/accuracy ``None``.

    Raises:
        ValueError: shapes that do not match, no sample, non-finite probabilities, labels out of range.
    """
    p, y = _checked_probabilities(probabilities, labels)
    conf = p.max(1)
    correct = p.argmax(1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    # bin m holds (edges[m], edges[m + 1]]; a confidence of exactly 0 cannot occur for a distribution
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    out: dict[str, list] = {"edges": edges.tolist(), "count": [], "confidence": [], "accuracy": []}
    for m in range(bins):
        sel = which == m
        n = int(sel.sum())
        out["count"].append(n)
        out["confidence"].append(float(conf[sel].mean()) if n else None)
        out["accuracy"].append(float(correct[sel].mean()) if n else None)
    return out


def calibration_metrics(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict[str, float]:
    """How well class probabilities match outcomes.

    - ``nll``: mean negative log-likelihood of the true class, ``-mean(log p[y])`` (natural log; a probability
      below 1e-12 counts as 1e-12), in [0, 27.6].
    - ``brier``: multi-class Brier score (Brier 1950), ``mean(sum_c (p_c - [y = c])^2)``, in [0, 2].
    - ``ece``: expected calibration error over ``bins`` equal-width confidence bins (Guo et al. 2017, eq. 3),
      ``sum_m |B_m| / N * |acc(B_m) - conf(B_m)|``, in [0, 1].

    Args:
        probabilities: [N, C] class probabilities (rows sum to 1).
        labels: [N] true class indices.

    Raises:
        ValueError: as :func:`reliability_bins`.
    """
    p, y = _checked_probabilities(probabilities, labels)
    n = len(y)
    nll = float(-np.log(np.clip(p[np.arange(n), y], 1e-12, 1.0)).mean())
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    brier = float(((p - onehot) ** 2).sum(1).mean())
    rel = reliability_bins(p, y, bins)
    ece = sum(c / n * abs(a - f) for c, a, f in zip(rel["count"], rel["accuracy"], rel["confidence"]) if c)
    return {"nll": nll, "brier": brier, "ece": float(ece)}


def rescale_temperature(probabilities: np.ndarray, factor: float) -> np.ndarray:
    """Probabilities of logits divided by ``factor``: ``softmax(log p / factor)`` (float64 [N, C]).

    ``softmax(z / T)`` depends on ``z`` only up to a constant per row, so ``log p`` stands in for the logits:
    with ``factor = 1 / T`` this undoes a temperature ``T`` already applied, with ``factor = T`` applies one.

    Raises:
        ValueError: ``factor`` is not a finite number > 0.
    """
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"a temperature must be a finite number > 0, got {factor}")
    logp = np.log(np.clip(np.asarray(probabilities, dtype=np.float64), 1e-300, None)) / factor
    logp -= logp.max(1, keepdims=True)
    e = np.exp(logp)
    return e / e.sum(1, keepdims=True)


def fit_temperature(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature ``T`` that minimises the NLL of ``softmax(logits / T)`` on a held-out split (Guo et al.
    2017, section 4.2, temperature scaling); a bounded scalar search over ``log T`` (SciPy).

    Args:
        logits: [N, C] logits (or log-probabilities: the same up to a constant per row) of a split that the
            reported split never touches.
        labels: [N] true class indices.
        bounds: the search interval of ``T``.

    Returns:
        ``T`` in ``bounds`` (1 leaves the probabilities as they are; > 1 softens over-confident ones).

    Raises:
        ValueError: empty or mismatched inputs, non-finite logits.
    """
    from scipy.optimize import minimize_scalar
    from scipy.special import log_softmax

    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or len(z) != len(y) or len(y) == 0:
        raise ValueError(f"logits must be [N, C] with N = {len(y)} > 0 labels, got shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits hold NaN or infinity")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-log_softmax(z / np.exp(log_t), axis=1)[rows, y].mean())

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    return float(np.exp(res.x))
