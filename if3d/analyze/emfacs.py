"""From action units to expression prototypes (EMFACS), frame by frame.

Prototype table (EMFACS-7: Friesen & Ekman, *EMFACS-7: Emotional Facial Action Coding System*,
unpublished manual, University of California San Francisco, 1983; the table as commonly reproduced, e.g.
in the "Facial Action Coding System" article of Wikipedia, section "Emotions"):

==========  ==================  =======================================================
expression  EMFACS prototype    read here as
==========  ==================  =======================================================
Happy       6+12                AU6 ≥ A, AU12 ≥ A
Sad         1+4+15              AU1, AU4, AU15 ≥ A
Surprise    1+2+5B+26           AU1, AU2 ≥ A, AU5 ≥ B, AU26 ≥ A
Fear        1+2+4+5+7+20+26     each ≥ A
Angry       4+5+7+23            each ≥ A (AU23 when the AU source has it)
Disgust     9+15+16             each ≥ A (AU16 when the AU source has it)
Contempt    R12A+R14A           unilateral AU12 ≥ A (|AU12_R − AU12_L|), AU14 ≥ A when available
==========  ==================  =======================================================

FACS intensity letters on the 0–5 scale of the AU columns: A (trace) = 1, B (slight) = 2, C (marked) = 3,
D (severe) = 4, E (maximum) = 5.

Scoring (ours; EMFACS itself is a coding manual, not an algorithm): a prototype's **match** on a frame is
the mean over its AUs of ``clip(intensity / required level, 0, 1)``, over the AUs the AU source provides
(the toolkit's sources have no AU16 or AU23; the geometric estimates have no AU14); a prototype with fewer
than half of its AUs available is not scored (NaN). The frame's **EMFACS expression** is ``Neutral`` when
no available AU reaches A, else the prototype with the highest match when it reaches ``threshold``
(default 0.8; ties go to the prototype with more AUs, so a full fear pattern is fear, not surprise), else
``Other`` (AUs active in no prototype's pattern).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["EMFACS_PROTOTYPES", "NEUTRAL", "OTHER", "Prototype", "emfacs_expressions", "prototype_scores"]

NEUTRAL = "Neutral"
OTHER = "Other"


@dataclass(frozen=True)
class Prototype:
    """One EMFACS prototype.

    Attributes:
        name: expression name (AffectNet spelling, ``if3d.classes``).
        code: the EMFACS code as printed (``"1+2+5B+26"``).
        levels: AU name → required intensity on the 0–5 scale (A = 1, B = 2).
        unilateral: AU whose one-sided intensity counts (``AU12`` for contempt: ``|AU12_R − AU12_L|``).
    """

    name: str
    code: str
    levels: tuple[tuple[str, float], ...]
    unilateral: str | None = None


EMFACS_PROTOTYPES: tuple[Prototype, ...] = (
    Prototype("Happy", "6+12", (("AU6", 1), ("AU12", 1))),
    Prototype("Sad", "1+4+15", (("AU1", 1), ("AU4", 1), ("AU15", 1))),
    Prototype("Surprise", "1+2+5B+26", (("AU1", 1), ("AU2", 1), ("AU5", 2), ("AU26", 1))),
    Prototype("Fear", "1+2+4+5+7+20+26", (("AU1", 1), ("AU2", 1), ("AU4", 1), ("AU5", 1), ("AU7", 1), ("AU20", 1),
                                          ("AU26", 1))),
    Prototype("Angry", "4+5+7+23", (("AU4", 1), ("AU5", 1), ("AU7", 1), ("AU23", 1))),
    Prototype("Disgust", "9+15+16", (("AU9", 1), ("AU15", 1), ("AU16", 1))),
    Prototype("Contempt", "R12A+R14A", (("AU12", 1), ("AU14", 1)), unilateral="AU12"),
)


def _au_values(aus: Mapping[str, np.ndarray], proto: Prototype, name: str) -> np.ndarray | None:
    if proto.unilateral == name:
        r, left = aus.get(f"{name}_R"), aus.get(f"{name}_L")
        if r is None or left is None:
            return None
        return np.abs(np.asarray(r, dtype=np.float64) - np.asarray(left, dtype=np.float64))
    v = aus.get(name)
    return None if v is None else np.asarray(v, dtype=np.float64)


def prototype_scores(aus: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Match of every prototype on every frame.

    Args:
        aus: AU name (``AU1`` …, and ``AU12_R``/``AU12_L`` for contempt) → [N] intensities on the 0–5 scale
            (NaN where the face was not measured).

    Returns:
        prototype name → float64 [N] match in [0, 1]; NaN for frames without values, and for prototypes
        with fewer than half of their AUs available.
    """
    n = len(next(iter(aus.values()))) if aus else 0
    out: dict[str, np.ndarray] = {}
    for proto in EMFACS_PROTOTYPES:
        parts = []
        for name, level in proto.levels:
            v = _au_values(aus, proto, name)
            if v is not None:
                parts.append(np.clip(v / level, 0.0, 1.0))
        if 2 * len(parts) < len(proto.levels) or not parts:
            out[proto.name] = np.full(n, np.nan)
        else:
            out[proto.name] = np.mean(parts, axis=0)
    return out


def emfacs_expressions(aus: Mapping[str, np.ndarray], threshold: float = 0.8
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The EMFACS expression of every frame (module docstring).

    Args:
        aus: AU name → [N] intensities on the 0–5 scale (NaN where not measured).
        threshold: the match a prototype needs.

    Returns:
        ``(labels, scores, active, per_prototype)``: ``labels`` object [N] (prototype name, ``Neutral``,
        ``Other``, or ``""`` where no AU was measured); ``scores`` float64 [N] the chosen prototype's match
        (1 − the strongest AU's level for ``Neutral``, NaN where unmeasured); ``active`` object [N] the AUs at
        level A or more, FACS style (``"4+7+15"``); ``per_prototype`` from :func:`prototype_scores`.

    Raises:
        ValueError: ``threshold`` outside (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"the EMFACS match threshold must be in (0, 1], got {threshold}")
    per = prototype_scores(aus)
    plain = {k: np.asarray(v, dtype=np.float64) for k, v in aus.items() if "_" not in k}
    n = len(next(iter(plain.values()))) if plain else 0
    names = sorted(plain, key=lambda k: int(k[2:]) if k[2:].isdigit() else 999)
    stack = np.stack([plain[k] for k in names], axis=1) if names else np.zeros((n, 0))
    measured = np.isfinite(stack).any(1) if names else np.zeros(n, bool)
    strongest = np.nanmax(np.where(np.isfinite(stack), stack, -np.inf), axis=1) if names else np.zeros(n)
    labels = np.full(n, "", dtype=object)
    scores = np.full(n, np.nan)
    active = np.full(n, "", dtype=object)
    order = sorted(EMFACS_PROTOTYPES, key=lambda p: -len(p.levels))  # more specific first on ties
    for i in range(n):
        if not measured[i]:
            continue
        active[i] = "+".join(k[2:] for k, v in zip(names, stack[i]) if np.isfinite(v) and v >= 1.0)
        if strongest[i] < 1.0:
            labels[i], scores[i] = NEUTRAL, 1.0 - max(0.0, strongest[i])
            continue
        best, best_score = OTHER, -1.0
        for proto in order:
            s = per[proto.name][i]
            if np.isfinite(s) and s > best_score + 1e-9:
                best, best_score = proto.name, float(s)
        if best_score >= threshold:
            labels[i], scores[i] = best, best_score
        else:
            labels[i], scores[i] = OTHER, best_score if best_score >= 0 else np.nan
    return labels, scores, active, per
