"""Converters: the shared FER2013 and CK+ folders into the canonical layout (exact counts), and every other
format on small files in its real layout, generated here from real face images of ../shared/data."""

from __future__ import annotations

import csv
import json
import os
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from if3d.classes import AFFECTNET7, AFFECTNET8, canonical_label
from if3d.data import PairedDataset
from if3d.data.__main__ import main as cli_main
from if3d.data.converters import FORMATS, convert, scan
from if3d.data.converters import base as conv_base
from if3d.data.dataset import read_image

# ../shared/data/README.md
FER_TRAIN = {"angry": 3995, "disgust": 436, "fear": 4097, "happy": 7215, "neutral": 4965, "sad": 4830, "surprise": 3171}
FER_PUBLIC_TEST = {"angry": 467, "disgust": 56, "fear": 496, "happy": 895, "neutral": 607, "sad": 653, "surprise": 415}
CKPLUS = {"anger": 135, "contempt": 54, "disgust": 177, "fear": 75, "happy": 207, "sadness": 84, "surprise": 249}


def _by_canonical(counts: dict[str, int], names) -> dict[str, int]:
    out = dict.fromkeys(names, 0)
    for k, v in counts.items():
        out[names[canonical_label(k)]] += v
    return out


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _rgb(path: Path) -> np.ndarray:
    return read_image(path).permute(1, 2, 0).numpy()


def _uncropped(data_dir: Path, n: int, offset: int = 0) -> list[tuple[Path, str]]:
    """Real grey 350x350 face photos with background and their labels (wild/uncropped)."""
    with open(data_dir / "wild" / "uncropped_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[offset: offset + n]
    return [(data_dir / "wild" / "uncropped" / r["image"], r["emotion"]) for r in rows]


def _scene(faces: list[np.ndarray], size=(360, 640), face_side=150) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """A grey 'scene' with the faces pasted side by side; returns it and each face's (left, top, right, bottom)."""
    h, w = size
    canvas = np.full((h, w, 3), 90, np.uint8)
    boxes = []
    for i, face in enumerate(faces):
        f = cv2.resize(face, (face_side, face_side), interpolation=cv2.INTER_AREA)
        left, top = 40 + i * (face_side + 120), 60 + 40 * i
        canvas[top: top + face_side, left: left + face_side] = f
        boxes.append((left, top, left + face_side, top + face_side))
    return canvas, boxes


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    return path


def _counts(out: Path) -> dict:
    return json.loads((out / "counts.json").read_text())


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())["counts"]


# ------------------------------------------------------------------------------------------------ shared


@pytest.fixture(scope="module")
def fer2013_root(data_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("canon") / "fer2013"
    convert("fer2013-folders", data_dir / "fer2013", out, verbose=False)
    return out


def test_fer2013_folders_counts_match_the_readme(fer2013_root):
    out = fer2013_root
    assert json.loads((out / "classes.json").read_text()) == list(AFFECTNET7)
    counts = _counts(out)
    # the shared test folder is FER2013's PublicTest (file names PublicTest_*), the official validation split
    assert counts["splits"]["train"] == _by_canonical(FER_TRAIN, AFFECTNET7)
    assert counts["splits"]["val"] == _by_canonical(FER_PUBLIC_TEST, AFFECTNET7)
    assert counts["totals"] == {"train": 28709, "val": 3589}
    for split, per_class in counts["splits"].items():
        for label, name in enumerate(AFFECTNET7):
            assert len(os.listdir(out / "photos" / split / str(label))) == per_class[name]
    assert _report(out) == {}
    ds = PairedDataset.from_root(out, "val", require_renders=False)
    assert len(ds) == 3589
    assert np.bincount(ds.labels, minlength=7).tolist() == [counts["splits"]["val"][n] for n in AFFECTNET7]
    sample = ds[0]
    assert sample["photo"].shape == (3, 112, 112)
    assert "render" not in sample
    assert not bool(sample["has_va"])
    assert np.isnan(float(sample["valence"]))


def test_a_calibration_split_is_carved_from_train_stratified_and_never_from_publictest(data_dir, tmp_path):
    a = convert("fer2013-folders", data_dir / "fer2013", tmp_path / "a", calibration_fraction=0.05, verbose=False)
    assert a["totals"] == {"train": 27273, "val": 3589, "calib": 1436}
    for name in AFFECTNET7:  # each class keeps its share in calib (stratified)
        total = a["splits"]["train"][name] + a["splits"]["calib"][name]
        assert abs(a["splits"]["calib"][name] - 0.05 * total) <= 1
    names = {s: {p.name for p in (tmp_path / "a" / "photos" / s).rglob("*.jpg")} for s in ("train", "calib", "val")}
    assert not names["train"] & names["calib"]
    assert all(n.startswith("Training_") for n in names["calib"])
    assert "calibration split 'calib'" in a["split_note"]
    convert("fer2013-folders", data_dir / "fer2013", tmp_path / "b", calibration_fraction=0.05, verbose=False)
    assert {p.name for p in (tmp_path / "b" / "photos" / "calib").rglob("*.jpg")} == names["calib"]  # seeded
    with pytest.raises(ValueError, match="calibration_fraction"):
        convert("fer2013-folders", data_dir / "fer2013", tmp_path / "c", calibration_fraction=1.0, verbose=False)


def test_ckplus_counts_and_subject_independent_validation(data_dir, tmp_path):
    out = tmp_path / "ckplus"
    counts = convert("ckplus", data_dir / "ckplus48", out, val_fraction=0.1, seed=0, verbose=False)
    assert counts["classes"] == list(AFFECTNET8)
    totals = {n: counts["splits"]["train"][n] + counts["splits"]["val"][n] for n in AFFECTNET8}
    assert totals == _by_canonical(CKPLUS, AFFECTNET8)
    assert totals["Neutral"] == 0
    assert sum(counts["totals"].values()) == 981
    assert 0.05 < counts["totals"]["val"] / 981 < 0.16
    subjects = {s: {p.name.split("_")[0] for p in (out / "photos" / s).rglob("*.png")} for s in ("train", "val")}
    assert subjects["train"]
    assert subjects["val"]
    assert not subjects["train"] & subjects["val"]
    # the subject of every written photo is recorded, for subject-independent folds later
    from if3d.data.layout import read_subjects

    recorded = read_subjects(out)
    written = sorted(p.relative_to(out).as_posix() for p in (out / "photos").rglob("*.png"))
    assert sorted(recorded) == written
    assert all(recorded[f] == Path(f).name.split("_")[0] for f in written)
    # seeded: the same seed gives the same split, another seed another one
    again = convert("ckplus", data_dir / "ckplus48", tmp_path / "again", seed=0, verbose=False)
    other = convert("ckplus", data_dir / "ckplus48", tmp_path / "other", seed=1, verbose=False)
    assert again["splits"] == counts["splits"]
    val_files = sorted(p.name for p in (out / "photos" / "val").rglob("*.png"))
    assert val_files == sorted(p.name for p in (tmp_path / "again" / "photos" / "val").rglob("*.png"))
    assert val_files != sorted(p.name for p in (tmp_path / "other" / "photos" / "val").rglob("*.png"))
    assert other["totals"]["train"] + other["totals"]["val"] == 981


def test_ckplus_sample_split_is_stratified(data_dir, tmp_path):
    counts = convert("ckplus", data_dir / "ckplus48", tmp_path / "ck", split_by="sample", val_fraction=0.2, verbose=False)
    for name in AFFECTNET8[1:]:
        total = counts["splits"]["train"][name] + counts["splits"]["val"][name]
        assert abs(counts["splits"]["val"][name] - 0.2 * total) <= 1


# ------------------------------------------------------------------------------------------- FER2013 CSV


def _fer_pixels(path: Path) -> str:
    img = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert img.shape == (48, 48)
    return " ".join(str(v) for v in img.reshape(-1))


def _fer_rows(data_dir: Path):
    """(code, usage, path) rows of real FER2013 images, codes in FER2013's order."""
    order = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
    rows = []
    for code, cls in enumerate(order):
        for usage, folder in (("Training", "train"), ("PublicTest", "test")):
            for p in sorted((data_dir / "fer2013" / folder / cls).iterdir())[:2]:
                rows.append((code, usage, p))
        p = sorted((data_dir / "fer2013" / "train" / cls).iterdir())[5]
        rows.append((code, "PrivateTest", p))
    return rows


def test_fer2013_csv(data_dir, tmp_path):
    rows = _fer_rows(data_dir)
    src = tmp_path / "src" / "fer2013.csv"
    src.parent.mkdir()
    with open(src, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for code, usage, p in rows:
            w.writerow([code, _fer_pixels(p), usage])
        w.writerow([3, "1 2 3", "Training"])  # not 48x48
        w.writerow([9, _fer_pixels(rows[0][2]), "Training"])  # no such emotion
    out = tmp_path / "fer"
    counts = convert("fer2013-csv", src.parent, out, verbose=False)
    assert counts["totals"] == {"train": 14, "val": 14, "test": 7}
    assert _report(out) == {"bad_label_row": 2}
    # row i -> fer{i:07d}.png in the class of its code, pixels unchanged (PNG is lossless)
    for i, (code, usage, p) in enumerate(rows):
        split = {"Training": "train", "PublicTest": "val", "PrivateTest": "test"}[usage]
        label = canonical_label(["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"][code])
        written = out / "photos" / split / str(label) / f"fer{i:07d}.png"
        assert np.array_equal(cv2.imread(str(written), cv2.IMREAD_GRAYSCALE), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))


def _fer_csv_bytes(data_dir: Path, extra_rows: list[list]) -> tuple[bytes, int]:
    """A FER2013-format CSV of real faces (one per class and Usage) plus ``extra_rows``; returns it and its
    number of real rows."""
    import io

    rows = _fer_rows(data_dir)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["emotion", "pixels", "Usage"])
    for code, usage, p in rows:
        w.writerow([code, _fer_pixels(p), usage])
    w.writerows(extra_rows)
    return buf.getvalue().encode(), len(rows)


@pytest.mark.parametrize("cut", ["in_pixels", "after_pixels"])
def test_fer2013_csv_cut_off_and_wrong_sized_rows_are_bad_rows(data_dir, tmp_path, cut):
    """A truncated download (``head -c``: the last row cut anywhere) and rows whose pixel count is not 48x48
    (a 2x2 'face', one value too many) or that hold a non-number are counted bad_label_rows with their line;
    everything else converts."""
    tokens = _fer_pixels(_fer_rows(data_dir)[0][2]).split()
    face = " ".join(tokens)
    not_a_number = " ".join([*tokens[:10], "x", *tokens[11:]])
    blob, n = _fer_csv_bytes(data_dir, [[3, "10 20 30 40", "Training"], [3, face + " 7", "Training"],
                                        [3, not_a_number, "Training"]])
    last = f"5,{face},PublicTest\n".encode()
    cut_at = len(last) // 2 if cut == "in_pixels" else len(last) - len(b"PublicTest\n")
    src = tmp_path / "cut.csv"
    src.write_bytes(blob + last[:cut_at])
    out = tmp_path / "out"
    counts = convert("fer2013-csv", src, out, val_fraction=0, verbose=False)
    assert sum(counts["totals"].values()) == n
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"bad_label_row": 4}
    bad = {p["path"].rsplit(":", 1)[1]: p["detail"] for p in report["problems"]["bad_label_row"]}
    assert set(bad) == {str(n + 2), str(n + 3), str(n + 4), str(n + 5)}
    assert "2304 pixel values, got 4" in bad[str(n + 2)]
    assert "got 2305" in bad[str(n + 3)]
    assert "not all integers" in bad[str(n + 4)]
    assert ("cut short" if cut == "in_pixels" else "Usage ''") in bad[str(n + 5)]
    written = list((out / "photos").rglob("*.png"))
    assert len(written) == n
    assert {cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).shape for p in written} == {(48, 48)}


def test_non_utf8_text_inputs_name_the_file(data_dir, tmp_path):
    from if3d.data.layout import read_annotations
    from if3d.io.report import DataError, DataReport
    from if3d.render.batch import read_manifest

    blob, _ = _fer_csv_bytes(data_dir, [])
    fer = tmp_path / "fer2013.csv"
    fer.write_bytes(blob.replace(b"Training", b"Tr\xe4ining", 1))
    ann = tmp_path / "train.csv"
    ann.write_bytes(b"file,valence,arousal\n1/a.jpg,0.1,0.2\n1/caf\xe9.jpg,0.1,0.2\n")
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"relative_path,status,reason\nx.jpg,ok,\ny\xff.jpg,ok,\n")
    for path, call, line in ((fer, lambda: convert("fer2013-csv", fer, tmp_path / "o", verbose=False), 2),
                             (ann, lambda: read_annotations(ann, DataReport()), 3),
                             (manifest, lambda: read_manifest(manifest), 3)):
        with pytest.raises(DataError) as err:
            call()
        assert str(err.value).startswith(f"{path}: ")
        assert f"not UTF-8 text (line {line}" in str(err.value)
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ FERPlus


FERPLUS_HEADER = ["Usage", "Image name", "neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                  "contempt", "unknown", "NF"]


def _ferplus_source(data_dir: Path, root: Path, with_folders: bool) -> list[int | None]:
    """fer2013new.csv rows (and the images) covering every FERPlus voting case; returns expected labels."""
    paths = [p for _, _, p in _fer_rows(data_dir)][:9]
    usages = ["Training"] * 5 + ["PublicTest"] * 2 + ["PrivateTest"] * 2
    votes = [
        [0, 8, 0, 0, 0, 0, 0, 0, 2, 0],  # happiness
        [5, 1, 1, 1, 0, 0, 1, 0, 1, 0],  # neutral after dropping single votes (5 > 0.5 * 5)
        [0, 0, 0, 0, 0, 0, 0, 6, 4, 0],  # contempt
        [4, 4, 0, 0, 0, 0, 0, 0, 2, 0],  # no majority
        [1, 0, 0, 0, 0, 0, 0, 0, 7, 2],  # unknown
        [0, 0, 0, 3, 0, 0, 0, 0, 0, 7],  # not a face
        [0, 0, 9, 0, 0, 0, 1, 0, 0, 0],  # surprise
        [2, 0, 0, 0, 8, 0, 0, 0, 0, 0],  # anger
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0],  # (no name: removed by FERPlus)
    ]
    expected = [1, 0, 7, None, None, None, 3, 6, None]
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(FERPLUS_HEADER)
        for i, (usage, v) in enumerate(zip(usages, votes)):
            w.writerow([usage, "" if i == 8 else f"fer{i:07d}.png", *v])
    if with_folders:
        folder = {"Training": "FER2013Train", "PublicTest": "FER2013Valid", "PrivateTest": "FER2013Test"}
        for i, (usage, p) in enumerate(zip(usages, paths)):
            d = root / folder[usage]
            d.mkdir(exist_ok=True)
            cv2.imwrite(str(d / f"fer{i:07d}.png"), cv2.imread(str(p), cv2.IMREAD_GRAYSCALE))
    else:
        with open(root / "fer2013.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["emotion", "pixels", "Usage"])
            for usage, p in zip(usages, paths):
                w.writerow([0, _fer_pixels(p), usage])
    return expected


@pytest.mark.parametrize("with_folders", [True, False], ids=["image-folders", "fer2013-csv"])
def test_ferplus_majority_votes(data_dir, tmp_path, with_folders):
    src = tmp_path / "ferplus"
    src.mkdir()
    expected = _ferplus_source(data_dir, src, with_folders)
    out = tmp_path / "out"
    counts = convert("ferplus", src, out, verbose=False)
    assert counts["classes"] == list(AFFECTNET8)
    found = {p.name: int(p.parent.name) for p in (out / "photos").rglob("*.png")}
    want = {f"fer{i:07d}.png": lab for i, lab in enumerate(expected) if lab is not None}
    assert found == want
    assert counts["totals"] == {"train": 3, "val": 1, "test": 1}
    assert _report(out) == {"unlabelled_image": 1, "vote_unknown": 1, "vote_not_face": 1, "vote_no_majority": 1}


# ------------------------------------------------------------------------------------------------- RAF-DB


def test_rafdb(data_dir, tmp_path):
    src = tmp_path / "basic"
    wild = sorted((data_dir / "wild" / "images").iterdir())
    lines = []
    k = 0
    for code in (4, 5, 7):  # happiness, sadness, neutral
        for _ in range(4):
            name = f"train_{k + 1:05d}.jpg"
            _write(src / "Image" / "aligned" / f"train_{k + 1:05d}_aligned.jpg",
                   cv2.resize(_rgb(wild[k]), (100, 100)))
            lines.append(f"{name} {code}")
            k += 1
        name = f"test_{code:04d}.jpg"
        _write(src / "Image" / "aligned" / f"test_{code:04d}_aligned.jpg", cv2.resize(_rgb(wild[k]), (100, 100)))
        lines.append(f"{name} {code}")
        k += 1
    lines += ["train_09999.jpg 4", "train_00001.jpg 9", "garbage"]
    (src / "EmoLabel").mkdir()
    (src / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "raf"
    counts = convert("rafdb", src, out, val_fraction=0.25, verbose=False)
    assert counts["totals"] == {"train": 9, "val": 3, "test": 3}
    assert counts["splits"]["val"]["Happy"] == counts["splits"]["val"]["Sad"] == counts["splits"]["val"]["Neutral"] == 1
    assert _report(out) == {"unknown_class": 1, "missing_source_image": 1, "bad_label_row": 1}
    assert (out / "photos" / "test" / str(canonical_label("neutral")) / "test_0007_aligned.jpg").is_file()
    # aligned faces are placed unchanged (hard link or copy)
    a = out / "photos" / "test" / "1" / "test_0004_aligned.jpg"
    assert a.read_bytes() == (src / "Image" / "aligned" / "test_0004_aligned.jpg").read_bytes()


# ---------------------------------------------------------------------------------------------------- ExpW


def test_expw_boxes_detection_and_alignment(data_dir, tmp_path):
    src = tmp_path / "ExpW"
    faces = _uncropped(data_dir, 8)
    lines = []
    codes = {"angry": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4, "surprise": 5, "neutral": 6}
    for s in range(4):
        pair = faces[2 * s: 2 * s + 2]
        canvas, boxes = _scene([_rgb(p) for p, _ in pair])
        name = f"scene_{s}.jpg"
        _write(src / "image" / "origin" / name, canvas)
        for face_id, ((_, emo), (left, top, right, bottom)) in enumerate(zip(pair, boxes)):
            lines.append(f"{name} {face_id} {top} {left} {right} {bottom} 95.5 {codes[emo]}")
    lines.append("scene_0.jpg 2 250 420 520 350 40.0 3")  # a box on the grey background: no face
    lines.append("scene_1.jpg 3 100 300 200 200 50.0 3")  # right < left: bad box
    lines.append("missing.jpg 0 10 10 60 60 90.0 3")
    (src / "label").mkdir()
    (src / "label" / "label.lst").write_text("\n".join(lines) + "\n")
    out = tmp_path / "expw"
    counts = convert("expw", src, out, size=112, val_fraction=0.25, verbose=False)
    assert _report(out) == {"bad_box": 1, "missing_source_image": 1, "no_face": 1}
    written = _files(out / "photos")
    assert len(written) == 8
    assert sum(counts["totals"].values()) == 8
    for p in written:
        assert cv2.imread(str(p)).shape == (112, 112, 3)
        label = int(p.parent.name)
        stem, face_id = p.stem.rsplit("_", 1)
        assert AFFECTNET7[label] == AFFECTNET7[canonical_label(faces[2 * int(stem[-1]) + int(face_id)][1])]
    # both faces of a scene are in the same split (grouped by source image)
    by_scene: dict[str, set] = {}
    for p in written:
        by_scene.setdefault(p.stem.rsplit("_", 1)[0], set()).add(p.parts[-3])
    assert all(len(v) == 1 for v in by_scene.values())
    # the aligned face is the face: it correlates with the box crop far better than with the background
    p = next(q for q in written if q.stem == "scene_0_0")
    crop = cv2.resize(_rgb(faces[0][0]), (112, 112)).astype(float).mean(2)
    aligned = cv2.imread(str(p), cv2.IMREAD_GRAYSCALE).astype(float)
    assert abs(aligned.mean() - 90) > 1 or aligned.std() > 20
    assert np.corrcoef(crop.ravel(), aligned.ravel())[0, 1] > 0.3


@pytest.mark.parametrize("workers", [1, 2])
def test_expw_plain_box_crop(data_dir, tmp_path, workers):
    src = tmp_path / "ExpW"
    faces = _uncropped(data_dir, 2)
    canvas, boxes = _scene([_rgb(p) for p, _ in faces])
    _write(src / "image" / "origin" / "a.jpg", canvas)
    (src / "label").mkdir()
    (src / "label" / "label.lst").write_text(
        "".join(f"a.jpg {i} {top} {left} {right} {bottom} 99.0 3\n" for i, (left, top, right, bottom) in enumerate(boxes)))
    out = tmp_path / "out"
    convert("expw", src, out, align="none", val_fraction=0, workers=workers, verbose=False)
    for i, (left, top, right, bottom) in enumerate(boxes):
        crop = cv2.imread(str(out / "photos" / "train" / "1" / f"a_{i}.jpg"))
        assert crop.shape == (bottom - top, right - left, 3)
        assert np.abs(crop.astype(float) - canvas[top:bottom, left:right, ::-1]).mean() < 3  # JPEG


# ---------------------------------------------------------------------------------------------- SFEW, JAFFE


def test_sfew_frames_are_detected_and_aligned(data_dir, tmp_path):
    src = tmp_path / "SFEW_2"
    faces = _uncropped(data_dir, 5, offset=10)
    plan = [("Train", "Happy"), ("Train", "Happy"), ("Val", "Sad"), ("Val", "Neutral")]
    for i, ((p, _), (split, cls)) in enumerate(zip(faces, plan)):
        canvas, _ = _scene([_rgb(p)], size=(576, 720), face_side=220)
        _write(src / split / cls / f"frame_{i:03d}.png", canvas)
    _write(src / "Train" / "Happy" / "blank.png", np.full((576, 720, 3), 128, np.uint8))
    _write(src / "Test" / "frame_x.png", cv2.resize(_rgb(faces[4][0]), (720, 576)))
    (src / "Train" / "Happy" / "notes.txt").write_text("not an image")
    (src / "Train" / "Bored").mkdir()
    out = tmp_path / "sfew"
    counts = convert("sfew", src, out, size=96, verbose=False)
    assert counts["totals"] == {"train": 2, "val": 2}
    assert counts["splits"]["val"]["Sad"] == counts["splits"]["val"]["Neutral"] == 1
    assert _report(out) == {"non_image_file": 1, "unknown_class": 1, "no_face": 1, "unlabelled_image": 1}
    assert all(cv2.imread(str(p)).shape == (96, 96, 3) for p in _files(out / "photos"))


def test_jaffe_names_and_subject_split(data_dir, tmp_path):
    src = tmp_path / "jaffe"
    src.mkdir()
    faces = _uncropped(data_dir, 8, offset=20)
    subjects = ["KA", "KL", "KM", "KR"]
    for i, (p, _) in enumerate(faces):
        subj, code = subjects[i // 2], ("HA", "SA")[i % 2]
        grey = cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (256, 256))
        cv2.imwrite(str(src / f"{subj}.{code}{i % 3 + 1}.{40 + i}.tiff"), grey)
    cv2.imwrite(str(src / "KA.XX1.99.tiff"), grey)  # unknown expression code
    cv2.imwrite(str(src / "portrait.tiff"), grey)  # not a JAFFE name
    (src / "README").write_text("JAFFE")
    out = tmp_path / "out"
    counts = convert("jaffe", src, out, val_fraction=0.25, size=64, verbose=False)
    assert sum(counts["totals"].values()) == 8
    assert counts["totals"]["val"] == 2  # one subject of four
    assert _report(out) == {"non_image_file": 1, "unlabelled_image": 1, "unknown_class": 1}
    val = [p.name for p in (out / "photos" / "val").rglob("*.jpg")]
    assert len({n.split(".")[0] for n in val}) == 1
    happy = [p.name for p in (out / "photos").rglob("*.jpg") if p.parent.name == str(canonical_label("happy"))]
    assert len(happy) == 4
    assert all(".HA" in n for n in happy)


# ----------------------------------------------------------------------------------------------- AffectNet


def test_affectnet_csv_boxes_and_valence_arousal(data_dir, tmp_path):
    src = tmp_path / "AffectNet"
    faces = _uncropped(data_dir, 6, offset=30)
    header = ["subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks",
              "expression", "valence", "arousal"]
    rows = {"training.csv": [], "validation.csv": []}
    plan = [("training.csv", 1, 0.7, 0.3), ("training.csv", 2, -0.5, -0.2), ("training.csv", 8, -2, -2),
            ("training.csv", 7, -2, -2), ("validation.csv", 0, 0.0, 0.1), ("validation.csv", 6, -0.6, 0.8)]
    for i, ((p, _), (csv_name, exp, val, aro)) in enumerate(zip(faces, plan)):
        canvas, boxes = _scene([_rgb(p)], size=(300, 400), face_side=160)
        rel = f"{100 + i}/img{i}.jpg"
        _write(src / "Manually_Annotated_Images" / rel, canvas)
        left, top, right, bottom = boxes[0]
        rows[csv_name].append([rel, left, top, right - left, bottom - top, "1;2;3", exp, val, aro])
    rows["training.csv"].append(["999/nothere.jpg", 0, 0, 10, 10, "", 3, 0.1, 0.1])
    for name, rs in rows.items():
        with open(src / name, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerows(rs)
    out = tmp_path / "affectnet"
    counts = convert("affectnet", src, out, verbose=False)
    assert counts["classes"] == list(AFFECTNET8)
    assert counts["totals"] == {"train": 3, "val": 2}
    assert _report(out) == {"missing_source_image": 1, "not_an_expression": 1}
    crop = cv2.imread(str(out / "photos" / "train" / "1" / "img0.jpg"))
    assert crop.shape == (160, 160, 3)
    with open(out / "annotations" / "train.csv", newline="") as f:
        ann = {r["file"]: (float(r["valence"]), float(r["arousal"])) for r in csv.DictReader(f)}
    assert ann == {"1/img0.jpg": (0.7, 0.3), "2/img1.jpg": (-0.5, -0.2)}  # contempt's -2 is "no value"
    ds = PairedDataset.from_root(out, "train", require_renders=False)
    va = {ds.paths[i]: (bool(ds.has_va[i]), float(ds.valence[i])) for i in range(len(ds))}
    assert va["1/img0.jpg"] == (True, pytest.approx(0.7))
    assert va["7/img3.jpg"][0] is False
    assert ds.report.count("photo_without_annotation") == 1


def test_affectnet_npy_distribution(data_dir, tmp_path):
    src = tmp_path / "affectnet_npy"
    wild = sorted((data_dir / "wild" / "images").iterdir())
    plan = {"train_set": [(0, 0.1, 0.2), (5, -0.4, 0.6), (9, -2.0, -2.0)], "val_set": [(7, 0.3, -0.3)]}
    n = 0
    for folder, entries in plan.items():
        for exp, val, aro in entries:
            _write(src / folder / "images" / f"{n}.jpg", cv2.resize(_rgb(wild[n]), (224, 224)))
            ann = src / folder / "annotations"
            ann.mkdir(parents=True, exist_ok=True)
            np.save(ann / f"{n}_exp.npy", np.array(str(exp)))
            np.save(ann / f"{n}_val.npy", np.array(str(val)))
            np.save(ann / f"{n}_aro.npy", np.array(str(aro)))
            n += 1
    _write(src / "val_set" / "images" / "77.jpg", cv2.resize(_rgb(wild[9]), (224, 224)))  # no annotation
    out = tmp_path / "out"
    counts = convert("affectnet", src, out, verbose=False)
    assert counts["totals"] == {"train": 2, "val": 1}
    assert _report(out) == {"not_an_expression": 1, "unlabelled_image": 1}
    ds = PairedDataset.from_root(out, "train", require_renders=False)
    assert sorted(ds.paths.tolist()) == ["0/0.jpg", "5/1.jpg"]
    assert np.allclose(sorted(ds.valence.tolist()), [-0.4, 0.1])


# -------------------------------------------------------------------------------------- generic, CLI, atomic


def test_generic_folders_with_splits(data_dir, tmp_path):
    src = tmp_path / "mine"
    wild = sorted((data_dir / "wild" / "images").iterdir())
    for i, (split, cls) in enumerate([("train", "Happiness"), ("train", "anger"), ("test", "CONTEMPT")]):
        _write(src / split / cls / f"x{i}.jpg", _rgb(wild[i]))
    counts = convert("folders", src, tmp_path / "out", val_fraction=0, verbose=False)
    assert counts["classes"] == list(AFFECTNET8)
    assert counts["splits"]["test"]["Contempt"] == 1
    assert counts["splits"]["train"]["Angry"] == 1


def test_output_is_refused_when_not_empty_and_replaced_with_overwrite(data_dir, tmp_path):
    out = tmp_path / "ck"
    convert("ckplus", data_dir / "ckplus48", out, verbose=False)
    (out / "extra.txt").write_text("a file inside an earlier conversion")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert("ckplus", data_dir / "ckplus48", out, verbose=False)
    assert (out / "extra.txt").exists()
    convert("ckplus", data_dir / "ckplus48", out, overwrite=True, verbose=False)
    assert not (out / "extra.txt").exists()
    assert (out / "counts.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # no temporary folders left


def _tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (symbolic links: their target) under ``root``."""
    import hashlib

    return {p.relative_to(root).as_posix(): (f"-> {os.readlink(p)}" if p.is_symlink()
                                             else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file() or p.is_symlink()}


def _small_fer_source(data_dir: Path, root: Path, per_class: int = 3) -> Path:
    import shutil

    for split in ("train", "test"):
        for cls in ("happy", "sad"):
            (root / split / cls).mkdir(parents=True)
            for p in sorted((data_dir / "fer2013" / split / cls).iterdir())[:per_class]:
                shutil.copy(p, root / split / cls / p.name)
    return root


@pytest.mark.parametrize("where", ["source", "parent_of_source", "inside_source", "symlink_to_source"])
def test_overwrite_never_touches_the_source(data_dir, tmp_path, capsys, where):
    """--out equal to the source, its parent, a folder inside it or a link to it is refused with exit 2 and
    one line naming the path, --overwrite or not; nothing in the source changes."""
    src = _small_fer_source(data_dir, tmp_path / "raw" / "fer")
    (tmp_path / "raw" / "notes.txt").write_text("the user's own file next to the source")
    before = _tree_digest(tmp_path / "raw")
    out = {"source": src, "parent_of_source": src.parent, "inside_source": src / "train" / "converted",
           "symlink_to_source": tmp_path / "link"}[where]
    if where == "symlink_to_source":
        os.symlink(src, out)
    for extra in (["--overwrite", "--link", "symlink"], ["--overwrite"], []):
        code = cli_main(["convert", "--format", "fer2013-folders", "--src", str(src), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1
        assert str(out) in err
        assert "the source" in err
        assert "Traceback" not in err
    assert _tree_digest(tmp_path / "raw") == before


def test_overwrite_only_replaces_a_folder_the_toolkit_wrote(data_dir, tmp_path, capsys):
    from if3d.outputs import MARKER_NAME, OutputError, write_marker

    src = _small_fer_source(data_dir, tmp_path / "fer")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("months of work")
    with pytest.raises(OutputError, match="holds no .if3d-output.json"):
        convert("fer2013-folders", src, mine, overwrite=True, verbose=False)
    assert cli_main(["convert", "--format", "fer2013-folders", "--src", str(src), "--out", str(mine),
                     "--overwrite"]) == 2
    assert f"{mine}: refused" in capsys.readouterr().err
    assert (mine / "thesis.tex").read_text() == "months of work"
    renders = tmp_path / "renders"  # an output of the toolkit, but not a dataset
    renders.mkdir()
    write_marker(renders, "renders")
    (renders / "a.png").write_bytes(b"render")
    with pytest.raises(OutputError, match="marks it as a renders output"):
        convert("fer2013-folders", src, renders, overwrite=True, verbose=False)
    assert (renders / "a.png").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        convert("fer2013-folders", src, a_file, verbose=False)
    out = tmp_path / "out"
    convert("fer2013-folders", src, out, verbose=False)
    assert json.loads((out / MARKER_NAME).read_text())["kind"] == "dataset"


def test_undecodable_source_images_are_counted_and_never_written(data_dir, tmp_path):
    src = _small_fer_source(data_dir, tmp_path / "fer")
    good = sorted((src / "train" / "happy").iterdir())[0].read_bytes()
    (src / "train" / "happy" / "Training_truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "train" / "sad" / "Training_text.jpg").write_text("a text file named .jpg\n")
    (src / "train" / "sad" / "Training_empty.jpg").write_bytes(b"")
    for link in ("hardlink", "symlink", "copy"):
        out = tmp_path / f"out_{link}"
        counts = convert("fer2013-folders", src, out, link=link, verbose=False)
        assert sum(counts["totals"].values()) == 12
        report = json.loads((out / "report.json").read_text())
        assert report["counts"] == {"empty_image": 1, "corrupt_image": 2}
        bad = {Path(p["path"]).name: p["detail"] for p in report["problems"]["corrupt_image"]}
        assert "truncated" in bad["Training_truncated.jpg"]
        assert "not an image" in bad["Training_text.jpg"]
        names = {p.name for p in (out / "photos").rglob("*.jpg")}
        assert not names & {"Training_truncated.jpg", "Training_text.jpg", "Training_empty.jpg"}
        assert len(names) == 12
        ds = PairedDataset.from_root(out, "train", require_renders=False, verify=True)
        assert ds.report.count("corrupt_image") == 0


def test_full_disk_is_one_line_and_leaves_nothing(data_dir, tmp_path, monkeypatch, capsys):
    import errno

    src = _small_fer_source(data_dir, tmp_path / "fer")
    before = _tree_digest(src)
    calls = {"n": 0}
    real = conv_base._place

    def disk_full(source, dest, link):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(source, dest, link)

    monkeypatch.setattr(conv_base, "_place", disk_full)
    out = tmp_path / "out"
    assert cli_main(["convert", "--format", "fer2013-folders", "--src", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "cannot write: no space left on the device" in err
    assert f"{tmp_path}/.out.partial-" in err  # the file that could not be written
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer"]  # no temporary folder left
    assert _tree_digest(src) == before

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(conv_base, "atomic_write_json", read_only)
    monkeypatch.setattr(conv_base, "_place", real)
    with pytest.raises(ValueError, match=f"{out}: cannot write: read-only file system"):
        convert("fer2013-folders", src, out, verbose=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer"]


def test_interrupted_conversion_leaves_nothing(data_dir, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = conv_base.process_item

    def failing(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 50:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(conv_base, "process_item", failing)
    with pytest.raises(KeyboardInterrupt):
        convert("ckplus", data_dir / "ckplus48", tmp_path / "ck", verbose=False)
    assert list(tmp_path.iterdir()) == []


def test_cli_convert_prints_the_count_table(data_dir, tmp_path, capsys):
    out = tmp_path / "ck"
    assert cli_main(["convert", "--format", "ckplus", "--src", str(data_dir / "ckplus48"), "--out", str(out),
                     "--val-fraction", "0.2", "--seed", "3"]) == 0
    text = capsys.readouterr().out
    assert "Contempt" in text
    assert "981" in text
    assert "seed 3" in text
    assert cli_main(["convert", "--format", "ckplus", "--src", str(data_dir / "ckplus48"), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli_main(["formats"]) == 0
    listed = capsys.readouterr().out
    assert all(f in listed for f in FORMATS)


def test_scan_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="list_patition_label"):
        scan("rafdb", tmp_path)
    with pytest.raises(ValueError, match="unknown format"):
        scan("kdef", tmp_path)
    with pytest.raises(FileNotFoundError):
        scan("ckplus", tmp_path / "absent")


# --------------------------------------------------------------------------------------------------- csv


WILD = {"happiness": 383, "disgust": 195, "neutral": 151, "sadness": 144, "anger": 25, "surprise": 13, "fear": 9}


def test_csv_format_converts_the_wild_image_folder_and_its_labels(data_dir, tmp_path, capsys):
    """../shared/data/wild: images/ + labels.csv (image,emotion) — the layout 'folders' cannot read."""
    wild = data_dir / "wild"
    out = tmp_path / "wild"
    assert cli_main(["convert", "--format", "csv", "--src", str(wild / "images"), "--labels",
                     str(wild / "labels.csv"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0] == f"csv: {wild / 'images'} -> {out}"
    counts = _counts(out)
    with open(wild / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == sum(WILD.values())
    # one image is listed twice (with two labels): the first row is used, the second is reported
    report = json.loads((out / "report.json").read_text())
    assert report["counts"] == {"duplicate_label_row": 1}
    dup = report["problems"]["duplicate_label_row"][0]
    first = {}
    for r in rows:
        first.setdefault(r["image"], r["emotion"])
    assert dup["detail"].split(" ")[0] in first
    expected = _by_canonical(Counter(first.values()), AFFECTNET7)
    totals = {n: sum(counts["splits"][s][n] for s in counts["splits"]) for n in AFFECTNET7}
    assert totals == expected
    assert set(counts["splits"]) == {"train", "val"}


def test_csv_format_counts_every_row_it_cannot_use(data_dir, tmp_path, capsys):
    wild = data_dir / "wild"
    with open(wild / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))[:12]
    src = tmp_path / "imgs"
    (src / "sub").mkdir(parents=True)
    import shutil

    lines = ["File_Path,Expression,Usage"]
    for i, r in enumerate(rows):
        rel = f"sub/{r['image']}" if i % 2 else r["image"]
        shutil.copy(wild / "images" / r["image"], src / rel)
        lines.append(f"{rel},{r['emotion'].upper()},{'Training' if i < 9 else 'PublicTest'}")
    shutil.copy(wild / "images" / rows[0]["image"], src / "code.jpg")
    shutil.copy(wild / "images" / rows[1]["image"], src / "bored.jpg")
    lines += ["code.jpg,7,Training",  # a numeric code, mapped below
              "bored.jpg,bored,Training", "bored.jpg,bored,Training",  # unknown class, twice
              "missing.jpg,happy,Training",  # no such file
              ",happy,Training",  # no image
              f"{rows[0]['image']},neutral,Training",  # listed again
              "code.jpg,happy,holdout",  # unknown split
              "short.jpg"]  # cut short
    (src / "labels.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    counts = convert("csv", src / "labels.csv", out, class_map="7=contempt", verbose=True)
    printed = capsys.readouterr().out
    assert counts["totals"] == {"train": 10, "val": 3}
    assert counts["classes"] == list(AFFECTNET8)  # contempt present
    assert counts["splits"]["train"]["Contempt"] == 1
    assert _report(out) == {"unknown_class": 2, "missing_source_image": 1, "bad_label_row": 3,
                            "duplicate_label_row": 1}
    assert counts["unknown_class_names"] == {"bored": 2}
    assert "unknown class names (rows skipped): 'bored' 2" in printed
    assert len(list((out / "photos").rglob("*.jpg"))) == 13
    # without the class map, the numeric code is an unknown class too: counted, never dropped silently
    again = convert("csv", src / "labels.csv", tmp_path / "again", verbose=False)
    assert again["unknown_class_names"] == {"bored": 2, "7": 1}


def test_csv_format_columns_and_options(data_dir, tmp_path):
    from if3d.io.report import DataError

    img = sorted((data_dir / "wild" / "images").iterdir())[0]
    src = tmp_path / "src"
    src.mkdir()
    import shutil

    shutil.copy(img, src / "a.jpg")
    (src / "two.csv").write_text("image,path,label\na.jpg,a.jpg,happy\n")
    with pytest.raises(DataError, match=r"several image columns \(image, path\) .*--image-column"):
        scan("csv", src / "two.csv")
    assert len(scan("csv", src / "two.csv", image_column="path").items) == 1
    (src / "none.csv").write_text("name,mood\na.jpg,happy\n")
    with pytest.raises(DataError, match="no image column among name, mood; name it with --image-column"):
        scan("csv", src / "none.csv")
    found = scan("csv", src / "none.csv", image_column="name", label_column="mood")
    assert [it.label for it in found.items] == [canonical_label("happy")]
    with pytest.raises(DataError, match="--labels"):
        scan("csv", src)
    with pytest.raises(ValueError, match="only apply to --format csv"):
        scan("folders", src, labels=src / "two.csv")
    with pytest.raises(ValueError, match="--class-map 7=grumpy"):
        scan("csv", src / "none.csv", image_column="name", label_column="mood", class_map="7=grumpy")
