"""Command line of the training scripts (``affectnet_*_fusion_train.py``, ``python -m if3d.train``).

Every option defaults to "not given"; what is not given comes from the recipe preset
(``--preset``), the device's fast-path defaults, or — with ``--resume`` — the interrupted run's
own ``config.json`` settings, so ``python affectnet_gate_fusion_train.py --resume runs/gate``
continues a run without repeating its options.

Exit status: 0 done, 1 non-finite loss, 2 bad options or data, 130 interrupted (resumable).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from if3d.train.config import (
    AMP_CHOICES,
    DEFAULT_PRESET,
    DEFAULT_PRESET_FOR_MODEL,
    FAST_PATH_DEFAULTS,
    OPTIMIZER_IMPL_CHOICES,
    PRESETS,
    STRATEGY_MODELS,
    TrainConfig,
    config_from_preset,
)

#: Settings that may differ when a run is resumed (everything else comes from the checkpoint).
RESUME_OVERRIDABLE = frozenset(
    {"device", "workers", "epochs", "resume", "out", "interrupt_after_steps", "final_checkpoint", "cache",
     "data", "train_photos", "train_renders", "train_annotations", "val_photos", "val_renders",
     "val_annotations"}
)


def get_args_parser(default_model: str = "if3d_linear") -> argparse.ArgumentParser:
    """The argument parser of the training scripts (torchvision's ``get_args_parser``)."""
    models = ", ".join(sorted(set(STRATEGY_MODELS.values())))
    p = argparse.ArgumentParser(
        description=(
            f"Train an expression classifier (default model: {default_model}). "
            "Options left out come from the preset, the device defaults, or the resumed run."
        ),
        epilog="Exit status: 0 done, 1 non-finite loss, 2 bad options or data, 130 interrupted (resumable).",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", help=f"registered model ({models}; default {default_model})")
    g.add_argument("--preset", choices=sorted(PRESETS),
                   help=f"recipe preset (default: ddamfn for the ddamfn model, else {DEFAULT_PRESET})")
    g.add_argument("--num-classes", type=int, help="classes of the model (default: the dataset's classes)")
    g.add_argument("--num-heads", type=int, help="DDA heads (default: the model's; DDAMFN 2, If3D 4)")
    g.add_argument("--faithful", action="store_true", default=None,
                   help="If3D models: reproduce the original If3D fusion exactly")
    g.add_argument("--pretrained", metavar="PATH",
                   help="initial weights: pretrained/MFN_msceleb.pth (into every backbone) or any supported checkpoint")

    g = p.add_argument_group("data (either --data or the explicit If3D-style paths)")
    g.add_argument("--data", metavar="ROOT", help="canonical dataset root (photos/, renders/, annotations/, classes.json)")
    g.add_argument("--train-split", help="training split of --data (default train)")
    g.add_argument("--val-split", help="validation split of --data (default val, else test)")
    for role in ("train", "val"):
        g.add_argument(f"--{role}-photos", metavar="DIR", help=f"{role} photos <DIR>/<label>/<file>")
        g.add_argument(f"--{role}-renders", metavar="DIR", help=f"{role} renders, same relative paths and stems")
        g.add_argument(f"--{role}-annotations", metavar="CSV",
                       help=f"{role} valence/arousal CSV (file,valence,arousal or If3D's number,exp,val,aro)")
    g.add_argument("--image-size", type=int, help="model input side in pixels (default 112)")
    g.add_argument("--skip-missing-renders", action="store_true", default=None,
                   help="skip (and count) photos without a render instead of stopping")
    g.add_argument("--max-train-samples", type=int, metavar="N", help="seeded random subset of the training split")
    g.add_argument("--max-val-samples", type=int, metavar="N", help="seeded random subset of the validation split")
    g.add_argument("--cache", choices=("auto", "off"), help="use the pre-decoded cache when present (default auto)")
    g.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                   help="no training augmentation")
    g.add_argument("--workers", type=int,
                   help="data-loading worker processes (default: 0 on CPU, where decoding in the training process "
                        "costs < 1 %% of a step and workers compete with the compute threads; min(4, CPUs) on CUDA)")

    g = p.add_argument_group("recipe (defaults from --preset)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int, help="global batch size (split over DDP ranks)")
    g.add_argument("--lr", type=float, help="optimizer learning rate (nominal under the cyclic schedule)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--optimizer", choices=("adam", "adamw"))
    g.add_argument("--scheduler", choices=("cyclic", "exponential", "none"))
    g.add_argument("--cyclic-base-lr", type=float, help="cyclic schedule: lowest learning rate")
    g.add_argument("--cyclic-max-lr", type=float, help="cyclic schedule: highest learning rate")
    g.add_argument("--cyclic-step-size-up", type=int, help="cyclic schedule: rising iterations (default half an epoch)")
    g.add_argument("--exp-gamma", type=float, help="exponential schedule: decay per epoch")
    g.add_argument("--balanced-sampling", action=argparse.BooleanOptionalAction,
                   help="class-balanced sampling of the training split")
    g.add_argument("--loss-attention", type=float, help="weight of the attention loss per stream")
    g.add_argument("--loss-alignment", type=float, help="weight of the alignment MSE")
    g.add_argument("--loss-va", type=float, help="weight of the valence/arousal loss (0 disables)")

    g = p.add_argument_group("hardware and speed (defaults per device: see if3d.train.config.FAST_PATH_DEFAULTS)")
    g.add_argument("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    g.add_argument("--amp", nargs="?", const="auto", choices=AMP_CHOICES,
                   help="autocast: off, bf16, fp16 (CUDA), or auto (bare --amp) = bf16 where supported")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, help="NHWC memory format")
    g.add_argument("--optimizer-impl", choices=OPTIMIZER_IMPL_CHOICES, help="optimizer implementation")
    g.add_argument("--fused-optimizer", dest="optimizer_impl", action="store_const", const="fused",
                   help="same as --optimizer-impl fused")
    g.add_argument("--foreach", dest="optimizer_impl", action="store_const", const="foreach",
                   help="same as --optimizer-impl foreach")
    g.add_argument("--compile", action=argparse.BooleanOptionalAction,
                   help="torch.compile the model (default on CPU: only runs of ≥ 300 optimizer steps, when a C++ "
                        "compiler is present; off on CUDA)")
    g.add_argument("--tune-allocator", action=argparse.BooleanOptionalAction,
                   help="keep freed CPU memory in glibc's heap for reuse (default on for CPU runs)")

    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<model>)")
    g.add_argument("--resume", metavar="CKPT", help="continue from last.pth (or a run directory)")
    g.add_argument("--seed", type=int, help="random seed (default 0)")
    g.add_argument("--final-checkpoint", nargs="?", const="FinalCheckPoints", metavar="DIR",
                   help="copy best.pth to DIR/<Strategy>.pth at the end (bare flag: FinalCheckPoints)")
    g.add_argument("--interrupt-after-steps", type=int, metavar="N",
                   help="(testing) behave as if Ctrl-C came after N optimizer steps")
    return p


def _given(ns: argparse.Namespace) -> dict[str, Any]:
    """Options the user gave (not None), restricted to TrainConfig fields."""
    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(ns).items() if v is not None and k in names}


def config_from_args(argv: Sequence[str] | None = None, default_model: str = "if3d_linear") -> TrainConfig:
    """Parse ``argv`` into a :class:`TrainConfig` (preset + overrides, or resumed run + overrides).

    Raises:
        SystemExit: bad options (argparse) or an inconsistent combination (status 2).
    """
    parser = get_args_parser(default_model)
    ns = parser.parse_args(argv)
    given = _given(ns)
    if ns.resume:
        from if3d.checkpoint import CheckpointError, load_checkpoint

        rpath = Path(ns.resume)
        ckpt_path = rpath / "last.pth" if rpath.is_dir() else rpath
        try:
            saved = load_checkpoint(ckpt_path)["config"]
        except CheckpointError as e:
            parser.error(str(e))
        cfg = TrainConfig.from_dict(saved)
        changed = sorted(k for k, v in given.items() if k not in RESUME_OVERRIDABLE and v != getattr(cfg, k))
        if changed:
            parser.error(
                f"--resume continues the saved run; these settings cannot change: {', '.join(changed)} "
                f"(allowed: {', '.join(sorted(RESUME_OVERRIDABLE))})"
            )
        overrides = {k: v for k, v in given.items() if k in RESUME_OVERRIDABLE and k != "resume"}
        overrides.setdefault("out", str(ckpt_path.parent))
        overrides.setdefault("interrupt_after_steps", None)  # a test interruption is not part of the run
        return replace(cfg, **overrides, resume=str(ckpt_path))

    model = given.pop("model", default_model)
    preset = ns.preset or DEFAULT_PRESET_FOR_MODEL.get(model, DEFAULT_PRESET)
    given.pop("preset", None)
    given.setdefault("out", str(Path("runs") / model))
    if given.get("data") is None and given.get("train_photos") is None:
        parser.error("give the data: --data ROOT, or --train-photos/--train-renders and --val-photos/--val-renders")
    if given.get("data") is not None and any(given.get(f"{r}_photos") for r in ("train", "val")):
        parser.error("--data and --train-photos/--val-photos are alternatives; give one of them")
    if given.get("data") is None and given.get("val_photos") is None:
        parser.error("explicit paths need --val-photos (and --val-renders) too")
    return config_from_preset(preset, model=model, **given)


def _check_out_dir(cfg: TrainConfig) -> None:
    out = Path(cfg.out)
    if cfg.resume is None and (out / "last.pth").exists():
        raise FileExistsError(
            f"{out} already holds a run (last.pth); continue it with --resume {out} or choose another --out"
        )


def run(argv: Sequence[str] | None = None, default_model: str = "if3d_linear") -> int:
    """Train from command-line arguments; returns the exit status (see the module docstring)."""
    from if3d.checkpoint import CheckpointError
    from if3d.data.cache import CacheError
    from if3d.train.engine import NonFiniteLossError, TrainingInterrupted, fit
    from networks.weights import UnsafePickleError, WeightLoadError

    cfg = config_from_args(argv, default_model)
    try:
        _check_out_dir(cfg)
        result = fit(cfg)
    except TrainingInterrupted as e:
        print(str(e), file=sys.stderr, flush=True)
        return 130
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except (ValueError, FileNotFoundError, FileExistsError, KeyError, CacheError, CheckpointError,
            WeightLoadError, UnsafePickleError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"done: best validation accuracy {result.best_accuracy:.4f} at epoch {result.best_epoch}; "
              f"run directory {result.out}", flush=True)
    return 0


def main(default_model: str = "if3d_linear", argv: Sequence[str] | None = None) -> None:
    """Entry point of the training scripts: parse, train, exit with :func:`run`'s status."""
    sys.exit(run(argv, default_model))


__all__ = ["FAST_PATH_DEFAULTS", "config_from_args", "get_args_parser", "main", "run"]
