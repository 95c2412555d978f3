"""ONNX export (``python -m if3d.export``) and exported models run wherever a checkpoint is taken.

Each family is exported from a small configuration and compared with PyTorch on seeded random inputs and on real
FER2013 photos (``../shared/data/fer2013/test``) read with the toolkit's preprocessing.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import networks
from if3d.checkpoint import make_checkpoint, save_checkpoint
from if3d.export import export_onnx, main, verification_inputs
from networks.onnx_runtime import OnnxModel
from networks.weights import CheckpointFormatError, build_model_from_checkpoint

CLASSES_7 = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"]


@pytest.fixture(scope="module")
def photos(data_dir) -> Path:
    return data_dir / "fer2013" / "test"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def default_onnx(tmp_path_factory, photos) -> Path:
    """The shipped model exported (fp32), verified on 8 real photos."""
    return export_onnx("default", tmp_path_factory.mktemp("default") / "default.onnx", photos=photos).path


def _checkpoint(folder: Path, name: str, **kwargs) -> Path:
    torch.manual_seed(0)
    model = networks.create_model(name, **kwargs).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics: a wrong normalisation or a dropped layer shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = folder / f"{name}.pth"
    save_checkpoint(make_checkpoint(model_name=name, model_kwargs=kwargs, model_state=model.state_dict(),
                                    class_names=CLASSES_7[: kwargs.get("num_classes", 7)]), path)
    return path


def _round_trip(checkpoint: Path, out: Path, photos: Path) -> tuple[torch.nn.Module, OnnxModel]:
    """Export, then compare the two models on fresh random and real inputs (not those of the export's check)."""
    result = export_onnx(checkpoint, out, photos=photos)
    assert result.max_abs_diff <= result.bound
    assert result.verified_photos == 8
    model, _ = build_model_from_checkpoint(checkpoint)
    exported, report = build_model_from_checkpoint(out)
    assert isinstance(exported, OnnxModel)
    assert report.source == "onnx"
    spec = model.backbone_spec
    check, _ = verification_inputs(exported.input_streams, spec.input_size, spec.mean, spec.std, photos=photos,
                                   count=5, batch=3, seed=7)
    with torch.no_grad():
        for inputs in check:
            ref, got = model(*inputs), exported(*inputs)
            assert got.logits.shape == ref.logits.shape
            assert float((got.logits - ref.logits).abs().max()) <= result.bound
            for k in ("valence", "arousal"):
                if getattr(ref, k, None) is not None:
                    assert float((getattr(got, k) - getattr(ref, k)).abs().max()) <= result.bound
    return model, exported


def test_the_shipped_model_round_trips_with_its_metadata(default_onnx, photos):
    model, report = build_model_from_checkpoint("default")
    exported, onnx_report = build_model_from_checkpoint(default_onnx)
    assert exported.input_streams == ("photo",)
    assert exported.class_names == report.metadata["class_names"] == onnx_report.metadata["class_names"]
    assert exported.backbone_spec.input_size == 112
    assert exported.backbone_spec.mean == model.backbone_spec.mean
    assert exported.backbone_spec.std == model.backbone_spec.std
    assert exported.inference_policy == model.inference_policy
    assert onnx_report.metadata["model_kwargs"] == report.metadata["model_kwargs"]
    import onnx

    props = {p.key: p.value for p in onnx.load(str(default_onnx)).metadata_props}
    assert props["channel_order"] == "RGB"
    assert props["quantization"] == "none"
    assert json.loads(props["inference"])["temperature"] == pytest.approx(model.inference_policy.temperature)
    assert json.loads(props["outputs"]) == ["logits"]
    # the batch axis is dynamic: batches of 1 and 32 real photos
    check, _ = verification_inputs(("photo",), 112, model.backbone_spec.mean, model.backbone_spec.std,
                                   photos=photos, count=32)
    with torch.no_grad():
        ref, got = model(*check[-1]).logits, exported(*check[-1]).logits
    assert got.shape == (32, 7)
    assert float((got - ref).abs().max()) <= 1e-4
    with torch.no_grad():
        assert exported(check[1][0]).logits.shape == (1, 7)


@pytest.mark.parametrize("fusion", ["if3d_linear", "if3d_spp"])
def test_a_two_stream_fusion_exports_with_photo_and_render_inputs(fusion, tmp_path, photos):
    ckpt = _checkpoint(tmp_path, fusion, num_classes=7, num_heads=1, backbone="mobilenetv2")
    model, exported = _round_trip(ckpt, tmp_path / "fusion.onnx", photos)
    assert exported.input_streams == ("photo", "render")
    assert exported.output_names == ["logits", "valence", "arousal"]
    x = torch.zeros(1, 3, 112, 112)
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \(photo, render\), got 1"):
        exported(x)


def test_a_video_model_exports_with_a_dynamic_frame_axis(tmp_path, photos):
    ckpt = _checkpoint(tmp_path, "fan_self", num_classes=7, backbone="mobilenetv2", clip_frames=3)
    model, exported = _round_trip(ckpt, tmp_path / "video.onnx", photos)
    assert exported.input_streams == ("clip", "frame_mask")
    assert exported.clip_frames == 3
    clip = torch.randn(2, 6, 3, 112, 112, generator=torch.Generator().manual_seed(3))
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])  # a padded clip: frames 5 and 6 are ignored
    with torch.no_grad():
        ref, got = model(clip, mask).logits, exported(clip, mask).logits
    assert float((got - ref).abs().max()) <= 1e-4
    from if3d.video import _load

    with pytest.raises(ValueError, match="not the frame attention weights"):
        _load(str(tmp_path / "video.onnx"), "cpu")


def test_spp_pooling_for_the_export_is_adaptive_max_pooling():
    from networks.fusion.spp import adaptive_max_pool_bins

    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(0))
    for level in (1, 2, 3, 4, 7):
        assert torch.equal(adaptive_max_pool_bins(x, level), torch.nn.functional.adaptive_max_pool2d(x, level))


@pytest.mark.slow
def test_a_zoo_model_exports(tmp_path, photos):
    ckpt = _checkpoint(tmp_path, "dan", num_classes=7, num_heads=2)
    _, exported = _round_trip(ckpt, tmp_path / "dan.onnx", photos)
    assert exported.model_name == "dan"


def test_int8_is_smaller_and_agrees_with_fp32_on_real_photos(default_onnx, tmp_path, photos):
    result = export_onnx("default", tmp_path / "int8.onnx", int8="static", photos=photos, calibration_photos=32)
    assert result.bytes < 0.4 * default_onnx.stat().st_size
    int8, report = build_model_from_checkpoint(result.path)
    assert "static int8 QDQ" in report.metadata["quantization"]
    fp32, _ = build_model_from_checkpoint(default_onnx)
    spec = fp32.backbone_spec
    check, _ = verification_inputs(("photo",), 112, spec.mean, spec.std, photos=photos, count=48, seed=1)
    with torch.no_grad():
        agree = (int8(*check[-1]).logits.argmax(1) == fp32(*check[-1]).logits.argmax(1)).float().mean()
    assert float(agree) >= 0.8


def test_models_that_cannot_be_exported_are_one_line_errors(tmp_path, photos, capsys):
    with pytest.raises(ValueError, match="ddamfn_landmarks reads landmarks"):
        export_onnx(_checkpoint(tmp_path, "ddamfn_landmarks", num_classes=7), tmp_path / "l.onnx", photos=photos)
    assert main(["--checkpoint", "default", "--out", str(tmp_path / "x.pth")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
    assert main(["--checkpoint", "default", "--out", str(tmp_path / "s.onnx"), "--int8"]) == 2
    assert "give --photos DIR" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.onnx"))


def test_an_export_that_differs_from_pytorch_is_not_written(tmp_path, photos, capsys):
    out = tmp_path / "strict.onnx"
    assert main(["--checkpoint", "default", "--out", str(out), "--photos", str(photos), "--num-photos", "2",
                 "--tolerance", "1e-12", "--rel-tolerance", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(out) in err[0]
    assert "differ from PyTorch's" in err[0]
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one is left


@pytest.mark.parametrize("content", ["text", "truncated", "pth"])
def test_a_file_named_onnx_that_is_no_model_is_exit_2_naming_it(content, default_onnx, tmp_path, photos, capsys):
    from if3d.evaluate import run

    bad = tmp_path / "model.onnx"
    if content == "text":
        bad.write_text("not a model\n")
    elif content == "truncated":
        bad.write_bytes(default_onnx.read_bytes()[:5000])
    else:
        bad.write_bytes(networks.inference.resolve_checkpoint("default").read_bytes())
    with pytest.raises(CheckpointFormatError, match="not an ONNX model ONNX Runtime can open"):
        build_model_from_checkpoint(bad)
    assert run(["--checkpoint", str(bad), "--photos", str(photos), "--out", str(tmp_path / "out"),
                "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(bad) in err[0]
    assert "Traceback" not in err[0]


def test_the_test_script_and_the_analysis_run_an_exported_model(default_onnx, tmp_path, photos, data_dir, capsys):
    import csv
    import shutil

    from if3d.analyze.cli import run as analyze
    from if3d.analyze.models import ExpressionModel
    from if3d.evaluate import run

    split = tmp_path / "split"  # explicit folders <label index>/<file>, AffectNet-8 order (Neutral 0 … Angry 6)
    for index, name in enumerate(["neutral", "happy", "sad", "surprise", "fear", "disgust", "angry"]):
        (split / str(index)).mkdir(parents=True)
        for f in sorted((photos / name).iterdir())[:4]:
            shutil.copy(f, split / str(index) / f.name)
    preds = {}
    for name, ckpt in (("pth", "default"), ("onnx", str(default_onnx))):
        out = tmp_path / name
        assert run(["--checkpoint", ckpt, "--photos", str(split), "--max-samples", "24", "--workers", "0",
                    "--out", str(out)]) == 0
        preds[name] = [(r["path"], r["prediction"]) for r in csv.DictReader(open(out / "predictions.csv"))]
    assert preds["onnx"] == preds["pth"]
    assert len(preds["pth"]) == 24

    crops = np.stack([np.asarray(Image.open(p).convert("RGB").resize((112, 112)))
                      for p, _ in preds["pth"][:6]])
    onnx_model = ExpressionModel(default_onnx, torch.device("cpu"))
    torch_model = ExpressionModel("default", torch.device("cpu"))
    assert onnx_model.class_names == torch_model.class_names
    np.testing.assert_allclose(onnx_model.predict(crops, None)["probabilities"],
                               torch_model.predict(crops, None)["probabilities"], atol=1e-5)

    image = data_dir / "wild" / "images" / "Avinash_1.jpg"
    assert analyze([str(image), "--checkpoint", str(default_onnx), "--out", str(tmp_path / "analysis")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "analysis" / "summary.csv")))
    assert rows
    assert rows[0]["expression"] in CLASSES_7
