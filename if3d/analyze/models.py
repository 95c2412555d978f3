"""The trained models the analysis runs on face crops: an expression model and an AU-intensity model.

Both load from any checkpoint ``networks.weights.build_model_from_checkpoint`` reads (our ``best.pth`` /
``last.pth``, ``FinalCheckPoints/*.pth``, If3D's and DDAMFN's files), never from the internet. Faces reach
them as the toolkit's eye-levelled square crops (:func:`if3d.data.converters.align.align_face`, margin
0.25, the converters' alignment) at the backbone's input size; a fusion model also gets the face's 3D
render, made on the fly from the same landmarks with the MediaPipe render backend
(``MediaPipeBackend.render_landmarks``, pixel-aligned with the crop, as ``Smirk_batch_Render.py
--backend mediapipe`` renders a photo). Inputs are normalised and run batched, on CUDA when present, with
the runtime's fast path (channels_last; bf16 autocast only when asked).

A checkpoint that does not fit is refused with :class:`ModelLoadError` naming the file: an expression
checkpoint whose classes are not expression classes (names that ``if3d.classes.canonical_label`` does not
know) or whose logits do not match its class names, a model that reads streams other than photo and
render, an AU checkpoint whose outputs are not AU intensities.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["AUModel", "ExpressionModel", "ModelLoadError", "resolve_device"]

#: margin of the face crops around the landmark box (``if3d.data`` converters' default)
CROP_MARGIN = 0.25


class ModelLoadError(ValueError):
    """A checkpoint that cannot be used by the analysis; the message names the file and why."""


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cpu``; ``cuda``/``cuda:N`` when present.

    Raises:
        ValueError: an unknown device, or CUDA asked for where there is none.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if d.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available")
    return d


def _load(path: str | os.PathLike, what: str):
    import networks
    from networks.inference import resolve_checkpoint
    from networks.weights import CheckpointFormatError, UnsafePickleError, WeightLoadError

    try:
        path = resolve_checkpoint(path)  # "default": the shipped expression model
    except FileNotFoundError as e:
        raise ModelLoadError(str(e)) from None
    if not os.path.isfile(path):
        raise ModelLoadError(f"{path}: no such {what} checkpoint file")
    try:
        return networks.build_model_from_checkpoint(path)
    except (CheckpointFormatError, WeightLoadError, UnsafePickleError, KeyError, TypeError, ValueError,
            RuntimeError, OSError, EOFError) as e:
        raise ModelLoadError(f"{path}: cannot load the {what} checkpoint: {e}") from None


@dataclass
class _Runtime:
    device: torch.device
    channels_last: bool
    amp: str


def _runtime(device: torch.device, amp: str | None) -> _Runtime:
    from if3d.runtime import RuntimeConfig, resolve_runtime

    rt = resolve_runtime(RuntimeConfig(device=str(device), amp=amp), device)
    if rt.tune_allocator:
        from if3d.runtime.allocator import tune_glibc_malloc

        tune_glibc_malloc()
    return _Runtime(device, bool(rt.channels_last), str(rt.amp))


class _FaceModel:
    """What both models share: the loaded module, its input size and normalisation, batched forward."""

    def __init__(self, path: str | os.PathLike, what: str, device: torch.device, amp: str | None) -> None:
        from if3d.runtime import BatchPreparer, model_streams

        model, report = _load(path, what)
        self.path = str(path)
        self.metadata = dict(report.metadata)
        self.model_name = str(self.metadata.get("model_name") or type(model).__name__)
        self.streams = model_streams(model)
        extra = [s for s in self.streams if s not in ("photo", "render")]
        if extra or self.streams[:1] != ("photo",):
            raise ModelLoadError(f"{path}: the model reads the stream(s) {', '.join(self.streams)}; the analysis "
                                 "gives photo and render only")
        spec = getattr(model, "backbone_spec", None)
        self.image_size = int(spec.input_size) if spec is not None else 112
        self.rt = _runtime(device, amp)
        self.model = model.to(device).eval()
        if self.rt.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.prepare = BatchPreparer.for_model(self.model, device, self.rt.channels_last, False, self.image_size)
        self.renderer = None
        if "render" in self.streams:
            from if3d.render.backends import get_backend

            self.renderer = get_backend("mediapipe", size=self.image_size, framing="photo")

    @property
    def needs_render(self) -> bool:
        return self.renderer is not None

    def crops(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """The face crop (and its render) of one face.

        Args:
            image: uint8 [H, W, 3] RGB frame.
            landmarks: float32 [478, 3] landmarks of the face in ``image`` pixels.

        Returns:
            ``(photo uint8 [S, S, 3], render uint8 [S, S, 3] or None)``, S the model's input size.
        """
        from if3d.data.converters.align import align_face, alignment_matrix

        photo = align_face(image, landmarks, self.image_size, CROP_MARGIN)
        render = None
        if self.renderer is not None:
            render = self.renderer.render_landmarks(landmarks, alignment_matrix(landmarks, self.image_size,
                                                                                CROP_MARGIN))
        return photo, render

    @torch.no_grad()
    def forward(self, photos: np.ndarray, renders: np.ndarray | None):
        """The model's output for a batch of crops (uint8 [B, S, S, 3] each)."""
        from if3d.runtime import autocast_context, forward_model

        batch = {"photo": torch.from_numpy(np.ascontiguousarray(photos)).permute(0, 3, 1, 2)}
        if "render" in self.streams:
            batch["render"] = torch.from_numpy(np.ascontiguousarray(renders)).permute(0, 3, 1, 2)
        inputs, _ = self.prepare(batch, train=False)
        with autocast_context(self.rt.device, self.rt.amp):
            return forward_model(self.model, inputs)

    def close(self) -> None:
        if self.renderer is not None:
            self.renderer.close()
            self.renderer = None


class ExpressionModel(_FaceModel):
    """An expression classifier (any registered photo-only or fusion model) for the analysis.

    Args:
        path: the checkpoint.
        device: where it runs.
        amp: autocast (``off``/``bf16``/``fp16``; None: the device's default, fp32 on CPU).

    Attributes:
        class_names: the checkpoint's class names (AffectNet-8 names for checkpoints without them).
        has_va: the model outputs valence and arousal.

    Raises:
        ModelLoadError: the file does not load, or its classes do not fit (module docstring).
    """

    def __init__(self, path: str | os.PathLike, device: torch.device, amp: str | None = None) -> None:
        from if3d.classes import canonical_label, class_names_for

        super().__init__(path, "expression", device, amp)
        size = self.image_size
        probe = self.forward(np.zeros((1, size, size, 3), np.uint8),
                             np.zeros((1, size, size, 3), np.uint8) if self.needs_render else None)
        logits = getattr(probe, "logits", None)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ModelLoadError(f"{path}: the {self.model_name} model gives no expression logits (an AU model goes "
                                 "to --au-checkpoint)")
        n = int(logits.shape[1])
        names = self.metadata.get("class_names")
        if isinstance(names, list) and names and len(names) != n:
            raise ModelLoadError(f"{path}: the checkpoint names {len(names)} classes ({', '.join(map(str, names))}) "
                                 f"but its model gives {n} logits")
        self.class_names = [str(c) for c in names] if isinstance(names, list) and names else class_names_for(n)
        unknown = []
        for c in self.class_names:
            try:
                canonical_label(c)
            except KeyError:
                unknown.append(c)
        if unknown:
            raise ModelLoadError(f"{path}: its classes {', '.join(map(repr, unknown))} are not expression classes "
                                 "(Neutral, Happy, Sad, Surprise, Fear, Disgust, Angry, Contempt in any common "
                                 "spelling); --checkpoint takes an expression model")
        self.has_va = getattr(probe, "valence", None) is not None and getattr(probe, "arousal", None) is not None

    def predict(self, photos: np.ndarray, renders: np.ndarray | None) -> dict[str, np.ndarray]:
        """Class probabilities [B, C] (softmax) and, when the model has them, valence/arousal [B]."""
        out = self.forward(photos, renders)
        res = {"probabilities": torch.softmax(out.logits.float(), 1).cpu().numpy()}
        if self.has_va:
            res["valence"] = out.valence.float().cpu().numpy().reshape(-1)
            res["arousal"] = out.arousal.float().cpu().numpy().reshape(-1)
        return res


_AU_NAME = re.compile(r"^AU(\d+)$")


class AUModel(_FaceModel):
    """An AU-intensity model (``networks.au``, e.g. ``au_regressor``) for the analysis.

    Its checkpoint's ``class_names`` are the AUs it predicts (``AU1`` …, the dataset's order); its output
    ``au`` [B, A] the intensities on the 0–5 scale.

    Raises:
        ModelLoadError: the file does not load, or the model gives no AU intensities.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device, amp: str | None = None) -> None:
        super().__init__(path, "AU", device, amp)
        size = self.image_size
        probe = self.forward(np.zeros((1, size, size, 3), np.uint8),
                             np.zeros((1, size, size, 3), np.uint8) if self.needs_render else None)
        au = getattr(probe, "au", None)
        names = self.metadata.get("class_names")
        if not isinstance(au, torch.Tensor) or au.ndim != 2:
            raise ModelLoadError(f"{path}: the {self.model_name} model gives no AU intensities (an expression model "
                                 "goes to --checkpoint)")
        if not (isinstance(names, list) and len(names) == au.shape[1] and all(_AU_NAME.match(str(n)) for n in names)):
            raise ModelLoadError(f"{path}: the checkpoint does not name its {au.shape[1]} AU outputs (class_names "
                                 f"{names!r}); train it with python -m if3d.train --model au_regressor")
        self.aus: Sequence[str] = [str(n) for n in names]

    def predict(self, photos: np.ndarray, renders: np.ndarray | None) -> dict[str, np.ndarray]:
        """AU intensities [B, A], clipped to the 0–5 scale."""
        out = self.forward(photos, renders)
        return {"au": np.clip(out.au.float().cpu().numpy(), 0.0, 5.0)}
