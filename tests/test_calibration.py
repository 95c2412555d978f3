"""Calibration: NLL, Brier, ECE against hand-computed values; temperature fitting; the inference policy
(temperature and flip averaging) a checkpoint carries; the calibration command end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from if3d.metrics import calibration_metrics, fit_temperature, reliability_bins, rescale_temperature
from networks.inference import InferencePolicy, predict_logits
from networks.outputs import DDAMFNOutput


def test_nll_brier_ece_hand_example():
    p = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    y = np.array([0, 1, 1, 0])
    m = calibration_metrics(p, y, bins=15)
    assert m["nll"] == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.7) + math.log(0.2)) / 4)
    # Brier: (0.1² + 0.1²), (0.6² + 0.6²), (0.3² + 0.3²), (0.8² + 0.8²)
    assert m["brier"] == pytest.approx((0.02 + 0.72 + 0.18 + 1.28) / 4)
    # confidences 0.9, 0.6, 0.7, 0.8 fall in four different bins of width 1/15; correct: yes, no, yes, no
    assert m["ece"] == pytest.approx((abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(0 - 0.8)) / 4)


def test_ece_pools_the_samples_of_one_bin():
    # both confidences fall in (0.6, 0.667]: accuracy 1/2 against mean confidence 0.63
    p = np.array([[0.62, 0.38], [0.36, 0.64]])
    y = np.array([0, 0])
    m = calibration_metrics(p, y, bins=15)
    assert m["ece"] == pytest.approx(abs(0.5 - 0.63))
    rel = reliability_bins(p, y, bins=15)
    assert sum(rel["count"]) == 2
    assert rel["count"][9] == 2
    assert rel["accuracy"][9] == pytest.approx(0.5)
    assert rel["confidence"][9] == pytest.approx(0.63)
    assert rel["accuracy"][0] is None


def test_a_perfectly_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(0)
    n = 20000
    conf = rng.uniform(0.5, 1.0, n)
    y = (rng.uniform(size=n) >= conf).astype(np.int64)  # class 0 is right with probability conf
    p = np.stack([conf, 1 - conf], 1)
    assert calibration_metrics(p, y)["ece"] < 0.01
    sharp = rescale_temperature(p, 0.3)  # the same model, over-confident
    assert calibration_metrics(sharp, y)["ece"] > 0.1
    assert (sharp.argmax(1) == p.argmax(1)).all()  # a temperature never changes the predicted class


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="no samples"):
        calibration_metrics(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ValueError, match="NaN"):
        calibration_metrics(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="class indices"):
        calibration_metrics(np.array([[0.5, 0.5]]), np.array([2]))
    with pytest.raises(ValueError, match="temperature"):
        rescale_temperature(np.array([[0.5, 0.5]]), 0.0)


def test_fit_temperature_recovers_the_temperature_that_generated_the_labels():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, size=(20000, 5))
    p = np.exp(z / 2.5)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(5, p=row) for row in p])
    assert fit_temperature(z, y) == pytest.approx(2.5, rel=0.05)
    # log-probabilities are logits up to a constant per row: the same temperature
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert fit_temperature(logp, y) == pytest.approx(fit_temperature(z, y), rel=1e-4)


class _Tiny(torch.nn.Module):
    """logits = [sum of the left half, sum of the right half] of the image: flipping swaps them."""

    def forward(self, x):
        w = x.shape[-1] // 2
        logits = torch.stack([x[..., :w].sum((1, 2, 3)), x[..., w:].sum((1, 2, 3))], 1)
        return DDAMFNOutput(logits=logits, features=x, heads=x[None])


def test_inference_policy_averages_flips_and_divides_by_the_temperature_in_eval_mode_only():
    x = torch.zeros(1, 3, 4, 4)
    x[..., :2] = 1.0  # left half bright: logits [24, 0]; mirrored [0, 24]
    model = _Tiny().eval()
    assert predict_logits(model, [x]).logits.tolist() == [[24.0, 0.0]]
    model.inference_policy = InferencePolicy(temperature=2.0, flip_average=False)
    assert predict_logits(model, [x]).logits.tolist() == [[12.0, 0.0]]
    model.inference_policy = InferencePolicy(temperature=2.0, flip_average=True)
    assert predict_logits(model, [x]).logits.tolist() == [[6.0, 6.0]]
    model.train()
    assert predict_logits(model, [x]).logits.tolist() == [[24.0, 0.0]]  # training never sees the policy


def test_inference_policy_from_metadata():
    assert InferencePolicy.from_metadata({}).is_identity
    p = InferencePolicy.from_metadata({"inference": {"temperature": 1.5, "flip_average": True}})
    assert p == InferencePolicy(1.5, True)
    with pytest.raises(ValueError, match="temperature"):
        InferencePolicy.from_metadata({"inference": {"temperature": float("nan")}})
    with pytest.raises(ValueError, match="mapping"):
        InferencePolicy.from_metadata({"inference": 3})
