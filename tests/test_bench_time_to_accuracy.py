"""The time-to-accuracy benchmark trains with the engine, validates a fixed val subset twice per epoch with
validation time kept out of the training minutes, stops at its budget or its targets, and records the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _train_helpers import TINY_BACKBONE, make_dataset  # noqa: E402

from benchmarks import time_to_accuracy as tta  # noqa: E402

#: The real DDAMFN on a one-convolution backbone at 24 px: 56 training photos, batch 4 → 14 steps an epoch.
TINY = ["--backbone", TINY_BACKBONE, "--pretrained", "None", "--image-size", "24", "--batch-size", "4",
        "--workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("tta") / "data", per_class=8, val_per_class=4)


def _run(data, tmp_path, *options):
    out_json, md = tmp_path / "tta.json", tmp_path / "RESULTS.md"
    argv = ["--data", str(data), "--val-samples", "20", "--out-dir", str(tmp_path / "run"), "--json", str(out_json),
            "--markdown", str(md), *options]
    assert tta.main(argv) == 0
    return json.loads(out_json.read_text()), md


def test_recipe_is_the_default_models_and_options_given_replace_its_own():
    argv = tta.recipe_argv("D", "O", ["--epochs", "3", "--compile", "--image-size", "96"])
    assert argv[argv.index("--model") + 1] == "ddamfn"
    assert argv[argv.index("--preset") + 1] == "fer_imagenet"
    assert argv.count("--epochs") == 1
    assert argv[argv.index("--epochs") + 1] == "3"
    assert "--no-compile" not in argv
    assert "--compile" in argv
    example = (Path(tta.REPO_ROOT) / "examples" / "train_default_model.py").read_text()
    for opt, value in tta.DEFAULT_RECIPE:  # the same options as the example that trains the shipped model
        if opt not in ("--epochs", "--seed"):
            assert f'"{opt}", "{value}"' in example if value else f'"{opt}"' in example, opt
    assert "EPOCHS = 12" in example
    assert ("--epochs", "12") in tta.DEFAULT_RECIPE
    assert "SEED = 0" in example
    assert ("--seed", "0") in tta.DEFAULT_RECIPE


@pytest.mark.slow
def test_half_epoch_validation_on_a_fixed_subset_and_training_minutes_without_it(data, tmp_path):
    doc, md = _run(data, tmp_path, "--targets", "0.0", "1.01", "--budget-min", "60", *TINY, "--epochs", "2")
    (rec,) = doc["runs"]
    assert rec["steps_per_epoch"] == 14
    assert rec["train_samples"] == 56
    assert rec["val"] == {"split": "val", "samples": 20, "seed": 0, "evals_per_epoch": 2}
    points = rec["points"]
    assert [p["step"] for p in points] == [7, 14, 21, 28]
    assert [p["epoch"] for p in points] == [0.5, 1, 1.5, 2]
    mins = [p["train_min"] for p in points]
    assert mins == sorted(mins)
    assert mins[0] > 0
    assert rec["eval_min"] == pytest.approx(sum(p["eval_s"] for p in points) / 60, abs=2e-3)
    assert rec["targets"]["0.00"] == {k: points[0][k] for k in ("train_min", "epoch", "step", "accuracy")}
    assert rec["targets"]["1.01"] is None  # never reached: the run went on to the recipe's end
    assert rec["stopped"] == "recipe's epochs done"
    text = md.read_text()
    assert tta.BEGIN in text
    assert "not reached" in text
    assert "| min to 0.00 |" in text
    # a second run with another label is added beside it; the same label replaces its record
    doc, _ = _run(data, tmp_path, "--label", "other", "--targets", "0.0", *TINY, "--epochs", "1")
    assert [r["label"] for r in doc["runs"]] == [rec["label"], "other"]
    assert doc["runs"][1]["stopped"] == "targets reached"
    assert len(doc["runs"][1]["points"]) == 1


@pytest.mark.slow
def test_the_budget_stops_training_and_the_stopping_point_is_validated(data, tmp_path):
    doc, _ = _run(data, tmp_path, "--targets", "1.01", "--budget-min", "0", *TINY, "--epochs", "2")
    (rec,) = doc["runs"]
    assert rec["stopped"] == "budget"
    assert [p["step"] for p in rec["points"]] == [1]  # stopped after its first step, validated there
    assert rec["targets"] == {"1.01": None}
