"""SMIRK render backend end to end on real photos, with a synthetic FLAME model and synthetic SMIRK weights."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from synthetic_smirk import cached_synthetic_checkpoint, cached_synthetic_flame

from if3d.face.landmarks import FaceLandmarker
from if3d.render.backends import RenderBackend, get_backend
from if3d.render.gl import MeshRenderer
from if3d.render.smirk_backend import (
    CROP_SIZE,
    SmirkBackend,
    compose_affine,
    invert_affine,
    pixel_centre_to_continuous,
    project_to_crop,
)
from networks.smirk.flame import FlameModelError
from networks.weights import CheckpointFormatError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def files(tmp_path_factory, spec_dir, smirk_assets_dir):
    flame_path, _ = cached_synthetic_flame(tmp_path_factory, smirk_assets_dir)
    ckpt_path, _ = cached_synthetic_checkpoint(tmp_path_factory, spec_dir / "smirk_encoder_state_dict_spec.json")
    return {"checkpoint": ckpt_path, "flame_model": flame_path, "assets_dir": smirk_assets_dir}


@pytest.fixture(scope="module")
def landmarker():
    with FaceLandmarker() as lm:
        yield lm


@pytest.fixture(scope="module")
def backend(files, landmarker):
    b = SmirkBackend(**files, device="cpu", size=224, framing="smirk-crop", landmarker=landmarker)
    yield b
    b.renderer.release()


@pytest.fixture(scope="module")
def photo(data_dir, landmarker):
    """A real 350x350 photo with background (wild/uncropped) in which FaceMesh finds a face."""
    root = data_dir / "wild" / "uncropped"
    if not root.is_dir():
        pytest.skip(f"{root} is absent")
    for path in sorted(root.glob("*.jpg"))[:10]:
        image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        if landmarker.detect(image) is not None:
            return image
    pytest.fail("no face found in the first 10 wild/uncropped photos")


def _silhouette(render: np.ndarray) -> np.ndarray:
    return render.max(axis=2) > 0


def _bbox(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min()]), np.array([xs.max() + 1, ys.max() + 1])


def test_project_to_crop_is_smirk_camera():
    verts = np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.0, 0.05, 0.02]])
    out = project_to_crop(verts, np.array([8.0, 0.01, -0.02]))
    # x' = s (x + tx), y' = -s (y + ty); [-1, 1] -> [0, 224]
    np.testing.assert_allclose(out[0, :2], [(8 * 0.01 + 1) * 112, (-8 * -0.02 + 1) * 112], atol=1e-4)
    assert out[1, 0] > out[0, 0]  # FLAME +x (subject's left) is image right
    assert out[2, 1] < out[0, 1]  # FLAME +y (up) is image up
    assert out[2, 2] == pytest.approx(8 * 0.02 * 112)  # closer = larger z, same pixel scale


def test_smirk_crop_render(backend, photo):
    result = backend.process(photo)
    assert result is not None
    render, params = result.render, result.params
    assert render.shape == (224, 224, 3)
    assert render.dtype == np.uint8
    assert (render[..., 0] == render[..., 1]).all()  # grey
    assert (render[..., 1] == render[..., 2]).all()
    mask = _silhouette(render)
    assert 0.15 < mask.mean() < 0.8  # a face, not a speck nor the whole frame
    # black background: the border rows/columns outside the face stay black
    assert not mask[:, :5].any()
    assert not mask[:, -5:].any()
    lo, hi = _bbox(mask)
    centre = (lo + hi) / 2
    assert np.abs(centre - CROP_SIZE / 2).max() < 0.12 * CROP_SIZE  # centred in SMIRK's crop
    assert render[mask].mean() > 60  # lit, not a black-on-black mesh
    shapes = {k: v.shape for k, v in params.items()}
    assert shapes == {
        "shape_params": (300,),
        "expression_params": (50,),
        "pose_params": (3,),
        "jaw_params": (3,),
        "eyelid_params": (2,),
        "cam": (3,),
        "landmarks": (478, 3),
        "crop_matrix": (2, 3),
        "image_size": (2,),
        "image_to_render": (2, 3),
        "framing": (),
    }
    assert str(params["framing"]) == "smirk-crop"
    assert ((params["eyelid_params"] >= 0) & (params["eyelid_params"] <= 1)).all()
    np.testing.assert_array_equal(params["image_size"], photo.shape[:2])
    # image_to_render is the crop (continuous) scaled to the render: the landmark box maps to the
    # crop centre with SMIRK's 1.4x margin
    lm = params["landmarks"][:, :2].astype(np.float64)
    m = params["image_to_render"].astype(np.float64)
    box = np.stack([lm.min(0), lm.max(0)]) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(box.mean(0), CROP_SIZE / 2, atol=1.0)
    assert (box[1] - box[0]).mean() == pytest.approx(CROP_SIZE / 1.4, rel=0.03)


def test_smaller_size_is_the_crop_frame_rescaled(files, landmarker, backend, photo):
    small = SmirkBackend(**files, device="cpu", size=112, framing="smirk-crop", landmarker=landmarker)
    try:
        a = backend.process(photo)
        b = small.process(photo)
    finally:
        small.renderer.release()
    assert b.render.shape == (112, 112, 3)
    lo_a, hi_a = _bbox(_silhouette(a.render))
    lo_b, hi_b = _bbox(_silhouette(b.render))
    np.testing.assert_allclose(lo_b, lo_a / 2, atol=1.5)
    np.testing.assert_allclose(hi_b, hi_a / 2, atol=1.5)
    np.testing.assert_allclose(a.params["cam"], b.params["cam"], atol=1e-5)


@pytest.mark.parametrize("crop_box", [None, (0, 20, 350, 300)], ids=["square", "non-square"])
def test_photo_framing_is_aligned_with_the_photo(files, landmarker, backend, photo, crop_box):
    image = photo if crop_box is None else np.ascontiguousarray(photo[crop_box[1] : crop_box[3], crop_box[0] : crop_box[2]])
    h, w = image.shape[:2]
    size = 160
    framed = SmirkBackend(**files, device="cpu", size=size, framing="photo", landmarker=landmarker)
    try:
        result = framed.process(image)
        crop_result = backend.process(image)
    finally:
        framed.renderer.release()
    assert result is not None
    render, params = result.render, result.params
    assert render.shape == (size, size, 3)
    assert str(params["framing"]) == "photo"
    np.testing.assert_allclose(params["image_to_render"], [[size / w, 0, 0], [0, size / h, 0]], atol=1e-6)
    mask = _silhouette(render)
    assert mask.mean() > 0.05
    # the same face as the crop render, carried into the photo frame through the inverse crop transform
    crop_to_photo = invert_affine(pixel_centre_to_continuous(params["crop_matrix"]))
    crop_to_render = compose_affine(np.array([[size / w, 0, 0], [0, size / h, 0]]), crop_to_photo)
    k = CROP_SIZE / backend.size
    g = compose_affine(crop_to_render, np.array([[k, 0, 0], [0, k, 0]]))
    centre_convention = np.concatenate([g[:, :2], (g[:, 2] - 0.5 + g[:, :2] @ [0.5, 0.5])[:, None]], axis=1)
    warped = cv2.warpAffine(_silhouette(crop_result.render).astype(np.uint8) * 255, centre_convention, (size, size),
                            flags=cv2.INTER_NEAREST) > 127
    iou = (mask & warped).sum() / (mask | warped).sum()
    assert iou > 0.9
    # and it covers the photo's face: its box centre lies inside the landmarks' box
    lm = params["landmarks"][:, :2] * np.array([size / w, size / h])
    lo, hi = _bbox(mask)
    centre = (lo + hi) / 2
    assert (lm.min(0) < centre).all()
    assert (centre < lm.max(0)).all()


def test_no_face_gives_none(backend):
    assert backend.process(np.zeros((120, 160, 3), dtype=np.uint8)) is None


def test_get_backend_builds_it(files, landmarker):
    b = get_backend("smirk", **files, device="cpu", size=64, framing="photo", landmarker=landmarker)
    try:
        assert isinstance(b, SmirkBackend)
        assert isinstance(b, RenderBackend)
        assert (b.name, b.size, b.framing) == ("smirk", 64, "photo")
    finally:
        b.renderer.release()


def test_missing_or_malformed_files_are_named(files, tmp_path):
    renderer = MeshRenderer(32)  # not created again for each failing constructor
    try:
        with pytest.raises(ValueError, match="needs checkpoint"):
            SmirkBackend(flame_model=files["flame_model"], assets_dir=files["assets_dir"], renderer=renderer, size=32)
        for key, name in (("checkpoint", "SMIRK_em1.pt"), ("flame_model", "generic_model.pkl"), ("assets_dir", "assets")):
            kwargs = dict(files, **{key: tmp_path / "absent" / name})
            with pytest.raises(FileNotFoundError, match=f"absent/{name}"):
                SmirkBackend(**kwargs, device="cpu", size=32, renderer=renderer)
        bad_ckpt = tmp_path / "broken.pt"
        bad_ckpt.write_bytes(b"\x00" * 64)
        with pytest.raises(CheckpointFormatError, match="broken.pt"):
            SmirkBackend(**dict(files, checkpoint=bad_ckpt), device="cpu", size=32, renderer=renderer)
        bad_flame = tmp_path / "broken_model.pkl"
        bad_flame.write_bytes(b"\x80\x02}q\x00.")  # an empty dict
        with pytest.raises(FlameModelError, match="broken_model.pkl.*missing FLAME keys"):
            SmirkBackend(**dict(files, flame_model=bad_flame), device="cpu", size=32, renderer=renderer)
        with pytest.raises(ValueError, match="framing"):
            SmirkBackend(**files, framing="centre", size=32, renderer=renderer)
    finally:
        renderer.release()
