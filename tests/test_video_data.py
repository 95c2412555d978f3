"""Video data: the converters (real CK+ video, generated AFEW folders and CK+ sequences), the clip dataset,
training-frame sampling and clip augmentation."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from if3d.data import converters
from if3d.data.__main__ import main as data_main
from if3d.data.clips import ClipDataset, collate_clips, sample_segment_frames
from if3d.data.converters import video as video_conv
from if3d.data.converters.video import emotion_fan_folds, read_video_frames
from if3d.data.transforms import PairedAugment
from if3d.io.report import DataError, MissingRenderError


def _write_video(path: Path, frames: int, fps: float = 30.0, size=(64, 48), value=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        img = np.full((size[1], size[0], 3), (i * 7) % 255 if value is None else value, np.uint8)
        w.write(img)
    w.release()
    return path


def _rows(root: Path) -> list[dict]:
    with open(root / "clips.csv", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def real_video_src(tmp_path_factory, data_dir) -> Path:
    video = data_dir / "video" / "1543684773.avi"
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    src = tmp_path_factory.mktemp("vsrc")
    (src / "angry").mkdir()
    (src / "angry" / "1543684773.avi").symlink_to(video)
    return src


@pytest.fixture(scope="module")
def real_clip_dataset(tmp_path_factory, real_video_src) -> Path:
    out = tmp_path_factory.mktemp("vds") / "ds"
    rc = data_main(["convert", "--format", "video", "--src", str(real_video_src), "--out", str(out), "--fps", "10",
                    "--size", "112", "--val-fraction", "0", "--quiet"])
    assert rc == 0
    return out


def test_real_video_converts_with_fps_and_per_frame_alignment(real_clip_dataset):
    rows = _rows(real_clip_dataset)
    assert len(rows) == 1
    row = rows[0]
    # 67 frames at 30 fps, 10 fps kept: frames 0, 3, ..., 66 (the first at or after each 0.1 s)
    assert row["label"] == "6"
    assert row["split"] == "train"
    assert row["clip"] == "1543684773"
    assert int(row["source_frames"]) == 23
    assert int(row["frames"]) == 23
    assert int(row["faceless_frames"]) == 0
    frames = sorted((real_clip_dataset / "clips" / "train" / "6" / "1543684773").iterdir())
    assert [f.name for f in frames[:3]] == ["000000.png", "000003.png", "000006.png"]
    img = np.asarray(Image.open(frames[-1]))
    assert img.shape == (112, 112, 3)
    assert img.std() > 20
    counts = json.loads((real_clip_dataset / "counts.json").read_text())
    assert counts["frames"] == {"train": 23}
    assert counts["clip_alignment"] == "frame"
    ds = ClipDataset(real_clip_dataset, "train", image_size=64)
    sample = ds[0]
    assert sample["clip"].shape == (23, 3, 64, 64)
    assert sample["clip"].dtype == torch.uint8
    assert int(sample["label"]) == 6
    assert bool(sample["frame_mask"].all())
    assert ds.subjects == [None]


def test_read_video_frames_fps(tmp_path):
    video = _write_video(tmp_path / "v.avi", 30, fps=30.0)
    assert [n for n, _ in read_video_frames(video)] == list(range(30))
    assert [n for n, _ in read_video_frames(video, fps=7.5)] == [0, 4, 8, 12, 16, 20, 24, 28]
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(DataError, match="bad.mp4"):
        list(read_video_frames(bad))


class _ShiftingLandmarker:
    """Landmarks of a square "face" that moves 4 px right per frame (a face detector stand-in)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.base = np.concatenate([rng.uniform(40, 80, (478, 2)), np.zeros((478, 1))], 1).astype(np.float32)
        self.base[[33, 133]] = [[48.0, 50.0, 0.0], [52.0, 50.0, 0.0]]  # level eyes, the right one on the left
        self.base[[362, 263]] = [[68.0, 50.0, 0.0], [72.0, 50.0, 0.0]]
        self.calls = 0

    def detect(self, rgb):
        shift = 4.0 * (rgb[0, 0, 0] // 40)  # frame k has value 40k in its corner pixel
        pts = self.base.copy()
        pts[:, 0] += shift
        return pts


def test_per_frame_alignment_follows_the_face_and_clip_alignment_keeps_one_crop(tmp_path, monkeypatch):
    lm = _ShiftingLandmarker()
    monkeypatch.setattr(video_conv, "_landmarker", lambda: lm)
    frames = []
    for k in range(3):
        img = np.zeros((120, 160, 3), np.uint8)
        img[0, 0] = 40 * k
        img[55:65, 55 + 4 * k:65 + 4 * k] = 255  # a bright square that moves with the landmarks
        frames.append(img)
        Image.fromarray(img).save(tmp_path / f"{k}.png")
    clip = video_conv.SourceClip(label=1, clip="c", frames=sorted(tmp_path.glob("*.png")), origin="c")
    out = {}
    for mode in ("frame", "clip"):
        dest = tmp_path / mode
        opts = video_conv._options({"clip_alignment": mode})
        rec = video_conv._process_clip(clip, dest, True, opts, size=64, margin=0.25)
        assert rec["frames"] == 3
        assert rec["faceless"] == []
        out[mode] = [np.asarray(Image.open(dest / f"{k:06d}.png"))[..., 0].astype(float) for k in range(3)]

    def centre_x(img):
        cols = np.nonzero(img.max(0) > 128)[0]
        return cols.mean()

    per_frame = [centre_x(i) for i in out["frame"]]
    per_clip = [centre_x(i) for i in out["clip"]]
    assert max(per_frame) - min(per_frame) < 1.0  # registered: the square stays put
    assert per_clip[2] - per_clip[0] > 2.0  # one crop: the square moves across it


def test_faceless_clip_stops_then_skip_resumes_without_redoing_clips(tmp_path, monkeypatch, real_video_src):
    src = tmp_path / "src"
    (src / "angry").mkdir(parents=True)
    (src / "angry" / "face.avi").symlink_to((real_video_src / "angry" / "1543684773.avi").resolve())
    _write_video(src / "happy" / "blank.avi", 12, value=0)
    out = tmp_path / "ds"
    processed = []
    real = video_conv._process_clip

    def counting(clip, *a, **k):
        processed.append(clip.clip)
        return real(clip, *a, **k)

    monkeypatch.setattr(video_conv, "_process_clip", counting)
    with pytest.raises(DataError, match="blank.avi"):
        converters.convert("video", src, out, fps=5, size=64, val_fraction=0, verbose=False)
    assert not out.exists()
    assert (tmp_path / ".ds.partial").is_dir()
    assert sorted(processed) == ["blank", "face"]
    counts = converters.convert("video", src, out, fps=5, size=64, val_fraction=0, verbose=False,
                                skip_faceless_clips=True)
    assert sorted(processed) == ["blank", "face"]  # nothing converted twice: resumed
    assert counts["skipped"]["faceless_clip"] == 1
    assert counts["totals"] == {"train": 1}
    assert not (tmp_path / ".ds.partial").exists()
    assert [r["clip"] for r in _rows(out)] == ["face"]
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["faceless_clip"] == 1
    assert report["counts"]["faceless_frame"] == 2
    # through the command line: a faceless clip is one line and exit status 2
    rc = data_main(["convert", "--format", "video", "--src", str(src), "--out", str(tmp_path / "ds2"), "--fps", "5",
                    "--size", "64", "--quiet"])
    assert rc == 2


def _afew(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split, per_class in (("Train", 3), ("Val", 2)):
        for cls in ("Happy", "Sad", "Angry"):
            for c in range(per_class):
                d = root / split / cls / f"{cls}_{c:03d}"
                d.mkdir(parents=True)
                for f in range(2 + c * 3):
                    Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(d / f"{f + 1}.png")
    (root / "Train" / "Unknownish").mkdir()
    return root


def test_afew_folders_clip_dataset_and_padded_batches(tmp_path):
    src = _afew(tmp_path / "afew")
    out = tmp_path / "ds"
    counts = converters.convert("afew", src, out, align="none", verbose=False)
    assert counts["totals"] == {"train": 9, "val": 6}
    assert counts["skipped"]["unknown_class"] == 1
    ds = ClipDataset(out, "val", image_size=16)
    assert len(ds) == 6
    assert sorted(set(ds.labels.tolist())) == [1, 2, 6]
    lengths = [ds.num_frames(i) for i in range(len(ds))]
    assert sorted(lengths) == [2, 2, 2, 5, 5, 5]
    batch = ds[[0, 1]]
    t = max(lengths[0], lengths[1])
    assert batch["clip"].shape == (2, t, 3, 16, 16)
    assert batch["frame_mask"].sum(1).tolist() == lengths[:2]
    assert (batch["clip"][~batch["frame_mask"]] == 0).all()
    assert torch.isnan(batch["valence"]).all()
    assert not batch["has_va"].any()
    # frames keep their time order: 1.png, 2.png, ... 10.png sorts naturally
    assert [p.name for p in ds.frame_paths(int(np.argmax(lengths)))] == [f"{i:06d}.png" for i in range(5)]


def test_clip_renders_pair_by_frame_and_missing_ones_are_an_error_or_counted(tmp_path):
    src = _afew(tmp_path / "afew")
    out = tmp_path / "ds"
    converters.convert("afew", src, out, align="none", verbose=False)
    clips = out / "clips" / "val"
    renders = out / "render_clips" / "val"
    for f in clips.rglob("*.png"):
        r = renders / f.relative_to(clips)
        r.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((24, 24, 3), 128, np.uint8)).save(r)
    victim = sorted(renders.rglob("*.png"))[0]
    victim.unlink()
    with pytest.raises(MissingRenderError, match=victim.stem):
        ClipDataset(out, "val", image_size=16, with_renders=True)
    ds = ClipDataset(out, "val", image_size=16, with_renders=True, skip_missing_renders=True)
    assert ds.report.count("missing_render") == 1
    s = ds[0]
    assert s["render_clip"].shape == s["clip"].shape
    assert (s["render_clip"] == 128).all()
    assert ds.report.stats["frames"] == 3 * (2 + 5) - 1


def _ckplus(root: Path, subjects: list[str]) -> Path:
    codes = {"happy": 5, "surprise": 7}
    for subj in subjects:
        for seq, cls in (("001", "happy"), ("002", "surprise"), ("003", None)):
            d = root / "cohn-kanade-images" / subj / seq
            d.mkdir(parents=True)
            for f in range(6):
                Image.fromarray(np.full((20, 20, 3), f * 30, np.uint8)).save(d / f"{subj}_{seq}_{f + 1:08d}.png")
            if cls is not None:
                e = root / "Emotion" / subj / seq
                e.mkdir(parents=True)
                (e / f"{subj}_{seq}_00000006_emotion.txt").write_text(f"   {codes[cls]:.7e}\n")
    return root


def test_ckplus_sequences_subjects_folds_and_last_frames(tmp_path):
    subjects = [f"S{n:03d}" for n in (5, 10, 11, 14, 22, 26, 28, 29, 32, 34, 35, 42)]
    src = _ckplus(tmp_path / "ck", subjects)
    out = tmp_path / "ds"
    counts = converters.convert("ckplus-sequences", src, out, align="none", verbose=False, last_frames=4)
    assert counts["skipped"]["unlabelled_clip"] == len(subjects)
    rows = {(r["subject"], r["clip"]): r for r in _rows(out)}
    # Emotion-FAN's folds: ascending subject id, every tenth subject in the same fold
    assert rows[("S005", "S005_001")]["fold"] == "1"
    assert rows[("S035", "S035_001")]["fold"] == "1"
    assert rows[("S034", "S034_002")]["fold"] == "10"
    assert rows[("S034", "S034_002")]["split"] == "val"
    assert rows[("S010", "S010_001")]["split"] == "train"
    assert rows[("S010", "S010_001")]["label"] == "1"
    assert rows[("S010", "S010_002")]["label"] == "3"
    assert all(r["frames"] == "4" for r in rows.values())  # the last 4 of 6 frames
    first = sorted((out / "clips" / "train" / "1" / "S005_001").iterdir())[0]
    assert np.asarray(Image.open(first)).mean() == pytest.approx(60, abs=1)  # frame 3 (value 2*30) leads
    assert emotion_fan_folds(["S130", "S005", "S010"], folds=2) == {"S005": 1, "S010": 2, "S130": 1}
    val = ClipDataset(out, "val")
    assert val.subjects == ["S034", "S034"]


def test_sample_segment_frames_one_per_segment_and_seeded():
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, :9] = True
    mask[1, :2] = True
    mask[2, :10] = True
    torch.manual_seed(0)
    idx = sample_segment_frames(mask, 3)
    assert idx.shape == (3, 3)
    assert (idx[0] >= torch.tensor([0, 3, 6])).all()
    assert (idx[0] < torch.tensor([3, 6, 9])).all()
    assert (idx[1] < 2).all()  # a 2-frame clip repeats frames
    torch.manual_seed(0)
    assert torch.equal(idx, sample_segment_frames(mask, 3))
    draws = torch.stack([sample_segment_frames(mask, 3)[2] for _ in range(300)])
    assert set(draws[:, 1].tolist()) == {3, 4, 5, 6}  # segment 2 of a 10-frame clip covers 10/3..20/3
    bad = mask.clone()
    bad[2, 0] = False
    with pytest.raises(ValueError, match="first T"):
        sample_segment_frames(bad, 3)


def test_clip_augmentation_moves_every_frame_and_render_alike():
    aug = PairedAugment(image_size=32, erase_p=0.0).train()
    rng = np.random.default_rng(0)
    frame = torch.from_numpy((rng.random((3, 32, 32)) * 255).astype(np.uint8))
    clip = frame.expand(4, 5, 3, 32, 32).contiguous()
    render = (255 - clip).contiguous()
    torch.manual_seed(3)
    out, rout = aug.augment_clips(clip, render)
    assert out.shape == (4, 5, 3, 32, 32)
    assert out.dtype == torch.float32
    for b in range(4):
        for t in range(1, 5):
            assert torch.equal(out[b, t], out[b, 0])  # one geometry per clip
    assert len({out[b, 0].sum().item() for b in range(4)}) > 1  # each clip its own draw
    assert torch.isfinite(rout).all()
    assert rout.shape == out.shape
    ev = PairedAugment(image_size=32).eval().augment_clips(clip)
    assert torch.equal(ev[0, 0], ev[3, 4])  # evaluation: normalisation only
    erase = PairedAugment(image_size=32, erase_p=1.0, hflip=0.0, geometric_p=0.0).train()
    torch.manual_seed(0)
    e = erase.augment_clips(clip)
    zeros = [(e[0, t] == 0).all(0).sum().item() for t in range(5)]
    assert all(z > 0 for z in zeros)
    assert len(set(zeros)) > 1
    collated = collate_clips([{"clip": clip[0, :2], "frame_mask": torch.ones(2, dtype=torch.bool),
                               "label": torch.tensor(1), "valence": torch.tensor(0.0), "arousal": torch.tensor(0.0),
                               "has_va": torch.tensor(False), "index": 0}])
    assert collated["clip"].shape == (1, 2, 3, 32, 32)


def test_a_truncated_video_converts_its_decodable_frames_and_is_reported_by_the_analysis_rule(tmp_path, data_dir):
    video = data_dir / "video" / "1543684773.avi"
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    src = tmp_path / "src"
    (src / "angry").mkdir(parents=True)
    data = video.read_bytes()
    (src / "angry" / "cut.avi").write_bytes(data[: len(data) // 8])  # the header still announces 67 frames
    problems: list = []
    n = len(list(read_video_frames(src / "angry" / "cut.avi", problems=problems)))
    assert 0 < n < 67
    assert problems == [("truncated_video", str(src / "angry" / "cut.avi"),
                         f"ended after {n} of the 67 frames its header announces (a truncated or damaged file); "
                         "the decoded frames were kept")]
    out = tmp_path / "ds"
    assert data_main(["convert", "--format", "video", "--src", str(src), "--out", str(out), "--size", "64",
                      "--val-fraction", "0", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["counts"]["truncated_video"] == 1
    assert int(_rows(out)[0]["source_frames"]) == n
