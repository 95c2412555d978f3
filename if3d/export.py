"""A trained model as an ONNX file that runs without PyTorch, checked against PyTorch before it is kept.

``python -m if3d.export --checkpoint default|CKPT --out FILE.onnx [--int8] [--opset N] [--photos DIR]``

The model that ``networks.build_model_from_checkpoint`` builds from the checkpoint (any registered image model:
DDAMFN and the zoo's photo-only models, the four If3D two-stream fusions with the inputs ``photo`` and
``render``, the Emotion-FAN video models with ``clip`` and ``frame_mask``) is traced by torch's ONNX exporter
(``torch.onnx.export``, the TorchScript-based exporter by default; ``--dynamo`` uses the ``torch.export``-based
one) with a dynamic batch axis (and a dynamic frame axis for clips). The graph gives the raw ``logits`` [B, C]
(and ``valence``, ``arousal`` [B] when the model predicts them); the input size, channel order (RGB), mean/std
normalisation, input streams, class names, temperature and flip-averaging policy
(:class:`networks.inference.InferencePolicy`) go into the file's ``metadata_props``
(:mod:`networks.onnx_runtime` lists the keys). The toolkit runs such a file wherever it takes a checkpoint.

Before the file is kept (it is written to a temporary file and moved into place, :func:`if3d.atomic.atomic_write`)
ONNX Runtime runs it on seeded random inputs at batch 1 and 3 and on real face photos (``--photos DIR``, images
found recursively, read with the toolkit's preprocessing: :func:`if3d.data.dataset.load_image` and
:func:`if3d.data.transforms.normalize`; a fusion model gets each photo as its render too), and its logits must
be within ``--tolerance`` (max abs difference, default 1e-4) of PyTorch's; otherwise nothing is written.

``--int8``: ONNX Runtime's dynamic quantisation (``onnxruntime.quantization.quantize_dynamic``: int8 weights,
activations quantised per batch at run time; convolutions become ``ConvInteger``). The command prints the size
of both files and the share of the verification photos on which int8 and fp32 predict the same class.

Models that cannot be exported, with a one-line error: models reading inputs other than images and clips
(landmarks, FLAME parameters, voxel grids: ``ddamfn_landmarks``, ``if3d_landmarks``, ``landmark_*``,
``flame_mlp``, ``voxel_cnn``, ``distance_cnn``), models without expression logits (the AU regressor), and any
model whose forward torch's exporter refuses (the message gives the exporter's reason).

Exit status: 0 written, 2 bad options, checkpoint, photos, a model that cannot be exported or an export that
differs from PyTorch (one line naming it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from if3d.atomic import TMP_SUFFIX, atomic_write
from if3d.console import HelpFormatter, command_name, exit_status

if TYPE_CHECKING:
    import torch

__all__ = ["ExportResult", "export_onnx", "main", "verification_inputs"]

EXIT_STATUS = {0: "written", 2: "bad options, checkpoint or photos, a model that cannot be exported or an export "
                  "that differs from PyTorch (the message names it)", 130: "interrupted"}
DEFAULT_OPSET = 17
DEFAULT_TOLERANCE = 1e-4
DEFAULT_REL_TOLERANCE = 1e-5
IMAGE_STREAMS = ("photo", "render")
CLIP_STREAMS = ("clip", "render_clip", "frame_mask")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: frames of the example clips the exporter traces and the verification runs
EXAMPLE_FRAMES = 4


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and measured.

    Attributes:
        path: the ONNX file.
        bytes: its size; ``fp32_bytes``: the size of the fp32 export (equal without ``int8``).
        max_abs_diff: max |logits ONNX fp32 − logits PyTorch| over the verification inputs; ``bound``: the largest
            accepted.
        verified_photos: real photos in the verification (0: random inputs only).
        int8_agreement: share of the verification photos where the int8 model predicts fp32's class (None
            without ``int8`` or photos).
        metadata: the file's ``metadata_props``.
    """

    path: Path
    bytes: int
    fp32_bytes: int
    max_abs_diff: float
    bound: float
    verified_photos: int
    int8_agreement: float | None
    metadata: dict[str, str]


class _Graph:
    """Builds the module torch's exporter traces: the model's forward with its output fields as a tuple."""

    @staticmethod
    def wrap(model: torch.nn.Module, outputs: Sequence[str]) -> torch.nn.Module:
        import torch

        class ExportedForward(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *inputs):
                out = self.model(*inputs)
                return tuple(getattr(out, k) for k in outputs)

        return ExportedForward().eval()


def _photo_files(photos: str | os.PathLike, count: int) -> list[Path]:
    """``count`` image files of the folder ``photos`` (recursive), spread evenly over its sorted list (so over its
    class folders, not the first one only)."""
    root = Path(photos)
    if not root.is_dir():
        raise FileNotFoundError(f"--photos {root}: no such folder")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"--photos {root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in it")
    step = max(1, len(files) // count)
    return files[::step][:count]


def _as_inputs(images: torch.Tensor, streams: Sequence[str]) -> tuple[torch.Tensor, ...]:
    """Normalised images [N, 3, S, S] as the model's inputs: each photo is its own render too (the verification
    compares two runtimes, not renders); for a video model clips of :data:`EXAMPLE_FRAMES` consecutive images
    (the images repeated when there are fewer) and an all-True ``frame_mask``."""
    import torch

    if any(s in CLIP_STREAMS for s in streams):
        n = max(1, images.shape[0] // EXAMPLE_FRAMES)
        frames = images.repeat(-(-n * EXAMPLE_FRAMES // images.shape[0]), 1, 1, 1)[: n * EXAMPLE_FRAMES]
        clip = frames.reshape(n, EXAMPLE_FRAMES, *images.shape[1:])
        values = {"clip": clip, "render_clip": clip, "frame_mask": torch.ones(n, EXAMPLE_FRAMES, dtype=torch.bool)}
    else:
        values = {"photo": images, "render": images}
    return tuple(values[s] for s in streams)


def verification_inputs(streams: Sequence[str], size: int, mean, std, *, photos: str | os.PathLike | None = None,
                        count: int = 8, calibration: int = 0, batch: int = 2,
                        seed: int = 0) -> tuple[list[tuple[torch.Tensor, ...]], list[tuple[torch.Tensor, ...]]]:
    """The inputs an export is checked on (seeded normal noise, and real photos when given) and calibrated on.

    Args:
        streams: the model's inputs in order (:data:`IMAGE_STREAMS`, :data:`CLIP_STREAMS`).
        size: S, the side of the images; mean, std: their normalisation (pixels in [0, 1]).
        photos: a folder of face images (recursive), read with the toolkit's preprocessing
            (:func:`if3d.data.dataset.load_image`, :func:`if3d.data.transforms.normalize`); inputs made by
            :func:`_as_inputs`.
        count: photos for the check; calibration: further photos, none of the check's, for int8 calibration.
        batch: batch size of the random inputs.

    Returns:
        ``(check, calibration)``: lists of tuples of tensors in stream order. ``check``: random at ``batch`` and at
        1 (the dynamic batch axis), then the ``count`` photos as one batch; ``calibration``: batches of at most 16
        photos (empty without ``photos``).

    Raises:
        FileNotFoundError: ``photos`` is not a folder or holds no images; CorruptImageError (a ValueError):
            an unreadable image (the message names it).
    """
    import torch

    from if3d.data.dataset import load_image
    from if3d.data.transforms import normalize

    generator = torch.Generator().manual_seed(seed)
    check = [_as_inputs(torch.randn(b, 3, size, size, generator=generator), streams) for b in (batch, 1)]
    calib: list[tuple[torch.Tensor, ...]] = []
    if photos is not None:
        files = _photo_files(photos, count + calibration)
        chosen = files[::max(1, len(files) // count)][:count] if calibration else files
        rest = [f for f in files if f not in chosen][:calibration]

        def read(fs: Sequence[Path]) -> torch.Tensor:
            return normalize(torch.stack([load_image(f, size) for f in fs]), tuple(mean), tuple(std))

        check.append(_as_inputs(read(chosen), streams))
        calib = [_as_inputs(read(rest[i:i + 16]), streams) for i in range(0, len(rest), 16)]
    return check, calib


def _check_exportable(model: torch.nn.Module, streams: Sequence[str], name: str,
                      inputs: Sequence[Any]) -> tuple[list[str], int]:
    """The output names of an exportable classifier (``logits``, then ``valence``/``arousal`` when predicted) and
    its number of classes.

    Raises:
        ValueError: inputs other than images and clips, or no expression logits.
    """
    import torch

    other = [s for s in streams if s not in IMAGE_STREAMS + CLIP_STREAMS]
    if other:
        raise ValueError(f"{name} reads {', '.join(other)}; the ONNX export takes models whose inputs are face "
                         "images (photo, render) or clips (clip, render_clip, frame_mask)")
    with torch.no_grad():
        probe = model(*inputs)
    if not isinstance(getattr(probe, "logits", None), torch.Tensor):
        raise ValueError(f"{name} gives no expression logits (its output: {type(probe).__name__}); the ONNX "
                         "export takes expression classifiers")
    return (["logits", *(k for k in ("valence", "arousal") if isinstance(getattr(probe, k, None), torch.Tensor))],
            int(probe.logits.shape[1]))


def _export_graph(graph: torch.nn.Module, example: tuple, streams: Sequence[str], outputs: Sequence[str], path: str,
                  opset: int, dynamo: bool, name: str) -> None:
    import torch

    axes = {s: ({0: "batch", 1: "frames"} if s in CLIP_STREAMS else {0: "batch"}) for s in streams}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            if dynamo:
                batch, frames = torch.export.Dim("batch", min=1), torch.export.Dim("frames", min=1)
                shapes = tuple({0: batch, 1: frames} if s in CLIP_STREAMS else {0: batch} for s in streams)
                torch.onnx.export(graph, example, path, input_names=list(streams), output_names=list(outputs),
                                  opset_version=opset, dynamo=True, dynamic_shapes=(shapes,), external_data=False,
                                  verbose=False)
            else:
                torch.onnx.export(graph, example, path, input_names=list(streams), output_names=list(outputs),
                                  opset_version=opset, dynamo=False, do_constant_folding=True,
                                  dynamic_axes={**axes, **{k: {0: "batch"} for k in outputs}})
    except Exception as exc:  # the exporter raises many kinds (TorchExportError, RuntimeError, UnsupportedOperator…)
        raise RuntimeError(f"torch's ONNX exporter cannot export {name}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The exporter's reason on one line: the exception summary of a ``torch.export`` failure, else the first
    line of the message (colour codes removed)."""
    import re

    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in str(exc).splitlines()]
    lines = [ln for ln in lines if ln]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1:]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _write_metadata(path: str, metadata: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(path)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, path)


def _max_diff(model, onnx_model, inputs) -> tuple[float, float, list]:
    """max |ONNX logits − PyTorch logits|, max |PyTorch logits| over ``inputs``, and the ONNX logits of each."""
    import torch

    diff, scale, logits = 0.0, 0.0, []
    with torch.no_grad():
        for x in inputs:
            ref, got = model(*x).logits.float(), onnx_model(*x).logits
            if got.shape != ref.shape:
                raise RuntimeError(f"the ONNX model gives logits of shape {list(got.shape)}, PyTorch {list(ref.shape)}")
            diff, scale = max(diff, float((got - ref).abs().max())), max(scale, float(ref.abs().max()))
            logits.append(got)
    return diff, scale, logits


def _quantize(fp32: str, path: str, metadata: dict[str, str], method: str, streams: Sequence[str],
              calibration: Sequence[tuple]) -> None:
    """Int8 quantisation of the graph ``fp32`` into ``path`` (``method`` ``static`` or ``dynamic``).

    ``static``: ONNX Runtime's pre-processing (shape inference, graph optimisation), then QDQ quantisation with
    int8 per-channel weights and int8 activations whose ranges are calibrated (min/max) on ``calibration``
    (tuples of inputs in stream order). ``dynamic``: int8 weights, activation ranges computed per batch at run time
    (convolutions become ``ConvInteger``, matrix products ``MatMulInteger``).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method == "dynamic":
        quantize_dynamic(fp32, path, weight_type=QuantType.QInt8)
    else:
        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.batches = iter([{s: x.numpy() for s, x in zip(streams, xs, strict=True)} for xs in calibration])

            def get_next(self):
                return next(self.batches, None)

        fd, pre = tempfile.mkstemp(prefix=f".{Path(path).name}.pre.{os.getpid()}.", suffix=TMP_SUFFIX,
                                   dir=Path(path).parent)
        os.close(fd)
        try:
            quant_pre_process(fp32, pre)
            quantize_static(pre, path, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
        finally:
            os.remove(pre)
    _write_metadata(path, metadata)


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike, *, int8: str | None = None,
                opset: int = DEFAULT_OPSET, photos: str | os.PathLike | None = None, num_photos: int = 8,
                calibration_photos: int = 64, tolerance: float = DEFAULT_TOLERANCE,
                rel_tolerance: float = DEFAULT_REL_TOLERANCE, dynamo: bool = False) -> ExportResult:
    """Export a checkpoint's model to ONNX, verify it with ONNX Runtime, and write it atomically.

    Args:
        checkpoint: any file ``networks.build_model_from_checkpoint`` reads, or ``"default"``.
        out: the ``.onnx`` file to write (its folder is created).
        int8: write the int8 quantisation (``"static"``: QDQ calibrated on ``calibration_photos`` photos of
            ``photos``, which it needs; ``"dynamic"``) of the verified fp32 graph instead of the fp32 graph.
        opset: ONNX opset version.
        photos: folder of real face photos for the verification and the calibration (module docstring); None:
            random inputs only.
        num_photos: photos of it in the verification.
        tolerance, rel_tolerance: the fp32 ONNX logits must be within ``max(tolerance, rel_tolerance × M)`` of
            PyTorch's (max abs difference), M the largest |logit|: float32 rounding grows with the logits'
            magnitude (a DAN with random weights gives logits near 300, and PyTorch's own float32 forward then
            differs from its float64 forward by 3e-4); trained models' logits (|z| < 10) keep the 1e-4 bound.
        dynamo: use the ``torch.export``-based exporter instead of the TorchScript-based one.

    Returns:
        :class:`ExportResult`.

    Raises:
        ValueError: a model that reads inputs other than images and clips or gives no logits, bad arguments.
        RuntimeError: torch's exporter refuses the model, or the ONNX logits differ from PyTorch's by more than
            ``tolerance`` (nothing is written then).
        FileNotFoundError, CheckpointFormatError, …: as ``build_model_from_checkpoint`` and
            :func:`verification_inputs`.
    """
    import torch

    from if3d.evaluate import checkpoint_class_names
    from if3d.runtime import model_streams
    from networks.inference import InferencePolicy
    from networks.onnx_runtime import load_onnx_model, onnx_metadata
    from networks.weights import build_model_from_checkpoint

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise ValueError(f"--out {out}: the file name must end in .onnx (the toolkit recognises ONNX models by it)")
    if not (tolerance > 0 and rel_tolerance >= 0 and opset >= 7 and num_photos >= 1 and calibration_photos >= 1):
        raise ValueError("need --tolerance > 0, --rel-tolerance >= 0, --opset >= 7, --num-photos >= 1 and --calibration-photos >= 1")
    if int8 not in (None, "static", "dynamic"):
        raise ValueError(f"--int8 must be static or dynamic, got {int8!r}")
    if int8 == "static" and photos is None:
        raise ValueError("--int8 static calibrates the activations on real faces: give --photos DIR (or --int8 "
                         "dynamic, which needs none)")
    model, report = build_model_from_checkpoint(checkpoint)
    if report.source == "onnx":
        raise ValueError(f"{checkpoint}: already an ONNX model; export from the PyTorch checkpoint")
    model = model.float().eval()
    meta = dict(report.metadata)
    name = str(meta.get("model_name") or type(model).__name__)
    streams = model_streams(model)
    spec = getattr(model, "backbone_spec", None)
    size = int(spec.input_size) if spec is not None else 112
    mean, std = (spec.mean, spec.std) if spec is not None else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    if any(s not in IMAGE_STREAMS + CLIP_STREAMS for s in streams):  # refused before any photo is read
        _check_exportable(model, streams, name, ())
    inputs, calibration = verification_inputs(streams, size, mean, std, photos=photos, count=num_photos,
                                              calibration=calibration_photos if int8 == "static" else 0)
    outputs, num_classes = _check_exportable(model, streams, name, inputs[0])
    policy = getattr(model, "inference_policy", None) or InferencePolicy()
    quantization = {None: "none", "dynamic": "dynamic int8 (onnxruntime quantize_dynamic, int8 weights)",
                    "static": f"static int8 QDQ (onnxruntime quantize_static, per-channel int8 weights, int8 "
                              f"activations calibrated on {calibration_photos} photos)"}[int8]
    metadata = onnx_metadata(model_name=name, model_kwargs=meta.get("model_kwargs") or {}, input_streams=list(streams),
                             outputs=outputs, class_names=checkpoint_class_names(meta, num_classes), image_size=size,
                             mean=mean, std=std, inference=policy.to_dict(), quantization=quantization)
    measured: dict[str, Any] = {"agreement": None}

    def write(tmp: str) -> None:
        fp32 = tmp
        if int8:  # the verified fp32 graph is quantised into tmp from a second temporary file
            fd, fp32 = tempfile.mkstemp(prefix=f".{out.name}.fp32.{os.getpid()}.", suffix=TMP_SUFFIX, dir=out.parent)
            os.close(fd)
        try:
            _export_graph(_Graph.wrap(model, outputs), inputs[0], streams, outputs, fp32, opset, dynamo, name)
            _write_metadata(fp32, {**metadata, "quantization": "none"})
            diff, scale, logits = _max_diff(model, load_onnx_model(fp32)[0], inputs)
            bound = max(tolerance, rel_tolerance * scale)
            if not diff <= bound:
                raise RuntimeError(f"{out}: not written: the ONNX logits differ from PyTorch's by {diff:.3g} (max "
                                   f"abs) > {bound:.3g} (tolerance {tolerance:g}, or {rel_tolerance:g} × the largest "
                                   f"|logit| {scale:.3g})")
            measured.update(diff=diff, bound=bound, fp32_bytes=os.path.getsize(fp32))
            if int8:
                _quantize(fp32, tmp, metadata, int8, streams, calibration)
                quantized = load_onnx_model(tmp)[0]
                with torch.no_grad():
                    got = [quantized(*x).logits for x in inputs]  # it loads and runs on every verification input
                if photos is not None:
                    measured["agreement"] = float((got[-1].argmax(1) == logits[-1].argmax(1)).float().mean())
        finally:
            if int8 and os.path.exists(fp32):
                os.remove(fp32)

    atomic_write(out, write)
    return ExportResult(path=out, bytes=out.stat().st_size, fp32_bytes=measured["fp32_bytes"],
                        max_abs_diff=measured["diff"], bound=measured["bound"], verified_photos=num_photos if photos is not None else 0,
                        int8_agreement=measured["agreement"], metadata=metadata)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("python -m if3d.export"), description=__doc__.split("\n\n")[0],
                                epilog=exit_status(EXIT_STATUS), formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="CKPT",
                   help="checkpoint file, or 'default': the expression model that ships with the toolkit")
    p.add_argument("--out", required=True, metavar="FILE.onnx", help="the ONNX file to write")
    p.add_argument("--int8", nargs="?", const="static", choices=("static", "dynamic"),
                   help="int8 quantisation: static (QDQ, activations calibrated on --photos; the default of a bare "
                   "--int8) or dynamic (onnxruntime quantize_dynamic)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    p.add_argument("--photos", metavar="DIR", help="folder of face photos the export is verified on (recursive; "
                   "without it: random inputs only)")
    p.add_argument("--num-photos", type=int, default=8, help="photos of --photos in the verification")
    p.add_argument("--calibration-photos", type=int, default=64,
                   help="further photos of --photos that --int8 static calibrates on")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help="largest accepted max abs difference of the fp32 ONNX logits from PyTorch's (or --rel-tolerance "
                   "× the largest |logit|, whichever is larger)")
    p.add_argument("--rel-tolerance", type=float, default=DEFAULT_REL_TOLERANCE,
                   help="accepted difference per unit of the largest |logit| (float32 rounding grows with it)")
    p.add_argument("--dynamo", action="store_true", help="torch's torch.export-based exporter (slower to export) "
                   "instead of the TorchScript-based one")
    return p


def _run(args: argparse.Namespace) -> int:
    r = export_onnx(args.checkpoint, args.out, int8=args.int8, opset=args.opset, photos=args.photos,
                    num_photos=args.num_photos, calibration_photos=args.calibration_photos, tolerance=args.tolerance,
                    rel_tolerance=args.rel_tolerance, dynamo=args.dynamo)
    checked = f"{r.verified_photos} photos of {args.photos} and random inputs" if r.verified_photos else \
        "random inputs only (--photos DIR checks real faces)"
    streams = ", ".join(json.loads(r.metadata["input_streams"]))
    print(f"wrote {r.path} ({r.bytes / 2**20:.2f} MiB; {r.metadata['model_name']}, inputs {streams}); fp32 logits "
          f"within {r.max_abs_diff:.2g} of PyTorch's on {checked}")
    if args.int8:
        agree = f"; same class as fp32 on {r.int8_agreement:.0%} of the {r.verified_photos} photos" if r.int8_agreement is not None else ""
        print(f"int8 ({args.int8}): {r.bytes / 2**20:.2f} MiB vs fp32 {r.fp32_bytes / 2**20:.2f} MiB{agree}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m if3d.export`` / ``if3d-export``; returns the exit status (:data:`EXIT_STATUS`)."""
    from if3d.console import one_line_errors

    return one_line_errors(lambda: _run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
