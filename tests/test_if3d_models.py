"""If3D two-stream models (networks/if3d.py): If3D's layouts, forward pass, output columns, learning.

Facts checked here come from ``../shared/spec/state_dict_specs.json`` (key → shape of If3D's four
classes, 8 classes, 4 heads) and from If3D's ``networks/DDAM_smirkpic_fusion.py`` (the reference
forward below is written from its description, on If3D's own key names).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, read_image
from torchvision.transforms import functional as TF

import networks
from if3d.classes import canonical_label
from networks.ddamfn import DDAHead
from networks.fusion import fusion_spec
from networks.if3d import If3DNet, infer_if3d_config
from networks.mixedfeaturenet import IMAGENET_MEAN, IMAGENET_STD

SPEC_NAMES = {
    "linear": "DDAMNet_Smirk_Spatial_Alignment_c8_h4",
    "attention": "DDAMNet_Smirk_Spatial_Alignment_AttentionFusion_c8_h4",
    "gate": "DDAMNet_Smirk_Spatial_Alignment_GateFusion_c8_h4",
    "spp": "DDAMNet_Smirk_Spatial_Alignment_SPPFusion_c8_h4",
}
# The table (faithful, 8 classes, 4 heads), in millions, and the exact counts of the spec.
PARAMS_M = {"linear": 19.21, "attention": 22.35, "gate": 72.85, "spp": 64.99}
PARAMS_EXACT = {"linear": 19_214_194, "attention": 22_346_394, "gate": 72_854_042, "spp": 64_989_210}
STRATEGIES = tuple(SPEC_NAMES)
NUM_CLASSES = 8


@pytest.fixture(scope="module")
def specs(spec_dir: Path) -> dict:
    return json.loads((spec_dir / "state_dict_specs.json").read_text())


def synthetic_state_dict(shapes: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random tensors of the spec shapes (BN variances positive, counters int64)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7, dtype=torch.int64)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            out[key] = torch.randn(shape, generator=generator)
    return out


def shapes_of(state_dict) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in state_dict.items()}


def check_within_prefixes(model, mapped, prefixes) -> None:
    """What ``load_weights`` checks: inside ``prefixes`` no key missing, none unexpected, no shape differs."""
    own = shapes_of(model.state_dict())
    inside = own if prefixes is None else {k: s for k, s in own.items() if k.startswith(tuple(prefixes))}
    assert inside, "the prefixes match no model key"
    assert set(mapped) == set(inside)
    assert all(tuple(v.shape) == own[k] for k, v in mapped.items())


def randomise_batchnorm(model: torch.nn.Module, seed: int = 3) -> None:
    """Non-trivial BN statistics and affine parameters everywhere (eval-mode BN is then not ~identity)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.75)
                m.bias.copy_(torch.randn(n, generator=generator) * 0.1)


def to_if3d_names(model: If3DNet, spec_shapes: dict) -> dict[str, torch.Tensor]:
    """The model's weights under If3D's key names (inverse of ``remap_state_dict(..., 'if3d')``)."""
    probe = {k: torch.empty(s) for k, s in spec_shapes.items()}
    mapped, _, _ = model.remap_state_dict(probe, "if3d")
    source_key = {id(v): k for k, v in probe.items()}
    ours = model.state_dict()
    out = {source_key[id(v)]: ours[k].clone() for k, v in mapped.items()}
    assert set(out) == set(spec_shapes)
    return out


@pytest.fixture(scope="module")
def real_batch(data_dir: Path):
    """Four real FER2013 faces (neutral, happy, sad, angry) at 112×112, ImageNet-normalised, with a
    stand-in render (grey, blurred copy; the real renders come from the render backends)."""
    root = data_dir / "fer2013" / "train"
    names = ("neutral", "happy", "sad", "angry")
    photos = []
    for name in names:
        path = sorted((root / name).glob("*.jpg"))[0]
        image = read_image(str(path), ImageReadMode.RGB)
        photos.append(TF.resize(image, [112, 112], antialias=True).float() / 255.0)
    photo = torch.stack(photos)
    render = TF.gaussian_blur(TF.rgb_to_grayscale(photo, num_output_channels=3), kernel_size=9, sigma=3.0)
    photo = TF.normalize(photo, IMAGENET_MEAN, IMAGENET_STD)
    render = TF.normalize(render, IMAGENET_MEAN, IMAGENET_STD)
    labels = torch.tensor([canonical_label(n) for n in names])
    valence = torch.tensor([0.0, 0.8, -0.6, -0.5])
    arousal = torch.tensor([0.0, 0.5, -0.3, 0.7])
    return photo, render, labels, valence, arousal


# ----------------------------------------------------------------------------------------------
# If3D layouts
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_faithful_model_has_if3d_keys_and_loads_strictly(strategy, specs):
    torch.manual_seed(0)
    spec = specs[SPEC_NAMES[strategy]]
    model = networks.create_model(f"if3d_{strategy}", faithful=True)
    source = synthetic_state_dict(spec)
    mapped, prefixes, discarded = model.remap_state_dict({"model_state_dict": source}, "if3d")
    assert prefixes is None
    assert discarded == []
    # Exactly the spec's keys (one to one) and shapes.
    assert len(mapped) == len(spec) == len(model.state_dict())
    assert shapes_of(mapped) == shapes_of(model.state_dict())
    assert sorted(tuple(s) for s in spec.values()) == sorted(shapes_of(model.state_dict()).values())
    model.load_state_dict(mapped, strict=True)
    # The values landed where If3D had them.
    own = model.state_dict()
    photo, render = ("backbone.", "backbone.") if strategy == "linear" else ("photo_backbone.", "render_backbone.")
    src_photo, src_render = ("features.", "features.") if strategy == "linear" else ("orig_features.", "smirk_features.")
    assert torch.equal(own[photo + "stem.0.conv.weight"], source[src_photo + "0.conv.weight"])
    assert torch.equal(own[render + "conv_expand.bn.running_var"], source[src_render + "8.bn.running_var"])
    assert torch.equal(own["heads.3.conv_h.weight"], source["cat_head3.CoordAtt.conv2.weight"])
    assert torch.equal(own["heads.2.conv_w.bias"], source["cat_head2.CoordAtt.conv3.bias"])
    assert torch.equal(own["fusion.depthwise.conv.weight"], source["Linear.conv.weight"])
    assert torch.equal(own["classifier.fc1.weight"], source["fc1.weight"])
    assert torch.equal(own["classifier.output.bias"], source["output.bias"])


@pytest.mark.parametrize("strategy", ["linear", "attention"])
def test_load_weights_reads_if3d_checkpoint_file(strategy, specs, tmp_path):
    weights = pytest.importorskip("networks.weights", reason="networks.weights (load_weights) not available yet")
    spec = specs[SPEC_NAMES[strategy]]
    source = synthetic_state_dict(spec, seed=1)
    path = tmp_path / f"{strategy}.pth"
    torch.save({"model_state_dict": source}, path)
    model = networks.create_model(f"if3d_{strategy}", faithful=True)
    weights.load_weights(model, path, strict=True)
    assert torch.equal(model.state_dict()["classifier.output.weight"], source["output.weight"])
    built, _ = weights.build_model_from_checkpoint(path)
    assert isinstance(built, If3DNet)
    assert (built.strategy, built.faithful) == (strategy, True)


@torch.no_grad()
def test_load_weights_mfn_module_and_ddamfn_files(spec_dir):
    """The original pickled MixedFeatureNet fills both backbones; a DDAMFN checkpoint fills the shared
    backbone, its two heads and the 7×7 depthwise block; both reproduce the original numbers."""
    weights = pytest.importorskip("networks.weights", reason="networks.weights (load_weights) not available yet")
    mfn = torch.load(spec_dir / "mfn_reference.pt")
    gate = networks.create_model("if3d_gate").eval()
    report = weights.load_weights(gate, spec_dir / "mfn_pickled_module.pth")
    assert report.prefixes == ("photo_backbone.", "render_backbone.")
    for backbone in (gate.photo_backbone, gate.render_backbone):
        torch.testing.assert_close(backbone.forward_features(mfn["input"]), mfn["features_7x7"], rtol=0, atol=1e-4)

    ddamnet = torch.load(spec_dir / "ddamnet8_reference.pt")
    linear = networks.create_model("if3d_linear", num_heads=4).eval()
    report = weights.load_weights(linear, spec_dir / "ddamnet8_checkpoint.pth")
    assert report.prefixes == ("backbone.", "heads.0.", "heads.1.", "fusion.depthwise.")
    out = linear(ddamnet["input"], ddamnet["input"])
    torch.testing.assert_close(out.photo_features, ddamnet["features_7x7"], rtol=0, atol=1e-4)
    torch.testing.assert_close(out.render_heads[:2], ddamnet["heads"], rtol=0, atol=1e-4)
    assert out.alignment == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_faithful_parameter_counts(strategy):
    model = networks.create_model(f"if3d_{strategy}", faithful=True)
    count = sum(p.numel() for p in model.parameters())
    assert count == PARAMS_EXACT[strategy]
    assert round(count / 1e6, 2) == PARAMS_M[strategy]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_infer_if3d_config(strategy, specs):
    spec = specs[SPEC_NAMES[strategy]]
    name, kwargs = infer_if3d_config({"model_state_dict": synthetic_state_dict(spec)})
    assert name == f"if3d_{strategy}"
    assert kwargs == {"num_classes": 8, "num_heads": 4, "faithful": True}


def test_infer_if3d_config_rejects_other_formats(specs):
    with pytest.raises(ValueError, match="not an If3D state dict"):
        infer_if3d_config(synthetic_state_dict(specs["DDAMNet_c8_h2"]))
    with pytest.raises(ValueError, match="not an If3D state dict"):
        infer_if3d_config(synthetic_state_dict(specs["MixedFeatureNet"]))


def test_improved_attention_takes_what_corresponds(specs):
    source = synthetic_state_dict(specs[SPEC_NAMES["attention"]])
    model = networks.create_model("if3d_attention")
    mapped, prefixes, discarded = model.remap_state_dict(source, "if3d")
    assert sorted(discarded) == sorted(k for k in source if k.startswith("attention_fusion."))
    assert "fusion.depthwise." in prefixes
    assert not any(p.startswith("fusion.") and p != "fusion.depthwise." for p in prefixes)
    check_within_prefixes(model, mapped, prefixes)
    # The improved linear model drops only If3D's unused Smirk_Linear.
    linear = networks.create_model("if3d_linear")
    mapped, prefixes, discarded = linear.remap_state_dict(synthetic_state_dict(specs[SPEC_NAMES["linear"]]), "if3d")
    assert prefixes is None
    assert discarded == ["Smirk_Linear.weight"]
    check_within_prefixes(linear, mapped, prefixes)


def test_other_strategy_checkpoint_fills_backbones_and_heads(specs):
    model = networks.create_model("if3d_gate", num_heads=4)
    mapped, prefixes, discarded = model.remap_state_dict(synthetic_state_dict(specs[SPEC_NAMES["linear"]]), "if3d")
    assert prefixes == ["photo_backbone.", "render_backbone.", "heads."]
    check_within_prefixes(model, mapped, prefixes)
    assert "fc1.weight" in discarded
    # If3D's separate backbones cannot go into one shared backbone.
    shared = networks.create_model("if3d_spp", shared_backbone=True)
    with pytest.raises(ValueError, match="shared_backbone=False"):
        shared.remap_state_dict(synthetic_state_dict(specs[SPEC_NAMES["spp"]]), "if3d")


@pytest.mark.parametrize(("strategy", "backbones"), [("linear", ["backbone."]), ("gate", ["photo_backbone.", "render_backbone."])])
def test_remap_mfn_module_into_each_backbone(strategy, backbones, specs):
    source = synthetic_state_dict(specs["MixedFeatureNet"])
    model = networks.create_model(f"if3d_{strategy}")
    mapped, prefixes, discarded = model.remap_state_dict(source, "mfn_module")
    assert prefixes == backbones
    check_within_prefixes(model, mapped, prefixes)
    # the embedding head (conv_6_dw, linear, bn) is left out, as If3D's children()[:-4]
    assert {k.split(".")[0] for k in discarded} == {"conv_6_dw", "linear", "bn"}
    for prefix in backbones:
        assert torch.equal(mapped[prefix + "stem.0.conv.weight"], source["conv1.conv.weight"])


def test_remap_ddamfn_checkpoint(specs):
    source = synthetic_state_dict(specs["DDAMNet_c8_h2"])
    linear = networks.create_model("if3d_linear", num_heads=4)
    mapped, prefixes, discarded = linear.remap_state_dict({"iter": 3, "model_state_dict": source}, "ddamfn")
    assert prefixes == ["backbone.", "heads.0.", "heads.1.", "fusion.depthwise."]
    check_within_prefixes(linear, mapped, prefixes)
    assert sorted({k.split(".")[0] for k in discarded}) == ["bn", "fc"]
    # Gate's depthwise conv is 3×3: DDAMFN's 7×7 block does not fit and is left out.
    gate = networks.create_model("if3d_gate", num_heads=1)
    mapped, prefixes, discarded = gate.remap_state_dict(source, "ddamfn")
    assert prefixes == ["photo_backbone.", "render_backbone.", "heads.0."]
    check_within_prefixes(gate, mapped, prefixes)
    assert "Linear.conv.weight" in discarded
    assert "cat_head1.CoordAtt.conv1.weight" in discarded


# ----------------------------------------------------------------------------------------------
# Forward pass
# ----------------------------------------------------------------------------------------------
def _bn(x, sd, p):
    return F.batch_norm(
        x, sd[p + "running_mean"], sd[p + "running_var"], sd[p + "weight"], sd[p + "bias"], False, 0.0, 1e-5
    )


def _linear_block(x, sd, p, padding=0):
    weight = sd[p + "conv.weight"]
    return _bn(F.conv2d(x, weight, None, padding=padding, groups=weight.shape[0]), sd, p + "bn.")


def _coord_att(x, sd, p):
    """If3D ``CoordAtt.forward`` (eval mode), on If3D key names."""
    _, _, h, w = x.shape
    x_h = _linear_block(x, sd, p + "Linear_h.")
    x_w = _linear_block(x, sd, p + "Linear_w.").permute(0, 1, 3, 2)
    y = _bn(F.conv2d(torch.cat([x_h, x_w], 2), sd[p + "conv1.weight"], sd[p + "conv1.bias"]), sd, p + "bn1.")
    y = y * F.relu6(y + 3) / 6
    x_h, x_w = torch.split(y, [h, w], dim=2)
    x_h = torch.sigmoid(F.conv2d(x_h, sd[p + "conv2.weight"], sd[p + "conv2.bias"]))
    x_w = torch.sigmoid(F.conv2d(x_w.permute(0, 1, 3, 2), sd[p + "conv3.weight"], sd[p + "conv3.bias"]))
    return x_w.expand(-1, -1, h, w) * x_h.expand(-1, -1, h, w)


def if3d_reference_head(strategy, sd, photo_features, render_features, num_heads=4):
    """If3D's forward after the backbones (eval mode), from ``DDAM_smirkpic_fusion.py``, on If3D keys."""
    ys = []
    for x in (photo_features, render_features):
        heads = [_coord_att(x, sd, f"cat_head{i}.CoordAtt.") for i in range(num_heads)]
        y = heads[0]
        for h in heads[1:]:
            y = torch.max(y, h)
        ys.append(x * y)
    padding = 0 if strategy in ("linear", "attention") else 1
    o, s = (_linear_block(y, sd, "Linear.", padding) for y in ys)
    b = o.shape[0]
    if strategy == "linear":
        y = torch.cat([o, s], 1).view(b, -1)
    elif strategy == "attention":
        q = F.conv2d(o, sd["attention_fusion.query_conv.weight"], sd["attention_fusion.query_conv.bias"])
        k = F.conv2d(s, sd["attention_fusion.key_conv.weight"], sd["attention_fusion.key_conv.bias"])
        v = F.conv2d(s, sd["attention_fusion.value_conv.weight"], sd["attention_fusion.value_conv.bias"])
        n = o.shape[2] * o.shape[3]
        attention = torch.softmax(torch.bmm(q.view(b, -1, n).permute(0, 2, 1), k.view(b, -1, n)), dim=-1)
        y = (torch.bmm(v.view(b, -1, n), attention.permute(0, 2, 1)).view(o.shape) + o).view(b, -1)
    elif strategy == "gate":
        g = torch.sigmoid(F.conv2d(torch.cat([o, s], 1), sd["gate_fusion.gate_fc.0.weight"], sd["gate_fusion.gate_fc.0.bias"]))
        y = (g * o + (1 - g) * s).view(b, -1)
    else:
        pyramid = [F.adaptive_max_pool2d(t, (lv, lv)).view(b, -1) for t in (o, s) for lv in (1, 2, 4)]
        y = torch.cat(pyramid, 1)
    for i in range(1, 5):
        y = F.leaky_relu(_bn(F.linear(y, sd[f"fc{i}.weight"], sd[f"fc{i}.bias"]), sd, f"bn{i}."), 0.2)
    return F.linear(y, sd["output.weight"], sd["output.bias"])


@pytest.mark.parametrize("strategy", STRATEGIES)
@torch.no_grad()
def test_faithful_forward_matches_if3d(strategy, specs, real_batch):
    """A model loaded from If3D-named weights computes If3D's forward, column for column."""
    spec = specs[SPEC_NAMES[strategy]]
    torch.manual_seed(1)
    donor = networks.create_model(f"if3d_{strategy}", faithful=True)
    randomise_batchnorm(donor)
    sd = to_if3d_names(donor, spec)
    model = networks.create_model(f"if3d_{strategy}", faithful=True)
    mapped, _, _ = model.remap_state_dict(sd, "if3d")
    model.load_state_dict(mapped, strict=True)
    model.eval()
    photo, render = real_batch[:2]
    out = model(photo, render)
    reference = if3d_reference_head(strategy, sd, out.photo_features, out.render_features)
    assert reference.std() > 1e-3
    torch.testing.assert_close(out.logits, reference[:, :NUM_CLASSES], rtol=1e-4, atol=1e-5)
    # If3D's column 8 (named `arousal` in its forward, trained on the valence annotation) is our valence.
    torch.testing.assert_close(out.valence, reference[:, NUM_CLASSES], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.arousal, reference[:, NUM_CLASSES + 1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.alignment, F.mse_loss(out.photo_features, out.render_features))
    assert out.photo_heads.shape == out.render_heads.shape == (4, 4, 512, 7, 7)


@torch.no_grad()
def test_output_columns_of_an_if3d_checkpoint(specs):
    """Rows 0..7 → logits, row 8 (If3D's `arousal`, fitted to valence) → valence, row 9 → arousal."""
    torch.manual_seed(5)
    source = to_if3d_names(networks.create_model("if3d_linear", faithful=True), specs[SPEC_NAMES["linear"]])
    source["output.weight"] = torch.zeros(10, 2048)
    source["output.bias"] = torch.arange(10, dtype=torch.float32) * 10.0
    model = networks.create_model("if3d_linear", faithful=True)
    model.load_state_dict(model.remap_state_dict(source, "if3d")[0], strict=True)
    x = torch.randn(2, 3, 112, 112)
    out = model.eval()(x, x)
    torch.testing.assert_close(out.logits, torch.arange(8.0).mul(10).expand(2, 8))
    torch.testing.assert_close(out.valence, torch.full((2,), 80.0))
    torch.testing.assert_close(out.arousal, torch.full((2,), 90.0))
    # Without VA outputs the model keeps the expression rows only.
    plain = networks.create_model("if3d_linear", va_outputs=False)
    mapped, prefixes, _ = plain.remap_state_dict(source, "if3d")
    check_within_prefixes(plain, mapped, prefixes)
    plain.load_state_dict(mapped, strict=True)
    out = plain.eval()(x, x)
    assert out.valence is None
    assert out.arousal is None
    torch.testing.assert_close(out.logits, torch.arange(8.0).mul(10).expand(2, 8))


@pytest.mark.parametrize(("name", "kwargs"), [("if3d_linear", {"faithful": True}), ("if3d_attention", {})])
@torch.no_grad()
def test_eval_mode_is_deterministic(name, kwargs, real_batch):
    torch.manual_seed(2)
    model = networks.create_model(name, **kwargs).eval()
    photo, render = real_batch[:2]
    first, second = model(photo, render), model(photo, render)
    for field in ("logits", "valence", "arousal", "photo_heads", "alignment"):
        assert torch.equal(getattr(first, field), getattr(second, field)), field
    assert first.logits.shape == (4, 8)
    assert first.valence.shape == first.arousal.shape == (4,)


@torch.no_grad()
def test_dda_heads_are_shared_between_streams(real_batch):
    torch.manual_seed(3)
    model = networks.create_model("if3d_spp", num_heads=3).eval()
    heads = [m for m in model.modules() if isinstance(m, DDAHead)]
    assert len(heads) == 3
    assert all(a is b for a, b in zip(heads, model.heads))
    assert sorted({k.split(".")[1] for k in model.state_dict() if k.startswith("heads.")}) == ["0", "1", "2"]
    out = model(*real_batch[:2])
    for i, head in enumerate(model.heads):
        torch.testing.assert_close(out.photo_heads[i], head(out.photo_features))
        torch.testing.assert_close(out.render_heads[i], head(out.render_features))
    # Backbones: one for linear (If3D's `features`), two for the other strategies.
    assert not hasattr(model, "backbone")
    assert model.photo_backbone is not model.render_backbone
    linear = networks.create_model("if3d_linear")
    assert linear.shared_backbone
    assert not hasattr(linear, "photo_backbone")


def test_bad_configuration_and_inputs_are_rejected():
    with pytest.raises(ValueError, match="shared_backbone"):
        networks.create_model("if3d_gate", faithful=True, shared_backbone=True)
    with pytest.raises(ValueError, match="dropout"):
        networks.create_model("if3d_linear", faithful=True, dropout=0.1)
    with pytest.raises(ValueError, match="va_outputs"):
        networks.create_model("if3d_linear", faithful=True, va_outputs=False)
    with pytest.raises(ValueError, match="unknown If3D fusion strategy"):
        If3DNet("concat")
    model = networks.create_model("if3d_linear")
    assert model.classifier.dropout_rates == fusion_spec("linear").dropout
    with pytest.raises(ValueError, match=r"render must be \[B, 3, 112, 112\]"):
        model(torch.zeros(1, 3, 112, 112), torch.zeros(1, 3, 96, 96))
    with pytest.raises(ValueError, match="normalised float"):
        model(torch.zeros(1, 3, 112, 112, dtype=torch.uint8), torch.zeros(1, 3, 112, 112, dtype=torch.uint8))


# ----------------------------------------------------------------------------------------------
# Learning: every fusion parameter gets a gradient (If3D's attention fusion does not)
# ----------------------------------------------------------------------------------------------
def _one_backward(model, real_batch):
    photo, render, labels, valence, arousal = real_batch
    model.train()
    out = model(photo, render)
    loss = F.cross_entropy(out.logits, labels) + F.mse_loss(out.valence, valence) + F.mse_loss(out.arousal, arousal)
    loss.backward()
    return out


def _fusion_parameters_without_gradient(model) -> list[str]:
    return [
        name
        for name, p in model.fusion.named_parameters()
        if p.grad is None or torch.count_nonzero(p.grad) == 0
    ]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("if3d_attention", {}), ("if3d_linear", {}), ("if3d_gate", {}), ("if3d_spp", {})],
)
def test_every_fusion_parameter_learns_on_a_real_batch(name, kwargs, real_batch):
    torch.manual_seed(4)
    model = networks.create_model(name, **kwargs)
    _one_backward(model, real_batch)
    assert _fusion_parameters_without_gradient(model) == []
    # No trainable parameter anywhere is left out of the graph (DDP needs no find_unused_parameters).
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []


def test_if3d_attention_fusion_fails_the_gradient_test(real_batch):
    """The same check on If3D's attention fusion: query and key convolutions get exactly zero gradient."""
    torch.manual_seed(4)
    model = networks.create_model("if3d_attention", faithful=True)
    _one_backward(model, real_batch)
    assert _fusion_parameters_without_gradient(model) == [
        "query_conv.weight",
        "query_conv.bias",
        "key_conv.weight",
        "key_conv.bias",
    ]
    assert torch.count_nonzero(model.fusion.value_conv.weight.grad) > 0
