"""How much expression information each 3D face representation holds for a linear classifier.

Fits a standardised logistic regression (C = 0.05) on the training split's pose-normalised landmark clouds, mesh
edge lengths and region distance maps (``if3d.data.face3d``, read from the split tables that any 3D model's run
builds under ``<root>/cache``) and reports the test accuracy of each. Used to choose the distance map's layout
(docs/FACE3D.md)::

    python examples/face3d_linear_probe.py --data Dataset/fer2013_sub --train-split train --test-split val
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    import numpy as np
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from if3d.data.face3d import distance_map, edge_lengths
    from if3d.data.face3d_streams import open_face3d_table
    from if3d.data.source import SplitSource

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="val")
    args = p.parse_args()
    tables = {s: open_face3d_table(SplitSource.from_root(args.data, s)) for s in (args.train_split, args.test_split)}
    labels = {s: np.array([int(k.split("/")[0]) for k in t.keys]) for s, t in tables.items()}
    upper = np.triu_indices(162, 1)
    features = {
        "landmark cloud (1434)": lambda c: c.reshape(len(c), -1),
        "mesh edge lengths (1322)": lambda c: edge_lengths(torch.from_numpy(c)).numpy(),
        "distance map, upper triangle (13041)": lambda c: distance_map(torch.from_numpy(c)).numpy()[:, 0, upper[0], upper[1]],
    }
    for name, f in features.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, max_iter=300))
        clf.fit(f(tables[args.train_split].clouds), labels[args.train_split])
        acc = float((clf.predict(f(tables[args.test_split].clouds)) == labels[args.test_split]).mean())
        print(f"{name}: test accuracy {acc:.4f} ({len(labels[args.train_split])} train, "
              f"{len(labels[args.test_split])} test faces)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
