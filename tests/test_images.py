"""The one image decoder (if3d.io.images.decode_image) on real faces stored in every mode, and on broken files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from if3d.data import CorruptImageError
from if3d.data.dataset import read_image
from if3d.io.images import decode_image
from if3d.render.batch import read_photo


@pytest.fixture(scope="module")
def face(data_dir) -> np.ndarray:
    """A real 48x48 grey FER2013 face, uint8 [48, 48]."""
    path = sorted((data_dir / "fer2013" / "train" / "happy").iterdir())[0]
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _rgb_face(face: np.ndarray) -> np.ndarray:
    return np.stack([face, np.flipud(face), 255 - face], axis=2)  # three distinct channels


def test_sixteen_bit_grey_png_decodes_to_the_8_bit_original(face, tmp_path):
    path = tmp_path / "face16.png"
    Image.fromarray(face.astype(np.uint16) * 257).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I;16")  # really stored with 16 bits per sample
    want = np.repeat(face[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_image(path), want)
    # every reader of the toolkit goes through the same decoder
    np.testing.assert_array_equal(read_photo(path), want)
    np.testing.assert_array_equal(read_image(path).permute(1, 2, 0).numpy(), want)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "P-transparency", "1", "I", "F", "CMYK"])
def test_every_colour_mode_gives_uint8_rgb(face, tmp_path, mode):
    rgb = _rgb_face(face)
    ext = ".tiff" if mode in ("I", "F", "CMYK") else ".png"
    path = tmp_path / f"face_{mode}{ext}"
    if mode == "L":
        Image.fromarray(face).save(path)
        want = np.repeat(face[:, :, None], 3, axis=2)
    elif mode == "RGB":
        Image.fromarray(rgb).save(path)
        want = rgb
    elif mode == "RGBA":
        Image.fromarray(np.dstack([rgb, np.full_like(face, 7)])).save(path)
        want = rgb  # alpha dropped, colours kept as stored
    elif mode == "LA":
        Image.fromarray(np.dstack([face, np.full_like(face, 7)]), mode="LA").save(path)
        want = np.repeat(face[:, :, None], 3, axis=2)
    elif mode.startswith("P"):
        im = Image.fromarray(rgb).quantize(64)
        if mode == "P-transparency":
            im.info["transparency"] = 0
            im.save(path, transparency=0)
        else:
            im.save(path)
        want = np.asarray(im.convert("RGB"))
    elif mode == "1":
        bw = face > 128
        Image.fromarray(bw).save(path)
        want = np.repeat((bw * 255).astype(np.uint8)[:, :, None], 3, axis=2)
    elif mode == "I":
        Image.fromarray(face.astype(np.int32) * 257, mode="I").save(path)
        want = np.repeat(face[:, :, None], 3, axis=2)
    elif mode == "F":
        Image.fromarray(face.astype(np.float32) / 255.0, mode="F").save(path)
        want = np.repeat(face[:, :, None], 3, axis=2)
    else:
        Image.fromarray(rgb).convert("CMYK").save(path)
        want = np.asarray(Image.fromarray(rgb).convert("CMYK").convert("RGB"))
    got = decode_image(path)
    assert got.dtype == np.uint8
    assert got.shape == (48, 48, 3)
    np.testing.assert_array_equal(got, want)


def test_jpeg_draft_scale_keeps_the_requested_size(data_dir):
    path = sorted((data_dir / "wild" / "uncropped").iterdir())[0]  # 350x350 JPEG
    full = decode_image(path)
    small = decode_image(path, min_size=112)
    assert full.shape[:2] == (350, 350)
    assert 112 <= min(small.shape[:2]) < 350


def test_broken_files_raise_one_error_type_naming_the_file(face, tmp_path, data_dir):
    jpeg = sorted((data_dir / "wild" / "uncropped").iterdir())[0].read_bytes()
    cases = {
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "text.jpg": (b"this is not a picture\n", "not an image"),
        "empty.png": (b"", "empty file"),
    }
    for name, (data, _) in cases.items():
        (tmp_path / name).write_bytes(data)
    os.symlink("loop.png", tmp_path / "loop.png")
    (tmp_path / "folder.png").mkdir()
    Image.fromarray(np.full((4, 4), np.nan, np.float32), mode="F").save(tmp_path / "nan.tiff")
    cases.update({"loop.png": (None, "symbolic link loop"), "missing.png": (None, "file not found"),
                  "folder.png": (None, "is a folder"), "nan.tiff": (None, "NaN")})
    for name, (_, problem) in cases.items():
        path = tmp_path / name
        with pytest.raises(CorruptImageError) as err:
            decode_image(path)
        assert str(err.value).startswith(f"{path}: ")
        assert problem in str(err.value)
        assert err.value.path == str(path)
        assert problem in err.value.problem


def test_error_survives_a_process_pool():
    import pickle

    err = pickle.loads(pickle.dumps(CorruptImageError("/x/a.jpg: empty file", path=Path("/x/a.jpg"),
                                                      problem="empty file")))
    assert (str(err), err.path, err.problem) == ("/x/a.jpg: empty file", "/x/a.jpg", "empty file")
