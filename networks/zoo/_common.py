"""Small pieces shared by the zoo models: key renaming for authors' checkpoints, frozen parameters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch.nn as nn
from torch import Tensor

__all__ = ["UNMAPPED", "UnexpectedArgumentError", "count_parameters", "freeze", "reject_arguments", "remap_prefixes",
           "top_level_keys"]

#: Prefix given to source keys that no rule recognises, so a strict load reports them as unexpected.
UNMAPPED = "<unmapped>."


class UnexpectedArgumentError(TypeError, ValueError):
    """A builder got keyword arguments it does not take (a ``TypeError`` as Python's own, and a ``ValueError``
    so that the training and test commands report it as bad input: one line, exit status 2)."""


def reject_arguments(builder: str, kwargs: Mapping[str, object]) -> None:
    """Raise :class:`UnexpectedArgumentError` naming ``kwargs`` when there are any (e.g. ``--faithful``, which
    only If3D models take)."""
    if kwargs:
        raise UnexpectedArgumentError(f"{builder}() got unexpected keyword arguments: {', '.join(sorted(kwargs))} "
                                      f"(options of other models)")


def remap_prefixes(
    state_dict: Mapping[str, Tensor],
    rules: Sequence[tuple[str, str]],
    discard: Iterable[str] = (),
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename keys by prefix: the first rule ``(source prefix, our prefix)`` that matches a key wins.

    Args:
        state_dict: tensors with the source's key names.
        rules: ordered ``(source prefix, our prefix)`` pairs, e.g. ``("features.4.", "backbone.layer1.")``.
        discard: source key prefixes left out on purpose (returned, to be reported as discarded).

    Returns:
        ``(mapped, discarded)``. A key no rule and no discard prefix matches is kept as
        ``"<unmapped>." + key`` so that a strict load names it instead of dropping it.
    """
    discard = tuple(discard)
    mapped: dict[str, Tensor] = {}
    discarded: list[str] = []
    for key, value in state_dict.items():
        if discard and key.startswith(discard):
            discarded.append(key)
            continue
        for src, dst in rules:
            if key.startswith(src):
                mapped[dst + key[len(src):]] = value
                break
        else:
            mapped[UNMAPPED + key] = value
    return mapped, discarded


def top_level_keys(state_dict: Mapping[str, object]) -> set[str]:
    """``{"features", "cat_head0", …}``: the first dotted component of every key."""
    return {k.split(".", 1)[0] for k in state_dict}


def freeze(module: nn.Module) -> nn.Module:
    """Set ``requires_grad=False`` on every parameter of ``module`` (returned for chaining)."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``; with ``trainable_only`` those with ``requires_grad``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
