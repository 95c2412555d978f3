"""The canonical expression class order of the toolkit: AffectNet-8, as used by DDAMFN and If3D.

Label ``i`` is ``AFFECTNET8[i]``. 7-class datasets use the first seven (no Contempt); every
dataset's own names are mapped onto this order through :func:`canonical_label`.
"""

from __future__ import annotations

from collections.abc import Sequence

AFFECTNET8: tuple[str, ...] = (
    "Neutral",
    "Happy",
    "Sad",
    "Surprise",
    "Fear",
    "Disgust",
    "Angry",
    "Contempt",
)
AFFECTNET7: tuple[str, ...] = AFFECTNET8[:7]

# Spellings used by the common FER datasets, lower-cased, onto the canonical index.
_SYNONYMS: dict[str, int] = {
    "neutral": 0, "neu": 0, "ne": 0,
    "happy": 1, "happiness": 1, "hap": 1, "ha": 1, "joy": 1,
    "sad": 2, "sadness": 2, "sa": 2,
    "surprise": 3, "surprised": 3, "sur": 3, "su": 3,
    "fear": 4, "fearful": 4, "afraid": 4, "fe": 4,
    "disgust": 5, "disgusted": 5, "dis": 5, "di": 5,
    "angry": 6, "anger": 6, "ang": 6, "an": 6,
    "contempt": 7, "con": 7,
}


def canonical_label(name: str) -> int:
    """Canonical AffectNet-8 index of a class name in any common spelling (case-insensitive).

    Raises:
        KeyError: the name is not a known expression class; the message lists the known names.
    """
    key = name.strip().lower()
    if key not in _SYNONYMS:
        raise KeyError(f"unknown expression class {name!r}; known: {', '.join(sorted(_SYNONYMS))}")
    return _SYNONYMS[key]


def class_names_for(num_classes: int, names: Sequence[str] | None = None) -> list[str]:
    """Names of the classes ``0 .. num_classes − 1``: the one resolver for a model's class names.

    Args:
        num_classes: C, the number of classes (≥ 1).
        names: names known for the first classes (a dataset's ``classes.json``, a checkpoint's
            ``class_names``), or None.

    Returns:
        ``names[:C]`` when there are enough; otherwise ``names`` extended by the canonical AffectNet-8
        names of the following indices (a 7-class dataset under an 8-class head gets ``Contempt``),
        then ``class_<i>`` beyond AffectNet-8.

    Raises:
        ValueError: ``num_classes`` < 1.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    known = [str(n) for n in (names or [])]
    if len(known) >= num_classes:
        return known[:num_classes]
    canonical = list(AFFECTNET8[len(known) : num_classes])
    generic = [f"class_{i}" for i in range(len(known) + len(canonical), num_classes)]
    return known + canonical + generic
