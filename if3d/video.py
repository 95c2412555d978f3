"""Video expression recognition at the command line: frame attention plots, your own videos, Emotion-FAN weights.

``python -m if3d.video attention --checkpoint CKPT --data ROOT [--split S] --clip CLIP [--clip CLIP ...]``
    runs a video model (``fan_self``, ``fan_relation``, ``fan_baseline``) on chosen clips of a video dataset
    and writes, per clip, ``<clip>_attention.png`` (bars of the self-attention and final weights of every
    frame, as the figure of Emotion-FAN's paper) and ``<clip>_attention.csv`` (frame, α, β, final weight),
    plus ``attention.json`` (prediction, class probabilities); ``--clip all`` takes every clip of the split.
``python -m if3d.video predict --checkpoint CKPT --video FILE [FILE ...] [--fps F]``
    decodes your own videos (OpenCV), aligns the face of every frame (MediaPipe, as the converters do), and
    prints each video's expression with its probabilities; writes ``<video>_attention.png``/``.csv`` and
    ``predictions.json`` to ``--out``. Frames without a face are left out and counted.
``python -m if3d.video convert-checkpoint --emotion-fan FILE --attention relation --classes afew --out CKPT``
    turns a trained Emotion-FAN checkpoint (``{'state_dict': {'module.conv1.weight', ..., 'module.alpha.0.*',
    'module.beta.0.*', 'module.pred_fc1.*', 'module.pred_fc2.*'}}``) into the toolkit's checkpoint format with
    Emotion-FAN's class names, so the test script (``affectnet_fusion_test.py``) evaluates it on any clip
    dataset (classes matched by name) and ``attention``/``predict`` use it; ``--faithful`` (default on) keeps
    Emotion-FAN's [0, 1] inputs and its evaluation formula.

Exit status: 0 done, 2 bad options, input or checkpoint (one line naming it), 130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from if3d.atomic import atomic_write_json, atomic_write_text
from if3d.console import HelpFormatter, command_name, exit_status

if TYPE_CHECKING:
    import torch

__all__ = ["clip_attention", "convert_emotion_fan_checkpoint", "main", "predict_videos", "write_attention"]

EXIT_STATUS = {0: "done", 2: "bad options, input or checkpoint (the message names it)", 130: "interrupted"}


def _load(checkpoint: str, device: str):
    from if3d.evaluate import checkpoint_class_names
    from if3d.runtime import RuntimeConfig, resolve_runtime
    from if3d.runtime.distributed import init_distributed
    from networks.weights import build_model_from_checkpoint

    info = init_distributed(device)
    model, report = build_model_from_checkpoint(checkpoint)
    if report.source == "onnx":
        raise ValueError(f"{checkpoint}: an exported ONNX model gives the clip's logits only, not the frame attention "
                         "weights this command writes; give its PyTorch checkpoint (the test script evaluates the "
                         "ONNX file)")
    if "clip" not in getattr(model, "input_streams", ()):
        raise ValueError(f"{checkpoint}: a {type(model).__name__} is not a video model (fan_self, fan_relation, "
                         "fan_baseline)")
    names = checkpoint_class_names(getattr(report, "metadata", {}), int(model.num_classes))
    runtime = resolve_runtime(RuntimeConfig(device=str(info.device), channels_last=False), info.device)
    return model.to(info.device).eval(), names, info, runtime


def clip_attention(model: torch.nn.Module, batch: dict, prepare) -> list[dict[str, Any]]:
    """Run a video model on a collated clip batch and return, per clip, its frame weights and prediction.

    Args:
        model: a :class:`~networks.video.FrameAttentionNet` in eval mode.
        batch: a batch of :func:`if3d.data.clips.collate_clips` (``clip`` uint8 [B, T, 3, S, S], ``frame_mask``).
        prepare: the model's :class:`~if3d.runtime.batches.BatchPreparer` (normalisation only is used).

    Returns:
        per clip: ``self`` [T] α_i, ``relation`` [T] β_i or None, ``final`` [T] normalised aggregation weights,
        ``self_normalised`` [T] α_i/Σα, ``probabilities`` [C], ``prediction`` (class index); T = its real frames.
    """
    import torch

    with torch.no_grad():
        inputs, _ = prepare(batch, train=False)
        out = model(*inputs)
    probs = out.logits.float().softmax(-1).cpu().numpy()
    mask = out.frame_mask.cpu().numpy()
    alpha = out.self_weights.float().cpu().numpy()
    beta = out.relation_weights.float().cpu().numpy() if out.relation_weights is not None else None
    final = out.final_weights.float().cpu().numpy()
    results = []
    for i in range(probs.shape[0]):
        m = mask[i]
        a = alpha[i][m]
        results.append({"self": a, "relation": beta[i][m] if beta is not None else None, "final": final[i][m],
                        "self_normalised": a / a.sum(), "probabilities": probs[i],
                        "prediction": int(probs[i].argmax())})
    return results


def write_attention(result: dict, frame_labels: Sequence[str], class_names: Sequence[str], out_dir: Path,
                    name: str, label: int | None = None) -> dict:
    """Write ``<name>_attention.png`` and ``<name>_attention.csv`` for one clip's :func:`clip_attention` result.

    Returns:
        the JSON-able summary (prediction, probabilities, files).
    """
    from if3d.plots import plot_frame_attention

    pred = class_names[result["prediction"]]
    truth = f", label {class_names[label]}" if label is not None else ""
    final = result["final"] if result["relation"] is not None else None
    png = plot_frame_attention(result["self_normalised"], final, out_dir / f"{name}_attention.png",
                               frame_labels=frame_labels,
                               title=f"{name}: predicted {pred} ({result['probabilities'].max():.2f}){truth}")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["frame", "self_attention", "relation_attention", "self_normalised", "final_weight"])
    rel = result["relation"]
    for t, f in enumerate(frame_labels):
        w.writerow([f, f"{result['self'][t]:.6f}", "" if rel is None else f"{rel[t]:.6f}",
                    f"{result['self_normalised'][t]:.6f}", f"{result['final'][t]:.6f}"])
    atomic_write_text(out_dir / f"{name}_attention.csv", buf.getvalue())
    return {"prediction": pred, "probabilities": {c: float(p) for c, p in zip(class_names, result["probabilities"])},
            "label": class_names[label] if label is not None else None, "plot": str(png),
            "frames": len(frame_labels)}


def _attention(args) -> int:
    from if3d.data.source import SplitSource, open_split
    from if3d.evaluate import default_split
    from if3d.runtime import BatchPreparer

    model, names, info, runtime = _load(args.checkpoint, args.device)
    split = args.split or default_split(args.data)
    dataset = open_split(SplitSource.from_root(args.data, split), image_size=args.image_size,
                         streams=model.input_streams, skip_missing_renders=args.skip_missing_renders)
    names_seen: dict[str, list[int]] = {}
    for i, rel in enumerate(dataset.clip_paths):
        names_seen.setdefault(Path(rel).name, []).append(i)
    ids = {rel: i for i, rel in enumerate(dataset.clip_paths)}  # "<label>/<clip>" always works
    ids.update({name: idx[0] for name, idx in names_seen.items() if len(idx) == 1})  # "<clip>" when unique
    wanted = list(dataset.clip_paths) if args.clip == ["all"] else args.clip
    unknown = [c for c in wanted if c not in ids]
    if unknown:
        raise ValueError(f"no clip {', '.join(unknown)} in {args.data} [{split}] (clips: {', '.join(list(ids)[:10])}"
                         f"{' …' if len(ids) > 10 else ''})")
    prepare = BatchPreparer.for_model(model, info.device, False, augment=False, image_size=args.image_size)
    out_dir = Path(args.out or f"attention/{Path(args.data).name}_{split}")
    data_names = list(dataset.class_names)
    summary = {}
    for clip in wanted:
        i = ids[clip]
        result = clip_attention(model, dataset[[i]], prepare)[0]
        frames = [Path(f).stem for f in dataset.frame_names[i]]
        label = int(dataset.labels[i])
        label_in_model = names.index(data_names[label]) if data_names[label] in names else None
        summary[clip] = write_attention(result, frames, names, out_dir, clip.replace("/", "_"), label_in_model)
        print(f"{clip}: {summary[clip]['prediction']} (label {data_names[label]}) -> {summary[clip]['plot']}")
    atomic_write_json(out_dir / "attention.json", summary)
    return 0


def predict_videos(checkpoint: str, videos: Sequence[str], *, fps: float | None = None, out: str | None = None,
                   device: str = "auto", image_size: int = 112, align_size: int = 224, margin: float = 0.25,
                   verbose: bool = True) -> dict[str, dict]:
    """Expression of each of your own videos with a video model: decode, align every frame, classify.

    Args:
        checkpoint: a video model checkpoint (ours, or one made by ``convert-checkpoint``).
        videos: video files (any format OpenCV's FFmpeg reads).
        fps: frames kept per second (default: every frame).
        out: folder for ``predictions.json`` and the attention plots (default ``predictions/``).
        image_size: model input side; align_size, margin: the face crop (as the converters).

    Returns:
        ``{video: {"prediction", "probabilities", "frames", "faceless_frames", "plot"}}``.

    Raises:
        ValueError: not a video model, a model that needs renders, or a video without any face.
        if3d.io.report.DataError: a video that cannot be decoded.
    """
    import torch
    from torchvision.transforms.v2 import functional as TF

    from if3d.data.converters.align import align_face, detect_landmarks
    from if3d.data.converters.base import _landmarker
    from if3d.data.converters.video import read_video_frames
    from if3d.runtime import BatchPreparer

    model, names, info, _ = _load(checkpoint, device)
    if "render_clip" in model.input_streams:
        raise ValueError(f"{checkpoint}: this model fuses every frame with its render; convert the video "
                         "(python -m if3d.data convert --format video), render its frames and use 'attention'")
    prepare = BatchPreparer.for_model(model, info.device, False, augment=False, image_size=image_size)
    out_dir = Path(out or "predictions")
    summary = {}
    for video in videos:
        frames, numbers, faceless = [], [], 0
        for n, rgb in read_video_frames(video, fps):
            pts = detect_landmarks(_landmarker(), rgb)
            if pts is None:
                faceless += 1
                continue
            face = torch.from_numpy(align_face(rgb, pts, align_size, margin)).permute(2, 0, 1)
            frames.append(TF.resize(face, [image_size, image_size], antialias=True))
            numbers.append(f"{n:06d}")
        if not frames:
            raise ValueError(f"{video}: no frame with a face ({faceless} frames)")
        clip = torch.stack(frames)[None]
        batch = {"clip": clip, "frame_mask": torch.ones(1, clip.shape[1], dtype=torch.bool),
                 "label": torch.zeros(1, dtype=torch.int64)}
        result = clip_attention(model, batch, prepare)[0]
        entry = write_attention(result, numbers, names, out_dir, Path(video).stem)
        entry["faceless_frames"] = faceless
        summary[str(video)] = entry
        if verbose:
            probs = ", ".join(f"{c} {p:.2f}" for c, p in sorted(entry["probabilities"].items(), key=lambda kv: -kv[1]))
            print(f"{video}: {entry['prediction']}  ({probs}); {len(frames)} frames with a face, {faceless} without")
    atomic_write_json(out_dir / "predictions.json", summary)
    return summary


def convert_emotion_fan_checkpoint(src: str, out: str, *, attention: str = "relation", classes: str = "afew",
                                   faithful: bool = True) -> Path:
    """Write a trained Emotion-FAN checkpoint as one of ours (``fan_self`` / ``fan_relation``, strict key check).

    Args:
        src: Emotion-FAN's file (``{'state_dict': {'module.…'}}``, from its ``util.save_checkpoint``).
        out: our checkpoint to write (atomically).
        attention: ``"self"`` (at_type 0) or ``"relation"`` (at_type 1): the file holds both heads.
        classes: ``"afew"`` or ``"ckplus"``: Emotion-FAN's class order of the file (:data:`networks.video.
            EMOTION_FAN_CLASSES`).
        faithful: Emotion-FAN's inputs and evaluation formula (see :mod:`networks.video`).

    Raises:
        ValueError: bad ``attention``/``classes``; plus what :func:`networks.load_weights` raises.
    """
    import networks
    from if3d.checkpoint import make_checkpoint, save_checkpoint
    from networks.video import EMOTION_FAN_CLASSES

    if attention not in ("self", "relation"):
        raise ValueError(f"attention must be self or relation, got {attention!r}")
    if classes not in EMOTION_FAN_CLASSES:
        raise ValueError(f"classes must be one of {', '.join(EMOTION_FAN_CLASSES)}, got {classes!r}")
    kwargs = {"num_classes": len(EMOTION_FAN_CLASSES[classes]), "faithful": bool(faithful)}
    name = f"fan_{attention}"
    model = networks.create_model(name, **kwargs)
    report = networks.load_weights(model, src)
    ck = make_checkpoint(model_name=name, model_kwargs=kwargs, model_state=model.state_dict(),
                         class_names=list(EMOTION_FAN_CLASSES[classes]),
                         metrics={"converted_from": str(src), "load_report": str(report).splitlines()[0]})
    return save_checkpoint(ck, out)


def build_parser() -> argparse.ArgumentParser:
    common = {"formatter_class": HelpFormatter, "epilog": exit_status(EXIT_STATUS)}
    p = argparse.ArgumentParser(prog=command_name("python -m if3d.video"), description=__doc__.split("\n\n")[0],
                                **common)
    sub = p.add_subparsers(dest="command", required=True)
    checkpoint = "a video model checkpoint (fan_self, fan_relation, fan_baseline; ours or made by convert-checkpoint)"
    image_size = "side of the model's input frames in pixels"
    device = "auto, cpu, cuda or cuda:N"
    a = sub.add_parser("attention", help="frame attention plots of chosen clips of a video dataset", **common)
    a.add_argument("--checkpoint", required=True, help=checkpoint)
    a.add_argument("--data", required=True, help="video dataset root (clips/<split>/...)")
    a.add_argument("--split", help="split (default: test, else val)")
    a.add_argument("--clip", action="append", required=True,
                   help="clip folder name, or <label>/<clip> (repeat; 'all' for every clip)")
    a.add_argument("--out", help="output folder (default attention/<data>_<split>)")
    a.add_argument("--image-size", type=int, default=112, help=image_size)
    a.add_argument("--skip-missing-renders", action="store_true", help="leave out (and count) frames without a render")
    a.add_argument("--device", default="auto", help=device)
    a.set_defaults(func=_attention)
    v = sub.add_parser("predict", help="the expression of your own videos", **common)
    v.add_argument("--checkpoint", required=True, help=checkpoint)
    v.add_argument("--video", action="append", required=True, help="video file (repeat for several)")
    v.add_argument("--fps", type=float, help="frames kept per second (default: every frame)")
    v.add_argument("--out", help="output folder (default predictions/)")
    v.add_argument("--image-size", type=int, default=112, help=image_size)
    v.add_argument("--device", default="auto", help=device)
    v.set_defaults(func=_predict)
    c = sub.add_parser("convert-checkpoint", help="a trained Emotion-FAN checkpoint as one of ours", **common)
    c.add_argument("--emotion-fan", required=True, help="Emotion-FAN's checkpoint file")
    c.add_argument("--attention", choices=("self", "relation"), required=True, help="at_type 0 (self) or 1 (relation)")
    c.add_argument("--classes", choices=("afew", "ckplus"), required=True, help="the file's class order")
    c.add_argument("--out", required=True, help="our checkpoint to write")
    c.add_argument("--faithful", action=argparse.BooleanOptionalAction, default=True,
                   help="Emotion-FAN's [0, 1] inputs and evaluation formula (default on)")
    c.set_defaults(func=_convert)
    return p


def _predict(args) -> int:
    predict_videos(args.checkpoint, args.video, fps=args.fps, out=args.out, device=args.device,
                   image_size=args.image_size)
    return 0


def _convert(args) -> int:
    path = convert_emotion_fan_checkpoint(args.emotion_fan, args.out, attention=args.attention, classes=args.classes,
                                          faithful=args.faithful)
    print(f"wrote {path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (:data:`EXIT_STATUS`: 0 done, 2 bad options, input or checkpoint,
    130 interrupted)."""
    args = build_parser().parse_args(argv)
    if getattr(args, "image_size", 1) < 1:
        print("error: --image-size must be >= 1", file=sys.stderr)
        return 2
    from if3d.console import one_line_errors, writing_to

    return writing_to(args.out or None, f"if3d-video {args.command}", lambda: one_line_errors(lambda: args.func(args)))


if __name__ == "__main__":
    sys.exit(main())

