"""The web app's handlers without a browser: what a photo, a video or a camera frame becomes, and the message a
bad upload gets; the command line's refusals of bad options (status 2, before any server starts)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from if3d.app.cli import is_loopback, run
from if3d.app.handlers import (
    MIN_DRAWN_SIDE,
    AnalyzerPool,
    AppInputError,
    AppOptions,
    WebcamHistory,
    analyse_photo,
    analyse_video,
    webcam_frame,
)

#: a FER2013 PublicTest photo of a clear smile (the shipped model: Happy, 0.87)
HAPPY = "fer2013/test/happy/PublicTest_10130075.jpg"
VIDEO = "video/1543684773.avi"


@pytest.fixture(scope="module")
def options() -> AppOptions:
    return AppOptions(threads=1)


@pytest.fixture(scope="module")
def analyzer(options):
    pool = AnalyzerPool(options)
    yield pool.get()
    pool.close()


@pytest.fixture
def happy(data_dir) -> Path:
    path = data_dir / HAPPY
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return path


def test_text_file_named_jpg_is_a_message_naming_it(tmp_path, analyzer, options):
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is not a photo\n")
    with pytest.raises(AppInputError, match=r"^holiday\.jpg: not an image") as e:
        analyse_photo(bad, analyzer, options)
    assert str(tmp_path) not in str(e.value)  # the server's temporary path stays off the page


def test_not_a_photo_type_empty_and_missing_uploads(tmp_path, analyzer, options):
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(AppInputError, match=r"notes\.txt: not a photo; upload one of .*\.jpg"):
        analyse_photo(notes, analyzer, options)
    with pytest.raises(AppInputError, match="no photo was uploaded"):
        analyse_photo(None, analyzer, options)
    with pytest.raises(AppInputError, match="gone.png: the upload did not arrive"):
        analyse_photo(tmp_path / "gone.png", analyzer, options)


def test_oversized_upload_is_refused_before_decoding(tmp_path, analyzer):
    big = tmp_path / "big.png"
    big.write_bytes(b"\0" * 300_000)
    with pytest.raises(AppInputError, match=r"big\.png: 0\.3 MB is more than the 0\.1 MB"):
        analyse_photo(big, analyzer, AppOptions(max_upload_mb=0.1))


def test_happy_photo(happy, analyzer, options):
    res = analyse_photo(happy, analyzer, options)
    assert len(res.faces) == 1
    face = res.faces[0]
    assert face.expression == "Happy"
    assert not face.uncertain
    assert set(face.probabilities) == set(res.class_names)
    assert sum(face.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    assert face.probabilities["Happy"] == max(face.probabilities.values()) > 0.5
    assert "AU12" in face.aus
    assert 0.0 <= face.aus["AU12"] <= 5.0
    assert all(np.isfinite(face.pose))
    # FER2013's 48 px photo is drawn enlarged, with its box in a colour on the grey photo
    assert res.annotated.shape == (MIN_DRAWN_SIDE, MIN_DRAWN_SIDE, 3)
    assert res.annotated.dtype == np.uint8
    rgb = res.annotated.astype(int)
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 60).any()
    assert res.message.endswith("1 face(s)")


def test_photo_without_face_says_so(tmp_path, analyzer, options):
    import cv2

    blank = tmp_path / "wall.png"
    cv2.imwrite(str(blank), np.full((120, 160, 3), 200, np.uint8))
    res = analyse_photo(blank, analyzer, options)
    assert res.faces == []
    assert "no face found" in res.message


def test_video_longer_than_the_limit_and_broken_video(data_dir, tmp_path, analyzer):
    video = data_dir / VIDEO
    with pytest.raises(AppInputError, match=r"1543684773\.avi: longer than the 1 s this app analyses.*lasts 2 s"):
        analyse_video(video, analyzer, AppOptions(max_video_s=1), tmp_path / "work")
    broken = tmp_path / "clip.mp4"
    broken.write_text("not a video")
    with pytest.raises(AppInputError, match=r"^clip\.mp4: cannot be opened as a video") as e:
        analyse_video(broken, analyzer, AppOptions(), tmp_path / "work")
    assert str(tmp_path) not in str(e.value)
    assert not (tmp_path / "work").exists()  # refused before anything was written


def test_webcam_frames_build_the_rolling_diagram(happy, analyzer):
    from if3d.data.images import decode_image

    image = decode_image(happy)
    history = WebcamHistory(window_s=1.0)
    assert webcam_frame(None, analyzer, history)[3] == "waiting for the camera"
    annotated, faces, diagram, line = webcam_frame(image, analyzer, history, now=10.0)
    assert faces[0].expression == "Happy"
    assert line.startswith("Happy 0.")
    assert diagram is None  # one frame is no time course yet
    webcam_frame(np.zeros((64, 64, 3), np.uint8), analyzer, history, now=10.5)
    annotated, faces, diagram, line = webcam_frame(image, analyzer, history, now=11.0)
    assert diagram is not None
    assert diagram.ndim == 3
    assert diagram.shape[2] == 3
    assert len(history.rows) == 3
    assert history.rows[1][1] is None
    webcam_frame(image, analyzer, history, now=11.8)
    assert [t for t, _ in history.rows] == [11.0, 11.8]  # older than the window: dropped


def test_bad_options_exit_2_before_serving(capsys, tmp_path):
    assert run(["--max-upload-mb", "0"]) == 2
    assert "--max-upload-mb must be a number > 0" in capsys.readouterr().err
    assert run(["--port", "70000"]) == 2
    assert run(["--checkpoint", str(tmp_path / "none.pth")]) == 2
    err = capsys.readouterr().err
    assert "none.pth: no such checkpoint file" in err
    assert "Traceback" not in err


def test_loopback_addresses():
    assert is_loopback("127.0.0.1")
    assert is_loopback("localhost")
    assert is_loopback("::1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("192.168.1.5")
    assert not is_loopback("myhost")
