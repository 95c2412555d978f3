"""Score-level ensembles (python -m if3d.ensemble, the registered ``ensemble`` model): fitted on the fit split only,
the stacker finds the informative member, members must agree on classes, the saved ensemble predicts what the
command reported, and the members' scores are those the test script gives each of them."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import CLASS_NAMES_7, TINY_BACKBONE, TinyFusion, TinyPhoto, make_dataset

import networks
from if3d.checkpoint import make_checkpoint, save_checkpoint
from if3d.classes import AFFECTNET8
from if3d.ensemble import fit_stacker, fit_weights, paired_bootstrap_gain, run
from if3d.evaluate import run as run_test
from networks.weights import build_model_from_checkpoint

ARGS = ("--fit-split", "train", "--test-split", "val", "--bootstrap", "200", "--batch-size", "8")


def _save(path: Path, model: torch.nn.Module, name: str, kwargs: dict, names=CLASS_NAMES_7,
          temperature: float | None = None) -> Path:
    ck = make_checkpoint(model_name=name, model_kwargs=kwargs, model_state=model.state_dict(), class_names=names)
    if temperature is not None:
        ck["inference"] = {"temperature": temperature, "flip_average": False}
    save_checkpoint(ck, path)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A generated dataset and three members: a photo model, a photo + render model, a DDAMFN on a backbone with
    its own normalisation (mean 0.5, std 0.5); each with a temperature."""
    root = tmp_path_factory.mktemp("ens")
    data = make_dataset(root / "data", per_class=4, val_per_class=3, size=24)
    torch.manual_seed(0)
    photo = _save(root / "photo.pth", TinyPhoto(num_classes=7), "tiny_photo_test", {"num_classes": 7}, temperature=0.7)
    fusion = _save(root / "fusion.pth", TinyFusion(num_classes=7).eval(), "tiny_fusion_test", {"num_classes": 7},
                   temperature=1.6)
    kw = {"num_classes": 7, "num_heads": 2, "backbone": TINY_BACKBONE}
    ddamfn = _save(root / "ddamfn.pth", networks.create_model("ddamfn", **kw), "ddamfn", kw, temperature=1.3)
    return {"root": root, "data": data, "photo": photo, "fusion": fusion, "ddamfn": ddamfn}


def _informative(n: int = 300, c: int = 4, seed: int = 0):
    """Member 0's log-probabilities point at the label 80 % of the time; member 1's are noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, n)
    hit = rng.random(n) < 0.8
    guess = np.where(hit, labels, rng.integers(0, c, n))
    good = np.full((n, c), -3.0)
    good[np.arange(n), guess] = 0.0
    noise = rng.normal(size=(n, c)) * 2
    logits = np.stack([good, noise], 1)
    return logits - np.log(np.exp(logits).sum(2, keepdims=True)), labels


def test_weights_and_stacker_give_the_informative_member_the_weight():
    log_probs, labels = _informative()
    w = fit_weights(log_probs, labels)
    assert w.sum() == pytest.approx(1.0)
    assert w[0] > 0.9 > 0.1 > w[1]
    st = fit_stacker(log_probs, labels, 4, seed=0)
    coef = st["coef"].reshape(4, 2, 4)  # [class, member, member's class]
    assert np.abs(coef[:, 0]).sum() > 5 * np.abs(coef[:, 1]).sum()
    assert st["C"] in [float(c) for c in np.logspace(-3, 3, 13)]
    assert st["folds"] == 5
    # the stacker's decision values are its probabilities' logits
    x = log_probs.reshape(len(labels), -1)
    assert np.allclose(st["estimator"].predict_proba(x),
                       torch.softmax(torch.as_tensor(x @ st["coef"].T + st["intercept"]), 1).numpy())


def test_paired_bootstrap_gain():
    rng = np.random.default_rng(1)
    base = rng.random(400) < 0.6
    better = base | (rng.random(400) < 0.3)  # never worse, 10+ points better
    g = paired_bootstrap_gain(better, base, 500, seed=0)
    assert g["gain"] == pytest.approx(better.mean() - base.mean())
    assert 0 < g["low"] < g["gain"] < g["high"]
    assert paired_bootstrap_gain(base, base, 500, seed=0) | {"gain": 0} == {
        "gain": 0, "low": 0.0, "high": 0.0, "level": 0.95, "resamples": 500, "seed": 0}
    worse = paired_bootstrap_gain(base, better, 500, seed=0)
    assert worse["high"] < 0


def test_members_with_other_classes_are_refused_in_one_line(setup, tmp_path, capsys):
    other = _save(tmp_path / "eight.pth", TinyPhoto(num_classes=8), "tiny_photo_test", {"num_classes": 8},
                  names=list(AFFECTNET8))
    reordered = _save(tmp_path / "reordered.pth", TinyPhoto(num_classes=7), "tiny_photo_test", {"num_classes": 7},
                      names=CLASS_NAMES_7[::-1])
    for bad in (other, reordered):
        code = run(["--checkpoints", str(setup["photo"]), str(bad), "--data", str(setup["data"]), *ARGS,
                    "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2
        assert "\n" not in err
        assert err.startswith(f"error: {bad}: its classes")
        assert str(setup["photo"]) in err
    assert run(["--checkpoints", str(setup["photo"]), str(setup["ddamfn"]), "--data", str(setup["data"]),
                "--fit-split", "val", "--test-split", "val", "--out", str(tmp_path / "out")]) == 2
    assert "chosen on the split it is reported on" in capsys.readouterr().err


def test_end_to_end_members_match_the_test_script_and_the_saved_ensemble_predicts_the_report(setup, tmp_path):
    members = [setup["photo"], setup["fusion"], setup["ddamfn"]]
    out = tmp_path / "ens"
    assert run(["--checkpoints", *map(str, members), "--data", str(setup["data"]), *ARGS, "--method", "both",
                "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["test_split"]["num_samples"] == 21
    assert m["fit_split"]["num_samples"] == 28
    assert [r["inputs"] for r in m["members"]] == ["photo", "photo + render", "photo"]
    assert [r["temperature"] for r in m["members"]] == [0.7, 1.6, 1.3]
    best = m["best_member"]["index"]
    assert best == max(range(3), key=lambda i: (m["members"][i]["fit"]["accuracy"], -m["members"][i]["fit"]["nll"]))
    table = (out / "ensemble.md").read_text()
    assert f"--checkpoints {' '.join(map(str, members))}" in table
    assert "| photo; photo + render; photo |" in table
    assert "Control missing" in table
    assert "photo + render" in table
    assert m["control"]["warning"]

    # each member's scores are those the test script gives it alone (same items, its own temperature)
    test_probs = []
    for i, ck in enumerate(members):
        alone = tmp_path / f"alone{i}"
        assert run_test(["--checkpoint", str(ck), "--data", str(setup["data"]), "--split", "val", "--out", str(alone),
                         "--image-size", "24", "--workers", "0"]) == 0
        t = json.loads((alone / "metrics.json").read_text())
        for k in ("accuracy", "balanced_accuracy", "f1_macro", "nll", "ece"):
            assert m["members"][i]["test"][k] == pytest.approx(t[k], abs=1e-5), (i, k)
        rows = list(csv.DictReader(open(alone / "predictions.csv", newline="")))
        test_probs.append(np.array([[float(r[f"prob_{c}"]) for c in CLASS_NAMES_7] for r in rows]))
    labels = np.array([int(r["label"]) for r in rows])

    # the weighted ensemble is the weighted mean of those probabilities
    w = np.array(m["ensembles"]["weighted"]["weights"])
    mixed = sum(wi * p for wi, p in zip(w, test_probs))
    assert m["ensembles"]["weighted"]["test"]["accuracy"] == pytest.approx(np.mean(mixed.argmax(1) == labels))

    # the saved ensembles load as ordinary checkpoints and the test script reproduces the report
    for name in ("weighted", "stack"):
        model, report = build_model_from_checkpoint(out / f"ensemble_{name}.pth")
        assert report.metadata["model_name"] == "ensemble"
        assert model.method == name
        assert model.input_streams == ("photo", "render")
        saved = tmp_path / f"saved_{name}"
        assert run_test(["--checkpoint", str(out / f"ensemble_{name}.pth"), "--data", str(setup["data"]), "--split",
                         "val", "--out", str(saved), "--image-size", "24", "--workers", "0"]) == 0
        t = json.loads((saved / "metrics.json").read_text())
        for k in ("accuracy", "balanced_accuracy", "f1_macro", "nll", "ece"):
            assert m["ensembles"][name]["test"][k] == pytest.approx(t[k], abs=1e-5), (name, k)
        if name == "weighted":
            rows = list(csv.DictReader(open(saved / "predictions.csv", newline="")))
            assert [int(r["prediction"]) for r in rows] == mixed.argmax(1).tolist()


def test_nothing_is_chosen_on_the_test_split(setup, tmp_path):
    """Poisoned test labels (every val photo moved to the next class) leave weights and stacker unchanged."""
    poisoned = tmp_path / "poisoned"
    shutil.copytree(setup["data"], poisoned)
    val = poisoned / "photos" / "val"
    for c in range(7):
        (val / str(c)).rename(val / f"tmp{c}")
    for c in range(7):
        (val / f"tmp{c}").rename(val / str((c + 1) % 7))
    shutil.rmtree(poisoned / "renders")  # photo-only members: the renders are not read
    csv_path = poisoned / "annotations" / "val.csv"
    lines = csv_path.read_text().splitlines()
    moved = [f"{(int(ln[0]) + 1) % 7}{ln[1:]}" for ln in lines[1:]]  # "<label>/<file>,v,a" follows its photo
    csv_path.write_text("\n".join([lines[0], *moved]) + "\n")
    runs = {}
    for name, data in (("clean", setup["data"]), ("poisoned", poisoned)):
        out = tmp_path / name
        assert run(["--checkpoints", str(setup["photo"]), str(setup["ddamfn"]), "--data", str(data), *ARGS,
                    "--method", "both", "--out", str(out)]) == 0
        runs[name] = json.loads((out / "metrics.json").read_text())
    clean, bad = runs["clean"]["ensembles"], runs["poisoned"]["ensembles"]
    assert bad["weighted"]["weights"] == clean["weighted"]["weights"]
    for k in ("coef", "intercept", "C"):
        assert bad["stack"][k] == clean["stack"][k]
    assert runs["clean"]["best_member"] == runs["poisoned"]["best_member"]
    assert bad["weighted"]["test"]["nll"] != clean["weighted"]["test"]["nll"]  # the poison did reach the test split
    assert runs["poisoned"]["control"]["photo_only"]
    assert "Control missing" not in (tmp_path / "poisoned" /
                                                                                    "ensemble.md").read_text()


def test_analysis_takes_a_photo_ensemble_and_refuses_other_inputs_in_one_line(setup, tmp_path):
    from if3d.analyze.models import ExpressionModel, ModelLoadError
    from if3d.ensemble import build_ensemble, load_members

    members = load_members([str(setup["photo"]), str(setup["ddamfn"])])
    model = build_ensemble(members, "weighted", [0.25, 0.75])
    ck = make_checkpoint(model_name="ensemble", model_kwargs={"members": [m.spec for m in members], "num_classes": 7,
                                                              "weights": [0.25, 0.75]},
                         model_state=model.state_dict(), class_names=CLASS_NAMES_7)
    save_checkpoint(ck, tmp_path / "photo_ensemble.pth")
    analysis = ExpressionModel(tmp_path / "photo_ensemble.pth", torch.device("cpu"), amp="off")
    assert analysis.class_names == CLASS_NAMES_7
    assert analysis.image_size == 24
    photos = np.random.default_rng(0).integers(0, 255, (3, 24, 24, 3), dtype=np.uint8)
    probs = analysis.predict(photos, None)["probabilities"]
    # the same as each member's calibrated probabilities, mixed 1:3, by hand
    from if3d.data.transforms import normalize
    from networks.inference import predict_logits

    x = torch.from_numpy(photos).permute(0, 3, 1, 2)
    by_hand = 0
    for w, m, norm in zip((0.25, 0.75), members, ({}, {"mean": (0.5,) * 3, "std": (0.5,) * 3})):
        with torch.no_grad():
            by_hand = by_hand + w * torch.softmax(predict_logits(m.model.eval(), [normalize(x, **norm)]).logits, 1)
    assert np.allclose(probs, by_hand.numpy(), atol=1e-5)

    spec = {"model_name": "landmark_mlp", "model_kwargs": {"num_classes": 7}}
    with_3d = networks.create_model("ensemble", members=[members[0].spec, spec], num_classes=7)
    ck = make_checkpoint(model_name="ensemble", model_kwargs={"members": [members[0].spec, spec], "num_classes": 7},
                         model_state=with_3d.state_dict(), class_names=CLASS_NAMES_7)
    save_checkpoint(ck, tmp_path / "landmark_ensemble.pth")
    with pytest.raises(ModelLoadError, match="reads the stream.s. photo, landmarks; the analysis gives photo and "
                                             "render only"):
        ExpressionModel(tmp_path / "landmark_ensemble.pth", torch.device("cpu"), amp="off")
