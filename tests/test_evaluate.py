"""The test script (affectnet_fusion_test.py / if3d.evaluate) on our checkpoints and the original
If3D / DDAMFN checkpoint formats: metrics.json, predictions.csv, confusion-matrix PNGs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import CLASS_NAMES_7, TinyFusion, make_dataset, random_state_dict
from PIL import Image

from if3d.checkpoint import make_checkpoint, save_checkpoint
from if3d.classes import AFFECTNET8
from if3d.data.dataset import PairedDataset
from if3d.data.transforms import normalize
from if3d.evaluate import run
from if3d.metrics import CLASSIFICATION_KEYS


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("evaldata") / "tiny", per_class=2, val_per_class=3)


def _check_pngs(out: Path) -> None:
    for name in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        with Image.open(out / name) as im:
            im.verify()
        with Image.open(out / name) as im:
            assert im.format == "PNG"
            assert min(im.size) > 200


def test_our_checkpoint_metrics_match_the_model(data, tmp_path, monkeypatch):
    import if3d.plots as plots_module

    titles = []
    plot = plots_module.plot_confusion_matrix
    monkeypatch.setattr(plots_module, "plot_confusion_matrix",
                        lambda *a, **k: (titles.append(k["title"]), plot(*a, **k))[1])
    torch.manual_seed(0)
    model = TinyFusion(num_classes=7).eval()
    with torch.no_grad():  # make the BatchNorm statistics non-trivial
        model.photo.bn.running_mean.uniform_(-0.2, 0.2)
    ck = make_checkpoint(model_name="tiny_fusion_test", model_kwargs={"num_classes": 7},
                         model_state=model.state_dict(), class_names=CLASS_NAMES_7)
    save_checkpoint(ck, tmp_path / "best.pth")
    out = tmp_path / "out"
    assert run(["--checkpoint", str(tmp_path / "best.pth"), "--data", str(data), "--split", "val",
                "--out", str(out), "--image-size", "24", "--workers", "0", "--batch-size", "4"]) == 0

    m = json.loads((out / "metrics.json").read_text())
    assert set(CLASSIFICATION_KEYS) <= set(m)
    assert list(m["per_class"]) == CLASS_NAMES_7
    assert m["num_samples"] == 21
    assert np.asarray(m["confusion_matrix"]).sum() == 21
    for k in ("valence", "arousal"):  # two of every three val photos are annotated
        assert set(m[k]) == {"num_samples", "rmse", "pcc", "ccc", "sagr"}
        assert m[k]["num_samples"] == 14

    # predictions.csv agrees with an independent forward pass and with metrics.json
    ds = PairedDataset(data, "val", image_size=24)
    photo = torch.stack([ds[i]["photo"] for i in range(len(ds))])
    render = torch.stack([ds[i]["render"] for i in range(len(ds))])
    with torch.no_grad():
        expected = model(normalize(photo), normalize(render))
    rows = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    assert [int(r["prediction"]) for r in rows] == expected.logits.argmax(1).tolist()
    assert [r["path"] for r in rows] == [str(ds.photo_path(i)) for i in range(len(ds))]
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASS_NAMES_7] for r in rows])
    assert np.allclose(probs, torch.softmax(expected.logits, 1).numpy(), atol=1e-5)
    acc = np.mean([r["label"] == r["prediction"] for r in rows])
    assert m["accuracy"] == pytest.approx(acc)
    vp = [float(r["valence_pred"]) for r in rows]
    assert np.allclose(vp, expected.valence.numpy(), atol=1e-5)
    assert sum(r["valence"] != "" for r in rows) == 14
    _check_pngs(out)
    # the plots name the model and the dataset, not the checkpoint file
    assert titles == ["tiny_fusion_test on tiny val", "tiny_fusion_test on tiny val (row-normalised)"]



def test_original_if3d_final_checkpoint_is_evaluated(spec_dir, tmp_path):
    # If3D's FinalCheckPoints/LinearFusion.pth layout: {'model_state_dict': <If3D key names>}
    data = make_dataset(tmp_path / "d112", per_class=1, val_per_class=1, size=112)
    spec = json.loads((spec_dir / "state_dict_specs.json").read_text())["DDAMNet_Smirk_Spatial_Alignment_c8_h4"]
    torch.save({"model_state_dict": random_state_dict(spec, 0)}, tmp_path / "LinearFusion.pth")
    out = tmp_path / "out"
    assert run(["--checkpoint", str(tmp_path / "LinearFusion.pth"), "--data", str(data), "--split", "val",
                "--out", str(out), "--workers", "0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["class_names"] == list(AFFECTNET8)  # 8 classes inferred from the weights
    assert m["per_class"]["Contempt"]["support"] == 0
    assert m["num_samples"] == 7
    assert "valence" in m
    assert m["valence"]["num_samples"] == 7  # every val photo of this tree is annotated
    assert m["checkpoint_format"] == "if3d"
    _check_pngs(out)


def test_original_ddamfn_checkpoint_is_evaluated_photo_only(spec_dir, tmp_path):
    data = make_dataset(tmp_path / "d112", per_class=1, val_per_class=1, size=112)
    out = tmp_path / "out"
    assert run(["--checkpoint", str(spec_dir / "ddamnet8_checkpoint.pth"), "--photos",
                str(data / "photos" / "val"), "--out", str(out), "--workers", "0"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["input_streams"] == ["photo"]
    assert len(m["class_names"]) == 8
    assert "valence" not in m  # DDAMFN has no valence/arousal outputs
    assert math.isfinite(m["f1_macro"])


def test_bad_invocations_fail_with_a_message(data, tmp_path, capsys):
    assert run(["--checkpoint", str(tmp_path / "missing.pth"), "--data", str(data)]) == 2
    assert "missing.pth" in capsys.readouterr().err
    assert run(["--checkpoint", str(tmp_path / "x.pth")]) == 2
    assert "--data ROOT" in capsys.readouterr().err
