"""AU-intensity data and training: DISFA and BP4D files in their formats (generated around real face frames of
``../shared/data/video``), the canonical AU layout, and the AU regressor trained by the one engine."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn as nn

import networks
from if3d.data.au import AUDataset, convert_bp4d, convert_disfa, read_intensity_file
from if3d.io.report import DataError
from if3d.outputs import OutputError

TINY = "tiny_au_test"
if TINY not in networks.list_backbones():
    @networks.register_backbone(TINY, networks.BackboneSpec(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                                            out_channels=8, feature_size=4, weights="none (random)"))
    def _tiny_backbone(**_) -> nn.Module:
        class Tiny(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.Conv2d(8, 8, 3, stride=2, padding=1))

            def forward_features(self, x: torch.Tensor) -> torch.Tensor:
                return self.body(x)

        return Tiny()


@pytest.fixture(scope="module")
def video_frames(data_dir) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(data_dir / "video" / "1543684773.avi"))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(cv2.resize(f, (360, 240), interpolation=cv2.INTER_AREA))
    return frames


def _disfa(root: Path, frames: list[np.ndarray], subjects=("SN001", "SN002", "SN003"), n=8) -> Path:
    """DISFA's layout: ActionUnit_Labels/<S>/<S>_au<N>.txt (frame,intensity) and Videos_LeftCamera videos."""
    for s, subject in enumerate(subjects):
        (root / "ActionUnit_Labels" / subject).mkdir(parents=True)
        (root / "Videos_LeftCamera").mkdir(exist_ok=True)
        picked = [frames[(s * 20 + 2 * k) % len(frames)] for k in range(n)]
        w = cv2.VideoWriter(str(root / "Videos_LeftCamera" / f"LeftVideo{subject}_comp.avi"),
                            cv2.VideoWriter_fourcc(*"MJPG"), 20, (360, 240))
        for f in picked:
            w.write(f)
        w.release()
        for au in (1, 2, 4, 5, 6, 9, 12, 15, 17, 20, 25, 26):
            lines = [f"{k},{(k + au) % 6 if au == 4 else 0}" for k in range(1, n + 1)]
            (root / "ActionUnit_Labels" / subject / f"{subject}_au{au}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_disfa_converts_into_the_canonical_au_layout(tmp_path, video_frames):
    src = _disfa(tmp_path / "DISFA", video_frames)
    counts = convert_disfa(src, tmp_path / "ds", val_subjects=["SN003"], size=64, every=2, verbose=False)
    assert counts == {"labelled_frames": 12, "written": 12, "no_face": 0, "skipped": 0}
    info = json.loads((tmp_path / "ds" / "au.json").read_text())
    assert info["aus"] == ["AU1", "AU2", "AU4", "AU5", "AU6", "AU9", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26"]
    rows = list(csv.DictReader(open(tmp_path / "ds" / "au" / "train.csv")))
    assert [r["frame"] for r in rows[:4]] == ["1", "3", "5", "7"]  # every 2nd labelled frame
    assert rows[0]["file"] == "SN001/SN001/00001.png"
    assert rows[0]["AU4"] == str((1 + 4) % 6)
    ds = AUDataset(tmp_path / "ds", "val", image_size=32)
    sample = ds[1]
    assert len(ds) == 4
    assert sample["photo"].shape == (3, 32, 32)
    assert sample["photo"].dtype == torch.uint8
    assert sample["au"][ds.class_names.index("AU4")] == (3 + 4) % 6
    assert sample["au_mask"].all()
    assert cv2.imread(str(tmp_path / "ds" / "photos" / "val" / "SN003" / "SN003" / "00001.png")).shape == (64, 64, 3)
    # a second conversion into the same folder needs --overwrite; a foreign folder is never replaced
    with pytest.raises(FileExistsError):
        convert_disfa(src, tmp_path / "ds", verbose=False)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(OutputError, match="refused"):
        convert_disfa(src, tmp_path / "mine", verbose=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_disfa_bad_labels_and_missing_videos_are_named(tmp_path, video_frames):
    src = _disfa(tmp_path / "DISFA", video_frames, subjects=("SN001", "SN002"), n=4)
    bad = src / "ActionUnit_Labels" / "SN002" / "SN002_au9.txt"
    bad.write_text("1,0\n2,7\n")
    with pytest.raises(DataError, match=r"SN002_au9.txt:2: intensity 7"):
        convert_disfa(src, tmp_path / "a", verbose=False)
    bad.write_text("1,0\n2,zero\n")
    with pytest.raises(DataError, match=r"SN002_au9.txt:2: expected 'frame,intensity'"):
        convert_disfa(src, tmp_path / "a", verbose=False)
    bad.write_text("1,0\n2,0\n3,0\n4,0\n")
    (src / "Videos_LeftCamera" / "LeftVideoSN002_comp.avi").unlink()
    with pytest.raises(DataError, match="no video of SN002"):
        convert_disfa(src, tmp_path / "a", verbose=False)
    assert not (tmp_path / "a").exists()  # nothing half-written
    counts = convert_disfa(src, tmp_path / "a", val_fraction=0, skip_missing=True, size=32, verbose=False)
    assert counts["skipped"] == 1
    assert counts["written"] == 4
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    assert report["report"]["counts"] == {"missing_video": 1}


def test_bp4d_intensity_codes_with_unknown_nines(tmp_path, video_frames):
    codes, images = tmp_path / "AU_INT", tmp_path / "frames"
    (images / "F001" / "T1").mkdir(parents=True)
    for k in range(3):
        cv2.imwrite(str(images / "F001" / "T1" / f"{100 + k:04d}.jpg"), video_frames[30 * k])
    for au in (6, 10, 12, 14, 17):
        (codes / f"AU{au:02d}").mkdir(parents=True)
        values = [9, 2, 3] if au == 12 else [1, 0, 5]
        lines = ["frame,intensity"] + [f"{100 + k},{v}" for k, v in enumerate(values)]
        (codes / f"AU{au:02d}" / f"F001_T1_AU{au:02d}.csv").write_text("\n".join(lines) + "\n")
    assert read_intensity_file(codes / "AU12" / "F001_T1_AU12.csv", allow_unknown=True)[100] != 9  # NaN
    convert_bp4d(codes, images, tmp_path / "ds", val_fraction=0, size=32, verbose=False)
    ds = AUDataset(tmp_path / "ds", "train", image_size=32)
    assert ds.class_names == ["AU6", "AU10", "AU12", "AU14", "AU17"]
    first = ds[0]
    assert not first["au_mask"][2]
    assert math.isnan(first["au"][2])
    assert first["au_mask"].sum() == 4
    assert ds[2]["au"][0] == 5
    (codes / "AU06" / "F001_T1_AU06.csv").write_text("100,1\n101,0\n102,5\n103,1\n")
    with pytest.raises(DataError, match="no image of coded frame 103"):
        convert_bp4d(codes, images, tmp_path / "ds2", verbose=False)


def test_the_engine_trains_an_au_regressor_that_the_analysis_uses(tmp_path, video_frames, data_dir):
    from if3d.analyze import Analyzer
    from if3d.train.config import config_from_preset
    from if3d.train.engine import fit

    src = _disfa(tmp_path / "DISFA", video_frames, n=6)
    convert_disfa(src, tmp_path / "ds", val_subjects=["SN003"], size=32, verbose=False)
    cfg = config_from_preset("au_regressor", model="au_regressor", backbone=TINY, data=str(tmp_path / "ds"),
                             image_size=32, epochs=2, batch_size=4, out=str(tmp_path / "run"), device="cpu",
                             compile=False, workers=0, lr=1e-3)
    result = fit(cfg)
    assert result.best_metric == "icc_mean"
    assert math.isnan(result.best_accuracy)
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train_mse", "val_icc_mean", "val_pcc_mean", "val_mae_mean"} <= set(header)
    assert "val_accuracy" not in header
    model, report = networks.build_model_from_checkpoint(tmp_path / "run" / "best.pth")
    assert report.metadata["class_names"][:3] == ["AU1", "AU2", "AU4"]
    ck = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    assert set(ck["metrics"]["val"]["per_au"]) == set(report.metadata["class_names"])
    with Analyzer(checkpoint=None, au_checkpoint=str(tmp_path / "run" / "best.pth"), threads=1) as analyzer:
        df = analyzer.analyze(data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg", landmarks=False)
    assert df["au_source"].iloc[0].startswith("model best.pth")
    aus = [c for c in df.columns if c.startswith("AU") and not c.endswith(("_smooth", "_R", "_L"))]
    assert aus == ["AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU17", "AU20", "AU25", "AU26",
                   "AU43"]
    assert df[aus].iloc[0].between(0, 5).all()
