"""The registries are the only place a new piece is added: a fusion strategy defined here, in the test
file, is built, listed and trained one step by the public training command with no other edit; a
backbone defined here serves DDAMFN and the If3D model; render backends are registered by name."""

from __future__ import annotations

import csv
import json

import pytest
import torch
import torch.nn as nn
from _train_helpers import make_dataset

import networks
from if3d.render.backends import RenderResult, get_backend, list_backends, register_backend
from if3d.train.cli import config_from_args, run
from networks.fusion import DepthwiseConvBN, check_maps


@networks.register_fusion("sum_test", networks.FusionSpec(dropout=(0.2, 0.0, 0.0), final_checkpoint="SumFusion.pth"))
class SumFusion(nn.Module):
    """A fifth strategy: the two attended maps added, then If3D's depthwise 7×7 pooling ([B, C])."""

    def __init__(self, channels: int = 512, spatial: int = 7) -> None:
        super().__init__()
        self.channels, self.spatial = channels, spatial
        self.depthwise = DepthwiseConvBN(channels, kernel_size=spatial)
        self.out_features = channels

    def forward(self, photo_map: torch.Tensor, render_map: torch.Tensor) -> torch.Tensor:
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        return self.depthwise(photo_map + render_map).flatten(1)


@networks.register_backbone(
    "tiny_test", networks.BackboneSpec(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), out_channels=16,
                                       feature_size=4, weights="none (random)"))
def tiny_backbone(**_) -> nn.Module:
    class Tiny(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=4, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 16, 3, stride=2, padding=1))

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    return Tiny()


def test_a_fusion_strategy_registered_in_a_test_file_is_a_model_everywhere():
    assert "sum_test" in networks.list_fusions()
    assert "if3d_sum_test" in networks.list_models()
    info = networks.model_info("if3d_sum_test")
    assert (info.criterion, info.default_preset, info.final_checkpoint) == ("if3d", "if3d", "SumFusion.pth")
    model = networks.create_model("if3d_sum_test", num_classes=7, num_heads=2)
    assert isinstance(model.fusion, SumFusion)
    assert model.classifier.dropout_rates == (0.2, 0.0, 0.0)
    assert not model.shared_backbone  # the spec's default
    with pytest.raises(ValueError, match="If3D has no such model"):
        networks.create_model("if3d_sum_test", faithful=True)
    with pytest.raises(ValueError, match="registered twice"):
        networks.register_fusion("sum_test")(SumFusion)


def test_the_training_command_lists_and_trains_the_new_strategy(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        config_from_args(["--model", "if3d_sum_test", "--help"])  # a named model's help lists the registry
    assert info.value.code == 0
    listed = " ".join(capsys.readouterr().out.split()).split("registered models: ", 1)[1].split(";", 1)[0]
    assert "if3d_sum_test" in listed.split(", ")
    data = make_dataset(tmp_path / "d112", per_class=1, val_per_class=1, size=112)
    out, final = tmp_path / "run", tmp_path / "final"
    assert run(["--model", "if3d_sum_test", "--preset", "if3d", "--data", str(data), "--epochs", "1", "--batch-size",
                "4", "--num-heads", "2", "--workers", "0", "--out", str(out), "--final-checkpoint", str(final)]) == 0
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert len(rows) == 1
    assert rows[0]["step"] == "1"  # one optimizer step
    assert float(rows[0]["train_alignment"]) > 0  # the If3D criterion's terms, by name
    run_info = json.loads((out / "config.json").read_text())["run"]
    assert run_info["input_streams"] == ["photo", "render"]
    assert (final / "SumFusion.pth").is_file()
    ck = torch.load(out / "last.pth", weights_only=True)
    assert ck["model_name"] == "if3d_sum_test"
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_a_registered_backbone_serves_ddamfn_and_the_two_stream_model():
    spec = networks.backbone_spec("tiny_test")
    assert (spec.out_channels, spec.feature_size) == (16, 4)
    photo, render = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    ddamfn = networks.create_model("ddamfn", num_classes=7, backbone="tiny_test").eval()
    out = ddamfn(photo)
    assert out.logits.shape == (2, 7)
    assert out.heads.shape == (2, 2, 16, 4, 4)
    fusion = networks.create_model("if3d_gate", num_classes=7, num_heads=2, backbone="tiny_test").eval()
    out = fusion(photo, render)
    assert out.logits.shape == (2, 7)
    assert fusion.fusion.out_features == 16 * 4 * 4
    with pytest.raises(ValueError, match=r"must be \[B, 3, 32, 32\]"):
        fusion(torch.randn(2, 3, 112, 112), torch.randn(2, 3, 112, 112))
    with pytest.raises(ValueError, match="backbone='tiny_test'"):
        networks.create_model("if3d_gate", faithful=True, backbone="tiny_test")
    with pytest.raises(KeyError, match="unknown backbone 'nope'; known: .*mixedfeaturenet"):
        networks.create_model("ddamfn", backbone="nope")


def test_render_backends_are_registered_by_name():
    @register_backend("flat_test")
    class Flat:
        name = "flat_test"

        def __init__(self, size: int = 8, **_) -> None:
            self.size = size

        def process(self, image_rgb):
            return RenderResult(render=image_rgb[: self.size, : self.size].copy())

        def close(self) -> None:
            pass

    assert {"mediapipe", "smirk", "flat_test"} <= set(list_backends())
    backend = get_backend("flat_test", size=4)
    assert backend.process(torch.zeros(8, 8, 3, dtype=torch.uint8).numpy()).render.shape == (4, 4, 3)
    with pytest.raises(ValueError, match="unknown render backend 'nope'; choose one of"):
        get_backend("nope")
    with pytest.raises(ValueError, match="registered twice"):
        register_backend("flat_test")(Flat)


def test_a_stream_reader_adds_a_non_image_stream_that_the_batch_preparer_passes_through(tmp_path):
    from if3d.data.source import SplitSource, open_split, register_stream_reader
    from if3d.runtime import BatchPreparer

    class WithBrightness(torch.utils.data.Dataset):
        def __init__(self, base):
            self.base, self.labels, self.class_names = base, base.labels, base.class_names
            self.report = getattr(base, "report", None)

        def __len__(self):
            return len(self.base)

        def __getitem__(self, i):
            sample = dict(self.base[i])
            sample["brightness_test"] = sample["photo"].float().mean().reshape(1) / 255.0
            return sample

    register_stream_reader("brightness_test")(lambda source, dataset, image_size: WithBrightness(dataset))
    data = make_dataset(tmp_path / "d", per_class=1, val_per_class=1)
    ds = open_split(SplitSource.from_root(data, "val"), image_size=24, streams=("photo", "brightness_test"))
    assert "render" not in ds[0]
    batch = torch.utils.data.default_collate([ds[i] for i in range(4)])
    prepare = BatchPreparer(torch.device("cpu"), ("photo", "brightness_test"), False, False, 24)
    (photo, brightness), targets = prepare(batch, train=False)
    assert photo.dtype == torch.float32
    assert brightness.shape == (4, 1)
    assert torch.equal(brightness, batch["brightness_test"])  # passed through as the dataset made it
    assert set(targets) == {"label", "valence", "arousal", "has_va"}
    with pytest.raises(ValueError, match="no reader provides the stream"):
        open_split(SplitSource.from_root(data, "val"), image_size=24, streams=("photo", "voxels_nope"))
    with pytest.raises(KeyError, match="no render stream"):
        BatchPreparer(torch.device("cpu"), ("photo", "render"), False, False, 24)(batch, train=False)
