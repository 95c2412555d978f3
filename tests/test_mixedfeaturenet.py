"""MixedFeatureNet: shapes, building blocks, original-key remapping and the pickled reference backbone."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from networks.mixedfeaturenet import (
    CoordinateAttention,
    MixedDepthwiseConv,
    MixedFeatureNet,
    remap_original_mfn_keys,
)
from networks.weights import load_state_dict_checked, load_weights


def test_shapes_and_unit_norm_embedding():
    torch.manual_seed(0)
    model = MixedFeatureNet().eval()
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        feats = model.forward_features(x)
        emb = model(x)
    assert feats.shape == (2, 512, 7, 7)
    assert emb.shape == (2, 256)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_without_embedding_head_returns_feature_map():
    model = MixedFeatureNet(embedding_size=None).eval()
    assert not any(k.startswith(("gdc.", "embedding")) for k in model.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 3, 112, 112)).shape == (1, 512, 7, 7)
    with pytest.raises(RuntimeError, match="without an embedding head"):
        model.forward_head(torch.randn(1, 512, 7, 7))


def test_mixed_depthwise_conv_convolves_each_group_with_its_kernel():
    torch.manual_seed(0)
    conv = MixedDepthwiseConv(6, kernel_sizes=(3, 5), split_chs=(4, 2), stride=2)
    x = torch.randn(2, 6, 9, 9)
    expected = torch.cat(
        [
            F.conv2d(x[:, :4], conv.convs[0].weight, stride=2, padding=1, groups=4),
            F.conv2d(x[:, 4:], conv.convs[1].weight, stride=2, padding=2, groups=2),
        ],
        dim=1,
    )
    torch.testing.assert_close(conv(x), expected)
    assert conv.convs[0].weight.shape == (4, 1, 3, 3)
    assert conv.convs[1].weight.shape == (2, 1, 5, 5)
    with pytest.raises(ValueError, match="sum to channels"):
        MixedDepthwiseConv(6, (3, 5), (4, 4))


def test_unused_mixconv_norm_is_frozen_and_has_no_effect():
    """The original MDConv owns a BN and a PReLU it never applies; ours keeps them frozen and inert."""
    torch.manual_seed(0)
    conv = MixedDepthwiseConv(8, (3, 5), (6, 2)).eval()
    x = torch.randn(1, 8, 7, 7)
    before = conv(x)
    with torch.no_grad():
        conv.unused_bn.weight.mul_(3.0)
        conv.unused_prelu.weight.fill_(-2.0)
    torch.testing.assert_close(conv(x), before)
    assert not any(p.requires_grad for p in conv.unused_bn.parameters())
    assert not any(p.requires_grad for p in conv.unused_prelu.parameters())


def test_coordinate_attention_matches_hand_computation():
    torch.manual_seed(0)
    ca = CoordinateAttention(16).eval()  # mip = max(8, 16 // 32) = 8
    assert ca.conv_reduce.out_channels == 8
    x = torch.randn(2, 16, 5, 3)
    pooled_h = x.mean(dim=3)  # [B, C, 5]
    pooled_w = x.mean(dim=2)  # [B, C, 3]
    y = torch.cat([pooled_h, pooled_w], dim=2).unsqueeze(-1)
    y = ca.bn(ca.conv_reduce(y))
    y = y * torch.clamp(y + 3, 0, 6) / 6
    a_h = torch.sigmoid(ca.conv_h(y[:, :, :5]))  # [B, C, 5, 1]
    a_w = torch.sigmoid(ca.conv_w(y[:, :, 5:])).transpose(2, 3)  # [B, C, 1, 3]
    torch.testing.assert_close(ca(x), x * a_h * a_w)


def test_remap_handles_child_names_and_sequential_indices():
    w = torch.randn(8, 128, 1, 1)
    by_name = remap_original_mfn_keys({"conv_23.CA.conv1.weight": w, "conv_3.model.8.conv.prelu.weight": w})
    assert by_name == {"stages.0.0.attn.conv_reduce.weight": w, "stages.0.9.conv_pw.act.weight": w}
    by_index = remap_original_mfn_keys(
        {"features.4.conv_dw.mixed_depthwise_conv.2.weight": w, "features.8.prelu.weight": w},
        src_prefix="features.",
        dst_prefix="backbone.",
    )
    assert set(by_index) == {"backbone.stages.1.0.conv_dw.convs.2.weight", "backbone.conv_expand.act.weight"}
    # an unknown key is kept (marked) so strict loading reports it instead of dropping it
    assert remap_original_mfn_keys({"conv_99.weight": w}) == {"<unmapped>.conv_99.weight": w}


def test_every_spec_key_is_accounted_for(spec_dir):
    """A synthetic checkpoint built from the original's key → shape spec loads strictly."""
    spec = json.loads((spec_dir / "state_dict_specs.json").read_text())["MixedFeatureNet"]
    sd = {
        k: torch.full(shape, float(i)) if k.split(".")[-1] != "num_batches_tracked" else torch.tensor(i)
        for i, (k, shape) in enumerate(spec.items())
    }
    model = MixedFeatureNet()
    report = load_state_dict_checked(model, sd, source="mfn_module")
    assert report.ok
    assert len(report.loaded) == len(spec) == len(model.state_dict())
    own = model.state_dict()
    i = list(spec).index("conv_45.CA.conv3.weight")
    assert torch.equal(own["stages.2.0.attn.conv_w.weight"], torch.full(spec["conv_45.CA.conv3.weight"], float(i)))


def test_pickled_module_reproduces_reference(spec_dir):
    ref = torch.load(spec_dir / "mfn_reference.pt", weights_only=True)
    model = MixedFeatureNet().eval()
    report = load_weights(model, spec_dir / "mfn_pickled_module.pth")
    assert report.source == "mfn_module"
    assert report.ok
    assert report.discarded == []
    with torch.no_grad():
        feats = model.forward_features(ref["input"])
        emb = model.forward_head(feats)
    torch.testing.assert_close(feats, ref["features_7x7"], atol=1e-4, rtol=0)
    torch.testing.assert_close(emb, ref["embedding"], atol=1e-4, rtol=0)
