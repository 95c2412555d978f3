"""The analysis' pure pieces on generated data: tracking, smoothing, EMFACS, AU metrics, the AU criterion."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from if3d.analyze.emfacs import NEUTRAL, OTHER, emfacs_expressions, prototype_scores
from if3d.analyze.faces import FaceTracker, box_iou
from if3d.analyze.smoothing import smooth_signal, smooth_track, window_frames
from if3d.metrics import au_metrics, icc_3_1


def test_box_iou_matches_hand_computed_values():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 5, 15, 15], [20, 20, 30, 30], [0, 0, 10, 10]])
    assert box_iou(a, b)[0] == pytest.approx([25 / 175, 0.0, 1.0])


def test_tracker_keeps_ids_across_frames_and_swapped_order_and_ends_lost_tracks():
    tr = FaceTracker(min_iou=0.3, max_missed=2)
    left, right = [0, 0, 10, 10], [50, 0, 60, 10]
    assert tr.update(np.array([left, right])) == [0, 1]
    # the detector returns them in the other order, slightly moved: ids follow the faces, not the order
    assert tr.update(np.array([[51, 1, 61, 11], [1, 0, 11, 10]])) == [1, 0]
    assert tr.update(np.zeros((0, 4))) == []
    assert tr.update(np.array([left])) == [0]  # one frame missing: the track continues
    for _ in range(3):
        tr.update(np.zeros((0, 4)))
    assert tr.update(np.array([left])) == [2]  # lost for longer than max_missed: a new face


def test_window_frames_is_odd_and_checks_its_arguments():
    assert window_frames(0.3, 30) == 9
    assert window_frames(0.3, 20) == 7
    assert window_frames(0.0, 30) == 1
    with pytest.raises(ValueError, match="seconds"):
        window_frames(-1, 30)
    with pytest.raises(ValueError, match="fps"):
        window_frames(0.3, 0)


def test_savgol_smoothing_removes_noise_but_keeps_a_step_where_it_is():
    rng = np.random.default_rng(0)
    clean = np.r_[np.zeros(60), np.full(60, 3.0)]
    noisy = clean + rng.normal(0, 0.3, clean.shape)
    out = smooth_signal(noisy, 15, "savgol")
    def rms(x):
        return float(np.sqrt(np.mean(x[10:50] ** 2)))

    assert rms(out - clean) < 0.7 * rms(noisy - clean)
    assert 56 <= int(np.argmax(out > 1.5)) <= 62  # the step stays at frame 60
    spike = np.zeros(31)
    spike[15] = 5.0
    assert smooth_signal(spike, 5, "median").max() == 0.0  # one-frame spikes go
    assert smooth_signal(spike, 5, "none")[15] == 5.0
    with pytest.raises(ValueError, match="unknown smoothing"):
        smooth_signal(spike, 5, "gauss")


def test_smooth_track_never_smooths_across_missing_frames_or_nan():
    values = np.r_[np.zeros(10), np.full(10, 4.0)][:, None]
    frames = np.r_[np.arange(10), np.arange(20, 30)]  # frames 10..19 without the face
    out = smooth_track(values, frames, 5, "mean")
    assert np.allclose(out[:10], 0.0)
    assert np.allclose(out[10:], 4.0)
    values = np.arange(12, dtype=float)[:, None].repeat(2, 1)
    values[5, 1] = np.nan
    out = smooth_track(values, np.arange(12), 3, "mean")
    assert np.isnan(out[5, 1])
    assert np.isfinite(out[:, 0]).all()
    assert np.isfinite(np.delete(out[:, 1], 5)).all()  # the runs on each side of the gap are smoothed alone


def _aus(**values):
    names = ("AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9", "AU12", "AU15", "AU20", "AU26")
    return {n: np.array([float(values.get(n, 0.0))]) for n in names}


@pytest.mark.parametrize(("aus", "expected"), [
    (_aus(AU6=2, AU12=3), "Happy"),
    (_aus(AU1=1.5, AU4=2, AU15=1), "Sad"),
    (_aus(AU1=2, AU2=2, AU5=2.5, AU26=2), "Surprise"),
    (_aus(AU1=2, AU2=2, AU4=2, AU5=2, AU7=2, AU20=2, AU26=2), "Fear"),  # contains surprise's AUs: fear wins
    (_aus(AU4=2, AU5=1, AU7=2), "Angry"),
    (_aus(AU9=2, AU15=2), "Disgust"),
    (_aus(AU1=0.5, AU12=0.9), NEUTRAL),
    (_aus(AU20=3), OTHER),
])
def test_emfacs_prototypes(aus, expected):
    labels, scores, active, _ = emfacs_expressions(aus)
    assert labels[0] == expected
    if expected not in (NEUTRAL, OTHER):
        assert scores[0] >= 0.8


def test_emfacs_surprise_needs_au5_at_level_b_and_contempt_is_one_sided():
    weak = _aus(AU1=2, AU2=2, AU5=1, AU26=2)  # 5A, not 5B
    assert prototype_scores(weak)["Surprise"][0] == pytest.approx((1 + 1 + 0.5 + 1) / 4)
    aus = {**_aus(), "AU12_R": np.array([2.0]), "AU12_L": np.array([0.0])}
    aus["AU12"] = np.array([1.0])
    labels, _, active, per = emfacs_expressions(aus)
    assert labels[0] == "Contempt"
    assert active[0] == "12"
    both = {**aus, "AU12_L": np.array([2.0])}
    assert emfacs_expressions(both)[0][0] != "Contempt"
    # without the one-sided columns contempt cannot be scored; prototypes with under half their AUs neither
    assert np.isnan(prototype_scores(_aus())["Contempt"][0])
    assert np.isnan(prototype_scores({"AU9": np.array([1.0])})["Disgust"][0])


def test_emfacs_leaves_unmeasured_frames_empty():
    labels, scores, active, _ = emfacs_expressions({"AU4": np.array([np.nan, 2.0])})
    assert labels[0] == ""
    assert math.isnan(scores[0])
    with pytest.raises(ValueError, match="threshold"):
        emfacs_expressions({"AU4": np.array([1.0])}, threshold=0)


def test_icc_3_1_reproduces_shrout_and_fleiss_table_2():
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    assert icc_3_1(ratings) == pytest.approx(0.71, abs=0.01)
    x = np.array([0.0, 1, 2, 3, 4])
    assert icc_3_1(np.stack([x, x], 1)) == pytest.approx(1.0)
    assert icc_3_1(np.stack([x, x + 2], 1)) == pytest.approx(1.0)  # consistency: a constant offset is fine
    assert icc_3_1(np.stack([x, x[::-1]], 1)) == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="NaN"):
        icc_3_1([[1, np.nan], [2, 3]])


def test_au_metrics_leave_unlabelled_frames_out_per_au():
    pred = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 5.0], [4.0, 2.0]])
    target = np.array([[1.0, np.nan], [2.0, np.nan], [3.0, np.nan], [5.0, 2.0]])
    m = au_metrics(pred, target, ["AU1", "AU12"])
    assert m["per_au"]["AU1"]["num_samples"] == 4
    assert m["per_au"]["AU1"]["mae"] == pytest.approx(0.25)
    assert m["per_au"]["AU12"]["num_samples"] == 1
    assert math.isnan(m["per_au"]["AU12"]["icc"])
    assert m["icc_mean"] == pytest.approx(m["per_au"]["AU1"]["icc"])  # the mean skips undefined AUs
    assert m["mae_mean"] == pytest.approx((0.25 + 0.0) / 2)


def test_au_criterion_is_the_mse_over_labelled_pairs_only():
    import networks
    from networks.au import AUOutput

    crit = networks.create_criterion("au_regressor")
    pred = torch.tensor([[1.0, 2.0], [3.0, 4.0]], requires_grad=True)
    target = torch.tensor([[2.0, float("nan")], [3.0, 1.0]])
    mask = torch.tensor([[True, False], [True, True]])
    loss = crit(AUOutput(au=pred, features=pred), {"au": target, "au_mask": mask})
    assert float(loss.terms["mse"].detach()) == pytest.approx((1 + 0 + 9) / 3)
    loss.total.backward()
    assert pred.grad[0, 1] == 0  # an unlabelled pair sends no gradient
    none = crit(AUOutput(au=pred, features=pred), {"au": target, "au_mask": torch.zeros_like(mask)})
    assert float(none.total.detach()) == 0.0
    assert none.total.requires_grad
