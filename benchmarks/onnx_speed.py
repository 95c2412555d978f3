"""Per-face latency of the shipped expression model: PyTorch eager against its ONNX exports (fp32 and int8).

The shipped model (``default``: DDAMFN on MobileNetV2, docs/MODEL_CARD.md) is exported with
:func:`if3d.export.export_onnx` into a temporary folder — fp32, and int8 (``--int8`` method, default static QDQ
calibrated on 64 photos of ``--photos``) — unless ``--fp32``/``--int8-file`` give exported files. Each variant
then runs forward passes on real face photos (``--photos``, default ``../shared/data/fer2013/test``, read with the
toolkit's preprocessing) at each ``--batch-sizes`` (default 1 and 32) on the CPU with ``--threads`` threads
(default 2; ONNX Runtime's intra-op threads follow torch's, :mod:`networks.onnx_runtime`):

- ``pytorch``: ``model(x).logits`` in eager mode under ``torch.inference_mode`` (fp32, no flip averaging: the
  shipped model's policy does not flip);
- ``onnx_fp32`` / ``onnx_int8``: the exported files through :class:`networks.onnx_runtime.OnnxModel` (what
  ``--checkpoint model.onnx`` runs; it includes the copies between torch and NumPy).

Figures: ms per face as the median (min, max) of ``--repeats`` timed runs of ``--steps`` batches after
``--warmup`` untimed ones, and the share of the photos on which each ONNX variant predicts PyTorch's class.
Timings mean something only on an otherwise idle machine: the load averages at the start and the end are in
the report. ``--smoke`` (batch sizes 1 and 2, one step, one run, 16 calibration photos) only checks that the
benchmark works.

    python benchmarks/onnx_speed.py --json benchmarks/onnx_results.json
    python benchmarks/onnx_speed.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import env  # noqa: E402  (after the sys.path set-up above)
from benchmarks.measure import stats  # noqa: E402

SHARED = Path(os.environ.get("IF3D_SHARED", REPO_ROOT.parent / "shared"))
VARIANTS = ("pytorch", "onnx_fp32", "onnx_int8")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", default="default", help="the PyTorch model (default: the shipped one)")
    p.add_argument("--photos", type=Path, default=SHARED / "data" / "fer2013" / "test",
                   help="face photos (recursive) timed on and calibrated on")
    p.add_argument("--fp32", type=Path, help="an exported fp32 .onnx of --checkpoint (default: export one)")
    p.add_argument("--int8-file", type=Path, help="an exported int8 .onnx of --checkpoint (default: export one)")
    p.add_argument("--int8", choices=("static", "dynamic"), default="static", help="quantisation of the export")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=2, help="CPU threads of torch and ONNX Runtime")
    p.add_argument("--steps", type=int, default=20, help="batches per timed run")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per variant and batch size")
    p.add_argument("--warmup", type=int, default=3, help="untimed batches first")
    p.add_argument("--json", type=Path, help="also write the JSON report here")
    p.add_argument("--smoke", action="store_true", help="batch sizes 1 and 2, one step, one run: check that it works")
    return p


def _models(args, folder: Path) -> dict[str, Any]:
    from if3d.export import export_onnx
    from networks.weights import build_model_from_checkpoint

    fp32, int8 = args.fp32, args.int8_file
    calibration = 16 if args.smoke else 64
    if fp32 is None:
        fp32 = export_onnx(args.checkpoint, folder / "fp32.onnx", photos=args.photos).path
    if int8 is None:
        int8 = export_onnx(args.checkpoint, folder / "int8.onnx", int8=args.int8, photos=args.photos,
                           calibration_photos=calibration).path
    return {"pytorch": build_model_from_checkpoint(args.checkpoint)[0].float().eval(),
            "onnx_fp32": build_model_from_checkpoint(fp32)[0], "onnx_int8": build_model_from_checkpoint(int8)[0],
            "files": {"onnx_fp32": str(fp32), "onnx_int8": str(int8)},
            "bytes": {"onnx_fp32": os.path.getsize(fp32), "onnx_int8": os.path.getsize(int8)}}


def _ms_per_face(model, x, steps: int, repeats: int, warmup: int) -> list[float]:
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            model(x)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                model(x)
            runs.append((time.perf_counter() - start) * 1000 / (steps * x.shape[0]))
    return runs


def main(argv=None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.steps, args.repeats, args.warmup = [1, 2], 1, 1, 0
    if not args.photos.is_dir():
        print(f"error: {args.photos}: no such folder (set IF3D_SHARED or pass --photos)", file=sys.stderr)
        return 2
    if min(args.batch_sizes) < 1 or min(args.threads, args.steps, args.repeats) < 1 or args.warmup < 0:
        print("error: batch sizes, --threads, --steps and --repeats must be >= 1, --warmup >= 0", file=sys.stderr)
        return 2
    import torch

    from if3d.export import verification_inputs

    torch.set_num_threads(args.threads)
    started, load_start = time.time(), env.load_average()
    results = []
    with tempfile.TemporaryDirectory(prefix="if3d_bench_onnx_") as tmp:
        models = _models(args, Path(tmp))
        spec = models["pytorch"].backbone_spec
        for batch in args.batch_sizes:
            check, _ = verification_inputs(("photo",), spec.input_size, spec.mean, spec.std, photos=args.photos,
                                           count=batch)
            x = check[-1][0]
            with torch.inference_mode():
                reference = models["pytorch"](x).logits.argmax(1)
            for variant in VARIANTS:
                model = models[variant]
                with torch.inference_mode():
                    agreement = float((model(x).logits.argmax(1) == reference).float().mean())
                ms = stats(_ms_per_face(model, x, args.steps, args.repeats, args.warmup))
                results.append({"variant": variant, "batch_size": int(x.shape[0]), "ms_per_face": ms,
                                "same_class_as_pytorch": agreement})
                print(f"{variant:>9} batch {x.shape[0]:>3}: {ms['median']:8.3f} ms/face (min {ms['min']:.3f}, max "
                      f"{ms['max']:.3f}); same class as PyTorch on {agreement:.0%} of {x.shape[0]} photos", flush=True)
        report = {
            "benchmark": "onnx_speed", "smoke": args.smoke, "checkpoint": args.checkpoint, "photos": str(args.photos),
            "int8": args.int8, "files": models["files"], "bytes": models["bytes"], "threads": args.threads,
            "steps": args.steps, "repeats": args.repeats, "warmup": args.warmup, "load_average_start": load_start,
            "load_average_end": env.load_average(), "seconds": round(time.time() - started, 1),
            "environment": env.environment(), "results": results,
        }
    text = json.dumps(report, indent=2)
    if args.json:
        from if3d.atomic import atomic_write_text

        atomic_write_text(args.json, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
