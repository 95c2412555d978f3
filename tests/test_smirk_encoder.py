"""SMIRK encoder: key layout against the official checkpoint spec, strict loading, output post-processing."""

from __future__ import annotations

import json

import pytest
import torch
from synthetic_smirk import cached_synthetic_checkpoint

from networks.smirk.encoder import (
    CHECKPOINT_PREFIX,
    NUM_EXPRESSION,
    SmirkEncoder,
    load_smirk_encoder,
)
from networks.weights import CheckpointFormatError, WeightLoadError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def spec_path(spec_dir):
    return spec_dir / "smirk_encoder_state_dict_spec.json"


@pytest.fixture(scope="module")
def spec(spec_path):
    return json.loads(spec_path.read_text())


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, spec_path):
    return cached_synthetic_checkpoint(tmp_path_factory, spec_path)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return SmirkEncoder().eval()


def test_state_dict_matches_official_spec(encoder, spec):
    """timm >= 1.0 builds exactly the keys and shapes of SMIRK_em1.pt's encoder half."""
    ours = {CHECKPOINT_PREFIX + k: list(v.shape) for k, v in encoder.state_dict().items()}
    assert len(spec) == 762
    assert set(ours) == set(spec), (sorted(set(ours) - set(spec))[:5], sorted(set(spec) - set(ours))[:5])
    wrong = {k: (ours[k], spec[k]) for k in spec if ours[k] != spec[k]}
    assert not wrong
    heads = {
        "pose_encoder.pose_cam_layers.0.weight": [6, 576],
        "shape_encoder.shape_layers.0.weight": [300, 960],
        "expression_encoder.expression_layers.0.weight": [55, 960],
    }
    for key, shape in heads.items():
        assert list(encoder.state_dict()[key].shape) == shape


def test_loads_synthetic_checkpoint_strictly(checkpoint):
    path, state = checkpoint
    model, report = load_smirk_encoder(path)
    assert report.ok
    assert len(report.loaded) == 762
    assert sorted(report.discarded) == sorted(k for k in state if k.startswith("smirk_generator."))
    assert not model.training
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith(CHECKPOINT_PREFIX):
            assert torch.equal(own[key[len(CHECKPOINT_PREFIX) :]], value), key


@pytest.mark.parametrize("defect", ["missing", "unexpected", "wrong_shape"])
def test_mismatched_checkpoint_is_refused_naming_the_key(tmp_path, checkpoint, defect):
    _, state = checkpoint
    state = dict(state)
    key = "smirk_encoder.shape_encoder.shape_layers.0.weight"
    if defect == "missing":
        del state[key]
    elif defect == "unexpected":
        key = "smirk_encoder.shape_encoder.extra_layer.weight"
        state[key] = torch.zeros(3)
    else:
        state[key] = torch.zeros(299, 960)
    path = tmp_path / "SMIRK_bad.pt"
    torch.save(state, path)
    model = SmirkEncoder()
    before = model.state_dict()["expression_encoder.expression_layers.0.bias"].clone()
    with pytest.raises(WeightLoadError) as info:
        load_smirk_encoder(path, model=model)
    message = str(info.value)
    assert str(path) in message
    assert key[len(CHECKPOINT_PREFIX) :] in message
    # strict loading leaves the model untouched
    assert torch.equal(model.state_dict()["expression_encoder.expression_layers.0.bias"], before)


def test_missing_or_malformed_checkpoint_names_the_file(tmp_path):
    missing = tmp_path / "nope" / "SMIRK_em1.pt"
    with pytest.raises(FileNotFoundError, match="SMIRK_em1.pt"):
        load_smirk_encoder(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a torch file at all")
    with pytest.raises(CheckpointFormatError, match="corrupt.pt"):
        load_smirk_encoder(corrupt)
    no_encoder = tmp_path / "generator_only.pt"
    torch.save({"smirk_generator.conv.weight": torch.zeros(2, 2)}, no_encoder)
    with pytest.raises(CheckpointFormatError, match="generator_only.pt.*smirk_encoder"):
        load_smirk_encoder(no_encoder)


def test_outputs_shapes_and_post_processing():
    """Eyelids clamp to [0, 1], jaw = [relu, clamp(-0.2, 0.2)], pose/camera split of the 6 outputs."""
    model = SmirkEncoder().eval()
    with torch.no_grad():
        for head in (
            model.pose_encoder.pose_cam_layers[0],
            model.shape_encoder.shape_layers[0],
            model.expression_encoder.expression_layers[0],
        ):
            head.weight.zero_()
        model.pose_encoder.pose_cam_layers[0].bias.copy_(torch.tensor([0.1, -0.2, 0.3, 9.0, 0.01, -0.02]))
        bias = torch.zeros(NUM_EXPRESSION + 5)
        bias[:NUM_EXPRESSION] = torch.linspace(-1, 1, NUM_EXPRESSION)
        bias[NUM_EXPRESSION : NUM_EXPRESSION + 2] = torch.tensor([-3.0, 4.0])  # eyelids
        bias[NUM_EXPRESSION + 2 :] = torch.tensor([-0.5, 0.7, -0.9])  # jaw
        model.expression_encoder.expression_layers[0].bias.copy_(bias)
        out = model(torch.rand(2, 3, 224, 224))
    shapes = {k: tuple(v.shape) for k, v in out.as_dict().items()}
    assert shapes == {
        "pose_params": (2, 3),
        "cam": (2, 3),
        "shape_params": (2, 300),
        "expression_params": (2, 50),
        "eyelid_params": (2, 2),
        "jaw_params": (2, 3),
    }
    torch.testing.assert_close(out.pose_params, torch.tensor([[0.1, -0.2, 0.3]] * 2))
    torch.testing.assert_close(out.cam, torch.tensor([[9.0, 0.01, -0.02]] * 2))
    torch.testing.assert_close(out.expression_params, bias[:NUM_EXPRESSION].expand(2, -1))
    torch.testing.assert_close(out.eyelid_params, torch.tensor([[0.0, 1.0]] * 2))
    torch.testing.assert_close(out.jaw_params, torch.tensor([[0.0, 0.2, -0.2]] * 2))


def test_loaded_encoder_outputs_are_in_range(checkpoint):
    model, _ = load_smirk_encoder(checkpoint[0])
    with torch.no_grad():
        out = model(torch.rand(1, 3, 224, 224))
    assert ((out.eyelid_params >= 0) & (out.eyelid_params <= 1)).all()
    assert (out.jaw_params[:, 0] >= 0).all()
    assert (out.jaw_params[:, 1:].abs() <= 0.2).all()
    assert all(torch.isfinite(v).all() for v in out.as_dict().values())
    assert 7.0 < float(out.cam[0, 0]) < 9.0  # the synthetic camera bias (scale 8)


def test_rejects_wrong_input_shape(encoder):
    with pytest.raises(ValueError, match=r"\[B,3,224,224\]"):
        encoder(torch.rand(1, 1, 224, 224))
