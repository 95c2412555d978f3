"""Name → builder registry for every model of the toolkit (timm's ``register_model`` pattern).

Builders register themselves with :func:`register_model`; :func:`create_model` is the one
entry point used by the scripts, the training engine and the tests.
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

_MODEL_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn`` under its ``__name__`` (decorator).

    Raises:
        ValueError: a builder of that name is already registered.
    """
    name = fn.__name__
    if name in _MODEL_BUILDERS:
        raise ValueError(f"model name {name!r} is registered twice")
    _MODEL_BUILDERS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_MODEL_BUILDERS)


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a model by registered name, e.g. ``create_model('ddamfn', num_classes=8)``.

    Keyword arguments go to the builder unchanged (see each builder's docstring).

    Raises:
        KeyError: ``name`` is not registered; the message lists the known names.
    """
    try:
        builder = _MODEL_BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None
    return builder(**kwargs)
