"""DDAMFN: forward contract, parameter count, attention loss, and the original checkpoint's numbers."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from networks import create_model
from networks.ddamfn import ATTENTION_LOSS_EPS, DDAMFN, DDAHead, attention_loss
from networks.outputs import DDAMFNOutput
from networks.weights import load_state_dict_checked, load_weights


def test_forward_returns_typed_output_with_documented_shapes():
    torch.manual_seed(0)
    model = create_model("ddamfn", num_classes=7, num_heads=3).eval()
    assert isinstance(model, DDAMFN)
    assert model.input_streams == ("photo",)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 112, 112))
    assert isinstance(out, DDAMFNOutput)
    assert out.logits.shape == (2, 7)
    assert out.features.shape == (2, 512, 7, 7)
    assert out.heads.shape == (3, 2, 512, 7, 7)
    assert out.heads.min() > 0
    assert out.heads.max() < 1
    # the heads are combined by their maximum; all-ones heads reduce the head to gdc → fc
    with torch.no_grad():
        plain = model.fc(model.gdc(out.features).flatten(1))
        torch.testing.assert_close(model.forward_head(out.features, torch.ones_like(out.heads)), plain)
        torch.testing.assert_close(model.forward_head(out.features, out.heads), out.logits)


def test_builder_rejects_unknown_arguments():
    with pytest.raises(TypeError, match="num_class"):
        create_model("ddamfn", num_class=8)
    with pytest.raises(ValueError, match="num_heads"):
        DDAMFN(num_classes=8, num_heads=0)


def test_parameter_count_matches_original():
    """DDAMNet(num_class=8, num_head=2) has 4.19 M parameters (4,187,936 by its state-dict spec)."""
    model = DDAMFN(num_classes=8, num_heads=2)
    total = sum(p.numel() for p in model.parameters())
    assert total == 4_187_936
    assert round(total / 1e6, 2) == 4.19
    # parameters the original builds but never uses are frozen (no gradient in the original either)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert total - trainable == 29_184 + 2 * 26_112 + 16


def test_unused_head_block_does_not_affect_the_attention_map():
    torch.manual_seed(0)
    head = DDAHead().eval()
    x = torch.randn(1, 512, 7, 7)
    before = head(x)
    with torch.no_grad():
        head.unused_gdc.conv.weight.mul_(5.0)
    torch.testing.assert_close(head(x), before)


def test_attention_loss_on_hand_computed_tensors():
    zeros = torch.zeros(2, 3, 2, 2, dtype=torch.float64)
    # two heads differing by 0.5 everywhere: one pair, MSE 0.25 → 1 / 0.25 = 4
    two = torch.stack([zeros, zeros + 0.5])
    assert attention_loss(two).item() == pytest.approx(4.0, rel=1e-12)
    # three heads 0, 0.5, 1: pairs (0.25, 1.0, 0.25) → 3 / 1.5 = 2, list input works too
    assert attention_loss([zeros, zeros + 0.5, zeros + 1.0]).item() == pytest.approx(2.0, rel=1e-12)
    # MSE is the mean over all elements: one element off by 2 in 24 → 4 / 24
    a = zeros.clone()
    a[0, 0, 0, 0] = 2.0
    assert attention_loss(torch.stack([zeros, a])).item() == pytest.approx(24 / 4, rel=1e-12)
    # identical heads: P / eps with the original's eps = sys.float_info.epsilon
    assert ATTENTION_LOSS_EPS == sys.float_info.epsilon
    assert attention_loss(torch.stack([zeros, zeros])).item() == pytest.approx(1 / sys.float_info.epsilon)
    # a single head gives 0
    assert attention_loss(zeros.unsqueeze(0)).item() == 0.0


def test_attention_loss_gradient_pushes_heads_apart():
    heads = torch.tensor([[0.2, 0.4], [0.3, 0.1]], requires_grad=True)
    attention_loss(heads).backward()
    # d/dh0 of 1/mse is negative along (h0 - h1): a descent step moves the heads apart
    direction = (heads[0] - heads[1]).detach()
    assert torch.dot(heads.grad[0], direction) < 0


@pytest.mark.parametrize(("spec_name", "num_classes"), [("DDAMNet_c7_h2", 7), ("DDAMNet_c8_h2", 8)])
def test_every_spec_key_is_accounted_for(spec_dir, spec_name, num_classes):
    spec = json.loads((spec_dir / "state_dict_specs.json").read_text())[spec_name]
    sd = {
        k: torch.zeros(shape, dtype=torch.long if k.endswith("num_batches_tracked") else torch.float32)
        for k, shape in spec.items()
    }
    model = DDAMFN(num_classes=num_classes, num_heads=2)
    report = load_state_dict_checked(model, sd, source="ddamfn")
    assert report.ok
    assert len(report.loaded) == len(spec) == len(model.state_dict())


def test_original_checkpoint_reproduces_reference(spec_dir):
    ref = torch.load(spec_dir / "ddamnet8_reference.pt", weights_only=True)
    model = DDAMFN(num_classes=8, num_heads=2).eval()
    report = load_weights(model, spec_dir / "ddamnet8_checkpoint.pth")
    assert report.source == "ddamfn"
    assert report.ok
    assert report.metadata["iter"] == 25
    with torch.no_grad():
        out = model(ref["input"])
    torch.testing.assert_close(out.logits, ref["logits"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.features, ref["features_7x7"], atol=1e-4, rtol=0)
    torch.testing.assert_close(out.heads, ref["heads"], atol=1e-4, rtol=0)
