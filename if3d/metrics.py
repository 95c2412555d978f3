"""Expression-classification and valence/arousal metrics (scikit-learn for the classification part).

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
