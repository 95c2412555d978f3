"""MediaPipe backend on real faces (FER2013, CK+48, wild photos): detection rate, render inside/outside
the face region, pixel alignment with the photo, topology, head pose, SMIRK crop."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from if3d.face.landmarks import FaceLandmarker, apply_affine_continuous, smirk_crop_matrix
from if3d.face.pose import head_pose
from if3d.face.topology import boundary_loops, face_mesh_triangles
from if3d.render.batch import read_photo
from if3d.render.mediapipe_backend import MediaPipeBackend, frame_photo

SIZE = 112
PER_CLASS = 20


def spread_sample(root: Path, per_class: int) -> list[Path]:
    """``per_class`` files per class folder, evenly spread over the sorted file list (fixed sample)."""
    files = []
    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        items = sorted(cls.iterdir())
        step = max(1, len(items) // per_class)
        files += items[::step][:per_class]
    return files


@pytest.fixture(scope="module")
def landmarker():
    with FaceLandmarker() as fl:
        yield fl


@pytest.fixture(scope="module")
def backend(landmarker):
    b = MediaPipeBackend(size=SIZE, landmarker=landmarker)
    yield b
    b.renderer.release()


@pytest.fixture(scope="module")
def detections(data_dir, landmarker):
    """{set name: [(path, image, landmarks or None)]} for fixed FER2013 (test split) and CK+48 samples."""
    out = {}
    for name, root in (("fer2013", data_dir / "fer2013" / "test"), ("ckplus48", data_dir / "ckplus48")):
        if not root.is_dir():
            pytest.skip(f"{root} is absent")
        items = []
        for path in spread_sample(root, PER_CLASS):
            image = read_photo(path)
            items.append((path, image, landmarker.detect(image)))
        out[name] = items
    return out


def hull_mask(points_xy: np.ndarray, size: int, dilate: int = 0) -> np.ndarray:
    """Pixels whose centres lie in the convex hull of the points (continuous coordinates)."""
    mask = np.zeros((size, size), np.uint8)
    hull = cv2.convexHull((points_xy * 16).round().astype(np.int32))
    cv2.fillConvexPoly(mask, hull - 8, 1, lineType=cv2.LINE_8, shift=4)  # -8/16 px: centre convention
    if dilate:
        mask = cv2.dilate(mask, np.ones((2 * dilate + 1, 2 * dilate + 1), np.uint8))
    return mask.astype(bool)


@pytest.mark.parametrize("name", ["fer2013", "ckplus48"])
def test_face_found_on_95_percent(detections, name):
    items = detections[name]
    assert len(items) >= 100
    found = sum(lm is not None for _, _, lm in items)
    assert found / len(items) >= 0.95, f"{name}: face found on {found}/{len(items)}"


def test_landmarks_shape_and_pixel_frame(detections):
    for _, image, lm in detections["ckplus48"][:20]:
        if lm is None:
            continue
        assert lm.shape == (478, 3)
        assert lm.dtype == np.float32
        h, w = image.shape[:2]
        # CK+48 crops are tight: the landmark box covers most of the 48x48 image and stays near it
        assert lm[:, 0].min() > -0.2 * w
        assert lm[:, 0].max() < 1.2 * w
        assert lm[:, 1].min() > -0.2 * h
        assert lm[:, 1].max() < 1.2 * h
        assert np.ptp(lm[:, 0]) > 0.5 * w
        # nose tip (1) is closer to the camera (smaller z) than the face-oval points on the cheeks
        assert lm[1, 2] < lm[234, 2]
        assert lm[1, 2] < lm[454, 2]


@pytest.mark.parametrize("name", ["fer2013", "ckplus48"])
def test_render_fills_face_region_only_and_aligns_with_photo(backend, detections, name):
    checked = 0
    for path, image, lm in detections[name][::4]:
        if lm is None:
            continue
        result = backend.process(image)
        assert result is not None, path
        render = result.render
        assert render.shape == (SIZE, SIZE, 3)
        assert render.dtype == np.uint8
        h, w = image.shape[:2]
        pts = lm[:468, :2] * np.array([SIZE / w, SIZE / h], dtype=np.float32)
        assert np.allclose(result.params["image_to_render"], [[SIZE / w, 0, 0], [0, SIZE / h, 0]])
        lit = render[..., 0] > 0
        inside = hull_mask(pts, SIZE)
        outside = ~hull_mask(pts, SIZE, dilate=1)
        assert not lit[outside].any(), f"{path}: render outside the face region"
        # inside the landmark hull: grey everywhere but the eye and mouth openings
        assert lit[inside].mean() > 0.75, f"{path}: only {lit[inside].mean():.2f} of the face region rendered"
        # silhouette box vs the landmarks' box at the render size (clipped to the image)
        rows, cols = np.nonzero(lit)
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)
        lm_box = np.clip([pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()], 0, SIZE)
        assert np.abs(box - lm_box).max() <= 2.0, f"{path}: silhouette {box} vs landmarks {lm_box}"
        checked += 1
    assert checked >= 30


def test_render_is_a_shaded_face(backend, detections):
    """Grey levels vary over the face (shading), up to SMIRK's frontal value, and stay grey (R=G=B)."""
    _, image, lm = next(item for item in detections["ckplus48"] if item[2] is not None)
    render = backend.process(image).render
    assert (render[..., 0] == render[..., 1]).all()
    assert (render[..., 0] == render[..., 2]).all()
    face = render[..., 0][render[..., 0] > 0].astype(float)
    assert face.std() > 5
    assert 180 <= face.max() <= 230


def test_params_content(backend, detections):
    _, image, lm = next(item for item in detections["fer2013"] if item[2] is not None)
    p = backend.process(image).params
    assert set(p) >= {"landmarks", "rotation", "euler_deg", "translation", "scale", "image_size",
                      "image_to_render", "framing"}
    assert p["landmarks"].shape == (478, 3)
    r = p["rotation"]
    assert np.allclose(r @ r.T, np.eye(3), atol=1e-5)
    assert np.isclose(np.linalg.det(r), 1.0, atol=1e-5)
    assert p["euler_deg"].shape == (3,)
    assert np.abs(p["euler_deg"]).max() < 60
    assert tuple(p["image_size"]) == image.shape[:2]
    assert np.allclose(p["translation"][:2], lm[:468, :2].mean(0), atol=1e-3)
    assert 5 < float(p["scale"]) < 48
    assert str(p["framing"]) == "photo"


def test_head_pose_follows_mirroring_and_rotation(data_dir, landmarker):
    """Mirroring flips yaw and roll; rotating the photo by +15 deg on screen (counter-clockwise) adds 15 to roll."""
    files = sorted((data_dir / "wild" / "uncropped").glob("*"))[:40:4]
    if not files:
        pytest.skip("wild/uncropped is empty")
    for path in files:
        image = read_photo(path)
        lm = landmarker.detect(image)
        assert lm is not None, path
        pose = head_pose(lm)["euler_deg"]
        mirrored = head_pose(landmarker.detect(np.ascontiguousarray(image[:, ::-1])))["euler_deg"]
        assert abs(mirrored[0] - pose[0]) < 4
        assert abs(mirrored[1] + pose[1]) < 4
        assert abs(mirrored[2] + pose[2]) < 4
        h, w = image.shape[:2]
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 15, 1.0)  # positive angle = counter-clockwise on screen
        rotated = cv2.warpAffine(image, m, (w, h))
        lm_rot = landmarker.detect(rotated)
        assert lm_rot is not None, path
        assert abs(head_pose(lm_rot)["euler_deg"][2] - pose[2] - 15) < 4, path


def test_wild_uncropped_photos(data_dir, backend):
    files = sorted((data_dir / "wild" / "uncropped").glob("*"))[::19][:20]
    if not files:
        pytest.skip("wild/uncropped is empty")
    found = 0
    for path in files:
        image = read_photo(path)
        result = backend.process(image)
        if result is None:
            continue
        found += 1
        pts = result.params["landmarks"][:468, :2] * np.array([SIZE / image.shape[1], SIZE / image.shape[0]])
        lit = result.render[..., 0] > 0
        assert not lit[~hull_mask(pts, SIZE, dilate=1)].any(), path
        assert lit[hull_mask(pts, SIZE)].mean() > 0.75, path
    assert found >= 0.9 * len(files)


def test_smirk_crop_framing(data_dir, landmarker):
    """smirk-crop: the landmark box is centred in the render and spans 1/1.4 of it; photo framed alike."""
    backend = MediaPipeBackend(size=SIZE, framing="smirk-crop", landmarker=landmarker)
    try:
        path = sorted((data_dir / "wild" / "uncropped").glob("*"))[3]
        image = read_photo(path)
        result = backend.process(image)
        assert result is not None
        pts = apply_affine_continuous(smirk_crop_matrix(result.params["landmarks"], SIZE), result.params["landmarks"])
        centre = (pts[:, :2].min(0) + pts[:, :2].max(0)) / 2
        assert np.allclose(centre, SIZE / 2, atol=1.5)
        extent = (np.ptp(pts[:, 0]) + np.ptp(pts[:, 1])) / 2
        assert abs(extent - (SIZE - 1) / 1.4) < 2.0
        lit = result.render[..., 0] > 0
        rows, cols = np.nonzero(lit)
        mesh = pts[:468]
        box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=float)
        lm_box = np.array([mesh[:, 0].min(), mesh[:, 1].min(), mesh[:, 0].max(), mesh[:, 1].max()])
        assert np.abs(box - lm_box).max() <= 2.0
        photo = frame_photo(image, result.params, SIZE)
        assert photo.shape == (SIZE, SIZE, 3)
        # the framed photo has its face where the render has it: detect again on the framed photo
        again = landmarker.detect(photo)
        assert again is not None
        assert np.abs(again[:468, :2] - mesh[:, :2]).mean() < 2.0
    finally:
        backend.renderer.release()


def test_smirk_crop_matrix_formula():
    # box x in [10, 50], y in [20, 80]: old_size = (40 + 60) / 2 = 50, size = int(70) = 70, centre (30, 50)
    pts = np.array([[10, 20], [50, 80], [30, 50]], dtype=np.float32)
    m = smirk_crop_matrix(pts, out_size=224)
    s = 223 / 70
    assert np.allclose(m, [[s, 0, -s * (30 - 35)], [0, s, -s * (50 - 35)]])
    corners = np.array([[30 - 35, 50 - 35, 1], [30 + 35, 50 + 35, 1]], dtype=float)
    assert np.allclose(corners @ m.T, [[0, 0], [223, 223]])
    with pytest.raises(ValueError):
        smirk_crop_matrix(np.zeros((3, 2)))


def test_topology_is_the_canonical_face_mesh():
    faces = face_mesh_triangles()
    assert faces.shape == (852, 3)
    assert faces.dtype == np.int32
    assert faces.min() == 0
    assert faces.max() == 467
    assert len(np.unique(faces)) == 468
    directed = [tuple(e) for t in faces for e in ((t[0], t[1]), (t[1], t[2]), (t[2], t[0]))]
    assert len(set(directed)) == len(directed)  # consistent winding: no directed edge twice
    undirected = {frozenset(e) for e in directed}
    euler = 468 - len(undirected) + len(faces)
    assert euler == -2  # sphere with four holes: face oval, mouth, two eyes
    assert [len(loop) for loop in boundary_loops(faces)] == [36, 20, 16, 16]
    # the iris points are not part of the mesh
    assert not np.isin(np.arange(468, 478), faces).any()


def test_topology_faces_the_viewer_on_real_faces(detections):
    faces = face_mesh_triangles()
    fractions = []
    for _, _, lm in detections["ckplus48"][:40]:
        if lm is None:
            continue
        view = lm[:468] * np.array([1, -1, -1], dtype=np.float32)
        tri = view[faces]
        normal_z = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 2]
        fractions.append((normal_z > 0).mean())
    assert np.median(fractions) > 0.9


def test_detect_rejects_bad_input(landmarker):
    with pytest.raises(ValueError, match="uint8"):
        landmarker.detect(np.zeros((48, 48), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        landmarker.detect(np.zeros((48, 48, 3), np.float32))
    assert landmarker.detect(np.zeros((48, 48, 3), np.uint8)) is None
