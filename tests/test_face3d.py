"""3D face representations (pose-normalised cloud, voxels, distance map, FLAME), their per-split table cache, the
stream readers, and every 3D model trained through the public training command on real FER2013 renders."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from if3d.data import face3d
from if3d.data.face3d import (
    distance_map,
    distance_map_indices,
    normalise_landmarks,
    read_canonical_face,
    similarity_transform,
    voxel_indices,
    voxel_occupancy,
)

PER_CLASS = 3


@pytest.fixture(scope="module")
def fer_root(data_dir, tmp_path_factory) -> Path:
    """A canonical FER2013 dataset of 3 photos per class and split, rendered by the MediaPipe backend."""
    from if3d.data.converters import convert
    from if3d.render.batch import render_tree

    src_root = data_dir / "fer2013"
    if not src_root.is_dir():
        pytest.skip(f"{src_root} is absent")
    work = tmp_path_factory.mktemp("face3d")
    for split in ("train", "test"):
        for cls_dir in sorted((src_root / split).iterdir()):
            dst = work / "src" / split / cls_dir.name
            dst.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:PER_CLASS]:
                shutil.copy2(f, dst / f.name)
    root = work / "fer2013"
    convert("fer2013-folders", work / "src", root, verbose=False)
    render_tree(root / "photos", root / "renders", "mediapipe", size=64, workers=1, progress=False)
    return root


def _real_landmarks(root: Path) -> np.ndarray:
    path = sorted((root / "renders").rglob("*.npz"))[0]
    return np.load(path)["landmarks"]


# ---------------------------------------------------------------------------- representations


def test_similarity_transform_recovers_a_known_rotation_scale_and_translation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    r = Rotation.from_euler("xyz", [20, -35, 10], degrees=True).as_matrix()
    y = 2.5 * x @ r.T + np.array([1.0, -2.0, 3.0])
    rotation, scale, translation = similarity_transform(x, y)
    assert np.allclose(rotation, r, atol=1e-9)
    assert scale == pytest.approx(2.5)
    assert np.allclose(translation, [1.0, -2.0, 3.0])
    mirrored = y * np.array([-1.0, 1.0, 1.0])  # a reflection is never returned
    assert np.linalg.det(similarity_transform(x, mirrored)[0]) == pytest.approx(1.0)


def _moved(landmarks: np.ndarray, angles, scale: float, shift) -> np.ndarray:
    """The face turned by ``angles`` (degrees) about its centre, scaled and shifted (MediaPipe's axes)."""
    r = Rotation.from_euler("xyz", angles, degrees=True).as_matrix()
    centre = landmarks.mean(0)
    return ((landmarks - centre) @ r.T * scale + centre + np.asarray(shift)).astype(np.float32)


@pytest.mark.parametrize("with_template", [False, True])
def test_pose_normalised_cloud_does_not_change_when_the_face_is_rotated_scaled_and_moved(fer_root, tmp_path,
                                                                                        with_template):
    landmarks = _real_landmarks(fer_root)
    template = None
    if with_template:  # a canonical face file written the way MediaPipe ships it (OBJ "v x y z" lines)
        canonical = landmarks[:468] * np.array([1.0, -1.0, -1.0]) / 10.0
        (tmp_path / "canonical_face_model.obj").write_text(
            "".join(f"v {x:.6f} {y:.6f} {z:.6f}\n" for x, y, z in canonical) + "vt 0.5 0.5\nf 1/1 2/2 3/3\n")
        template = read_canonical_face(tmp_path / "canonical_face_model.obj")
        assert template.vertices.shape == (468, 3)
    reference = normalise_landmarks(landmarks, template)
    assert reference.shape == (478, 3)
    assert reference.dtype == np.float32
    assert np.allclose(reference[:468].mean(0), 0.0, atol=1e-5)
    assert np.sqrt((reference[:468] ** 2).sum(1).mean()) == pytest.approx(1.0, abs=1e-4)
    moved = _moved(landmarks, [15, -25, 30], 3.7, [120.0, -40.0, 9.0])
    assert np.abs(moved - landmarks).max() > 50  # the input really changed
    assert np.abs(normalise_landmarks(moved, template) - reference).max() < 1e-4
    # the face's left eye (MediaPipe's LEFT_EYE, on the image's right) ends on +x, the forehead above the chin
    assert reference[263, 0] > 0 > reference[33, 0]
    assert reference[10, 1] > reference[152, 1]


def test_canonical_face_is_read_from_pbtxt_and_the_environment_and_bad_files_are_named(tmp_path, monkeypatch):
    v = np.random.default_rng(1).normal(size=(468, 3))
    lines = [f"    vertex_buffer: {x:.7f}\n" for row in v for x in (*row, 0.1, 0.2)]
    (tmp_path / "geometry_pipeline_metadata_landmarks.pbtxt").write_text(
        "input_source: FACE_LANDMARK_PIPELINE\ncanonical_mesh: {\n  vertex_type: VERTEX_PT\n" + "".join(lines) + "}\n")
    face = read_canonical_face(tmp_path / "geometry_pipeline_metadata_landmarks.pbtxt")
    expected = (v - v.mean(0)) / np.sqrt(((v - v.mean(0)) ** 2).sum(1).mean())
    assert np.allclose(face.vertices, expected, atol=1e-6)
    monkeypatch.setenv(face3d.CANONICAL_FACE_ENV, str(tmp_path / "geometry_pipeline_metadata_landmarks.pbtxt"))
    assert face3d.canonical_face().sha1 == face.sha1
    monkeypatch.setenv(face3d.CANONICAL_FACE_ENV, str(tmp_path / "nope.obj"))
    with pytest.raises(FileNotFoundError, match="nope.obj"):
        face3d.canonical_face()
    (tmp_path / "short.obj").write_text("v 0 0 0\nv 1 0 0\n")
    with pytest.raises(ValueError, match="short.obj.*468"):
        read_canonical_face(tmp_path / "short.obj")


def test_voxel_grid_holds_one_voxel_per_distinct_landmark_cell(fer_root):
    cloud = torch.from_numpy(normalise_landmarks(_real_landmarks(fer_root)))[None]
    for resolution in (16, 32):
        grid = voxel_occupancy(cloud, resolution)
        assert grid.shape == (1, 1, resolution, resolution, resolution)
        assert grid.dtype == torch.float32
        assert set(grid.unique().tolist()) == {0.0, 1.0}
        cells = voxel_indices(cloud, resolution)
        assert int(grid.sum()) == len(set(cells[0].tolist()))
    assert int(voxel_occupancy(cloud, 16).sum()) < int(voxel_occupancy(cloud, 32).sum()) <= 478
    # hand-made points: one in the top-left-far corner, one in the bottom-right-near corner, two in one cell
    pts = torch.tensor([[[-1.9, 1.9, -1.9], [1.9, -1.9, 1.9], [0.01, 0.01, 0.01], [0.02, 0.02, 0.02]]])
    grid = voxel_occupancy(pts, 4)
    assert grid[0, 0, 0, 0, 0] == 1
    assert grid[0, 0, 3, 3, 3] == 1
    assert int(grid.sum()) == 3
    far = torch.tensor([[[9.0, 9.0, 9.0]]])  # outside the cube: the border voxel
    assert voxel_occupancy(far, 4)[0, 0, 3, 0, 3] == 1


def test_distance_map_is_symmetric_with_a_zero_diagonal_and_holds_the_region_distances(fer_root):
    cloud = torch.from_numpy(normalise_landmarks(_real_landmarks(fer_root)))[None]
    idx = distance_map_indices()
    assert len(idx) == len(set(idx.tolist())) == 162
    assert set(range(468, 478)) <= set(idx.tolist())
    m = distance_map(cloud)
    assert m.shape == (1, 1, 162, 162)
    assert torch.equal(m, m.transpose(2, 3))
    assert torch.all(m[0, 0].diagonal() == 0)
    i, j = 5, 77
    assert float(m[0, 0, i, j]) == pytest.approx(float((cloud[0, idx[i]] - cloud[0, idx[j]]).norm()), rel=1e-5)
    assert (m[0, 0] + torch.eye(162) > 0).all()  # distinct landmarks are apart
    assert face3d.mesh_edges().shape == (1322, 2)
    assert face3d.edge_lengths(cloud).shape == (1, 1322)


def test_flame_expression_takes_50_expression_and_3_jaw_parameters():
    params = {"expression_params": np.arange(50, dtype=np.float32), "jaw_params": np.array([0.1, 0, 0], np.float32)}
    out = face3d.flame_expression(params)
    assert out.shape == (53,)
    assert out[49] == 49
    assert out[50] == pytest.approx(0.1)
    assert face3d.flame_expression({"landmarks": np.zeros((478, 3))}) is None
    with pytest.raises(ValueError, match="expected expression"):
        face3d.flame_expression({"expression_params": np.zeros(10), "jaw_params": np.zeros(3)})


# ---------------------------------------------------------------------------- table cache and streams


def test_the_split_table_is_cached_reused_and_rebuilt_when_a_parameter_file_changes(fer_root, capsys):
    from if3d.data.face3d_cache import open_table, table_path

    render_root = fer_root / "renders" / "train"
    cache = table_path(fer_root, "train", None)
    cache.unlink(missing_ok=True)
    first = open_table(render_root, None, cache)
    assert cache.is_file()
    assert "cache: none yet" in capsys.readouterr().out
    n = len(list(render_root.rglob("*.npz")))
    assert first.clouds.shape == (n, 478, 3)
    assert not first.has_flame.any()
    again = open_table(render_root, None, cache)
    assert "reading" not in capsys.readouterr().out
    assert np.array_equal(again.clouds, first.clouds)
    victim = sorted(render_root.rglob("*.npz"))[0]
    backup = victim.read_bytes()
    try:
        victim.write_bytes(b"not an npz file")
        rebuilt = open_table(render_root, None, cache)
        assert "render parameter files changed" in capsys.readouterr().out
        key = victim.relative_to(render_root).with_suffix("").as_posix()
        assert key in rebuilt.bad
        assert key not in rebuilt.row_of
        assert len(rebuilt.keys) == n - 1
    finally:
        victim.write_bytes(backup)
    open_table(render_root, None, cache)


def test_samples_without_render_parameters_are_an_error_or_a_counted_skip(fer_root, tmp_path):
    from if3d.data.source import SplitSource, open_split
    from if3d.io.report import DataError

    root = tmp_path / "copy"
    shutil.copytree(fer_root, root, ignore=shutil.ignore_patterns("cache"))
    gone = sorted((root / "renders" / "train").rglob("*.npz"))[0]
    gone.unlink()
    source = SplitSource.from_root(root, "train")
    n_photos = len(list((root / "photos" / "train").rglob("*.jpg")))
    with pytest.raises(DataError, match=rf"(?s){gone.name}.*--skip-missing-renders"):
        open_split(source, image_size=32, streams=("landmarks",), skip_missing_renders=False)
    ds = open_split(source, image_size=32, streams=("landmarks",), skip_missing_renders=True)
    rendered = len(list((root / "renders" / "train").rglob("*.png")))
    assert len(ds) == rendered - 1 <= n_photos - 1
    report = ds.report.to_dict() if hasattr(ds.report, "to_dict") else ds.report
    assert report["counts"]["missing_render"] == n_photos - len(ds)
    assert any(gone.name in p["path"] for p in report["problems"]["missing_render"])
    sample = ds[0]
    assert "photo" not in sample
    assert sample["landmarks"].shape == (478, 3)
    batch = ds[[0, 2, 1]]
    assert torch.equal(batch["landmarks"][2], ds[1]["landmarks"])
    assert batch["label"].tolist()[1] == int(ds[2]["label"])
    both = open_split(source, image_size=32, streams=("photo", "landmarks", "voxels32"), skip_missing_renders=True)
    s = both[1]
    assert s["photo"].shape == (3, 32, 32)
    assert s["voxels32"].shape == (1, 32, 32, 32)
    assert torch.equal(s["landmarks"], ds[1]["landmarks"])
    assert open_split(source, image_size=32, streams=("distance_map",),
                      skip_missing_renders=True)[0]["distance_map"].shape == (1, 162, 162)
    with pytest.raises(ValueError, match="SMIRK backend"):
        open_split(source, image_size=32, streams=("flame_expression",), skip_missing_renders=True)


def _with_flame(fer_root: Path, out: Path) -> Path:
    """A copy of the dataset whose parameter files also hold (made-up) FLAME parameters, as SMIRK's do."""
    shutil.copytree(fer_root, out, ignore=shutil.ignore_patterns("cache"))
    rng = np.random.default_rng(0)
    for path in (out / "renders").rglob("*.npz"):
        params = dict(np.load(path))
        params["expression_params"] = rng.normal(size=50).astype(np.float32)
        params["jaw_params"] = rng.normal(scale=0.1, size=3).astype(np.float32)
        np.savez(path, **params)
    return out


# ---------------------------------------------------------------------------- models through the CLI

MODELS = ["landmark_mlp", "landmark_graph", "voxel_cnn", "distance_cnn", "flame_mlp", "ddamfn_landmarks",
          "if3d_landmarks"]


@pytest.mark.parametrize("model", MODELS)
def test_each_3d_model_trains_through_the_training_command(fer_root, tmp_path, model, one_torch_thread):
    import csv

    from if3d.train.cli import run

    root = _with_flame(fer_root, tmp_path / "flame") if model == "flame_mlp" else fer_root
    out = tmp_path / "run"
    extra = ["--fusion", "linear"] if model == "if3d_landmarks" else []  # the smallest fusion keeps the test short
    status = run(["--model", model, "--data", str(root), "--epochs", "1", "--batch-size", "8", "--workers", "0",
                  "--no-compile", "--skip-missing-renders", "--out", str(out), *extra])
    assert status == 0
    rows = list(csv.DictReader(open(out / "metrics.csv", newline="")))
    assert len(rows) == 1
    assert float(rows[0]["train_loss"]) > 0
    ckpt = torch.load(out / "best.pth", weights_only=True)
    assert ckpt["model_name"] == model
    import json

    streams = json.loads((out / "config.json").read_text())["run"]["input_streams"]
    assert any(s in streams for s in ("landmarks", "voxels32", "distance_map", "flame_expression"))


def test_a_3d_model_on_a_split_without_renders_is_one_line_and_exit_2(fer_root, tmp_path, capsys):
    from if3d.train.cli import run

    root = tmp_path / "photos_only"
    shutil.copytree(fer_root, root, ignore=shutil.ignore_patterns("renders", "cache"))
    status = run(["--model", "landmark_mlp", "--data", str(root), "--epochs", "1", "--batch-size", "4",
                  "--no-compile", "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert status == 2
    assert "render folder not found" in err
    assert "Traceback" not in err


def test_compare3d_without_renders_or_without_a_dataset_is_one_line_naming_the_fix(fer_root, tmp_path, capsys):
    from if3d.compare3d import main

    root = tmp_path / "photos_only"
    shutil.copytree(fer_root, root, ignore=shutil.ignore_patterns("renders", "cache"))
    assert main(["--data", str(root), "--out", str(tmp_path / "cmp")]) == 2
    err = capsys.readouterr().err
    assert f"{root}: no renders/ folder" in err
    assert "Smirk_batch_Render.py" in err
    assert "Traceback" not in err
    assert not (tmp_path / "cmp").exists()
    assert main(["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "cmp")]) == 2
    assert "not a converted dataset" in capsys.readouterr().err
