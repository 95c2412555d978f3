"""Training loss of DDAMFN and the If3D fusion models.

The total loss of one batch is::

    L = CE(logits, label)
        + w_att · Σ_streams attention_loss(heads)          (DDAMFN, Zhang et al. 2023, eq. 6; w_att = 0.1)
        + w_align · alignment                               (If3D's photo/render feature-map MSE; 0.1)
        + w_va · Σ_{d ∈ valence, arousal} [ MSE_d + (1 − PCC_d) + (1 − CCC_d) ]   (samples with VA only)

The attention loss is ``networks.ddamfn.attention_loss`` applied to each stream's DDA head
maps (the photo-only DDAMFN has one stream; an If3D model has a photo and a render stream).

Differences from the If3D training scripts, on purpose:

- If3D's CCC used ``2·var_x·var_y·ρ`` in the numerator; the concordance correlation
  coefficient (Lin 1989) is ``CCC = 2ρσ_xσ_y / (σ_x² + σ_y² + (μ_x − μ_y)²)`` = ``2·cov / (...)``.
- If3D unpacked the loader's ``(valence, arousal)`` as ``(arousal, valence)``, training each
  output on the other target; here the outputs are named and matched by name.
- If3D drew random convex weights for MSE, PCC and CCC each batch; here they are fixed
  (:class:`LossWeights`, default 1 each).
- Samples without valence/arousal (NaN labels, ``has_va`` False) are removed by indexing
  before any arithmetic, never zero-filled or multiplied by a mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from networks.ddamfn import attention_loss


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (the presets' defaults follow DDAMFN and If3D).

    Attributes:
        attention: weight of the DDAMFN attention loss, applied to each stream (0.1).
        alignment: weight of the photo/render feature alignment MSE (0.1; If3D only).
        va: weight of the whole valence/arousal term (1.0; 0 disables it).
        va_mse, va_pcc, va_ccc: weights of MSE, (1 − PCC) and (1 − CCC) inside the VA term.
    """

    attention: float = 0.1
    alignment: float = 0.1
    va: float = 1.0
    va_mse: float = 1.0
    va_pcc: float = 1.0
    va_ccc: float = 1.0

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class LossTerms:
    """One batch's loss and its (unweighted) terms.

    Attributes:
        total: [] the weighted sum to back-propagate.
        ce: [] cross-entropy.
        attention: [] sum of the per-stream attention losses (before the 0.1 weight).
        alignment: [] alignment MSE (0 for photo-only models).
        va: [] valence/arousal loss (0 when no sample of the batch has VA labels or the model
            has no VA outputs).
        va_samples: number of samples the VA term was computed on.
    """

    total: Tensor
    ce: Tensor
    attention: Tensor
    alignment: Tensor
    va: Tensor
    va_samples: int

    TERM_NAMES = ("loss", "ce", "attention", "alignment", "va")

    def detached(self) -> dict[str, Tensor]:
        """The five terms as detached 0-d tensors, keyed by :attr:`TERM_NAMES` (no device sync)."""
        return {
            "loss": self.total.detach(),
            "ce": self.ce.detach(),
            "attention": self.attention.detach(),
            "alignment": self.alignment.detach(),
            "va": self.va.detach(),
        }


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


def _va_dimension_loss(pred: Tensor, target: Tensor, weights: LossWeights) -> Tensor:
    loss = weights.va_mse * F.mse_loss(pred, target)
    if pred.numel() >= 2:  # correlations are undefined for one sample
        loss = loss + weights.va_pcc * (1.0 - pearson_correlation(pred, target))
        loss = loss + weights.va_ccc * (1.0 - concordance_correlation(pred, target))
    return loss


def va_loss(
    valence_pred: Tensor,
    arousal_pred: Tensor,
    valence: Tensor,
    arousal: Tensor,
    has_va: Tensor,
    weights: LossWeights = LossWeights(),  # noqa: B008 - frozen dataclass, immutable default
) -> tuple[Tensor, int]:
    """Valence/arousal loss ``Σ_d [MSE_d + (1 − PCC_d) + (1 − CCC_d)]`` over the samples with labels.

    Args:
        valence_pred, arousal_pred: [B] model outputs.
        valence, arousal: [B] targets on the AffectNet scale [−1, 1]; NaN where absent.
        has_va: [B] bool, True where both targets exist.
        weights: the MSE/PCC/CCC weights.

    Returns:
        (loss [], number of samples used). With no labelled sample the loss is a zero tensor;
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
    return _va_dimension_loss(vp, vt, weights) + _va_dimension_loss(ap, at, weights), n


def fer_loss(
    output: Any,
    label: Tensor,
    valence: Tensor | None = None,
    arousal: Tensor | None = None,
    has_va: Tensor | None = None,
    weights: LossWeights = LossWeights(),  # noqa: B008 - frozen dataclass, immutable default
) -> LossTerms:
    """The full training loss of one batch for a DDAMFN or If3D model output.

    Args:
        output: ``networks.outputs.DDAMFNOutput`` (``logits``, ``heads``) or ``If3DOutput``
            (``logits``, ``photo_heads``, ``render_heads``, ``alignment``, ``valence``, ``arousal``).
        label: [B] int64 class indices in the canonical AffectNet order.
        valence, arousal: [B] float targets, NaN where absent (optional).
        has_va: [B] bool (optional; the VA term is skipped when any of the three is None or
            the model has no VA outputs).
        weights: term weights.

    Returns:
        :class:`LossTerms`; every term is computed in float32 (also under autocast).
    """
    logits = output.logits.float()
    ce = F.cross_entropy(logits, label.to(logits.device))
    zero = logits.new_zeros(())

    if hasattr(output, "photo_heads"):
        streams = [output.photo_heads, output.render_heads]
    else:
        streams = [output.heads]
    att = zero
    for heads in streams:
        if heads is not None:
            att = att + attention_loss(heads.float())

    alignment = getattr(output, "alignment", None)
    align = alignment.float() if alignment is not None else zero

    va, n_va = zero, 0
    vp, ap = getattr(output, "valence", None), getattr(output, "arousal", None)
    if (
        weights.va > 0
        and vp is not None
        and ap is not None
        and valence is not None
        and arousal is not None
        and has_va is not None
    ):
        va, n_va = va_loss(vp, ap, valence, arousal, has_va, weights)

    total = ce + weights.attention * att + weights.alignment * align + weights.va * va
    return LossTerms(total=total, ce=ce, attention=att, alignment=align, va=va, va_samples=n_va)
