"""Faces, landmarks and geometric AUs on real photos and the real video of ``../shared/data``."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from if3d.analyze import au_geometry as geo
from if3d.analyze.emfacs import emfacs_expressions
from if3d.analyze.faces import FaceDetector
from if3d.face.pose import head_pose
from if3d.io.images import decode_image

PER_CLASS = 30


@pytest.fixture(scope="module")
def labelled_faces(data_dir):
    """Landmarks of the first PER_CLASS neutral, happy and surprised photos of wild/uncropped (by file order)."""
    rows = list(csv.DictReader(open(data_dir / "wild" / "uncropped_labels.csv", encoding="utf-8")))
    out: dict[str, list[np.ndarray]] = {}
    with FaceDetector(max_faces=1, video=False) as det:
        for label in ("neutral", "happiness", "surprise"):
            names = [r["image"] for r in rows if r["emotion"] == label][:PER_CLASS]
            for name in names:
                faces = det.detect(decode_image(data_dir / "wild" / "uncropped" / name))
                assert faces, f"no face in {name}"
                out.setdefault(label, []).append(faces[0].landmarks)
    return out


def _aus(landmarks: list[np.ndarray]) -> dict[str, np.ndarray]:
    lm = np.stack(landmarks)
    rot = np.stack([head_pose(x)["rotation"] for x in lm])
    feats = geo.geometric_features(lm, rot)
    return geo.geometric_au_intensities(feats, geo.neutral_reference(feats, "population"))


def test_geometric_aus_separate_smiles_and_surprise_from_neutral_faces(labelled_faces):
    neutral, happy, surprise = (_aus(labelled_faces[k]) for k in ("neutral", "happiness", "surprise"))
    assert happy["AU12"].mean() > neutral["AU12"].mean() + 1.0
    assert happy["AU6"].mean() > neutral["AU6"].mean() + 1.5
    assert surprise["AU5"].mean() > neutral["AU5"].mean() + 1.0
    assert surprise["AU26"].mean() > neutral["AU26"].mean() + 0.8
    assert (surprise["AU1"] + surprise["AU2"]).mean() > (neutral["AU1"] + neutral["AU2"]).mean()
    assert (emfacs_expressions(happy)[0] == "Happy").mean() >= 0.45
    assert (emfacs_expressions(neutral)[0] == "Happy").mean() <= 0.2


def test_features_do_not_change_when_the_head_turns(labelled_faces):
    lm = labelled_faces["neutral"][0].astype(np.float64)
    from scipy.spatial.transform import Rotation

    turn = Rotation.from_euler("xyz", [12, -25, 8], degrees=True).as_matrix()
    centre = lm[:468].mean(0)
    # rotate the 3D face about its centre (in pixel space: the x, y, z of FaceMesh share one scale)
    turned = (lm - centre) @ turn.T + centre
    f0 = geo.geometric_features(lm[None], head_pose(lm)["rotation"][None])[0]
    f1 = geo.geometric_features(turned[None], head_pose(turned)["rotation"][None])[0]
    assert np.allclose(f0, f1, atol=1e-6)
    # and when it comes closer: lengths are in inter-ocular distances
    f2 = geo.geometric_features((lm * 1.7)[None], head_pose(lm * 1.7)["rotation"][None])[0]
    assert np.allclose(f0, f2, atol=1e-6)


def test_eye_aspect_ratio_follows_soukupova_and_cech():
    pts = np.zeros((1, 478, 3))
    for (p1, p2, p3, p4, p5, p6) in ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380)):
        pts[0, p1], pts[0, p4] = (0, 0, 0), (4, 0, 0)
        pts[0, p2], pts[0, p3] = (1, 1, 0), (3, 1, 0)
        pts[0, p6], pts[0, p5] = (1, -1, 0), (3, -1, 0)
    assert geo.eye_aspect_ratio(pts)[0] == pytest.approx((2 + 2) / (2 * 4))


def test_neutral_references():
    rng = np.random.default_rng(0)
    base = np.array([geo.POPULATION_NEUTRAL[k] for k in geo.FEATURES])
    feats = base + rng.normal(0, 0.002, (40, len(base)))
    feats[25:, geo.FEATURES.index("brow_inner")] -= 0.05  # a frown in the last 15 frames
    for mode in ("least_expressive", "first", "median"):
        n = geo.neutral_reference(feats, mode)
        assert n[geo.FEATURES.index("brow_inner")] == pytest.approx(base[geo.FEATURES.index("brow_inner")], abs=0.01)
    aus = geo.geometric_au_intensities(feats, geo.neutral_reference(feats, "least_expressive"))
    assert aus["AU4"][30:].mean() > 2.5
    assert aus["AU4"][:20].mean() < 0.5
    with pytest.raises(ValueError, match="unknown neutral"):
        geo.neutral_reference(feats, "mean")


def test_the_frown_of_the_shared_video_raises_au4(data_dir):
    from if3d.analyze import Analyzer

    with Analyzer(checkpoint=None, threads=1) as analyzer:
        df = analyzer.analyze(data_dir / "video" / "1543684773.avi", landmarks=False)
    assert len(df) == 67
    assert df["face_detected"].all()
    assert (df["face_id"] == 0).all()
    assert df["face_score"].gt(0.5).all()
    assert df["AU04_smooth"].iloc[-20:].mean() > df["AU04_smooth"].iloc[:10].mean() + 0.8
    assert df["time_s"].iloc[30] == pytest.approx(1.0)
    assert {"prob_Neutral", "valence", "expression", "uncertain"}.isdisjoint(df.columns)  # checkpoint=None
    assert df["emfacs"].ne("").all()
