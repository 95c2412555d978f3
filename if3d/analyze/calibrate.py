"""Geometric AUs on labelled photos: how the population neutral reference was measured, and how well the
EMFACS expressions of the geometric AUs agree with expression labels.

    python -m if3d.analyze.calibrate --calibrate ../shared/data/wild/uncropped --labels ../shared/data/wild/uncropped_labels.csv
    python -m if3d.analyze.calibrate --emfacs ../shared/data/wild/uncropped --labels ../shared/data/wild/uncropped_labels.csv
"""

from __future__ import annotations

import numpy as np

from if3d.analyze.au_geometry import FEATURES, geometric_au_intensities, geometric_features, neutral_reference

__all__ = ["calibrate_population_neutral", "emfacs_agreement"]



def calibrate_population_neutral(folder: str, labels_csv: str, label: str = "neutral") -> tuple[dict[str, float], int, int]:
    """Median features of the photos of one class (how :data:`POPULATION_NEUTRAL` was made).

    Args:
        folder: image folder.
        labels_csv: CSV with ``image`` and ``emotion`` (or ``label``) columns, image names relative to ``folder``.
        label: the class whose photos are used.

    Returns:
        ``(feature → median, faces found, photos of the class)``.
    """
    import csv
    from pathlib import Path

    from if3d.analyze.faces import FaceDetector
    from if3d.face.pose import head_pose
    from if3d.io.images import decode_image

    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    names = [r["image"] for r in rows if (r.get("emotion") or r.get("label") or "").strip().lower() == label]
    feats = []
    with FaceDetector(max_faces=1, video=False) as detector:
        for name in names:
            faces = detector.detect(decode_image(Path(folder) / name))
            if faces:
                lm = faces[0].landmarks
                feats.append(geometric_features(lm[None], head_pose(lm)["rotation"][None])[0])
    med = np.median(np.stack(feats), axis=0)
    return {k: round(float(v), 4) for k, v in zip(FEATURES, med)}, len(feats), len(names)


def emfacs_agreement(folder: str, labels_csv: str) -> dict[str, dict[str, float]]:
    """EMFACS expressions of the geometric AUs (population neutral) per labelled class of photos.

    Returns:
        class label → {EMFACS expression → share of the class's photos with a face}, plus ``faces``/``photos``.
    """
    import csv
    from collections import Counter
    from pathlib import Path

    from if3d.analyze.emfacs import emfacs_expressions
    from if3d.analyze.faces import FaceDetector
    from if3d.face.pose import head_pose
    from if3d.io.images import decode_image

    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    by_class: dict[str, list[np.ndarray]] = {}
    totals: Counter = Counter()
    with FaceDetector(max_faces=1, video=False) as detector:
        for r in rows:
            label = (r.get("emotion") or r.get("label") or "").strip().lower()
            totals[label] += 1
            faces = detector.detect(decode_image(Path(folder) / r["image"]))
            if faces:
                lm = faces[0].landmarks
                by_class.setdefault(label, []).append(geometric_features(lm[None], head_pose(lm)["rotation"][None])[0])
    out = {}
    for label, feats in sorted(by_class.items()):
        f = np.stack(feats)
        names = emfacs_expressions(geometric_au_intensities(f, neutral_reference(f, "population")))[0]
        counts = Counter(names.tolist())
        out[label] = {"photos": totals[label], "faces": len(feats),
                      **{k: round(v / len(feats), 3) for k, v in counts.most_common()}}
    return out


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Geometric AUs on labelled photos: the population neutral "
                                     "reference (--calibrate) or the EMFACS expressions per class (--emfacs).")
    parser.add_argument("--calibrate", help="image folder: print the median features of the --label photos")
    parser.add_argument("--emfacs", help="image folder: print the share of EMFACS expressions per labelled class")
    parser.add_argument("--labels", required=True, help="CSV of image,emotion rows")
    parser.add_argument("--label", default="neutral")
    a = parser.parse_args()
    if a.calibrate:
        values, found, total = calibrate_population_neutral(a.calibrate, a.labels, a.label)
        print(f"{found} of {total} faces found")
        print(values)
    if a.emfacs:
        for label, shares in emfacs_agreement(a.emfacs, a.labels).items():
            print(f"{label:>10}: {shares}")
