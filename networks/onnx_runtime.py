"""Exported ONNX models run as toolkit models: an ``nn.Module`` around an ``onnxruntime.InferenceSession``.

``python -m if3d.export`` writes a model's forward pass to an ONNX file (ONNX, https://onnx.ai; run by
ONNX Runtime, https://onnxruntime.ai) and records in the file's ``metadata_props`` (string key → string
value) everything a program needs to feed it and read it without PyTorch (:data:`METADATA_KEYS`):

==================  ===========================================================================================
key                 value
==================  ===========================================================================================
``if3d.format``     ``if3d-onnx`` (the file is one of ours), ``if3d.format_version`` ``1``
``model_name``      the registered model (``ddamfn``, ``if3d_gate`` …); ``model_kwargs`` its arguments (JSON)
``input_streams``   JSON list of the graph's inputs in order: ``photo`` (and ``render``) float32 [B, 3, S, S];
                    video models ``clip`` (and ``render_clip``) float32 [B, T, 3, S, S] and ``frame_mask`` bool
                    [B, T] (True on real frames)
``outputs``         JSON list of the graph's outputs: ``logits`` float32 [B, C] (raw, before temperature and
                    softmax), then ``valence`` and ``arousal`` float32 [B] when the model predicts them
``class_names``     JSON list of the C class names, in logit order
``image_size``      S, the side of the square RGB face crops in pixels
``channel_order``   ``RGB``; pixels are ``(x / 255 - mean) / std`` per channel, ``mean``/``std`` JSON lists
``inference``       JSON ``{"temperature": T, "flip_average": bool}``: probabilities are ``softmax(logits / T)``;
                    with ``flip_average`` the logits of the face and of its horizontal mirror are averaged first
``quantization``    ``none``, or how the int8 model was made (``dynamic int8`` …)
==================  ===========================================================================================

:func:`networks.weights.build_model_from_checkpoint` dispatches a ``.onnx`` path to :func:`load_onnx_model`;
the :class:`OnnxModel` it returns takes the inputs the PyTorch model takes and gives an :class:`OnnxOutput`
(``logits`` and, when exported, ``valence``/``arousal``, as torch tensors), with the attributes the toolkit
reads from real models (``input_streams``, ``backbone_spec`` with the input size and normalisation,
``num_classes``, ``inference_policy``, ``clip_frames``), so the test script, the analysis and the video
command run it unchanged. Its threads follow the toolkit's (``torch.get_num_threads()``, read at each call:
the session is rebuilt when it changes); it runs on ONNX Runtime's CPU execution provider.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["METADATA_KEYS", "ONNX_FORMAT", "OnnxModel", "OnnxOutput", "load_onnx_model", "onnx_metadata"]

#: ``if3d.format`` of every ONNX file :mod:`if3d.export` writes.
ONNX_FORMAT = "if3d-onnx"
FORMAT_VERSION = 1
#: the metadata every exported file holds (the table of the module docstring).
METADATA_KEYS = ("if3d.format", "if3d.format_version", "model_name", "model_kwargs", "input_streams", "outputs",
                 "class_names", "image_size", "channel_order", "mean", "std", "inference", "quantization")
#: inputs the exported graph may read (images and clips); their torch dtypes
INPUT_DTYPES = {"photo": np.float32, "render": np.float32, "clip": np.float32, "render_clip": np.float32,
                "frame_mask": np.bool_}


@dataclass
class OnnxOutput:
    """Forward result of an :class:`OnnxModel`.

    Attributes:
        logits: [B, C] float32 raw expression logits (the exported model's ``logits``).
        valence, arousal: [B] float32, or ``None`` when the exported model has no such output.
    """

    logits: Tensor
    valence: Tensor | None = None
    arousal: Tensor | None = None


def onnx_metadata(*, model_name: str, model_kwargs: Mapping[str, Any], input_streams: list[str],
                  outputs: list[str], class_names: list[str], image_size: int, mean: tuple[float, ...],
                  std: tuple[float, ...], inference: Mapping[str, Any], quantization: str = "none") -> dict[str, str]:
    """The ``metadata_props`` of an exported model (keys :data:`METADATA_KEYS`, values strings)."""
    return {
        "if3d.format": ONNX_FORMAT, "if3d.format_version": str(FORMAT_VERSION), "model_name": model_name,
        "model_kwargs": json.dumps(dict(model_kwargs), sort_keys=True, default=str),
        "input_streams": json.dumps(list(input_streams)), "outputs": json.dumps(list(outputs)),
        "class_names": json.dumps([str(c) for c in class_names]), "image_size": str(int(image_size)),
        "channel_order": "RGB", "mean": json.dumps([float(v) for v in mean]),
        "std": json.dumps([float(v) for v in std]), "inference": json.dumps(dict(inference)),
        "quantization": quantization,
    }


def _parse_metadata(props: Mapping[str, str], path: str) -> dict[str, Any]:
    from networks.weights import CheckpointFormatError

    if props.get("if3d.format") != ONNX_FORMAT:
        raise CheckpointFormatError(f"{path}: an ONNX model without the toolkit's metadata (if3d.format "
                                    f"{ONNX_FORMAT!r}); export models with python -m if3d.export")
    missing = [k for k in METADATA_KEYS if k not in props]
    try:
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        meta = {k: json.loads(props[k]) for k in ("model_kwargs", "input_streams", "outputs", "class_names", "mean",
                                                  "std", "inference")}
        meta.update(model_name=props["model_name"], image_size=int(props["image_size"]),
                    quantization=props["quantization"], format_version=int(props["if3d.format_version"]))
        if meta["format_version"] > FORMAT_VERSION:
            raise ValueError(f"format version {meta['format_version']} is newer than this toolkit's {FORMAT_VERSION}")
        unknown = [s for s in meta["input_streams"] if s not in INPUT_DTYPES]
        if unknown or not meta["input_streams"] or not meta["outputs"] or meta["outputs"][0] != "logits":
            raise ValueError(f"inputs {meta['input_streams']} / outputs {meta['outputs']} are not an exported "
                             "classifier's")
    except (ValueError, TypeError) as exc:  # json.JSONDecodeError is a ValueError
        raise CheckpointFormatError(f"{path}: malformed if3d-onnx metadata ({exc})") from None
    return meta


class OnnxModel(nn.Module):
    """An exported classifier run by ONNX Runtime, with the interface of the toolkit's PyTorch models.

    Args:
        path: the ``.onnx`` file (written by ``python -m if3d.export``).
        metadata: its parsed metadata (:func:`load_onnx_model` reads it).
        session: an ``onnxruntime.InferenceSession`` of the file opened with :func:`_open_session` (None: opened
            here).

    Attributes:
        input_streams: the inputs ``forward`` takes, in order (``("photo",)``, ``("photo", "render")`` …).
        backbone_spec: a :class:`~networks.registry.BackboneSpec` with the exported input size and mean/std
            (what the batch preparation and the analysis read).
        num_classes, class_names, model_name, quantization: from the metadata.
        inference_policy: the exported :class:`~networks.inference.InferencePolicy` (only when it is not the
            identity, as for a loaded checkpoint); applied by :func:`networks.inference.predict_logits`.
    """

    def __init__(self, path: str | Path, metadata: Mapping[str, Any], session: Any = None) -> None:
        from networks.inference import InferencePolicy
        from networks.registry import BackboneSpec

        super().__init__()
        self.path = str(path)
        self.input_streams = tuple(metadata["input_streams"])
        self.output_names = list(metadata["outputs"])
        self.class_names = [str(c) for c in metadata["class_names"]]
        self.num_classes = len(self.class_names)
        self.model_name = str(metadata["model_name"])
        self.quantization = str(metadata["quantization"])
        size = int(metadata["image_size"])
        self.backbone_spec = BackboneSpec(input_size=size, mean=tuple(metadata["mean"]), std=tuple(metadata["std"]),
                                          out_channels=0, feature_size=0, weights=f"ONNX model {self.path}")
        clip_frames = metadata["model_kwargs"].get("clip_frames")
        if "clip" in self.input_streams and isinstance(clip_frames, int):
            self.clip_frames = clip_frames
        policy = InferencePolicy(**metadata["inference"])
        if not policy.is_identity:
            self.inference_policy = policy
        self._threads = torch.get_num_threads()
        self._session = session if session is not None else _open_session(self.path, self._threads)

    def forward(self, *inputs: Tensor) -> OnnxOutput:
        """Run the exported graph.

        Args:
            inputs: one tensor per stream of :attr:`input_streams`, on any device (images float [B, 3, S, S]
                normalised as the metadata says, clips float [B, T, 3, S, S], ``frame_mask`` bool [B, T]).

        Returns:
            :class:`OnnxOutput` on the device of the first input (``logits`` float32 [B, C]).

        Raises:
            ValueError: not one input per stream (the message names the streams).
        """
        if len(inputs) != len(self.input_streams):
            raise ValueError(f"{self.path}: the model takes {len(self.input_streams)} input(s) "
                             f"({', '.join(self.input_streams)}), got {len(inputs)}")
        if torch.get_num_threads() != self._threads:
            self._threads = torch.get_num_threads()
            self._session = _open_session(self.path, self._threads)
        feed = {name: np.ascontiguousarray(x.detach().cpu().numpy().astype(INPUT_DTYPES[name], copy=False))
                for name, x in zip(self.input_streams, inputs, strict=True)}
        device = inputs[0].device
        values = dict(zip(self.output_names, self._session.run(self.output_names, feed), strict=True))
        out = {k: torch.from_numpy(v).to(device) for k, v in values.items()}
        return OnnxOutput(logits=out["logits"], valence=out.get("valence"), arousal=out.get("arousal"))

    def extra_repr(self) -> str:
        return f"{self.path}, model={self.model_name}, streams={self.input_streams}, quantization={self.quantization}"


def _open_session(path: str, threads: int):
    """An ONNX Runtime CPU session of ``path`` with ``threads`` intra-op threads (one inter-op thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the reason of a failure goes into our one-line error
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def load_onnx_model(path: str | Path):
    """An exported ``.onnx`` file as an :class:`OnnxModel` (eval mode) and its load report.

    Returns:
        ``(model, report)``: the report is a :class:`~networks.weights.LoadReport` with source ``"onnx"`` and
        metadata ``model_name``, ``model_kwargs``, ``class_names``, ``inference``, ``quantization``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointFormatError: the file is not an ONNX model ONNX Runtime can open (a text file, a truncated
            file, a renamed ``.pth``), or not one :mod:`if3d.export` wrote (the message names the file).
    """
    from networks.weights import CheckpointFormatError, LoadReport

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise CheckpointFormatError(f"{path}: running an ONNX model needs onnxruntime "
                                    "(python -m pip install onnxruntime)") from None
    try:
        session = _open_session(str(path), torch.get_num_threads())
        props = session.get_modelmeta().custom_metadata_map
    except Exception as exc:  # onnxruntime raises its own pybind classes (InvalidProtobuf, Fail, …)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointFormatError(f"{path}: not an ONNX model ONNX Runtime can open ({reason})") from None
    meta = _parse_metadata(props, str(path))
    model = OnnxModel(path, meta, session)
    report = LoadReport(path=str(path), source="onnx", model=f"OnnxModel({meta['model_name']})", prefixes=None,
                        metadata={k: meta[k] for k in ("model_name", "model_kwargs", "class_names", "inference",
                                                       "quantization")})
    return model.eval(), report
