"""Geometric action-unit (AU) estimates from MediaPipe's 478 3D face landmarks.

These are **geometric estimates**, not FACS codes: each AU is read from one displacement of the
FaceMesh landmarks that the AU produces (Ekman, Friesen & Hager, *Facial Action Coding System*, 2002,
describes each AU's appearance changes), measured after removing the head pose and the face's size,
relative to a neutral reference of the same feature. They need no training and work on any face the
mesh fits; their scale is heuristic. For intensities calibrated on FACS-coded data, train an AU model
(``networks.au``, ``python -m if3d.train --model au_regressor``) and pass it with ``--au-checkpoint``.

**Pose normalisation.** Landmarks (x right, y down, z away from the camera, pixels) are turned into the
view frame (x right, y up, z toward the camera), centred on the centroid of the 468 mesh points and
rotated into the face frame of :func:`if3d.face.pose.head_pose` (x toward the subject's
left, y up, z forward): ``q = Rᵀ (p − c)``. Every length is then divided by the inter-ocular distance
**IOD** (between the two eye centres, each the mid-point of its corners 33/133 and 362/263), so the
features below are in IOD units (about 6 cm on an adult), independent of distance to the camera and of
head rotation (up to what FaceMesh's z resolves).

**Features** (``FEATURES``; MediaPipe FaceMesh landmark indices, R/L = the subject's right/left; heights
are face-frame y differences, distances are 3D):

==============  ================================================================================
feature         definition
==============  ================================================================================
brow_inner      inner brow (R 107+55, L 336+285) height above the eye centre, mean of both sides
brow_outer      outer brow (R 70+46, L 300+276) height above the eye centre, mean of both sides
brow_gap        horizontal distance between the two inner brows
upper_lid       upper lid (R 159, L 386) height above the iris centre (R 468, L 473), mean
lower_lid       iris centre height above the lower lid (R 145, L 374), mean
cheek           cheek (R 50, L 280) height relative to the eye centre, mean
nose_eye        distance inner eye corner (133 / 362) to nose wing (129 / 358), mean of both sides
upper_lip       distance subnasale (2) to the top of the upper lip (0)
corner_r        right mouth corner (61) height relative to the inner-lip mid-point (13, 14)
corner_l        left mouth corner (291) height relative to the inner-lip mid-point (13, 14)
mouth_width     distance between the mouth corners (61, 291)
chin_lip        distance lower-lip bottom (17) to chin (152)
lip_gap         distance inner upper lip (13) to inner lower lip (14)
jaw             distance subnasale (2) to chin (152)
ear             eye aspect ratio, mean of both eyes (dimensionless, see below)
==============  ================================================================================

**Eye aspect ratio** (Soukupová & Čech, "Real-Time Eye Blink Detection using Facial Landmarks", CVWW
2016): ``EAR = (‖p2 − p6‖ + ‖p3 − p5‖) / (2 ‖p1 − p4‖)`` with the six eye points p1…p6 = corner, two upper
lid points, corner, two lower lid points (R: 33, 160, 158, 133, 153, 144; L: 362, 385, 387, 263, 373, 380).

**AU estimates** (:data:`GEOMETRIC_AUS`): ``Δ = feature − neutral`` (IOD units), and the intensity on the
FACS 0–5 scale (0 absent, 1 = A trace … 5 = E maximum) is ``5 · clip(s · Δ / Δ_full, 0, 1)``, where ``s``
is the direction in which the AU moves the feature and ``Δ_full`` the displacement taken as maximal
intensity (listed in :data:`GEOMETRIC_AUS`; our heuristic choice, about twice the median displacement in
the photos of ``wild/uncropped`` labelled with an expression whose EMFACS prototype holds the AU, against
the neutral-labelled ones, and for AU4 the frown of ``video/1543684773.avi``). AU4 combines
brow lowering and brows drawn together (``Δ = −Δbrow_inner − Δbrow_gap``); AU12 and AU15 use the mean of
both corners (``AU12_R``/``AU12_L`` per side are also given, for unilateral AU12, EMFACS contempt); AU20
is mouth widening not explained by a corner raise (``Δ = Δmouth_width − 1.5 · max(0, Δcorner)``); AU17 is
the lower face shortening with the lips closed (``Δ = −Δchin_lip − Δlip_gap``: FaceMesh opens the mouth
mostly by moving the lower lip toward the chin); AU26 adds half the lip gap to the jaw drop
(``Δ = Δjaw + 0.5 · Δlip_gap``, for the same reason); AU43 (eyes
closed) is the relative eye closure ``c = 1 − EAR / EAR_neutral`` with ``Δ_full = 0.75`` (fully closed
lids give EAR ≈ 0). Caveats: a strong AU12 also raises the cheeks (it reads as some AU6); AU5 and AU7
share the lids with AU43; AU25 and AU26 both open the mouth (lip gap vs jaw drop).

**Neutral reference** (:func:`neutral_reference`): ``least_expressive`` — per face track, the median
features of the track's least expressive frames: the fifth of its frames with the lowest sum of AU
intensities measured against the population neutral (the person's own offsets shift every frame alike, so
the ranking within the track holds; ours, for videos that hold some neutral moments anywhere);
``median`` — per face track, the median of each
feature over the track (the person-specific normalisation of Baltrušaitis, Mahmoud & Robinson,
"Cross-dataset learning and person-specific normalisation for automatic Action Unit detection", FG 2015,
used by OpenFace: it assumes the face is neutral most of the time); ``first`` — the median over the first
frames of the track (posed sequences that start neutral, e.g. CK+); ``population`` — :data:`POPULATION_NEUTRAL`,
the median features of the 70 neutral-labelled photos of ``wild/uncropped`` (see the constant), for single
images and short tracks, where no neutral of the person exists (the weakest case: people's resting faces
differ; ``python -m if3d.analyze.calibrate --emfacs`` measures the agreement with expression labels).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from if3d.face.topology import NUM_MESH_VERTICES

__all__ = [
    "FEATURES",
    "GEOMETRIC_AUS",
    "NEUTRAL_MODES",
    "POPULATION_NEUTRAL",
    "GeometricAU",
    "eye_aspect_ratio",
    "face_frame",
    "geometric_au_intensities",
    "geometric_features",
    "neutral_reference",
]

_EYE_CORNERS = ((33, 133), (362, 263))  # subject's right, left
_EYE_CENTRE_BY_SIDE = {"R": (33, 133), "L": (362, 263)}
_EAR_POINTS = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380))

FEATURES: tuple[str, ...] = ("brow_inner", "brow_outer", "brow_gap", "upper_lid", "lower_lid", "cheek", "nose_eye",
                             "upper_lip", "corner_r", "corner_l", "mouth_width", "chin_lip", "lip_gap", "jaw", "ear")
"""Geometric features, in this column order (table in the module docstring)."""

NEUTRAL_MODES = ("least_expressive", "median", "first", "population")


@dataclass(frozen=True)
class GeometricAU:
    """How one AU is read from the features.

    Attributes:
        name: ``AU1`` …
        label: FACS name.
        terms: ``(feature, sign)`` pairs; ``Δ = Σ sign · (feature − neutral)`` (IOD units; AU43: relative
            EAR change).
        full: ``Δ`` read as the maximal intensity 5 (E).
    """

    name: str
    label: str
    terms: tuple[tuple[str, float], ...]
    full: float


GEOMETRIC_AUS: tuple[GeometricAU, ...] = (
    GeometricAU("AU1", "inner brow raiser", (("brow_inner", 1.0),), 0.08),
    GeometricAU("AU2", "outer brow raiser", (("brow_outer", 1.0),), 0.08),
    GeometricAU("AU4", "brow lowerer", (("brow_inner", -1.0), ("brow_gap", -1.0)), 0.08),
    GeometricAU("AU5", "upper lid raiser", (("upper_lid", 1.0),), 0.03),
    GeometricAU("AU6", "cheek raiser", (("cheek", 1.0),), 0.10),
    GeometricAU("AU7", "lid tightener", (("lower_lid", -1.0),), 0.03),
    GeometricAU("AU9", "nose wrinkler", (("nose_eye", -1.0),), 0.06),
    GeometricAU("AU10", "upper lip raiser", (("upper_lip", -1.0),), 0.14),
    GeometricAU("AU12", "lip corner puller", (("corner_r", 0.5), ("corner_l", 0.5)), 0.10),
    GeometricAU("AU15", "lip corner depressor", (("corner_r", -0.5), ("corner_l", -0.5)), 0.08),
    GeometricAU("AU17", "chin raiser", (("chin_lip", -1.0), ("lip_gap", -1.0)), 0.08),
    GeometricAU("AU20", "lip stretcher", (("mouth_width", 1.0),), 0.30),
    GeometricAU("AU25", "lips part", (("lip_gap", 1.0),), 0.30),
    GeometricAU("AU26", "jaw drop", (("jaw", 1.0), ("lip_gap", 0.5)), 0.20),
    GeometricAU("AU43", "eyes closed", (), 0.75),
)
"""The AUs read from geometry (AU14 dimpler and AU23 lip tightener are not resolved by the mesh)."""

#: Median features of the 70 neutral-labelled photos of ``../shared/data/wild/uncropped``
#: (``python -m if3d.analyze.calibrate --calibrate ../shared/data/wild/uncropped
#: --labels ../shared/data/wild/uncropped_labels.csv``; 70 of 70 faces found).
POPULATION_NEUTRAL: dict[str, float] = {
    "brow_inner": 0.2223, "brow_outer": 0.2094, "brow_gap": 0.4319, "upper_lid": 0.0484, "lower_lid": 0.0739,
    "cheek": -0.5252, "nose_eye": 0.6069, "upper_lip": 0.2871, "corner_r": 0.0369, "corner_l": 0.0369,
    "mouth_width": 0.7719, "chin_lip": 0.5638, "lip_gap": 0.0544, "jaw": 1.129, "ear": 0.265,
}


def face_frame(landmarks: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """Landmarks in the face frame, in IOD units.

    Args:
        landmarks: [N, 478, 3] (or [478, 3]) MediaPipe landmarks (x, y in pixels, y down; z MediaPipe's sign).
        rotation: [N, 3, 3] (or [3, 3]) head rotation, face frame → view frame
            (:func:`if3d.face.pose.head_pose` ``rotation``).

    Returns:
        float64 [N, 478, 3] (or [478, 3]): x toward the subject's left, y up, z forward, origin at the
        mesh centroid, divided by the inter-ocular distance.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    single = lm.ndim == 2
    lm = lm[None] if single else lm
    rot = np.asarray(rotation, dtype=np.float64).reshape(-1, 3, 3)
    view = lm * np.array([1.0, -1.0, -1.0])
    view = view - view[:, :NUM_MESH_VERTICES].mean(1, keepdims=True)
    q = np.einsum("nvi,nij->nvj", view, rot)  # Rᵀ p for each point
    right = q[:, list(_EYE_CORNERS[0])].mean(1)
    left = q[:, list(_EYE_CORNERS[1])].mean(1)
    iod = np.linalg.norm(left - right, axis=1)
    q = q / np.where(iod > 0, iod, np.nan)[:, None, None]
    return q[0] if single else q


def eye_aspect_ratio(points: np.ndarray) -> np.ndarray:
    """Soukupová & Čech's eye aspect ratio, mean of both eyes.

    Args:
        points: [N, 478, 3] landmarks in any frame without shear (face frame or pixels).

    Returns:
        float64 [N] EAR (≈ 0.25–0.35 for open eyes with these points, → 0 when closed).
    """
    q = np.asarray(points, dtype=np.float64)
    ears = []
    for p1, p2, p3, p4, p5, p6 in _EAR_POINTS:
        v = np.linalg.norm(q[:, p2] - q[:, p6], axis=1) + np.linalg.norm(q[:, p3] - q[:, p5], axis=1)
        h = np.linalg.norm(q[:, p1] - q[:, p4], axis=1)
        ears.append(v / np.where(h > 0, 2.0 * h, np.nan))
    return np.mean(ears, axis=0)


def geometric_features(landmarks: np.ndarray, rotation: np.ndarray) -> np.ndarray:
    """The :data:`FEATURES` of each face.

    Args:
        landmarks: [N, 478, 3] MediaPipe landmarks (pixels).
        rotation: [N, 3, 3] head rotations (:func:`if3d.face.pose.head_pose`).

    Returns:
        float64 [N, len(FEATURES)]: IOD units, except ``ear`` (dimensionless).
    """
    q = face_frame(np.asarray(landmarks).reshape(-1, *np.shape(landmarks)[-2:]), np.asarray(rotation).reshape(-1, 3, 3))
    y = q[..., 1]

    def pts(*idx):
        return q[:, list(idx)].mean(1)

    def dist(a, b):
        return np.linalg.norm(q[:, a] - q[:, b], axis=1)

    eye_r, eye_l = pts(33, 133), pts(362, 263)
    lip_mid = (y[:, 13] + y[:, 14]) / 2
    inner_r, inner_l = pts(107, 55), pts(336, 285)
    outer_r, outer_l = pts(70, 46), pts(300, 276)
    f = {
        "brow_inner": ((inner_r[:, 1] - eye_r[:, 1]) + (inner_l[:, 1] - eye_l[:, 1])) / 2,
        "brow_outer": ((outer_r[:, 1] - eye_r[:, 1]) + (outer_l[:, 1] - eye_l[:, 1])) / 2,
        "brow_gap": np.abs(inner_l[:, 0] - inner_r[:, 0]),
        "upper_lid": ((y[:, 159] - y[:, 468]) + (y[:, 386] - y[:, 473])) / 2,
        "lower_lid": ((y[:, 468] - y[:, 145]) + (y[:, 473] - y[:, 374])) / 2,
        "cheek": ((y[:, 50] - eye_r[:, 1]) + (y[:, 280] - eye_l[:, 1])) / 2,
        "nose_eye": (dist(133, 129) + dist(362, 358)) / 2,
        "upper_lip": dist(2, 0),
        "corner_r": y[:, 61] - lip_mid,
        "corner_l": y[:, 291] - lip_mid,
        "mouth_width": dist(61, 291),
        "chin_lip": dist(17, 152),
        "lip_gap": dist(13, 14),
        "jaw": dist(2, 152),
        "ear": eye_aspect_ratio(q),
    }
    return np.stack([f[name] for name in FEATURES], axis=1)


def neutral_reference(features: np.ndarray, mode: str = "least_expressive", first: int = 15,
                      share: float = 0.2) -> np.ndarray:
    """The neutral feature values of one face track.

    Args:
        features: [T, len(FEATURES)] the track's features in frame order (NaN rows allowed).
        mode: ``"least_expressive"`` (median of the ``share`` least expressive frames), ``"median"`` (the
            track's median), ``"first"`` (median of its first ``first`` valid frames) or ``"population"``
            (:data:`POPULATION_NEUTRAL`); see the module docstring.
        first: frames used by ``"first"``.
        share: fraction of the frames used by ``"least_expressive"`` (at least 5 frames, or all).

    Returns:
        float64 [len(FEATURES)].

    Raises:
        ValueError: an unknown mode.
    """
    if mode not in NEUTRAL_MODES:
        raise ValueError(f"unknown neutral reference {mode!r}; choose one of {', '.join(NEUTRAL_MODES)}")
    if mode == "population":
        return np.array([POPULATION_NEUTRAL[k] for k in FEATURES], dtype=np.float64)
    f = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    f = f[np.isfinite(f).all(1)]
    if f.shape[0] == 0:
        return np.array([POPULATION_NEUTRAL[k] for k in FEATURES], dtype=np.float64)
    if mode == "first":
        f = f[:first]
    elif mode == "least_expressive":
        population = np.array([POPULATION_NEUTRAL[k] for k in FEATURES], dtype=np.float64)
        aus = geometric_au_intensities(f, population, sides=False)
        activity = np.sum([v for k, v in aus.items() if k != "AU43"], axis=0)
        keep = max(min(5, len(f)), int(np.ceil(share * len(f))))
        f = f[np.argsort(activity, kind="stable")[:keep]]
    return np.median(f, axis=0)


def geometric_au_intensities(features: np.ndarray, neutral: np.ndarray | Mapping[str, float],
                             sides: bool = True) -> dict[str, np.ndarray]:
    """AU intensities on the 0–5 scale from features and their neutral reference (module docstring).

    Args:
        features: [N, len(FEATURES)] (:func:`geometric_features`).
        neutral: [len(FEATURES)] or a feature → value mapping (:func:`neutral_reference`).
        sides: also return ``AU12_R`` and ``AU12_L`` (unilateral lip corner raise, same scale).

    Returns:
        AU name → float64 [N] intensity in [0, 5] (NaN where the features are NaN), in
        :data:`GEOMETRIC_AUS` order.
    """
    f = np.asarray(features, dtype=np.float64).reshape(-1, len(FEATURES))
    if isinstance(neutral, Mapping):
        neutral = np.array([neutral[k] for k in FEATURES], dtype=np.float64)
    delta = f - np.asarray(neutral, dtype=np.float64)[None]
    col = {name: delta[:, i] for i, name in enumerate(FEATURES)}
    out: dict[str, np.ndarray] = {}
    for au in GEOMETRIC_AUS:
        if au.name == "AU43":
            ref = float(np.asarray(neutral)[FEATURES.index("ear")])
            d = 1.0 - f[:, FEATURES.index("ear")] / ref if ref > 0 else np.full(f.shape[0], np.nan)
        elif au.name == "AU20":
            d = col["mouth_width"] - 1.5 * np.maximum(0.0, (col["corner_r"] + col["corner_l"]) / 2)
        else:
            d = sum(sign * col[feat] for feat, sign in au.terms)
        out[au.name] = _scale(d, au.full)
    if sides:
        full = next(a.full for a in GEOMETRIC_AUS if a.name == "AU12")
        out["AU12_R"] = _scale(col["corner_r"], full)
        out["AU12_L"] = _scale(col["corner_l"], full)
    return out


def _scale(delta: np.ndarray, full: float) -> np.ndarray:
    d = np.asarray(delta, dtype=np.float64)
    return np.where(np.isfinite(d), 5.0 * np.clip(d / full, 0.0, 1.0), np.nan)

