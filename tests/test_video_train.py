"""Video models through the one training engine and the test script: generated clips (exact resumption),
and the real CK+ clip end to end (convert → train → test → attention plot → your own video)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import networks
from if3d.checkpoint import load_checkpoint
from if3d.data.__main__ import main as data_main
from if3d.evaluate import run as evaluate_cli
from if3d.train.cli import run as train
from if3d.video import main as video_main

CLASSES = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"]


def _clips(root: Path) -> Path:
    """Generated clip dataset: two classes told apart by colour, clips of 2..6 frames."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for label in (1, 6):
            for c in range(n):
                d = root / "clips" / split / str(label) / f"{split}{label}_{c}"
                d.mkdir(parents=True)
                for f in range(int(rng.integers(2, 7))):
                    img = (rng.random((24, 24, 3)) * 120).astype(np.uint8)
                    img[..., 0 if label == 1 else 2] += 120
                    Image.fromarray(img).save(d / f"{f:06d}.png")
    (root / "classes.json").write_text(json.dumps(CLASSES))
    return root


COMMON = ["--image-size", "32", "--batch-size", "4", "--epochs", "2", "--workers", "0", "--no-compile",
          "--seed", "3", "--clip-frames", "2"]


def test_training_resumes_exactly_and_the_test_script_reads_clips(tmp_path):
    data = _clips(tmp_path / "data")
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert train(["--model", "fan_relation", "--data", str(data), "--out", str(full), *COMMON]) == 0
    cfg = json.loads((full / "config.json").read_text())
    assert cfg["config"]["recipe"]["optimizer"] == "sgd"
    assert cfg["config"]["recipe"]["scheduler"] == "step"
    assert cfg["run"]["input_streams"] == ["clip", "frame_mask"]
    assert cfg["run"]["model_kwargs"]["clip_frames"] == 2
    assert train(["--model", "fan_relation", "--data", str(data), "--out", str(cut), *COMMON,
                  "--interrupt-after-steps", "1"]) == 130  # in the middle of epoch 1
    assert train(["--model", "fan_relation", "--data", str(data), "--out", str(cut), *COMMON,
                  "--resume", str(cut)]) == 0
    a, b = load_checkpoint(full / "last.pth")["model"], load_checkpoint(cut / "last.pth")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit on CPU
    with open(full / "metrics.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert 0.0 <= float(rows[-1]["val_accuracy"]) <= 1.0
    out = tmp_path / "eval"
    assert evaluate_cli(["--checkpoint", str(full / "best.pth"), "--data", str(data), "--image-size", "32",
                        "--out", str(out), "--batch-size", "3"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["input_streams"] == ["clip", "frame_mask"]
    assert sum(metrics["per_class"][c]["support"] for c in ("Happy", "Angry")) == 4  # clip-level metrics
    with open(out / "predictions.csv", encoding="utf-8") as f:
        paths = [r["path"] for r in csv.DictReader(f)]
    assert all(Path(p).parent.parent.name == "val" for p in paths)


def test_baseline_trains_with_the_frame_criterion(tmp_path):
    data = _clips(tmp_path / "data")
    out = tmp_path / "fan_baseline"
    assert train(["--model", "fan_baseline", "--data", str(data), "--out", str(out), *COMMON, "--epochs", "1"]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run"]["criterion"]["name"] == "frame_ce"
    assert cfg["run"]["steps_per_epoch"] == 2


def test_per_frame_fusion_trains_on_clips_and_their_renders(tmp_path):
    data = _clips(tmp_path / "data")
    for f in (data / "clips").rglob("*.png"):
        r = data / "render_clips" / f.relative_to(data / "clips")
        r.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(f))).save(r)
    out = tmp_path / "fusion"
    args = ["--model", "fan_self", "--fusion", "linear", "--data", str(data), "--out", str(out), *COMMON,
            "--epochs", "1", "--max-train-samples", "4", "--max-val-samples", "2"]
    # the fusion is built for the backbone's map at its input size
    args[args.index("--image-size") + 1] = str(networks.backbone_spec("resnet18").input_size)
    assert train(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run"]["input_streams"] == ["clip", "render_clip", "frame_mask"]
    assert cfg["run"]["model_kwargs"]["fusion"] == "linear"


def test_real_clip_end_to_end(tmp_path, data_dir):
    video = data_dir / "video" / "1543684773.avi"
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    src = tmp_path / "videos"
    (src / "angry").mkdir(parents=True)
    (src / "angry" / video.name).symlink_to(video)
    data = tmp_path / "ck_video"
    assert data_main(["convert", "--format", "video", "--src", str(src), "--out", str(data), "--fps", "10",
                      "--size", "112", "--val-fraction", "0", "--quiet"]) == 0
    run = tmp_path / "run"
    assert train(["--model", "fan_relation", "--data", str(data), "--val-split", "train", "--out", str(run),
                  "--image-size", "64", "--batch-size", "1", "--epochs", "1", "--workers", "0", "--no-compile",
                  "--lr", "0.001"]) == 0
    out = tmp_path / "eval"
    assert evaluate_cli(["--checkpoint", str(run / "last.pth"), "--data", str(data), "--split", "train",
                        "--image-size", "64", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["per_class"]["Angry"]["support"] == 1
    att = tmp_path / "attention"
    assert video_main(["attention", "--checkpoint", str(run / "last.pth"), "--data", str(data), "--split", "train",
                       "--clip", "1543684773", "--image-size", "64", "--out", str(att)]) == 0
    with open(att / "1543684773_attention.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 23  # every frame of the clip, in order
    assert rows[0]["frame"] == "000000"
    assert sum(float(r["final_weight"]) for r in rows) == pytest.approx(1.0, abs=1e-4)
    assert (att / "1543684773_attention.png").stat().st_size > 5000
    # your own video: decoded, aligned and classified without converting a dataset
    pred = tmp_path / "pred"
    assert video_main(["predict", "--checkpoint", str(run / "last.pth"), "--video", str(video), "--fps", "5",
                       "--image-size", "64", "--out", str(pred)]) == 0
    summary = json.loads((pred / "predictions.json").read_text())[str(video)]
    assert summary["frames"] == 12
    assert summary["faceless_frames"] == 0
    assert sum(summary["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
    assert video_main(["attention", "--checkpoint", str(run / "last.pth"), "--data", str(data), "--split",
                       "train", "--clip", "nope", "--out", str(att)]) == 2
