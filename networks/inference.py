"""How a trained classifier is run for prediction: the shipped default model's name, temperature scaling
and horizontal-flip averaging.

A checkpoint may carry an ``inference`` entry (:class:`InferencePolicy`): the temperature fitted on a
held-out calibration split (Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks",
ICML 2017, section 4.2: one scalar ``T > 0``, probabilities ``softmax(z / T)``) and whether the model's
documented prediction averages the logits of the photo and of its mirror image (test-time flip
averaging). :func:`networks.build_model_from_checkpoint` attaches the policy to the model it builds
(attribute ``inference_policy``) and :func:`predict_logits` applies it; training never does (a model in
training mode is run as it is).

``"default"`` names the expression model that ships inside the package (:data:`DEFAULT_CHECKPOINT`,
``docs/MODEL_CARD.md``): everywhere a checkpoint path is accepted, :func:`resolve_checkpoint` turns the
name into the file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_NAME",
    "InferencePolicy",
    "predict_logits",
    "resolve_checkpoint",
]

#: The name that means the shipped default expression model wherever a checkpoint is accepted.
DEFAULT_NAME = "default"
#: (package, file inside it) of the shipped default expression model.
DEFAULT_CHECKPOINT = ("if3d", "weights/fer2013_mobilenetv2_default.pth")


def resolve_checkpoint(path: str | Path) -> Path:
    """The file a checkpoint argument names: ``"default"`` → the shipped model, anything else unchanged.

    Raises:
        FileNotFoundError: ``"default"`` was asked for and the package holds no such file (a broken install).
    """
    if str(path) != DEFAULT_NAME:
        return Path(path)
    package, name = DEFAULT_CHECKPOINT
    found = Path(str(resources.files(package).joinpath(name)))
    if not found.is_file():
        raise FileNotFoundError(f"the default expression model {found} is missing from the installed {package} "
                                "package; reinstall the toolkit (python -m pip install -e .)")
    return found


@dataclass(frozen=True)
class InferencePolicy:
    """How a classifier's logits become its prediction.

    Attributes:
        temperature: ``T > 0``; logits are divided by it (1: uncalibrated). Dividing by a positive
            scalar never changes the predicted class, only the confidence.
        flip_average: average the logits of every image input and of its horizontal mirror (for a
            photo + render model both inputs are mirrored together) before the temperature.
    """

    temperature: float = 1.0
    flip_average: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, int | float) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")

    @property
    def is_identity(self) -> bool:
        return self.temperature == 1.0 and not self.flip_average

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": float(self.temperature), "flip_average": bool(self.flip_average)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> InferencePolicy:
        """The policy a checkpoint's metadata records under ``inference`` (identity when absent).

        Raises:
            ValueError: the entry is malformed (not a mapping, a temperature that is not a finite number > 0).
        """
        entry = metadata.get("inference")
        if entry is None:
            return cls()
        if not isinstance(entry, Mapping):
            raise ValueError(f"the checkpoint's 'inference' entry must be a mapping, got {type(entry).__name__}")
        return cls(temperature=float(entry.get("temperature", 1.0)), flip_average=bool(entry.get("flip_average", False)))


def _flip(x: Any) -> Any:
    import torch

    # image inputs are [B, 3, H, W] (or [B, T, 3, H, W] clips); anything else (landmarks, parameters) is kept
    if isinstance(x, torch.Tensor) and x.ndim in (4, 5) and x.is_floating_point():
        return torch.flip(x, dims=(-1,))
    return x


def _policy_of(model: Any) -> InferencePolicy | None:
    for _ in range(4):  # DDP (.module) and torch.compile (._orig_mod) wrappers, possibly nested
        policy = getattr(model, "inference_policy", None)
        if policy is not None:
            return policy
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if inner is None or inner is model:
            return None
        model = inner
    return None


def predict_logits(model: Any, inputs: Sequence[Any]) -> Any:
    """``model(*inputs)`` with the model's :class:`InferencePolicy` applied when it is in eval mode.

    Args:
        model: a classifier whose output has ``logits`` [B, C] (and optionally ``valence``/``arousal`` [B]);
            its ``inference_policy`` attribute (or that of the module a DDP / ``torch.compile`` wrapper holds;
            absent: identity) is applied only when ``model.training`` is False.
        inputs: the model's inputs in its stream order (image tensors float [B, 3, H, W]).

    Returns:
        The model's output with ``logits`` replaced by the (flip-averaged) logits divided by the temperature
        and, with flip averaging, ``valence``/``arousal`` averaged over the two views; other fields are those
        of the unflipped view.
    """
    output = model(*inputs)
    policy = _policy_of(model)
    if policy is None or policy.is_identity or getattr(model, "training", False):
        return output
    changes: dict[str, Any] = {}
    logits = output.logits
    if policy.flip_average:
        mirrored = model(*[_flip(x) for x in inputs])
        logits = (logits + mirrored.logits) / 2
        for k in ("valence", "arousal"):
            a, b = getattr(output, k, None), getattr(mirrored, k, None)
            if a is not None and b is not None:
                changes[k] = (a + b) / 2
    changes["logits"] = logits / policy.temperature
    return dataclasses.replace(output, **changes)
