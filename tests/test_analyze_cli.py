"""``python -m if3d.analyze`` end to end on the real video and photos of ``../shared/data``.

A DDAMFN and an If3D linear-fusion checkpoint are built in the test (random weights: the tests check the
pipeline and its files, not the predictions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

import networks
from if3d.analyze.cli import run
from if3d.checkpoint import make_checkpoint, save_checkpoint
from if3d.classes import AFFECTNET7

REPO = Path(__file__).resolve().parents[1]


def _checkpoint(path: Path, name: str, class_names=AFFECTNET7, **kwargs) -> Path:
    torch.manual_seed(0)
    model = networks.create_model(name, **kwargs)
    save_checkpoint(make_checkpoint(model_name=name, model_kwargs=kwargs, model_state=model.state_dict(),
                                    class_names=list(class_names)), path)
    return path


@pytest.fixture(scope="module")
def ddamfn_ckpt(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("ckpt") / "ddamfn.pth", "ddamfn", num_classes=7)


def _frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_video_with_a_checkpoint_writes_every_output_and_a_rerun_keeps_them(data_dir, ddamfn_ckpt, tmp_path, capsys):
    video = data_dir / "video" / "1543684773.avi"
    out = tmp_path / "out"
    assert run([str(video), "--out", str(out), "--checkpoint", str(ddamfn_ckpt), "--threads", "1", "--quiet"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 67
    assert df["frame"].tolist() == list(range(67))
    assert df["face_detected"].all()
    probs = df[[f"prob_{c}" for c in AFFECTNET7]].to_numpy()
    assert np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert set(df["expression"]) <= set(AFFECTNET7)
    assert "valence" not in df
    assert {"x_0", "y_477", "z_477", "AU04", "AU43", "AU04_smooth", "emfacs", "yaw", "face_score"} <= set(df.columns)
    assert df[["x_0", "y_0"]].notna().all().all()
    folder = out / "1543684773"
    assert (folder / "timing.png").stat().st_size > 10_000
    assert _frames(folder / "annotated.mp4") == 67
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 1
    assert summary["frames"].iloc[0] == 67
    assert summary[[f"share_{c}" for c in AFFECTNET7]].sum(axis=1).iloc[0] == pytest.approx(1.0, abs=1e-3)
    info = json.loads((out / "analysis.json").read_text())
    assert info["inputs"][0]["frames"] == 67
    assert info["inputs"][0]["frames_without_face"] == 0
    printed = capsys.readouterr().out
    assert "pyarrow" in printed or (out / "results.parquet").is_file()
    # the same command again: the input is unchanged, nothing is analysed again
    mtime = (folder / "annotated.mp4").stat().st_mtime_ns
    assert run([str(video), "--out", str(out), "--checkpoint", str(ddamfn_ckpt), "--threads", "1", "--quiet"]) == 0
    assert "unchanged since the last analysis" in capsys.readouterr().out
    assert (folder / "annotated.mp4").stat().st_mtime_ns == mtime
    assert pd.read_csv(out / "results.csv").equals(df)


def test_parquet_is_written_when_pyarrow_is_installed(data_dir, tmp_path):
    pytest.importorskip("pyarrow")
    out = tmp_path / "out"
    image = data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg"
    assert run([str(image), "--out", str(out), "--quiet", "--no-annotate"]) == 0
    assert pd.read_parquet(out / "results.parquet").shape == pd.read_csv(out / "results.csv").shape


def _photo_folder(data_dir: Path, dest: Path) -> Path:
    dest.mkdir()
    for name in ("Adam_Mair_0001.jpg", "Billy_Edelin_0001.jpg"):
        shutil.copy(data_dir / "wild" / "uncropped" / name, dest / name)
    cv2.imwrite(str(dest / "c_wall.png"), np.full((200, 300, 3), 128, np.uint8))  # no face in it
    (dest / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    return dest


def test_an_unreadable_image_stops_the_run_but_keeps_what_was_done(data_dir, tmp_path, capsys):
    folder = _photo_folder(data_dir, tmp_path / "photos")
    single = data_dir / "wild" / "uncropped" / "Fujio_Cho_0006.jpg"
    out = tmp_path / "out"
    status = run([str(single), str(folder), "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert "d_broken.jpg" in err
    assert "Traceback" not in err
    df = pd.read_csv(out / "results.csv")
    assert set(df["input"]) == {str(single)}  # the input finished before the bad one is written
    assert (out / "Fujio_Cho_0006" / "annotated.png").is_file()


def test_skip_unreadable_counts_the_bad_image_and_rows_frames_without_a_face(data_dir, tmp_path):
    folder = _photo_folder(data_dir, tmp_path / "photos")
    out = tmp_path / "out"
    assert run([str(folder), "--out", str(out), "--quiet", "--skip-unreadable", "--no-landmark-columns",
                "--save-renders"]) == 0
    df = pd.read_csv(out / "results.csv")
    assert df.groupby("path")["face_detected"].any().to_dict() == {
        str(folder / "Adam_Mair_0001.jpg"): True, str(folder / "Billy_Edelin_0001.jpg"): True,
        str(folder / "c_wall.png"): False}
    assert df.loc[~df["face_detected"], "AU04"].isna().all()
    assert "x_0" not in df
    info = json.loads((out / "analysis.json").read_text())["inputs"][0]
    assert info["frames_without_face"] == 1
    assert info["skipped_files"][0]["file"].endswith("d_broken.jpg")
    assert sorted(p.name for p in (out / "photos" / "annotated").iterdir()) == [
        "Adam_Mair_0001.png", "Billy_Edelin_0001.png", "c_wall.png"]
    # each face's 3D render: image 0 and 1 have a face (frame numbers are the images' places in the folder); the
    # photos are of two people, so their faces are two faces (ids 0 and 1), never one track
    renders = sorted(p.name for p in (out / "photos" / "renders").iterdir())
    assert renders == ["000000_0.png", "000001_1.png"]
    summary = pd.read_csv(out / "summary.csv")
    faces = summary.dropna(subset=["face_id"])
    assert faces["face_id"].tolist() == [0, 1]
    assert faces["path"].tolist() == [str(folder / "Adam_Mair_0001.jpg"), str(folder / "Billy_Edelin_0001.jpg")]
    assert (faces["frames"] == 1).all()
    # the shipped expression model ran without being asked for: probabilities, a class and the uncertain flag
    assert {"prob_Happy", "expression", "uncertain"} <= set(df.columns)
    has = df["face_detected"]
    assert np.allclose(df.loc[has, [c for c in df.columns if c.startswith("prob_") and "_smooth" not in c]].sum(axis=1), 1)
    assert df.loc[has, "uncertain"].isin([True, False]).all()
    render = cv2.imread(str(out / "photos" / "renders" / renders[0]))
    assert 0.2 < (render.max(2) > 0).mean() < 0.9  # a grey face on black


def test_webcam_mode_records_and_analyses_a_stand_in_stream(data_dir, tmp_path):
    out = tmp_path / "out"
    video = data_dir / "video" / "1543684773.avi"
    assert run(["--webcam", str(video), "--max-frames", "12", "--out", str(out), "--quiet", "--no-landmark-columns"]) == 0
    (folder,) = [p for p in out.iterdir() if p.is_dir() and p.name.startswith("webcam")]
    assert _frames(folder / "recording.mp4") == 12
    assert _frames(folder / "annotated.mp4") == 12
    assert len(pd.read_csv(out / "results.csv")) == 12
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary recording left


def test_bad_checkpoints_and_videos_are_one_line_errors(data_dir, tmp_path, capsys):
    image = str(data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg")
    cats = _checkpoint(tmp_path / "cats.pth", "ddamfn", class_names=["cat", "dog"], num_classes=2)
    assert run([image, "--out", str(tmp_path / "a"), "--checkpoint", str(cats)]) == 2
    assert "not expression classes" in capsys.readouterr().err
    au = _checkpoint(tmp_path / "au.pth", "au_regressor", class_names=["AU1", "AU4"], num_classes=2)
    assert run([image, "--out", str(tmp_path / "b"), "--checkpoint", str(au)]) == 2
    assert "--au-checkpoint" in capsys.readouterr().err
    assert run([image, "--out", str(tmp_path / "c"), "--au-checkpoint", str(cats)]) == 2
    assert "no AU intensities" in capsys.readouterr().err
    nan_path = _checkpoint(tmp_path / "nan.pth", "ddamfn", num_classes=7)
    nan = torch.load(nan_path, weights_only=True)
    nan["model"]["fc.weight"][0, 0] = float("nan")
    torch.save(nan, nan_path)
    assert run([image, "--out", str(tmp_path / "n"), "--checkpoint", str(nan_path)]) == 2
    err = capsys.readouterr().err
    assert "nan.pth" in err
    assert "non-finite weights: fc.weight" in err
    assert "Traceback" not in err
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    assert run([image, "--out", str(tmp_path / "d"), "--checkpoint", str(junk)]) == 2
    assert "junk.pth" in capsys.readouterr().err
    assert run([str(tmp_path / "absent.mp4"), "--out", str(tmp_path / "e")]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert run([image, "--out", str(tmp_path / "file")]) == 2
    # a video that does not decode, through the real command line: one line, status 2, no traceback
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 255, 5000, dtype=np.uint8).tobytes())
    proc = subprocess.run([sys.executable, "-m", "if3d.analyze", str(broken), "--out", str(tmp_path / "f")],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "broken.mp4" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_fusion_model_gets_renders_aligned_with_its_crops(data_dir, tmp_path):
    from if3d.analyze import Analyzer
    from if3d.analyze.faces import FaceDetector
    from if3d.data.converters.align import alignment_matrix
    from if3d.io.images import decode_image

    ckpt = _checkpoint(tmp_path / "linear.pth", "if3d_linear", num_classes=7)
    image = data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg"
    with Analyzer(checkpoint=str(ckpt), threads=1) as analyzer:
        assert analyzer.expression.needs_render
        df = analyzer.analyze(image, landmarks=False)
        rgb = decode_image(image)
        with FaceDetector(video=False) as det:
            lm = det.detect(rgb)[0].landmarks
        photo, render = analyzer.expression.crops(rgb, lm)
    assert len(df) == 1
    assert np.isfinite(df[["valence", "arousal"]].to_numpy()).all()
    assert np.isclose(df[[f"prob_{c}" for c in AFFECTNET7]].sum(axis=1), 1.0).all()
    size = photo.shape[0]
    m = alignment_matrix(lm, size, 0.25)
    pts = lm[:468, :2] @ m[:, :2].T + m[:, 2]
    ys, xs = np.nonzero(render.max(2) > 0)
    # the rendered mesh covers the landmarks' place in the photo crop (same pixels, same framing)
    assert abs(xs.min() - pts[:, 0].min()) < 3
    assert abs(xs.max() - pts[:, 0].max()) < 3
    assert abs(ys.min() - pts[:, 1].min()) < 3
    assert abs(ys.max() - pts[:, 1].max()) < 3


def test_broken_and_looping_links_in_a_folder_are_counted_skips_or_one_line_errors(data_dir, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg", folder / "a.jpg")
    (folder / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (folder / "loop.jpg").symlink_to("loop.jpg")
    out = tmp_path / "out"
    assert run([str(folder), "--out", str(out), "--no-progress", "--skip-unreadable", "--no-landmark-columns"]) == 0
    skipped = json.loads((out / "analysis.json").read_text())["inputs"][0]["skipped_files"]
    assert [(Path(s["file"]).name, s["problem"].split(" (")[0]) for s in skipped] == [
        ("dangling.jpg", "broken symbolic link"), ("loop.jpg", "symbolic link loop")]
    assert len(pd.read_csv(out / "results.csv")) == 1
    capsys.readouterr()
    # without --skip-unreadable: one line naming the link, status 2, and no empty folder for the failed input
    assert run([str(folder), "--out", str(tmp_path / "out2"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "dangling.jpg: broken symbolic link" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out2" / "in").exists()


def test_reanalysing_with_other_settings_leaves_no_outputs_of_the_earlier_ones(data_dir, tmp_path):
    video = data_dir / "video" / "1543684773.avi"
    out = tmp_path / "out"
    common = [str(video), "--out", str(out), "--threads", "1", "--no-progress", "--no-landmark-columns"]
    assert run([*common, "--max-faces", "1", "--save-renders"]) == 0
    folder = out / "1543684773"
    assert (folder / "annotated.mp4").is_file()
    assert (folder / "renders").is_dir()
    assert run([*common, "--max-faces", "1", "--no-annotate"]) == 0
    assert not (folder / "annotated.mp4").exists()  # not an annotated video of the earlier settings
    assert not (folder / "renders").exists()
    assert (folder / "timing.png").is_file()
    assert len(pd.read_csv(folder / "results.csv")) == 67


def test_a_video_inside_a_folder_of_images_is_listed_as_skipped(data_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(data_dir / "wild" / "uncropped" / "Adam_Mair_0001.jpg", folder / "a.jpg")
    (folder / "clip.avi").symlink_to(data_dir / "video" / "1543684773.avi")
    out = tmp_path / "out"
    assert run([str(folder), "--out", str(out), "--no-progress", "--no-landmark-columns", "--no-annotate"]) == 0
    skipped = json.loads((out / "analysis.json").read_text())["inputs"][0]["skipped_files"]
    assert [Path(s["file"]).name for s in skipped] == ["clip.avi"]
    assert "input of its own" in skipped[0]["problem"]
    assert len(pd.read_csv(out / "results.csv")) == 1
