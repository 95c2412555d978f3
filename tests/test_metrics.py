"""Classification and valence/arousal metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from if3d.metrics import CLASSIFICATION_KEYS, classification_metrics, va_metrics

NAMES = ["Neutral", "Happy", "Sad", "Surprise"]


def test_classification_metrics_hand_example():
    # class 3 (Surprise) never occurs and is never predicted
    y = [0, 0, 0, 1, 1, 2]
    p = [0, 0, 1, 1, 2, 2]
    m = classification_metrics(y, p, NAMES)
    assert set(CLASSIFICATION_KEYS) <= set(m)
    assert m["num_samples"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    # recalls: 2/3, 1/2, 1/1 -> balanced accuracy over the classes present in y
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # precisions: 2/2, 1/2, 1/2; F1: 0.8, 0.5, 2/3
    f1 = [0.8, 0.5, 2 / 3]
    assert m["precision_macro"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert m["recall_macro"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    assert m["f1_macro"] == pytest.approx(sum(f1) / 3)  # Surprise (absent everywhere) is not averaged in
    assert m["f1_weighted"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6)
    assert m["confusion_matrix"] == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    assert m["per_class"]["Neutral"] == {"precision": 1.0, "recall": pytest.approx(2 / 3), "f1": pytest.approx(0.8),
                                         "support": 3}
    assert m["per_class"]["Surprise"]["support"] == 0
    assert list(m["per_class"]) == NAMES


def test_predicting_an_absent_class_counts_against_macro_scores():
    m = classification_metrics([0, 0, 1, 1], [0, 3, 1, 1], NAMES)
    assert m["per_class"]["Surprise"]["precision"] == 0.0
    assert m["precision_macro"] == pytest.approx((1 + 1 + 0) / 3)


def test_classification_metrics_rejects_bad_input():
    with pytest.raises(ValueError, match="no samples"):
        classification_metrics([], [], NAMES)
    with pytest.raises(ValueError, match="labels but"):
        classification_metrics([0, 1], [0], NAMES)
    with pytest.raises(ValueError, match="outside"):
        classification_metrics([0, 4], [0, 1], NAMES)


def test_va_metrics_hand_example():
    pred = np.array([0.5, -0.2, 0.1, 0.9, np.nan])
    true = np.array([0.4, 0.1, -0.3, 0.7, 0.2])
    m = va_metrics(pred, true)
    x, y = pred[:4], true[:4]
    assert m["num_samples"] == 4
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((x - y) ** 2)))
    assert m["pcc"] == pytest.approx(np.corrcoef(x, y)[0, 1])
    ccc = 2 * np.cov(x, y, bias=True)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert m["ccc"] == pytest.approx(ccc)
    assert m["sagr"] == pytest.approx(2 / 4)  # signs agree for 0.5/0.4 and 0.9/0.7


def test_va_metrics_no_valid_pair_is_nan():
    m = va_metrics([np.nan], [0.1])
    assert m["num_samples"] == 0
    assert math.isnan(m["rmse"])
