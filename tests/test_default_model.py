"""The shipped default expression model: it loads by name everywhere, carries its provenance and calibration,
and predicts real FER2013 PublicTest photos (a smoke test; the accuracy claim is docs/MODEL_CARD.md's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import networks
from if3d.calibration import calibrate_checkpoint, split_fingerprint
from if3d.data.converters import convert
from if3d.evaluate import evaluate_checkpoint
from networks.inference import InferencePolicy, resolve_checkpoint

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 4


@pytest.fixture(scope="module")
def publictest_sample(data_dir, tmp_path_factory) -> Path:
    """The first PER_CLASS PublicTest photos (by name) of each FER2013 class, converted (PublicTest → val)."""
    src = tmp_path_factory.mktemp("fer") / "src"
    for cls in sorted((data_dir / "fer2013" / "test").iterdir()):
        (src / "test" / cls.name).mkdir(parents=True)
        for f in sorted(cls.iterdir())[:PER_CLASS]:
            os.link(f, src / "test" / cls.name / f.name)
    out = src.parent / "fer2013"
    convert("fer2013-folders", src, out, verbose=False)
    return out


def test_the_shipped_file_is_small_and_records_its_recipe_data_and_calibration():
    path = resolve_checkpoint("default")
    assert path.is_file()
    assert path.parent.name == "weights"
    assert path.stat().st_size <= 10 * 2**20
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["format"] == "if3d-toolkit"
    assert ckpt["optimizer"] is None
    assert ckpt["weights_dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in ckpt["model"].values() if v.is_floating_point())
    prov = ckpt["provenance"]
    assert prov["seed"] == 0
    assert prov["recipe"]["preset"] == "fer_imagenet"
    assert prov["model"]["backbone"] == "mobilenetv2"
    assert prov["model"]["pretrained"] == "imagenet"
    assert prov["training_data"]["split"] == "train"
    assert prov["training_data"]["files"] == 27273
    assert len(prov["training_data"]["sha256"]) == 64
    cal = ckpt["calibration"]
    assert cal["split"] == "calib"
    assert cal["samples"] == 1436
    policy = InferencePolicy.from_metadata(ckpt)
    assert policy.temperature == pytest.approx(cal["temperature"])
    assert 0.3 < policy.temperature < 3.0
    assert cal["after"]["nll"] <= cal["before"]["nll"]


def test_default_loads_by_name_with_its_inference_policy():
    model, report = networks.build_model_from_checkpoint("default")
    assert report.ok
    assert report.metadata["model_name"] == "ddamfn"
    assert isinstance(model.inference_policy, InferencePolicy)
    assert next(model.parameters()).dtype == torch.float32  # float16 storage, float32 model
    fresh = networks.create_model("ddamfn", num_classes=7, num_heads=2, backbone="mobilenetv2")
    assert networks.load_weights(fresh, "default").ok  # --pretrained default


def test_default_predicts_real_publictest_photos(publictest_sample, tmp_path):
    m = evaluate_checkpoint("default", data=str(publictest_sample), split="val", out=tmp_path / "eval", workers=0,
                            verbose=False)
    assert m["num_samples"] == 7 * PER_CLASS
    # a smoke test: the model is far above the 1/7 chance rate and names more than one class
    assert m["accuracy"] >= 0.5
    cm = m["confusion_matrix"]
    assert sum(1 for j in range(len(cm)) if any(row[j] for row in cm)) >= 4  # classes predicted
    assert m["per_class"]["Happy"]["recall"] >= 0.75
    assert m["flip_average"] == bool(torch.load(resolve_checkpoint("default"), weights_only=True)
                                     ["inference"]["flip_average"])
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for k in ("nll", "brier", "ece"):
        assert 0 <= saved[k] < 2.5
        assert 0 <= saved["uncalibrated"][k] < 2.5
    assert (tmp_path / "eval" / "reliability_diagram.png").stat().st_size > 10_000


def test_the_test_script_takes_default(publictest_sample, tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "affectnet_fusion_test.py"), "--checkpoint", "default", "--data",
                        str(publictest_sample), "--split", "val", "--workers", "0", "--out", str(tmp_path / "e")],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "calibration" in r.stdout
    assert "ECE" in r.stdout


def test_calibration_writes_a_new_file_and_never_its_input(publictest_sample, tmp_path):
    out = tmp_path / "recal.pth"
    entry = calibrate_checkpoint("default", data=publictest_sample, split="val", out=out, half=True, verbose=False)
    assert entry["samples"] == 7 * PER_CLASS
    assert entry["temperature"] > 0
    ckpt = torch.load(out, weights_only=True)
    assert ckpt["inference"]["temperature"] == pytest.approx(entry["temperature"])
    assert ckpt["calibration"]["split"] == "val"
    model, _ = networks.build_model_from_checkpoint(out)
    assert model.inference_policy.temperature == pytest.approx(entry["temperature"])
    # the provenance of the shipped model is kept, not replaced by the calibration data's
    assert ckpt["provenance"]["training_data"]["files"] == 27273
    with pytest.raises(ValueError, match="must not overwrite its input"):
        calibrate_checkpoint(out, data=publictest_sample, split="val", out=out, verbose=False)


def test_split_fingerprint_depends_on_names_labels_and_bytes(publictest_sample, tmp_path):
    a = split_fingerprint(publictest_sample, "val")
    assert a["files"] == 7 * PER_CLASS
    assert a == split_fingerprint(publictest_sample, "val")
    photo = next((publictest_sample / "photos" / "val").rglob("*.jpg"))
    data = photo.read_bytes()
    photo.unlink()  # hard links: rewrite a copy, never the shared source
    photo.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    try:
        assert split_fingerprint(publictest_sample, "val")["sha256"] != a["sha256"]
    finally:
        photo.write_bytes(data)
    with pytest.raises(FileNotFoundError, match="no photos"):
        split_fingerprint(publictest_sample, "nope")


def test_a_missing_shipped_file_is_one_line_naming_the_fix(monkeypatch, tmp_path, capsys, data_dir):
    import networks.inference as inference
    from if3d.analyze.cli import run

    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", ("if3d", "weights/absent.pth"))
    with pytest.raises(FileNotFoundError, match="reinstall the toolkit"):
        resolve_checkpoint("default")
    image = data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg"
    assert run([str(image), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "absent.pth" in err
    assert "reinstall" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("damage", ["truncated", "empty", "text", "non-finite"])
def test_a_damaged_shipped_file_is_one_line_naming_it(damage, monkeypatch, tmp_path, capsys, data_dir):
    """A broken install (a download cut short, an emptied or overwritten file, flipped weights) is refused by
    the commands that load ``default``, with the file named; no prediction is made from it."""
    import networks.inference as inference
    from if3d.analyze.cli import run as analyze
    from if3d.evaluate import run as test_script

    shipped = resolve_checkpoint("default")
    broken = tmp_path / "weights" / "fer2013_mobilenetv2_default.pth"
    broken.parent.mkdir()
    if damage == "truncated":
        broken.write_bytes(shipped.read_bytes()[: shipped.stat().st_size // 2])
    elif damage == "empty":
        broken.write_bytes(b"")
    elif damage == "text":
        broken.write_text("<html>404 Not Found</html>\n")
    else:
        ckpt = torch.load(shipped, map_location="cpu", weights_only=False)
        key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
        ckpt["model"][key] = ckpt["model"][key] * float("nan")
        torch.save(ckpt, broken)
    monkeypatch.setattr(inference, "DEFAULT_CHECKPOINT", ("if3d", str(broken)))  # absolute: joinpath keeps it
    assert resolve_checkpoint("default") == broken
    image = data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg"
    out = tmp_path / "out"
    assert analyze([str(image), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err
    assert "Traceback" not in err
    assert not list(out.rglob("*.csv"))  # no result written from a broken model
    assert test_script(["--checkpoint", "default", "--photos", str(data_dir / "fer2013" / "test"),
                        "--max-samples", "8", "--out", str(tmp_path / "eval")]) == 2
    err = capsys.readouterr().err
    assert str(broken) in err
    assert "Traceback" not in err


def test_the_calibration_command_exits_0_and_writes_the_file(publictest_sample, tmp_path, capsys):
    from if3d.calibration import run

    out = tmp_path / "cli.pth"
    assert run(["--checkpoint", "default", "--data", str(publictest_sample), "--split", "val", "--out", str(out)]) == 0
    assert "Traceback" not in capsys.readouterr().err
    assert torch.load(out, weights_only=True)["calibration"]["split"] == "val"
