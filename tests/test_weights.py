"""Weight loading: format detection, restricted unpickling of whole modules, strict key-by-key reports."""

from __future__ import annotations

import os
import pickle
import sys
import types
import warnings

import pytest
import torch

from networks import create_model
from networks.ddamfn import DDAMFN
from networks.mixedfeaturenet import MixedFeatureNet
from networks.weights import (
    CheckpointFormatError,
    LoadReport,
    UnsafePickleError,
    WeightLoadError,
    build_model_from_checkpoint,
    load_state_dict_checked,
    load_weights,
    read_checkpoint,
)


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return DDAMFN(num_classes=7, num_heads=1).state_dict()


def _ours(state: dict, **extra) -> dict:
    ckpt = {
        "format": "if3d-toolkit",
        "format_version": 1,
        "model_name": "ddamfn",
        "model_kwargs": {"num_classes": 7, "num_heads": 1},
        "model": state,
        "epoch": 3,
    }
    ckpt.update(extra)
    return ckpt


# ---------------------------------------------------------------- pickled modules (MFN_msceleb.pth)
def test_pickled_module_loads_into_ddamfn_backbone(spec_dir):
    ckpt = read_checkpoint(spec_dir / "mfn_pickled_module.pth")
    assert ckpt.source == "mfn_module"
    assert ckpt.metadata["pickled_class"] == "networks.MixedFeatureNet.MixedFeatureNet"
    assert len(ckpt.state_dict) == 1131
    assert "conv_45.conv_dw.mixed_depthwise_conv.3.weight" in ckpt.state_dict

    ref = torch.load(spec_dir / "mfn_reference.pt", weights_only=True)
    model = DDAMFN(num_classes=8, num_heads=2).eval()
    head_before = model.fc.weight.clone()
    report = load_weights(model, spec_dir / "mfn_pickled_module.pth")
    assert report.ok
    assert report.prefixes == ("backbone.",)
    assert len(report.loaded) == 1119
    # the face-recognition embedding head is dropped exactly like DDAMNet's children()[:-4], and said so
    assert sorted({k.split(".")[0] for k in report.discarded}) == ["bn", "conv_6_dw", "linear"]
    assert torch.equal(model.fc.weight, head_before)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(ref["input"]), ref["features_7x7"], atol=1e-4, rtol=0)


def test_build_model_from_pickled_module(spec_dir):
    model, report = build_model_from_checkpoint(spec_dir / "mfn_pickled_module.pth")
    assert isinstance(model, MixedFeatureNet)
    assert model.embedding_size == 256
    assert not model.training
    assert report.ok


@pytest.mark.parametrize("legacy", [False, True])
def test_module_pickle_in_zip_and_legacy_formats(tmp_path, monkeypatch, legacy):
    """Pickles refer to the original classes by name only; they are never imported or run."""
    fake = types.ModuleType("networks.MixedFeatureNet")

    class MixedFeatureNet(torch.nn.Module):  # stands for the original class at save time
        def __init__(self):
            super().__init__()
            self.conv1 = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))

    MixedFeatureNet.__module__ = fake.__name__
    MixedFeatureNet.__qualname__ = "MixedFeatureNet"
    fake.MixedFeatureNet = MixedFeatureNet
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    original = MixedFeatureNet()
    path = tmp_path / "mfn.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy saver cannot find the class's source; irrelevant
        torch.save(original, path, _use_new_zipfile_serialization=not legacy)
    monkeypatch.delitem(sys.modules, fake.__name__)

    ckpt = read_checkpoint(path)
    assert ckpt.source == "mfn_module"
    assert ckpt.state_dict.keys() == original.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(ckpt.state_dict[key], value), key


class _SystemPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


_SAVERS = {
    "zip": lambda path, obj: torch.save(obj, path),
    "legacy": lambda path, obj: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "plain_pickle": lambda path, obj: path.write_bytes(pickle.dumps(obj, protocol=2)),
}


@pytest.mark.parametrize("fmt", list(_SAVERS))
@pytest.mark.parametrize(
    ("payload", "expected_global"),
    [
        (_SystemPayload, f"{os.system.__module__}.system"),  # posix.system on Linux
        (_EvalPayload, "__builtin__.eval"),  # protocol 2 writes Python 2 names
    ],
)
def test_forbidden_global_is_refused_and_never_called(tmp_path, fmt, payload, expected_global):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    # hide the payload next to a normal-looking state dict (a plain pickle cannot hold torch tensors
    # safely: their global, torch.storage._load_from_bytes, is refused as well)
    weights = {} if fmt == "plain_pickle" else {"fc.weight": torch.zeros(2, 2)}
    _SAVERS[fmt](path, {"iter": 1, "model_state_dict": weights, "extra": payload(marker)})
    model = DDAMFN(num_classes=7, num_heads=1)
    with pytest.raises(UnsafePickleError) as info:
        load_weights(model, path)
    assert info.value.global_name == expected_global
    assert expected_global in str(info.value)
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_payload_inside_a_pickled_module_is_refused(tmp_path):
    """A whole-module pickle may use the original class names, but nothing else."""
    marker = tmp_path / "marker"
    module = torch.nn.Sequential(torch.nn.Linear(2, 2))
    module.hook = _SystemPayload(marker)
    path = tmp_path / "module.pth"
    torch.save(module, path)
    with pytest.raises(UnsafePickleError, match="system"):
        read_checkpoint(path)
    assert not marker.exists()


def test_pickled_module_of_an_unsupported_class_is_rejected(tmp_path):
    path = tmp_path / "seq.pth"
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)), path)
    with pytest.raises(CheckpointFormatError, match="torch.nn.modules.container.Sequential"):
        read_checkpoint(path)


# ---------------------------------------------------------------- DDAMFN / If3D / our formats
def test_ddamfn_checkpoint_with_dataparallel_prefix(tmp_path, spec_dir):
    ckpt = torch.load(spec_dir / "ddamnet8_checkpoint.pth", weights_only=True)
    ckpt["model_state_dict"] = {f"module.{k}": v for k, v in ckpt["model_state_dict"].items()}
    path = tmp_path / "dp.pth"
    torch.save(ckpt, path)
    model, report = build_model_from_checkpoint(path)
    assert isinstance(model, DDAMFN)
    assert (model.num_classes, model.num_heads) == (8, 2)
    assert report.source == "ddamfn"
    assert report.ok
    assert not model.training
    ref = torch.load(spec_dir / "ddamnet8_reference.pt", weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input"]).logits, ref["logits"], atol=1e-4, rtol=0)


def test_if3d_checkpoint_is_recognised_and_needs_a_fusion_model(tmp_path):
    path = tmp_path / "if3d.pth"
    torch.save({"model_state_dict": {"fc1.weight": torch.zeros(4, 4), "output.weight": torch.zeros(8, 4)}}, path)
    assert read_checkpoint(path).source == "if3d"
    with pytest.raises(CheckpointFormatError, match="if3d"):
        load_weights(DDAMFN(num_classes=8, num_heads=1), path)


def test_own_checkpoint_round_trip(tmp_path, small_state):
    path = tmp_path / "ours.pth"
    torch.save(_ours(small_state), path)
    model, report = build_model_from_checkpoint(path)
    assert report.source == "if3d-toolkit"
    assert report.ok
    assert report.metadata["epoch"] == 3
    assert isinstance(model, DDAMFN)
    assert model.num_heads == 1
    for key, value in model.state_dict().items():
        assert torch.equal(value, small_state[key]), key


def test_strict_report_names_every_missing_unexpected_and_misshaped_key(tmp_path, small_state):
    state = dict(small_state)
    del state["fc.bias"]
    state["fc.extra"] = torch.zeros(3)
    state["fc.weight"] = torch.zeros(5, 512)
    state["gdc.conv.weight"] = torch.full((512, 1, 7, 7), 0.25)
    path = tmp_path / "bad.pth"
    torch.save(_ours(state), path)

    model = DDAMFN(num_classes=7, num_heads=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(WeightLoadError) as info:
        load_weights(model, path)
    report = info.value.report
    assert report.missing == ["fc.bias"]
    assert report.unexpected == ["fc.extra"]
    assert report.shape_mismatch == [("fc.weight", (5, 512), (7, 512))]
    text = str(info.value)
    for needle in ("missing:     fc.bias", "unexpected:  fc.extra", "fc.weight: file [5, 512] vs model [7, 512]"):
        assert needle in text
    # strict failure leaves the model untouched
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    # non-strict: the same report, and everything that matches is loaded
    report = load_weights(model, path, strict=False)
    assert isinstance(report, LoadReport)
    assert not report.ok
    assert torch.equal(model.gdc.conv.weight, state["gdc.conv.weight"])
    assert torch.equal(model.fc.weight, before["fc.weight"])


def test_foreign_source_keys_are_checked_within_the_remap_prefixes(small_state):
    """A partial backbone from a pickled module is reported key by key, not silently half-loaded."""
    sd = {"conv1.conv.weight": torch.zeros(64, 3, 3, 3), "conv_99.weight": torch.zeros(1)}
    model = DDAMFN(num_classes=7, num_heads=1)
    report = load_state_dict_checked(model, sd, source="mfn_module", strict=False)
    assert report.prefixes == ("backbone.",)
    assert report.loaded == ["backbone.stem.0.conv.weight"]
    assert report.unexpected == ["backbone.<unmapped>.conv_99.weight"]
    assert "backbone.stem.0.bn.weight" in report.missing
    assert not any(k.startswith(("heads.", "fc.")) for k in report.missing)


def test_missing_and_unreadable_files_name_the_path(tmp_path):
    model = create_model("ddamfn")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_weights(model, tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_text("not a checkpoint")
    with pytest.raises(CheckpointFormatError, match="junk.pth"):
        load_weights(model, junk)
    bare = tmp_path / "bare.pth"
    torch.save({"weight": torch.zeros(1)}, bare)
    with pytest.raises(CheckpointFormatError, match="bare state dict"):
        build_model_from_checkpoint(bare)


def test_non_finite_weights_are_refused_everywhere_naming_the_file_and_the_tensor(tmp_path, small_state):
    bad = dict(small_state)
    key = "fc.weight"
    bad[key] = small_state[key].clone()
    bad[key][0, :3] = float("nan")
    path = tmp_path / "nan.pth"
    torch.save(_ours(bad), path)
    with pytest.raises(CheckpointFormatError, match=r"nan\.pth: non-finite weights: fc\.weight .* 3 NaN/inf"):
        build_model_from_checkpoint(path)
    with pytest.raises(CheckpointFormatError, match="non-finite"):
        load_weights(create_model("ddamfn", num_classes=7, num_heads=1), path)  # --pretrained
    inf = dict(small_state)
    name = next(k for k in small_state if k.endswith("running_var"))
    inf[name] = torch.full_like(small_state[name], float("inf"))
    torch.save(_ours(inf), tmp_path / "inf.pth")
    with pytest.raises(CheckpointFormatError, match="non-finite"):
        read_checkpoint(tmp_path / "inf.pth")
    # integer buffers (num_batches_tracked) are not floats and are never checked
    torch.save(_ours(small_state), tmp_path / "ok.pth")
    assert build_model_from_checkpoint(tmp_path / "ok.pth")[1].ok


def test_another_models_checkpoint_is_summarised_not_listed_key_by_key(tmp_path, small_state):
    path = tmp_path / "ddamfn.pth"
    torch.save(_ours(small_state), path)
    other = create_model("if3d_linear", num_classes=7)
    with pytest.raises(WeightLoadError) as info:
        load_weights(other, path)
    text = str(info.value)
    report = info.value.report
    assert len(report.missing) + len(report.unexpected) + len(report.shape_mismatch) > 100
    assert len(text.splitlines()) <= 2 + LoadReport.MAX_LISTED + 1
    assert "the file holds a ddamfn model" in text
    assert "more (LoadReport.missing" in text
