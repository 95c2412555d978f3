"""Fusion modules (networks/fusion/): shapes, If3D's exact computations, and whether they learn."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from networks.fusion import (
    CrossAttentionFusion,
    GateFusion,
    If3DAttentionFusion,
    LinearFusion,
    SPPFusion,
    create_fusion,
    sincos_position_2d,
)

IF3D_STRATEGIES = ("linear", "attention", "gate", "spp")

EXPECTED_OUT = {"linear": 1024, "attention": 512, "gate": 25088, "spp": 21504}


@pytest.fixture
def maps():
    generator = torch.Generator().manual_seed(0)
    photo = torch.randn(3, 512, 7, 7, generator=generator)
    render = torch.randn(3, 512, 7, 7, generator=generator)
    return photo, render


def _randomise_bn(module: torch.nn.Module, seed: int = 1) -> None:
    """Non-trivial BatchNorm statistics and affine parameters, so eval-mode BN is not the identity."""
    generator = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=generator) * 0.1)


def _depthwise_reference(module, x):
    """If3D ``Linear_block``: depthwise conv (no bias) + eval-mode BatchNorm, written out."""
    conv, bn = module.depthwise.conv, module.depthwise.bn
    y = F.conv2d(x, conv.weight, None, padding=conv.padding, groups=conv.groups)
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


@pytest.mark.parametrize("strategy", IF3D_STRATEGIES)
@pytest.mark.parametrize("faithful", [False, True])
def test_output_width(strategy, faithful, maps):
    module = create_fusion(strategy, faithful=faithful).eval()
    out = module(*maps)
    assert module.out_features == EXPECTED_OUT[strategy]
    assert out.shape == (3, EXPECTED_OUT[strategy])
    assert torch.isfinite(out).all()


def test_attention_strategy_picks_improved_by_default():
    assert isinstance(create_fusion("attention"), CrossAttentionFusion)
    assert isinstance(create_fusion("attention", faithful=True), If3DAttentionFusion)
    with pytest.raises(KeyError, match="unknown fusion strategy 'concat'; known: attention, gate, linear, spp"):
        create_fusion("concat")


def test_bad_maps_are_rejected(maps):
    photo, render = maps
    module = LinearFusion()
    with pytest.raises(ValueError, match="differ in shape"):
        module(photo, render[:, :, :6])
    with pytest.raises(ValueError, match="expected 512 channels"):
        module(photo[:, :256], render[:, :256])
    with pytest.raises(ValueError, match="7×7"):
        GateFusion()(photo[:, :, :5, :5], render[:, :, :5, :5])
    with pytest.raises(ValueError, match="4-D"):
        SPPFusion()(photo[0], render[0])


@torch.no_grad()
def test_linear_fusion_matches_if3d(maps):
    photo, render = maps
    module = LinearFusion().eval()
    _randomise_bn(module)
    expected = torch.cat([_depthwise_reference(module, photo), _depthwise_reference(module, render)], 1)
    torch.testing.assert_close(module(photo, render), expected.flatten(1))


@torch.no_grad()
def test_gate_fusion_matches_if3d(maps):
    photo, render = maps
    module = GateFusion().eval()
    _randomise_bn(module)
    p, r = _depthwise_reference(module, photo), _depthwise_reference(module, render)
    gate = torch.sigmoid(F.conv2d(torch.cat([p, r], 1), module.gate.weight, module.gate.bias))
    torch.testing.assert_close(module(photo, render), (gate * p + (1 - gate) * r).reshape(3, -1))
    # A saturated gate passes the photo through unchanged.
    module.gate.bias.fill_(50.0)
    torch.testing.assert_close(module(photo, render), p.reshape(3, -1))


@torch.no_grad()
def test_spp_fusion_order_matches_if3d(maps):
    photo, render = maps
    module = SPPFusion().eval()
    _randomise_bn(module)
    parts = []
    for x in (photo, render):
        y = _depthwise_reference(module, x)
        parts += [F.adaptive_max_pool2d(y, (level, level)).reshape(3, -1) for level in (1, 2, 4)]
    torch.testing.assert_close(module(photo, render), torch.cat(parts, 1))


@torch.no_grad()
def test_if3d_attention_is_value_plus_photo(maps):
    """If3D's softmax runs over one element: the output is value_conv(render) + photo, whatever q, k."""
    photo, render = maps
    module = If3DAttentionFusion().eval()
    _randomise_bn(module)
    p, r = _depthwise_reference(module, photo), _depthwise_reference(module, render)
    expected = F.conv2d(r, module.value_conv.weight, module.value_conv.bias) + p
    out = module(photo, render)
    torch.testing.assert_close(out, expected.flatten(1))
    module.query_conv.weight.normal_()
    module.key_conv.bias.normal_()
    torch.testing.assert_close(module(photo, render), out, rtol=0, atol=0)


def test_if3d_attention_query_key_never_learn(maps):
    module = If3DAttentionFusion().train()
    module(*maps).square().mean().backward()
    for name in ("query_conv", "key_conv"):
        conv = getattr(module, name)
        assert torch.count_nonzero(conv.weight.grad) == 0, name
        assert torch.count_nonzero(conv.bias.grad) == 0, name
    assert module.value_conv.weight.grad.abs().sum() > 0


def test_cross_attention_learns_and_attends(maps):
    photo, render = maps
    module = CrossAttentionFusion().train()
    module(photo, render).square().mean().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name
    module.eval()
    with torch.no_grad():
        weights = module.attention_weights(photo, render)
        assert weights.shape == (3, 8, 49, 49)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, 8, 49))
        # Not the uniform (or one-element) attention of a degenerate design.
        assert weights.std(dim=-1).mean() > 1e-3
        out = module(photo, render)
        assert not torch.allclose(out, module(photo, torch.flip(render, dims=(-1,))))


def test_sincos_position_2d():
    code = sincos_position_2d(7, 7, 512)
    assert code.shape == (49, 512)
    assert code.abs().max() <= 1.0
    # Distinct positions get distinct codes; the first quarter depends on the row only.
    assert torch.cdist(code, code).add(torch.eye(49) * 10).min() > 0.1
    torch.testing.assert_close(code[0, :128], code[6, :128])
    assert not torch.allclose(code[0, :128], code[7, :128])
    with pytest.raises(ValueError, match="multiple of 4"):
        sincos_position_2d(7, 7, 10)
