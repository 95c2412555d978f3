"""PairedDataset: pairing, annotations (canonical and If3D's CSV), decoding, every kind of bad input,
and loading real photo/render pairs after the render batch."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from if3d.classes import AFFECTNET8
from if3d.data import (
    ClassBalancedSampler,
    CorruptImageError,
    DataError,
    LayoutError,
    MissingRenderError,
    PairedDataset,
    if3d_paths,
    read_image,
)
from if3d.data.layout import write_classes


def _faces(data_dir: Path, n: int) -> list[np.ndarray]:
    """n real colour face crops (wild/images), RGB, varied sizes."""
    paths = sorted((data_dir / "wild" / "images").iterdir())[:n]
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in paths]


def _save(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    return path


def _canonical(root: Path, faces: list[np.ndarray], split="train", labels=(0, 1, 6)) -> list[str]:
    """photos (PNG) and renders (the inverted photo, PNG) for len(faces) samples over ``labels``."""
    write_classes(root, AFFECTNET8)
    rels = []
    for i, face in enumerate(faces):
        rel = f"{labels[i % len(labels)]}/img{i:03d}.png"
        _save(root / "photos" / split / rel, face)
        _save(root / "renders" / split / rel, 255 - face)
        rels.append(rel)
    return rels


def test_pairs_labels_and_valence_arousal(data_dir, tmp_path):
    root = tmp_path / "ds"
    rels = _canonical(root, _faces(data_dir, 9))
    (root / "annotations").mkdir()
    with open(root / "annotations" / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "valence", "arousal"])
        w.writerow([rels[0], 0.5, -0.25])
        w.writerow([rels[4], -1.0, 1.0])
    ds = PairedDataset(root, "train")
    assert len(ds) == 9
    assert ds.class_names == list(AFFECTNET8)
    assert ds.labels.dtype == np.int64
    assert np.bincount(ds.labels, minlength=8).tolist() == [3, 3, 0, 0, 0, 0, 3, 0]
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"photo", "render", "label", "valence", "arousal", "has_va", "index"}
        assert s["photo"].shape == s["render"].shape == (3, 112, 112)
        assert s["photo"].dtype == s["render"].dtype == torch.uint8
        assert s["label"].dtype == torch.int64
        assert s["valence"].dtype == torch.float32
        assert s["index"] == i
        assert int(s["label"]) == int(ds.paths[i].split("/")[0])
        # the render of this photo (inverted), not another one
        diff = (s["render"].int() - (255 - s["photo"].int())).abs().max()
        assert diff <= 1
    by_path = {p: i for i, p in enumerate(ds.paths)}
    s0 = ds[by_path[rels[0]]]
    assert bool(s0["has_va"])
    assert float(s0["valence"]) == 0.5
    assert float(s0["arousal"]) == -0.25
    s1 = ds[by_path[rels[1]]]
    assert not bool(s1["has_va"])
    assert torch.isnan(s1["valence"])
    assert torch.isnan(s1["arousal"])
    assert ds.report.count("photo_without_annotation") == 7
    assert ds.report.stats == {"samples": 9, "with_valence_arousal": 2}
    # other sizes, photo-only, aliases
    small = PairedDataset.from_root(root, "train", image_size=64, require_renders=False)
    assert small[0]["photo"].shape == (3, 64, 64)
    assert "render" not in small[0]
    assert PairedDataset(root, "train", size=64, photo_only=True)[0]["photo"].shape == (3, 64, 64)
    with pytest.raises(ValueError, match="give the split"):
        PairedDataset(root)
    with pytest.raises(LayoutError, match="splits present: train"):
        PairedDataset(root, "val")


def test_if3d_original_layout_loads_through_explicit_paths(data_dir, tmp_path):
    base = tmp_path / "Dataset"
    faces = _faces(data_dir, 10)
    numbers = [11, 25, 3, 400, 57, 6, 70, 81, 9, 1000]
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 1, 7]
    for face, n, lab in zip(faces, numbers, labels):
        _save(base / "affectnet_clean" / "train" / str(lab) / f"{n}.jpg", face)
        ext = ".jpg" if n % 2 else ".png"  # renders in any image format
        _save(base / "affectnet_smirk" / "train" / str(lab) / f"{n}{ext}", 255 - face)
    ann = base / "affectnet_annotations" / "train_set_annotation_without_lnd.csv"
    ann.parent.mkdir(parents=True)
    with open(ann, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["number", "exp", "val", "aro"])
        for n, lab in zip(numbers[:-1], labels[:-1]):  # 1000 has no row
            w.writerow([n, 2 if n == 9 else lab, round(n / 1000, 3), -round(n / 2000, 4)])
        w.writerow([123456, 1, 0.1, 0.1])  # no such photo
    paths = if3d_paths("train", base)
    assert paths["photo_root"] == base / "affectnet_clean" / "train"
    ds = PairedDataset.from_paths(**paths)
    assert len(ds) == 10
    num = {int(Path(p).stem): i for i, p in enumerate(ds.paths)}
    assert ds.valence[num[400]] == pytest.approx(0.4)
    assert ds.arousal[num[57]] == pytest.approx(-0.0285)
    assert not ds.has_va[num[1000]]
    assert ds.report.count("annotation_without_photo") == 1
    assert ds.report.count("photo_without_annotation") == 1
    assert ds.report.count("label_mismatch") == 1  # number 9: exp 2, folder 1 (the folder wins)
    assert ds.labels[num[9]] == 1
    s = ds[num[6]]
    assert (s["render"].int() - (255 - s["photo"].int())).abs().float().mean() < 4  # JPEG photo
    # AffectNet-7 as DDAMFN: Contempt dropped and counted
    ds7 = PairedDataset.from_paths(**paths, num_classes=7)
    assert len(ds7) == 8
    assert ds7.class_names == list(AFFECTNET8[:7])
    assert ds7.report.count("excluded_class") == 2
    # explicit photo-only
    assert "render" not in PairedDataset(photo_root=paths["photo_root"])[0]


def _bad_tree(root: Path, faces: list[np.ndarray]) -> dict[str, Path]:
    write_classes(root, AFFECTNET8)
    p, r = root / "photos" / "train", root / "renders" / "train"
    made = {}
    for i, face in enumerate(faces[:4]):
        _save(p / "1" / f"good{i}.jpg", face)
        _save(r / "1" / f"good{i}.png", 255 - face)
    good = (p / "1" / "good0.jpg").read_bytes()
    made["truncated"] = p / "2" / "truncated.jpg"
    made["truncated"].parent.mkdir(parents=True)
    made["truncated"].write_bytes(good[: len(good) // 2])
    _save(r / "2" / "truncated.png", 255 - faces[0])
    made["not_image"] = p / "2" / "fake.png"
    made["not_image"].write_bytes(b"this is text, not a PNG")
    _save(r / "2" / "fake.png", faces[0])
    made["empty"] = p / "3" / "empty.jpg"
    made["empty"].parent.mkdir(parents=True)
    made["empty"].write_bytes(b"")
    (p / "3" / "notes.txt").write_text("annotator notes")
    (p / "README.md").write_text("stray")
    for folder in ("9", "happy"):
        _save(p / folder / "x.jpg", faces[1])
    made["no_render"] = _save(p / "4" / "lonely.jpg", faces[2])
    _save(r / "4" / "orphan.png", faces[3])  # render without photo
    _save(r / "1" / "good1.jpg", faces[1])  # second render for good1 (good1.png wins)
    (r / "1" / "good0.npz").write_bytes(b"params")  # render-batch by-products are not problems
    (r / "manifest.csv").write_text("relative_path,status,reason\n4/lonely.jpg,no_face,FaceMesh found no face\n")
    (root / "annotations").mkdir()
    with open(root / "annotations" / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "valence", "arousal"])
        w.writerow(["1/good0.jpg", 0.2, 0.3])
        w.writerow(["1/good0.jpg", 0.9, 0.9])  # duplicate
        w.writerow(["1/good1.jpg", 3.0, 0.1])  # out of range
        w.writerow(["1/good2.jpg", "high", 0.1])  # unparsable
        w.writerow(["7/ghost.jpg", 0.1, 0.1])  # no such photo
    return made


def test_every_kind_of_bad_input_is_named_and_counted(data_dir, tmp_path):
    root = tmp_path / "bad"
    made = _bad_tree(root, _faces(data_dir, 4))
    # default: a photo without a render is an error listing it, with the render batch's reason
    with pytest.raises(MissingRenderError) as exc:
        PairedDataset(root, "train")
    assert str(made["no_render"]) in str(exc.value)
    assert "no_face" in str(exc.value)
    assert "skip_missing_renders" in str(exc.value)

    ds = PairedDataset(root, "train", skip_missing_renders=True)
    rep = ds.report
    assert rep.paths("missing_render") == [str(made["no_render"])]
    assert rep.details("missing_render")[0][1] == "render batch: no_face (FaceMesh found no face)"
    assert rep.paths("empty_image") == [str(made["empty"])]
    assert rep.paths("non_image_file") == [str(root / "photos" / "train" / "3" / "notes.txt")]
    assert rep.paths("stray_file") == [str(root / "photos" / "train" / "README.md")]
    assert sorted(Path(q).name for q in rep.paths("unknown_label_folder")) == ["9", "happy"]
    assert rep.paths("render_without_photo") == [str(root / "renders" / "train" / "4" / "orphan.png")]
    assert rep.paths("duplicate_render") == [str(root / "renders" / "train" / "1" / "good1.jpg")]
    assert rep.count("duplicate_annotation") == 1
    assert rep.count("bad_annotation") == 2
    assert rep.details("annotation_without_photo")[0][1] == "file=7/ghost.jpg"
    assert len(ds) == 6  # 4 good + truncated + not-an-image (found only when decoded)
    i_good1 = list(ds.paths).index("1/good1.jpg")
    assert (ds[i_good1]["render"].int() - (255 - ds[i_good1]["photo"].int())).abs().float().mean() < 4
    # decode errors at load time name the file; never a zero image
    for key in ("truncated", "not_image"):
        i = list(ds.paths).index(f"2/{made[key].name}")
        with pytest.raises(CorruptImageError, match=str(made[key])):
            ds[i]
    # verify=True decodes everything at construction and skips (and reports) corrupt images
    checked = PairedDataset(root, "train", skip_missing_renders=True, verify=True)
    assert len(checked) == 4
    assert sorted(checked.report.paths("corrupt_image")) == sorted([str(made["truncated"]), str(made["not_image"])])
    summary = checked.report.summary()
    assert "corrupt_image: 2" in summary
    assert "truncated.jpg" in summary
    with pytest.raises(DataError, match="strict"):
        PairedDataset(root, "train", skip_missing_renders=True, strict=True)


def test_missing_render_folder_and_empty_dataset(tmp_path, data_dir):
    root = tmp_path / "ds"
    _canonical(root, _faces(data_dir, 2))
    shutil.rmtree(root / "renders")
    with pytest.raises(MissingRenderError, match="require_renders=False"):
        PairedDataset(root, "train")
    (root / "photos" / "val" / "3").mkdir(parents=True)
    with pytest.raises(DataError, match="no samples"):
        PairedDataset(root, "val", require_renders=False)


def test_any_source_image_becomes_rgb_uint8(tmp_path, data_dir):
    face = _faces(data_dir, 1)[0]
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY)
    files = {
        "grey.png": lambda p: cv2.imwrite(str(p), grey),
        "rgba.png": lambda p: cv2.imwrite(str(p), np.dstack([face[..., ::-1], np.full(grey.shape, 128, np.uint8)])),
        "deep.png": lambda p: cv2.imwrite(str(p), np.full((20, 30), 65535, np.uint16)),
        "face.bmp": lambda p: cv2.imwrite(str(p), face[..., ::-1]),
        "face.tiff": lambda p: cv2.imwrite(str(p), grey),
        "tiny.jpg": lambda p: cv2.imwrite(str(p), cv2.resize(face, (7, 10))[..., ::-1]),
        "large.jpg": lambda p: cv2.imwrite(str(p), cv2.resize(face, (900, 1200))[..., ::-1]),
    }
    write_classes(tmp_path, AFFECTNET8)
    for name, write in files.items():
        d = tmp_path / "photos" / "train" / "0"
        d.mkdir(parents=True, exist_ok=True)
        assert write(d / name)
    ds = PairedDataset(tmp_path, "train", require_renders=False)
    for i, rel in enumerate(ds.paths):
        img = ds[i]["photo"]
        assert img.shape == (3, 112, 112), rel
        assert img.dtype == torch.uint8, rel
        if rel.endswith(("grey.png", "face.tiff")):
            assert torch.equal(img[0], img[1])
            assert torch.equal(img[1], img[2])
        if rel.endswith("deep.png"):
            assert int(img.min()) == 255
    full = read_image(tmp_path / "photos" / "train" / "0" / "face.bmp")
    assert full.shape == (3, *face.shape[:2])
    assert np.array_equal(full.permute(1, 2, 0).numpy(), face)


def test_check_command_prints_the_report(data_dir, tmp_path, capsys):
    from if3d.data.__main__ import main

    root = tmp_path / "bad"
    _bad_tree(root, _faces(data_dir, 4))
    assert main(["check", "--root", str(root)]) == 2  # bad data: exit 2, as every command
    assert "lonely.jpg" in capsys.readouterr().err
    assert main(["check", "--root", str(root), "--skip-missing-renders", "--verify"]) == 0
    out = capsys.readouterr().out
    assert "corrupt_image: 2" in out
    assert "missing_render: 1" in out
    assert "samples: 4" in out
    photo_root = root / "photos" / "train"
    assert main(["check", "--photo-root", str(photo_root), "--no-renders"]) == 0
    assert "unknown_label_folder: 2" in capsys.readouterr().out


def test_batches_through_a_dataloader_with_the_balanced_sampler(data_dir, tmp_path):
    root = tmp_path / "ds"
    _canonical(root, _faces(data_dir, 9))
    ds = PairedDataset(root, "train")
    loader = DataLoader(ds, batch_size=4, sampler=ClassBalancedSampler(ds.labels, seed=1), num_workers=0)
    batch = next(iter(loader))
    assert batch["photo"].shape == batch["render"].shape == (4, 3, 112, 112)
    assert batch["photo"].dtype == torch.uint8
    assert batch["has_va"].dtype == torch.bool
    assert batch["label"].dtype == torch.int64
    assert batch["index"].shape == (4,)


def test_pairs_after_the_render_batch(data_dir, tmp_path):
    """Convert real data, render a subset with the render batch (MediaPipe backend), load the pairs."""
    from if3d.data.converters import convert
    from if3d.render.batch import render_tree

    conv = tmp_path / "ck_full"
    convert("ckplus", data_dir / "ckplus48", conv, verbose=False)
    root = tmp_path / "ck"
    root.mkdir()
    shutil.copy(conv / "classes.json", root / "classes.json")
    for label_dir in sorted((conv / "photos" / "train").iterdir()):
        dest = root / "photos" / "train" / label_dir.name
        dest.mkdir(parents=True)
        for f in sorted(label_dir.iterdir())[:2]:
            shutil.copy(f, dest / f.name)
    _save(root / "photos" / "train" / "1" / "blank.png", np.full((48, 48), 40, np.uint8))  # no face
    summary = render_tree(root / "photos" / "train", root / "renders" / "train", backend="mediapipe", size=112,
                          workers=1, progress=False)
    n_photos = 7 * 2 + 1
    assert summary.total == n_photos
    assert summary.counts.get("no_face", 0) >= 1
    with pytest.raises(MissingRenderError, match="blank.png"):
        PairedDataset(root, "train")
    ds = PairedDataset(root, "train", skip_missing_renders=True)
    assert len(ds) == summary.counts["ok"]
    assert "render batch: no_face" in dict(ds.report.details("missing_render"))[str(root / "photos/train/1/blank.png")]
    assert ds.report.count("missing_render") == n_photos - summary.counts["ok"]
    assert ds.report.count("non_image_file") == 0  # .npz and manifest.csv are not reported
    for i in range(len(ds)):
        s = ds[i]
        assert s["render"].shape == (3, 112, 112)
        assert s["render"].float().mean() > 5  # a shaded face, not an empty frame
        assert Path(ds.render_paths[i]).stem == Path(ds.paths[i]).stem
