"""Field types for the configuration dataclasses from which the command lines are generated (tyro).

The training and test commands are generated from dataclasses by tyro (``tyro.cli``); these
annotations give the few option shapes a plain type does not:

- :data:`Flag`: an optional boolean written as a flag pair, ``--x`` / ``--no-x``; ``None`` (not given)
  means "the default of the device or the recipe".
- :class:`OptionalValue`: an option whose value may be left out, as ``--amp`` (= ``--amp auto``) or
  ``--final-checkpoint`` (= ``--final-checkpoint FinalCheckPoints``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import tyro
from tyro.constructors import PrimitiveConstructorSpec

__all__ = ["Flag", "OptionalValue"]

#: ``bool | None`` written as ``--x`` / ``--no-x`` (None when neither is given).
Flag = Annotated[bool | None, tyro.conf.DisallowNone]


def OptionalValue(const: str, choices: Sequence[str] | None = None) -> PrimitiveConstructorSpec:  # noqa: N802
    """Annotation for a ``str | None`` option that may be given without a value (then ``const``).

    Args:
        const: the value of the bare option.
        choices: allowed values, or None for any string.
    """
    choices = tuple(choices) if choices is not None else None

    def from_args(args: list[str]) -> str:
        if not args:
            return const
        if len(args) != 1:
            raise ValueError(f"expected at most one value, got {len(args)}")
        if choices is not None and args[0] not in choices:
            raise ValueError(f"{args[0]!r} is not one of {', '.join(choices)}")
        return args[0]

    metavar = "[" + ("{" + ",".join(choices) + "}" if choices else "VALUE") + "]"
    return PrimitiveConstructorSpec(
        nargs="*",
        metavar=metavar,
        instance_from_str=from_args,
        is_instance=lambda x: x is None or isinstance(x, str),
        str_from_instance=lambda x: [] if x is None else [x],
    )
