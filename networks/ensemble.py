"""Score-level fusion of trained classifiers: one registered model (``ensemble``) that runs several members and
combines their calibrated class probabilities.

Late fusion, as the published photo + render ensembles (Ig3D) do it: every member keeps its own inputs (photo,
render, landmarks, FLAME parameters …), its own normalisation and its own :class:`~networks.inference.
InferencePolicy` (temperature, flip averaging), and only the members' log-probabilities
``log softmax(z_m / T_m)`` [B, M, C] meet. Two combinations (Kuncheva, "Combining Pattern Classifiers", 2nd ed.
2014, ch. 5 weighted averaging and ch. 6 stacking; Wolpert, "Stacked Generalization", Neural Networks 1992):

``weighted``
    ``p = sum_m w_m softmax(z_m / T_m)`` with weights ``w_m >= 0`` summing to 1; ``logits = log p`` [B, C].
``stack``
    a multinomial logistic regression on the concatenated member log-probabilities:
    ``logits = concat_m(log softmax(z_m / T_m)) @ stack_coef.T + stack_intercept`` (``stack_coef`` [C, M*C],
    ``stack_intercept`` [C], buffers of the state dict; scikit-learn's ``LogisticRegression.coef_`` and
    ``intercept_``).

The weights and the stacker are fitted by ``python -m if3d.ensemble`` on a split the reported one never
touches; this module only applies them. The forward returns ``logits`` that are log-probabilities (weighted) or
the stacker's decision values (stack): ``softmax(logits)`` is the ensemble's probability either way.

The ensemble's inputs are the union of its members' input streams (first appearance order). Image streams arrive
normalised with the ensemble's normalisation (its ``backbone_spec``: the first member's that has one, else
ImageNet's) and are renormalised for every member whose own normalisation differs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.inference import InferencePolicy, predict_logits
from networks.mixedfeaturenet import IMAGENET_MEAN, IMAGENET_STD
from networks.registry import create_model, register_model

__all__ = ["METHODS", "EnsembleOutput", "ScoreEnsemble", "ensemble"]

#: The combinations :class:`ScoreEnsemble` applies.
METHODS = ("weighted", "stack")
#: Image streams (float [B, 3, S, S], normalised); every other stream is passed on unchanged.
_IMAGE_STREAMS = ("photo", "render")


@dataclass
class EnsembleOutput:
    """Result of :class:`ScoreEnsemble`.

    Attributes:
        logits: [B, C] the combination's logits (``softmax`` gives its class probabilities).
        member_log_probs: [B, M, C] each member's calibrated log-probabilities ``log softmax(z_m / T_m)``.
    """

    logits: Tensor
    member_log_probs: Tensor


class ScoreEnsemble(nn.Module):
    """Trained classifiers combined at the score level (module docstring).

    Args:
        members: one mapping per member: ``model_name`` and ``model_kwargs`` (as in a toolkit checkpoint),
            ``temperature`` (> 0, default 1) and ``flip_average`` (default False): the member's own
            :class:`~networks.inference.InferencePolicy`, applied in eval mode.
        num_classes: C, shared by every member.
        method: ``weighted`` or ``stack``.
        weights: M non-negative weights of ``weighted`` (normalised to sum 1; default uniform).

    Raises:
        ValueError: fewer than two members, an unknown method, weights of the wrong length, negative or all
            zero, or members whose backbones are built for different input sizes.
        KeyError: a member's model is not registered.
    """

    def __init__(self, members: Sequence[Mapping[str, Any]], num_classes: int, method: str = "weighted",
                 weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least two members, got {len(members)}")
        if method not in METHODS:
            raise ValueError(f"ensemble method must be one of {', '.join(METHODS)}, got {method!r}")
        m = len(members)
        w = torch.full((m,), 1.0 / m) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
        if w.shape != (m,) or not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
            raise ValueError(f"ensemble weights must be {m} finite numbers >= 0, not all 0; got {list(weights or [])}")
        self.method = method
        self.num_classes = int(num_classes)
        self.members = nn.ModuleList(create_model(str(s["model_name"]), **dict(s.get("model_kwargs") or {}))
                                     for s in members)
        for module, s in zip(self.members, members, strict=True):
            module.inference_policy = InferencePolicy(temperature=float(s.get("temperature", 1.0)),
                                                      flip_average=bool(s.get("flip_average", False)))
        streams = [tuple(getattr(module, "input_streams", ("photo",))) for module in self.members]
        self.input_streams = tuple(dict.fromkeys(s for member in streams for s in member))
        self._member_inputs = [tuple(self.input_streams.index(s) for s in member) for member in streams]
        specs = [getattr(module, "backbone_spec", None) for module in self.members]
        sizes = {s.input_size for s in specs if s is not None}
        if len(sizes) > 1:
            raise ValueError(f"the members' backbones are built for different input sizes ({sorted(sizes)} pixels); "
                             "an ensemble's members read the same images")
        first = next((s for s in specs if s is not None), None)
        if first is not None:
            self.backbone_spec = replace(first, weights="the members' (ensemble)")
        self._input_norm = (first.mean, first.std) if first is not None else (IMAGENET_MEAN, IMAGENET_STD)
        self._member_norm = [(s.mean, s.std) if s is not None else (IMAGENET_MEAN, IMAGENET_STD) for s in specs]
        self.register_buffer("weights", w / w.sum())
        self.register_buffer("stack_coef", torch.zeros(self.num_classes, m * self.num_classes))
        self.register_buffer("stack_intercept", torch.zeros(self.num_classes))

    def _renormalise(self, x: Tensor, target: tuple[Sequence[float], Sequence[float]]) -> Tensor:
        """An image normalised with the ensemble's (mean, std) → normalised with ``target``'s."""
        if tuple(target[0]) == tuple(self._input_norm[0]) and tuple(target[1]) == tuple(self._input_norm[1]):
            return x

        def col(v: Sequence[float]) -> Tensor:
            return torch.as_tensor(v, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)

        raw = x * col(self._input_norm[1]) + col(self._input_norm[0])
        return (raw - col(target[0])) / col(target[1])

    def member_log_probs(self, *inputs: Any) -> Tensor:
        """[B, M, C] each member's ``log softmax(z_m / T_m)`` (its policy applied in eval mode).

        Args:
            inputs: the ensemble's streams in :attr:`input_streams` order (images float [B, 3, S, S]).
        """
        out = []
        for module, idx, norm in zip(self.members, self._member_inputs, self._member_norm, strict=True):
            xs = [self._renormalise(inputs[i], norm) if self.input_streams[i] in _IMAGE_STREAMS else inputs[i]
                  for i in idx]
            out.append(F.log_softmax(predict_logits(module, xs).logits.float(), dim=1))
        return torch.stack(out, 1)

    def combine(self, log_probs: Tensor) -> Tensor:
        """[B, C] the combination's logits from members' log-probabilities [B, M, C]."""
        if self.method == "weighted":
            log_w = torch.log(self.weights.to(log_probs)).view(1, -1, 1)  # log 0 = -inf drops the member
            return torch.logsumexp(log_probs + log_w, dim=1)
        return log_probs.flatten(1) @ self.stack_coef.to(log_probs).T + self.stack_intercept.to(log_probs)

    def forward(self, *inputs: Any) -> EnsembleOutput:
        """``inputs`` in :attr:`input_streams` order → :class:`EnsembleOutput`."""
        log_probs = self.member_log_probs(*inputs)
        return EnsembleOutput(logits=self.combine(log_probs), member_log_probs=log_probs)

    def extra_repr(self) -> str:
        w = ", ".join(f"{float(v):.3f}" for v in self.weights) if self.method == "weighted" else "stacker"
        return f"method={self.method}, streams={self.input_streams}, weights=[{w}]"


@register_model(name="ensemble")
def ensemble(members: Sequence[Mapping[str, Any]] = (), num_classes: int = 7, method: str = "weighted",
             weights: Sequence[float] | None = None) -> ScoreEnsemble:
    """Score-level ensemble of trained classifiers (weighted mean or stacker; python -m if3d.ensemble fits it)."""
    return ScoreEnsemble(members, num_classes=num_classes, method=method, weights=weights)
