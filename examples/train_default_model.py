"""Reproduce the default expression model that ships with the toolkit (``--checkpoint default``), from
FER2013 and the ImageNet MobileNetV2 weights installed by the set-up command, on a CPU.

Run from the repository root::

    python examples/train_default_model.py             # ≈ 75 min on 2 CPU cores (docs/MODEL_CARD.md)
    python examples/train_default_model.py --install   # the same, then copy the model into the package

Every step is an ordinary command of the toolkit, printed before it runs and saved to
``<out>/commands.sh``; an interrupted run resumes where it stopped:

1. ``python -m if3d.data convert --format fer2013-folders --calibration-fraction 0.05``: FER2013's Training
   photos become ``train`` (27,273) and a stratified, seeded 5 % ``calib`` split (1,436) that is never
   trained on; PublicTest (3,589) becomes ``val``, the reported split, which no step below chooses anything on.
2. ``python -m if3d.data cache --photo-only``: the photos decoded once at 112 px.
3. ``python -m if3d.train``: photo-only DDAMFN (2 DDA heads) on the ImageNet MobileNetV2 backbone, recipe
   ``fer_imagenet`` for 12 epochs, validated on ``calib`` (``best.pth`` is the best epoch on ``calib``).
4. ``affectnet_fusion_test.py`` on ``calib`` with and without horizontal-flip averaging; the model averages
   the flips when that is at least as accurate on ``calib``.
5. ``python -m if3d.calibration``: temperature scaling fitted on ``calib``; the weights stored as float16, with
   the recipe, the seed and a SHA-256 fingerprint of the training photos.
6. ``affectnet_fusion_test.py`` on PublicTest (``val``, all 3,589 photos: photo-only, so no photo is left
   out for want of a detected face): accuracy, balanced accuracy, macro F1, per-class recall, NLL, Brier,
   ECE, confusion matrix and reliability diagram.
7. with ``--install``: the calibrated file is copied to ``if3d/weights/`` (what ``default`` loads).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from fer2013_demo import REPO, Runner

EPOCHS = 12
SEED = 0


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--fer2013", default=str(REPO.parent / "shared" / "data" / "fer2013"),
                   help="FER2013 in image-folder layout ({train,test}/<class>/*.jpg)")
    p.add_argument("--data", default="Dataset/fer2013_full", help="the converted dataset (train, calib, val)")
    p.add_argument("--out", default="runs/default_model", help="the training run, evaluations and the model")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--seed", type=int, default=SEED)
    p.add_argument("--install", action="store_true",
                   help="copy the calibrated model to if3d/weights/ (the file '--checkpoint default' loads)")
    return p


def _accuracy(folder: Path) -> float:
    return float(json.loads((folder / "metrics.json").read_text())["accuracy"])


def _epochs_done(run_dir: Path) -> int:
    """Epochs finished by a training run (rows of its metrics.csv)."""
    import csv

    path = run_dir / "metrics.csv"
    if not path.is_file():
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        return len(list(csv.DictReader(f)))


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if not (Path(args.fer2013) / "train").is_dir():
        print(f"error: {args.fer2013}/train is missing (expected FER2013 image folders)", file=sys.stderr)
        return 2
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Runner(out)
    py = sys.executable
    t0 = time.perf_counter()
    if not (data / "classes.json").is_file():
        run("convert", [py, "-m", "if3d.data", "convert", "--format", "fer2013-folders", "--src", args.fer2013,
                        "--out", str(data), "--calibration-fraction", "0.05", "--seed", "0"])
    run("cache", [py, "-m", "if3d.data", "cache", "--data", str(data), "--split", "train", "--split", "calib",
                  "--split", "val", "--photo-only"])
    if (out / "last.pth").is_file() and _epochs_done(out) < args.epochs:
        run("train", [py, "-m", "if3d.train", "--resume", str(out)])
    elif not (out / "best.pth").is_file():
        run("train", [py, "-m", "if3d.train", "--model", "ddamfn", "--data", str(data), "--backbone", "mobilenetv2",
                      "--pretrained", "imagenet", "--num-heads", "2", "--preset", "fer_imagenet", "--epochs",
                      str(args.epochs), "--val-split", "calib", "--seed", str(args.seed), "--no-compile",
                      "--out", str(out)])
    best = out / "best.pth"
    test = [py, "affectnet_fusion_test.py", "--workers", "0", "--data", str(data)]
    for flip in ("flip", "noflip"):
        folder = out / "eval" / f"calib_{flip}"
        if not (folder / "metrics.json").is_file():
            run("choose flip averaging", [*test, "--checkpoint", str(best), "--split", "calib",
                                          "--flip-average" if flip == "flip" else "--no-flip-average",
                                          "--out", str(folder)])
    use_flip = _accuracy(out / "eval" / "calib_flip") >= _accuracy(out / "eval" / "calib_noflip")
    model = out / "default.pth"
    run("calibrate", [py, "-m", "if3d.calibration", "--checkpoint", str(best), "--data", str(data), "--split",
                      "calib", "--flip-average" if use_flip else "--no-flip-average", "--half", "--out", str(model)])
    run("test", [*test, "--checkpoint", str(model), "--split", "val", "--out", str(out / "eval" / "publictest")])
    m = json.loads((out / "eval" / "publictest" / "metrics.json").read_text())
    print(f"\nPublicTest ({m['num_samples']} photos): accuracy {m['accuracy']:.4f}, balanced accuracy "
          f"{m['balanced_accuracy']:.4f}, macro F1 {m['f1_macro']:.4f}, ECE {m['ece']:.4f} "
          f"(temperature {m['temperature']:.3f}, flip averaging {'on' if use_flip else 'off'}); "
          f"{(time.perf_counter() - t0) / 60:.1f} min this time")
    if args.install:
        from networks.inference import DEFAULT_CHECKPOINT

        target = REPO / DEFAULT_CHECKPOINT[0] / DEFAULT_CHECKPOINT[1]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(model, target)
        print(f"installed {target} ({target.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
