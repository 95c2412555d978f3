"""Model-owned criteria (networks.criteria): correct CCC, PCC, VA masking by indexing (no NaN leaks), term
weights, no VA swap, the values of the DDAMFN and If3D losses pinned, and the registry of criteria."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import networks
from networks.criteria import (
    Criterion,
    DDAMFNCriterion,
    If3DCriterion,
    concordance_correlation,
    pearson_correlation,
    va_loss,
)
from networks.ddamfn import attention_loss
from networks.outputs import DDAMFNOutput, If3DOutput


def _ccc_numpy(x: np.ndarray, y: np.ndarray) -> float:
    # Lin (1989): 2ρσxσy / (σx² + σy² + (μx − μy)²), population moments
    rho = np.corrcoef(x, y)[0, 1]
    sx, sy = x.std(), y.std()
    return 2 * rho * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_lin_formula_and_differs_from_if3d_variance_product():
    rng = np.random.default_rng(0)
    x = rng.normal(0.2, 0.5, 200)
    y = 0.7 * x + rng.normal(-0.1, 0.3, 200)
    got = concordance_correlation(torch.tensor(x), torch.tensor(y)).item()
    assert got == pytest.approx(_ccc_numpy(x, y), abs=1e-6)
    # If3D's numerator 2·var_x·var_y·ρ is a different (wrong) quantity on the same data
    wrong = 2 * x.var() * y.var() * np.corrcoef(x, y)[0, 1] / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)
    assert abs(got - wrong) > 0.1


def test_ccc_penalises_bias_where_pcc_does_not():
    x = torch.linspace(-1, 1, 50, dtype=torch.float64)
    assert concordance_correlation(x, x).item() == pytest.approx(1.0, abs=1e-6)
    assert pearson_correlation(x, x + 0.5).item() == pytest.approx(1.0, abs=1e-6)
    assert concordance_correlation(x, x + 0.5).item() < 0.8


def test_pcc_matches_numpy():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=64), rng.normal(size=64)
    assert pearson_correlation(torch.tensor(x), torch.tensor(y)).item() == pytest.approx(np.corrcoef(x, y)[0, 1],
                                                                                          abs=1e-6)


def test_va_loss_masks_missing_labels_by_indexing():
    torch.manual_seed(0)
    vp = torch.randn(8, requires_grad=True)
    ap = torch.randn(8, requires_grad=True)
    v = torch.randn(8)
    a = torch.randn(8)
    has = torch.tensor([True, False, True, True, False, True, True, False])
    v[~has] = float("nan")
    a[~has] = float("nan")
    loss, n = va_loss(vp, ap, v, a, has)
    assert n == 5
    assert math.isfinite(loss.item())
    loss.backward()
    assert torch.isfinite(vp.grad).all()
    assert torch.isfinite(ap.grad).all()
    assert (vp.grad[~has] == 0).all()  # unlabelled samples get no gradient
    # equals the loss on the labelled subset alone
    idx = has.nonzero().squeeze(1)
    ref = sum(
        F.mse_loss(p[idx], t[idx]) + (1 - pearson_correlation(p[idx], t[idx]))
        + (1 - concordance_correlation(p[idx], t[idx]))
        for p, t in ((vp.detach(), v), (ap.detach(), a))
    )
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_va_loss_without_labels_is_zero_and_one_label_uses_mse_only():
    vp, ap = torch.randn(4), torch.randn(4)
    nan = torch.full((4,), float("nan"))
    loss, n = va_loss(vp, ap, nan, nan, torch.zeros(4, dtype=torch.bool))
    assert n == 0
    assert loss.item() == 0.0
    has = torch.tensor([False, True, False, False])
    v = torch.tensor([float("nan"), 0.5, float("nan"), float("nan")])
    a = torch.tensor([float("nan"), -0.5, float("nan"), float("nan")])
    loss, n = va_loss(vp, ap, v, a, has)
    assert n == 1
    assert loss.item() == pytest.approx(((vp[1] - 0.5) ** 2 + (ap[1] + 0.5) ** 2).item(), rel=1e-6)


def _if3d_output(b=6, h=3, c=7, seed=0, valence=None, arousal=None):
    g = torch.Generator().manual_seed(seed)
    pf, rf = torch.randn(b, 4, 2, 2, generator=g), torch.randn(b, 4, 2, 2, generator=g)
    return If3DOutput(
        logits=torch.randn(b, c, generator=g),
        valence=torch.randn(b, generator=g) if valence is None else valence,
        arousal=torch.randn(b, generator=g) if arousal is None else arousal,
        photo_features=pf, render_features=rf,
        photo_heads=torch.randn(h, b, 4, 2, 2, generator=g), render_heads=torch.randn(h, b, 4, 2, 2, generator=g),
        alignment=F.mse_loss(pf, rf),
    )


def _batch(label, valence=None, arousal=None, has_va=None):
    return {"label": label, "valence": valence, "arousal": arousal, "has_va": has_va}


def test_if3d_criterion_combines_named_terms_with_weights():
    out = _if3d_output()
    label = torch.tensor([0, 1, 2, 3, 4, 5])
    v, a = torch.rand(6) * 2 - 1, torch.rand(6) * 2 - 1
    has = torch.ones(6, dtype=torch.bool)
    loss = If3DCriterion()(out, _batch(label, v, a, has))
    assert list(loss.terms) == ["ce", "attention", "alignment", "va"]
    ce = F.cross_entropy(out.logits, label)
    att = attention_loss(out.photo_heads) + attention_loss(out.render_heads)
    va, _ = va_loss(out.valence, out.arousal, v, a, has)
    assert loss.terms["ce"].item() == pytest.approx(ce.item(), rel=1e-6)
    assert loss.terms["attention"].item() == pytest.approx(att.item(), rel=1e-6)
    assert loss.terms["alignment"].item() == pytest.approx(out.alignment.item(), rel=1e-6)
    expected = ce + 0.1 * att + 0.1 * out.alignment + va
    assert loss.total.item() == pytest.approx(expected.item(), rel=1e-6)
    only_ce = If3DCriterion(weights={"attention": 0.0, "alignment": 0.0, "va": 0.0})(out, _batch(label, v, a, has))
    assert only_ce.total.item() == pytest.approx(ce.item(), rel=1e-6)
    assert only_ce.terms["va"].item() == 0.0  # a zero weight skips the term


def test_ddamfn_criterion_one_stream_two_terms():
    g = torch.Generator().manual_seed(3)
    out = DDAMFNOutput(logits=torch.randn(5, 7, generator=g), features=torch.randn(5, 4, 2, 2, generator=g),
                       heads=torch.randn(2, 5, 4, 2, 2, generator=g))
    label = torch.arange(5)
    loss = DDAMFNCriterion()(out, _batch(label))
    assert list(loss.terms) == ["ce", "attention"]
    expected = F.cross_entropy(out.logits, label) + 0.1 * attention_loss(out.heads)
    assert loss.total.item() == pytest.approx(expected.item(), rel=1e-6)


def _pinned_if3d_output():
    g = torch.Generator().manual_seed(0)
    pf, rf = torch.randn(6, 4, 2, 2, generator=g), torch.randn(6, 4, 2, 2, generator=g)
    return If3DOutput(
        logits=torch.randn(6, 7, generator=g), valence=torch.randn(6, generator=g), arousal=torch.randn(6, generator=g),
        photo_features=pf, render_features=rf, photo_heads=torch.rand(3, 6, 4, 2, 2, generator=g),
        render_heads=torch.rand(3, 6, 4, 2, 2, generator=g), alignment=F.mse_loss(pf, rf),
    )


def test_if3d_and_ddamfn_loss_values_are_pinned():
    """The values the engine's loss had before the criteria were model-owned, on fixed tensors."""
    out = _pinned_if3d_output()
    v = torch.tensor([0.5, -0.2, float("nan"), 0.9, -0.7, 0.1])
    a = torch.tensor([-0.3, 0.4, float("nan"), 0.2, 0.6, -0.8])
    loss = networks.create_criterion("if3d_gate")(out, _batch(torch.arange(6), v, a, torch.isfinite(v)))
    pinned = {"ce": 2.3576929569244385, "attention": 11.448807716369629, "alignment": 2.0352160930633545,
              "va": 6.899550914764404}
    assert {k: t.item() for k, t in loss.terms.items()} == pytest.approx(pinned, rel=1e-6)
    assert loss.total.item() == pytest.approx(10.605646133422852, rel=1e-6)
    g = torch.Generator().manual_seed(3)
    photo_only = DDAMFNOutput(logits=torch.randn(5, 7, generator=g), features=torch.randn(5, 4, 2, 2, generator=g),
                              heads=torch.rand(2, 5, 4, 2, 2, generator=g))
    loss = networks.create_criterion("ddamfn")(photo_only, _batch(torch.arange(5)))
    assert {k: t.item() for k, t in loss.terms.items()} == pytest.approx(
        {"ce": 2.332223415374756, "attention": 5.481276512145996}, rel=1e-6)
    assert loss.total.item() == pytest.approx(2.8803510665893555, rel=1e-6)


def test_every_registered_model_declares_a_registered_criterion_and_weights_are_checked():
    for name in networks.list_models():
        assert networks.model_info(name).criterion in networks.list_criteria(), name
    assert networks.model_info("ddamfn").criterion == "ddamfn"
    assert networks.model_info("if3d_spp").criterion == "if3d"
    with pytest.raises(ValueError, match="has no term 'alignment'; its terms are ce, attention"):
        networks.create_criterion("ddamfn", {"alignment": 0.1})
    with pytest.raises(ValueError, match="finite and >= 0"):
        networks.create_criterion("if3d_gate", {"va": -1.0})
    assert issubclass(networks.criteria.CrossEntropyCriterion, Criterion)


def test_valence_output_is_trained_on_valence_not_arousal():
    # If3D unpacked (valence, arousal) as (arousal, valence); here outputs are matched by name.
    v = torch.linspace(-0.9, 0.9, 8)
    a = torch.linspace(0.8, -0.6, 8) ** 3
    out = _if3d_output(b=8, valence=v.clone(), arousal=a.clone())
    has = torch.ones(8, dtype=torch.bool)
    criterion = If3DCriterion()
    right = criterion(out, _batch(torch.zeros(8, dtype=torch.long), v, a, has)).terms["va"].item()
    swapped = criterion(out, _batch(torch.zeros(8, dtype=torch.long), a, v, has)).terms["va"].item()
    assert right == pytest.approx(0.0, abs=1e-5)
    assert swapped > 1.0


def test_label_smoothing_of_the_cross_entropy_term():
    out = _if3d_output()
    label = torch.tensor([0, 1, 2, 3, 4, 5])
    smoothed = If3DCriterion(label_smoothing=0.1)(out, _batch(label)).terms["ce"]
    assert smoothed.item() == pytest.approx(F.cross_entropy(out.logits, label, label_smoothing=0.1).item(), rel=1e-6)
    assert smoothed.item() != pytest.approx(If3DCriterion()(out, _batch(label)).terms["ce"].item())
    with pytest.raises(ValueError, match="label smoothing must be in"):
        DDAMFNCriterion(label_smoothing=1.0)
