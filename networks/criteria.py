"""Training criteria: every registered model declares one; the engine sums and logs its named terms.

A criterion is a module ``criterion(output, batch) -> LossOutput``: ``output`` is the model's
forward result, ``batch`` the targets of the batch (``label`` [B] int64, and where the data has them
``valence``/``arousal`` [B] float32 with NaN where absent and ``has_va`` [B] bool). It returns the
weighted ``total`` to back-propagate and its *unweighted* terms by name, in the order of
:attr:`Criterion.terms`; the engine logs each term under its name (``metrics.csv`` column
``train_<term>``, TensorBoard tag ``train/<term>``). A new model with new losses registers a new
criterion (:func:`networks.registry.register_criterion`) and names it in its
:class:`~networks.registry.ModelInfo`; the engine needs no change.

The two criteria of the toolkit's own models::

    ddamfn:  L = CE(logits, label) + w_att · attention_loss(heads)
    if3d:    L = CE(logits, label)
               + w_att · Σ_{photo, render} attention_loss(heads)            (DDAMFN, Zhang et al. 2023; 0.1)
               + w_align · alignment                                         (If3D's photo/render map MSE; 0.1)
               + w_va · Σ_{d ∈ valence, arousal} [MSE_d + (1 − PCC_d) + (1 − CCC_d)]   (labelled samples; 1.0)

Differences from the If3D training scripts, on purpose:

- If3D's CCC used ``2·var_x·var_y·ρ`` in the numerator; the concordance correlation coefficient
  (Lin 1989) is ``CCC = 2ρσ_xσ_y / (σ_x² + σ_y² + (μ_x − μ_y)²)`` = ``2·cov / (...)``.
- If3D unpacked the loader's ``(valence, arousal)`` as ``(arousal, valence)``, training each output
  on the other target; here the outputs are named and matched by name.
- If3D drew random convex weights for MSE, PCC and CCC each batch; here they are fixed (default 1).
- Samples without valence/arousal (NaN labels, ``has_va`` False) are removed by indexing before any
  arithmetic, never zero-filled or multiplied by a mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.ddamfn import attention_loss
from networks.registry import register_criterion

__all__ = [
    "Criterion",
    "CrossEntropyCriterion",
    "DDAMFNCriterion",
    "If3DCriterion",
    "LossOutput",
    "concordance_correlation",
    "pearson_correlation",
    "va_loss",
]


@dataclass
class LossOutput:
    """One batch's loss.

    Attributes:
        total: [] the weighted sum of the terms, to back-propagate.
        terms: term name → [] unweighted value, in the criterion's :attr:`~Criterion.terms` order
            (all float32 tensors on the loss's device).
    """

    total: Tensor
    terms: dict[str, Tensor]

    def detached(self) -> dict[str, Tensor]:
        """``{"loss": total, **terms}`` as detached 0-d tensors (no device sync)."""
        return {"loss": self.total.detach(), **{k: v.detach() for k, v in self.terms.items()}}


class Criterion(nn.Module):
    """Base class of the registered criteria.

    Subclasses set :attr:`terms` (names of the terms ``forward`` returns, in order) and
    :attr:`default_weights` (term name → weight; a term without a weight is added with weight 1),
    and implement ``forward(output, batch) -> LossOutput``.

    Args:
        weights: term name → weight, overriding :attr:`default_weights`.
        label_smoothing: ε of the cross-entropy term of criteria that have one (targets 1 − ε on the
            label and ε / C on every class, as :func:`torch.nn.functional.cross_entropy`); 0 = none.

    Raises:
        ValueError: a weight for a term this criterion does not have, a negative weight, or a label
            smoothing outside [0, 1).
    """

    terms: ClassVar[tuple[str, ...]] = ()
    default_weights: ClassVar[Mapping[str, float]] = {}

    def __init__(self, weights: Mapping[str, float] | None = None, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        given = dict(weights or {})
        unknown = sorted(set(given) - set(self.terms))
        if unknown:
            raise ValueError(
                f"the {type(self).__name__} criterion has no term {', '.join(map(repr, unknown))}; "
                f"its terms are {', '.join(self.terms)}"
            )
        bad = {k: v for k, v in given.items() if not float(v) >= 0}
        if bad:
            raise ValueError(f"loss weights must be finite and >= 0, got {bad}")
        self.weights: dict[str, float] = {t: float(given.get(t, self.default_weights.get(t, 1.0))) for t in self.terms}

    def combine(self, terms: dict[str, Tensor]) -> LossOutput:
        """``LossOutput`` with ``total = Σ weight_t · term_t`` (terms in :attr:`terms` order)."""
        total = None
        for name in self.terms:
            part = self.weights[name] * terms[name]
            total = part if total is None else total + part
        return LossOutput(total=total, terms={name: terms[name] for name in self.terms})

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.weights.items())


def pearson_correlation(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation coefficient ρ of two 1-D tensors.

    Args:
        x, y: [N] values, N ≥ 2.
        eps: added to the denominator so constant inputs give 0 instead of NaN.

    Returns:
        [] ρ ∈ [−1, 1].
    """
    xc = x - x.mean()
    yc = y - y.mean()
    return (xc * yc).sum() / torch.sqrt((xc * xc).sum() * (yc * yc).sum() + eps)


def concordance_correlation(x: Tensor, y: Tensor, eps: float = 1e-8) -> Tensor:
    """Lin's concordance correlation coefficient of two 1-D tensors.

    ``CCC = 2ρσ_xσ_y / (σ_x² + σ_y² + (μ_x − μ_y)²) = 2·cov(x, y) / (σ_x² + σ_y² + (μ_x − μ_y)²)``
    with population (biased) moments, as in Lin (1989), *Biometrics* 45(1):255–268.

    Args:
        x, y: [N] values.
        eps: added to the denominator (identical constant inputs give 0 instead of NaN).

    Returns:
        [] CCC ∈ [−1, 1]; 1 only when x == y.
    """
    mx, my = x.mean(), y.mean()
    xc, yc = x - mx, y - my
    cov = (xc * yc).mean()
    return 2.0 * cov / ((xc * xc).mean() + (yc * yc).mean() + (mx - my) ** 2 + eps)


def _va_dimension_loss(pred: Tensor, target: Tensor, w_mse: float, w_pcc: float, w_ccc: float) -> Tensor:
    loss = w_mse * F.mse_loss(pred, target)
    if pred.numel() >= 2:  # correlations are undefined for one sample
        loss = loss + w_pcc * (1.0 - pearson_correlation(pred, target))
        loss = loss + w_ccc * (1.0 - concordance_correlation(pred, target))
    return loss


def va_loss(
    valence_pred: Tensor,
    arousal_pred: Tensor,
    valence: Tensor,
    arousal: Tensor,
    has_va: Tensor,
    mse: float = 1.0,
    pcc: float = 1.0,
    ccc: float = 1.0,
) -> tuple[Tensor, int]:
    """Valence/arousal loss ``Σ_d [mse·MSE_d + pcc·(1 − PCC_d) + ccc·(1 − CCC_d)]`` over the labelled samples.

    Args:
        valence_pred, arousal_pred: [B] model outputs.
        valence, arousal: [B] targets on the AffectNet scale [−1, 1]; NaN where absent.
        has_va: [B] bool, True where both targets exist.
        mse, pcc, ccc: weights of the three parts (1 each).

    Returns:
        (loss [] float32, number of samples used). With no labelled sample the loss is a zero tensor;
        with one, only the MSE parts are used (correlation needs two samples).
    """
    idx = torch.nonzero(has_va.to(valence_pred.device), as_tuple=True)[0]
    n = int(idx.numel())
    if n == 0:
        return valence_pred.new_zeros((), dtype=torch.float32), 0
    vp = valence_pred.float().index_select(0, idx)
    ap = arousal_pred.float().index_select(0, idx)
    vt = valence.to(vp.device).float().index_select(0, idx)
    at = arousal.to(vp.device).float().index_select(0, idx)
    return (_va_dimension_loss(vp, vt, mse, pcc, ccc) + _va_dimension_loss(ap, at, mse, pcc, ccc)), n


def _cross_entropy(output: Any, batch: Mapping[str, Tensor], label_smoothing: float = 0.0) -> Tensor:
    logits = output.logits.float()
    return F.cross_entropy(logits, batch["label"].to(logits.device), label_smoothing=label_smoothing)


@register_criterion("ce")
class CrossEntropyCriterion(Criterion):
    """Plain cross-entropy on ``output.logits`` [B, C] against ``batch["label"]`` [B]: the default
    criterion of a registered model that declares none. Term ``ce``."""

    terms = ("ce",)
    default_weights = {"ce": 1.0}

    def forward(self, output: Any, batch: Mapping[str, Tensor]) -> LossOutput:
        return self.combine({"ce": _cross_entropy(output, batch, self.label_smoothing)})


@register_criterion("ddamfn")
class DDAMFNCriterion(Criterion):
    """DDAMFN's loss: cross-entropy + 0.1 × attention (head diversity) loss.

    Source: DDAMFN's training script (``CrossEntropyLoss`` + ``0.1 * AttentionLoss``), Zhang et al.,
    Electronics 2023. The attention loss is :func:`networks.ddamfn.attention_loss` of the head maps.

    ``forward(output, batch)``: ``output`` with ``logits`` [B, C] and ``heads`` [H, B, C', S, S]
    (:class:`~networks.outputs.DDAMFNOutput`), ``batch["label"]`` [B] int64 → terms ``ce``, ``attention``
    (float32, also under autocast).
    """

    terms = ("ce", "attention")
    default_weights = {"ce": 1.0, "attention": 0.1}

    def forward(self, output: Any, batch: Mapping[str, Tensor]) -> LossOutput:
        return self.combine({"ce": _cross_entropy(output, batch, self.label_smoothing),
                             "attention": attention_loss(output.heads.float())})


@register_criterion("if3d")
class If3DCriterion(Criterion):
    """If3D's loss with its defects fixed (see the module docstring for the formula and the differences).

    ``forward(output, batch)``: ``output`` an :class:`~networks.outputs.If3DOutput` (``logits`` [B, C],
    ``photo_heads``/``render_heads`` [H, B, C', S, S], ``alignment`` [], ``valence``/``arousal`` [B] or
    None); ``batch`` with ``label`` [B] and optionally ``valence``, ``arousal`` [B] (NaN where absent)
    and ``has_va`` [B] bool → terms ``ce``, ``attention`` (sum over the two streams), ``alignment``,
    ``va`` (0 when no sample of the batch has VA labels, the model has no VA outputs, or the weight is 0).

    Args:
        weights: term weights (defaults ce 1, attention 0.1, alignment 0.1, va 1).
        va_mse, va_pcc, va_ccc: weights of MSE, (1 − PCC) and (1 − CCC) inside the VA term (1 each).
    """

    terms = ("ce", "attention", "alignment", "va")
    default_weights = {"ce": 1.0, "attention": 0.1, "alignment": 0.1, "va": 1.0}

    def __init__(self, weights: Mapping[str, float] | None = None, va_mse: float = 1.0, va_pcc: float = 1.0,
                 va_ccc: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(weights, label_smoothing)
        self.va_parts = (float(va_mse), float(va_pcc), float(va_ccc))

    def forward(self, output: Any, batch: Mapping[str, Tensor]) -> LossOutput:
        ce = _cross_entropy(output, batch, self.label_smoothing)
        zero = ce.new_zeros(())
        attention = zero
        for heads in (output.photo_heads, output.render_heads):
            if heads is not None:
                attention = attention + attention_loss(heads.float())
        alignment = output.alignment.float() if output.alignment is not None else zero
        va = zero
        has_targets = all(batch.get(k) is not None for k in ("valence", "arousal", "has_va"))
        if self.weights["va"] > 0 and output.valence is not None and output.arousal is not None and has_targets:
            va, _ = va_loss(output.valence, output.arousal, batch["valence"], batch["arousal"], batch["has_va"],
                            *self.va_parts)
        return self.combine({"ce": ce, "attention": attention, "alignment": alignment, "va": va})
