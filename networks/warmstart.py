"""Warm start of an If3D fusion model from a photo-only model and a render-only model.

A fusion that starts where the photo model stands can only gain from the render. :func:`warm_start`:

* copies a trained photo-only DDAMFN (:mod:`networks.ddamfn`, the same registered backbone and number of DDA
  heads) into the photo stream: its backbone into ``backbone.`` (shared) or ``photo_backbone.``, its heads into
  ``heads.`` (If3D applies the same heads to both streams, so they are the photo model's);
* sets the fusion to pass the photo through (each strategy's ``init_passthrough(pool)`` in its own file of
  :mod:`networks.fusion`, given the photo model's 7×7 pooling ``gdc``) and the MLP head to compute the photo
  model's linear classifier on it (:meth:`networks.if3d.If3DClassifier.init_passthrough`): in eval mode the
  fusion's logits then equal the photo model's on any input, up to float rounding (gate: up to the render's
  σ(−14) = 8.3e-7 share; SPP: only approximately, see :meth:`networks.fusion.SPPFusion.init_passthrough`);
* copies a trained render-only DDAMFN's backbone into ``render_backbone.`` (models with separate backbones);
* reports, tensor by tensor, where every weight came from and which were left as they were (random or
  ``--pretrained``), and what of each checkpoint was not used, and why (:class:`WarmStartReport`).

BatchNorm layers that the pass-through sets to the identity hold the statistics of a fresh layer; in training
mode they would normalise with the batch's statistics and break the pass-through from the first step.
:func:`calibrate_passthrough_norms` measures each such layer's input on a few training batches and sets its
running statistics to them with γ = sqrt(var + ε), β = mean: the identity in eval mode still, and nearly so in
training mode (the trainer does this before the first step).

Deliberate choices: no copying of heads or weights across streams (identical DDA heads make DDAMFN's head-
diversity loss P/ε); units of the MLP outside the pass-through keep their random weights with zero read-outs,
so they are not dead; the gate is left σ(14), not saturated, so it still receives a gradient.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from networks.fusion.common import PassThrough
from networks.if3d import If3DNet
from networks.weights import build_model_from_checkpoint

__all__ = ["WarmStartReport", "calibrate_passthrough_norms", "warm_start"]

_STREAM_PARTS = ("backbone", "heads", "gdc", "fc")


@dataclass
class WarmStartReport:
    """Where each tensor of a warm-started model came from.

    Attributes:
        model: ``If3DNet(<strategy>)``.
        photo, render: the checkpoint files (``None`` when not given or given as a module).
        origin: model state-dict key → its source, e.g. ``"photo checkpoint backbone.*"`` or
            ``"pass-through: …"``.
        left: model keys left as they were before the warm start (random initialisation or ``--pretrained``);
            a tensor the pass-through sets to the value it already had counts as left.
        unused: ``"<photo|render> <key prefix>*"`` → why it was not used (counts of tensors in ``unused_counts``).
        unused_counts: the number of checkpoint tensors behind each ``unused`` entry.
        passthrough: the fusion's :class:`~networks.fusion.common.PassThrough` (``None``: no photo model, or
            the classifier could not take it).
        norms: model-level BatchNorm names → leading channels set to the identity (to calibrate).
        notes: sentences on what could not be done and why.
    """

    model: str
    photo: str | None = None
    render: str | None = None
    origin: dict[str, str] = field(default_factory=dict)
    left: list[str] = field(default_factory=list)
    unused: dict[str, str] = field(default_factory=dict)
    unused_counts: dict[str, int] = field(default_factory=dict)
    passthrough: PassThrough | None = None
    norms: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        """True when the model's logits equal the photo model's (eval mode) from the start."""
        return self.passthrough is not None and self.passthrough.exact

    def __str__(self) -> str:
        groups: dict[tuple[str, str], int] = {}
        for key, source in self.origin.items():
            top = key.split(".", 1)[0]
            groups[(top, source)] = groups.get((top, source), 0) + 1
        lines = [f"warm start of {self.model} (photo {self.photo or '-'}, render {self.render or '-'}):"]
        lines += [f"  {top + '.*':<18} {n:5d} tensors ← {source}" for (top, source), n in groups.items()]
        left: dict[str, int] = {}
        for key in self.left:
            top = key.split(".", 1)[0]
            left[top] = left.get(top, 0) + 1
        if left:
            listed = ", ".join(f"{top}.* {n}" for top, n in left.items())
            lines.append(f"  left as they were (initialisation or --pretrained): {listed} tensors")
        for what, why in self.unused.items():
            lines.append(f"  not used: {what} ({self.unused_counts.get(what, 0)} tensors): {why}")
        if self.passthrough is not None:
            kind = "exact" if self.passthrough.exact else "APPROXIMATE"
            lines.append(f"  pass-through ({kind}): {self.passthrough.note}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _read(source: str | Path | nn.Module | None, role: str) -> tuple[nn.Module | None, str | None, list | None]:
    """(model, path, class names) of a ``--init-<role>`` argument: a checkpoint file or a built model."""
    if source is None or isinstance(source, nn.Module):
        return source, None, None
    model, report = build_model_from_checkpoint(source)
    names = report.metadata.get("class_names") if isinstance(report.metadata, Mapping) else None
    return model, str(source), list(names) if isinstance(names, Sequence) else None


def _check_stream(stream: nn.Module, model: If3DNet, role: str, where: str) -> None:
    if not all(hasattr(stream, part) for part in _STREAM_PARTS):
        raise ValueError(f"--init-{role} {where}: a {type(stream).__name__} is not a {role}-only DDAMFN model "
                         "(backbone, DDA heads, pooling, linear classifier); train one with --model ddamfn")
    theirs, ours = getattr(stream, "backbone_name", None), model.backbone_name
    if theirs != ours:
        raise ValueError(f"--init-{role} {where}: its backbone is {theirs}, this model's is {ours}; "
                         f"train the {role} model with --backbone {ours} or this one with --backbone {theirs}")


def _copy(dst: nn.Module, src: nn.Module, dst_prefix: str, src_prefix: str, label: str, where: str,
          report: WarmStartReport) -> None:
    """Copy every tensor of ``src`` into ``dst`` (same keys and shapes, else ValueError naming them)."""
    theirs, ours = src.state_dict(), dst.state_dict()
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    wrong = [k for k in ours if k in theirs and theirs[k].shape != ours[k].shape]
    if missing or extra or wrong:
        listed = [*(f"missing {dst_prefix}{k}" for k in missing), *(f"unexpected {src_prefix}{k}" for k in extra),
                  *(f"wrong shape {dst_prefix}{k}: {tuple(theirs[k].shape)} vs {tuple(ours[k].shape)}" for k in wrong)]
        raise ValueError(f"{where}: {src_prefix}* does not fit {dst_prefix}*: " + "; ".join(listed[:6])
                         + (f" … and {len(listed) - 6} more" if len(listed) > 6 else ""))
    dst.load_state_dict(theirs)
    for key in ours:
        report.origin[dst_prefix + key] = f"{label} {src_prefix}*"


def _class_rows(photo_names: list | None, names: Sequence[str] | None, rows: int, num_classes: int) -> Tensor | None:
    """Rows of the photo classifier in this model's class order, or None when the classes do not match."""
    if photo_names is not None and names is not None:
        if sorted(map(str, photo_names)) != sorted(map(str, names)) or len(photo_names) != rows:
            return None
        index = {str(n): i for i, n in enumerate(photo_names)}
        return torch.tensor([index[str(n)] for n in names])
    return torch.arange(rows) if rows == num_classes else None


def _snapshot(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _record_changes(module: nn.Module, before: Mapping[str, Tensor], prefix: str, label: str,
                    report: WarmStartReport) -> None:
    for key, value in module.state_dict().items():
        if not torch.equal(value, before[key]):
            report.origin[prefix + key] = label


def _unused(report: WarmStartReport, role: str, stream: nn.Module, part: str, why: str) -> None:
    count = sum(1 for k in stream.state_dict() if k.split(".", 1)[0] == part)
    if count:
        report.unused[f"{role} {part}.*"] = why
        report.unused_counts[f"{role} {part}.*"] = count


@torch.no_grad()
def _photo_passthrough(model: If3DNet, photo: nn.Module, photo_names: list | None,
                       class_names: Sequence[str] | None, report: WarmStartReport) -> None:
    """Fusion and classifier set to compute the photo model's logits (or notes on why not)."""
    init = getattr(model.fusion, "init_passthrough", None)
    if init is None:
        report.notes.append(f"{type(model.fusion).__name__} has no init_passthrough: fusion and classifier left "
                            "as they were")
        _unused(report, "photo", photo, "gdc", "no fusion pass-through to fold it into")
        _unused(report, "photo", photo, "fc", "no fusion pass-through to fold it into")
        return
    rows = _class_rows(photo_names, class_names, photo.fc.out_features, model.num_classes)
    if rows is None:
        report.notes.append(f"classes differ (photo model: {photo_names or photo.fc.out_features}, this model: "
                            f"{list(class_names) if class_names else model.num_classes}): fusion and classifier "
                            "left as they were")
        _unused(report, "photo", photo, "gdc", "the classes differ, so no pass-through")
        _unused(report, "photo", photo, "fc", "the classes differ, so no pass-through")
        return
    before = _snapshot(model.fusion)
    passthrough = init(photo.gdc)
    _record_changes(model.fusion, before, "fusion.", f"pass-through from the photo gdc.* ({model.strategy})",
                    report)
    fc_weight = photo.fc.weight.detach().float()[rows]
    fc_bias = photo.fc.bias.detach().float()[rows]
    readout_w, readout_b = passthrough.weight.to(fc_weight), passthrough.bias.to(fc_weight)
    before = _snapshot(model.classifier)
    norms = model.classifier.init_passthrough(fc_weight @ readout_w, fc_weight @ readout_b + fc_bias)
    _record_changes(model.classifier, before, "classifier.",
                    "pass-through of the photo fc.* (logit units; other units as initialised)", report)
    report.passthrough = passthrough
    report.norms = {**{f"fusion.{k}": n for k, n in passthrough.norms.items()},
                    **{f"classifier.{k}": n for k, n in norms.items()}}


def warm_start(
    model: nn.Module,
    photo: str | Path | nn.Module | None = None,
    render: str | Path | nn.Module | None = None,
    class_names: Sequence[str] | None = None,
) -> WarmStartReport:
    """Start an If3D fusion model from a photo-only and/or a render-only DDAMFN (see the module docstring).

    Args:
        model: an :class:`~networks.if3d.If3DNet` (any registered strategy), changed in place.
        photo: a photo-only DDAMFN checkpoint (any format :func:`networks.build_model_from_checkpoint` reads:
            a run's ``best.pth``/``last.pth``, an original DDAMFN file) or the model itself.
        render: likewise, a DDAMFN trained on renders; needs a model with separate backbones.
        class_names: this model's classes, in its order; the photo classifier's rows are matched by name when
            its checkpoint names its classes (else by position, when the counts agree).

    Returns:
        :class:`WarmStartReport` (``print`` it).

    Raises:
        ValueError: not an If3D model; a checkpoint that is not a DDAMFN, has another backbone or (photo)
            another number of DDA heads; a render checkpoint for a model with one shared backbone; tensors that
            do not fit. The message names the option and the file.
        FileNotFoundError, networks.weights.CheckpointFormatError, networks.weights.UnsafePickleError,
            networks.weights.WeightLoadError: an unreadable checkpoint.
    """
    if not isinstance(model, If3DNet):
        raise ValueError(f"--init-photo/--init-render start a two-stream If3D fusion model (if3d_*), not a "
                         f"{type(model).__name__}")
    photo_model, photo_path, photo_names = _read(photo, "photo")
    render_model, render_path, _ = _read(render, "render")
    report = WarmStartReport(model=f"If3DNet({model.strategy})", photo=photo_path, render=render_path)
    photo_backbone, render_backbone = model._backbones()
    if render_model is not None:
        _check_stream(render_model, model, "render", render_path or "<model>")
        if model.shared_backbone:
            raise ValueError(f"--init-render {render_path or '<model>'}: the {model.strategy} fusion runs one "
                             "backbone on both streams (from the photo model); a render model has nowhere to go")
    if photo_model is not None:
        where = photo_path or "<model>"
        _check_stream(photo_model, model, "photo", where)
        if len(photo_model.heads) != model.num_heads:
            raise ValueError(f"--init-photo {where}: the photo model has {len(photo_model.heads)} DDA heads, this "
                             f"model {model.num_heads}; build it with --num-heads {len(photo_model.heads)}")
        _copy(photo_backbone, photo_model.backbone, model.backbone_prefixes[0], "backbone.", "photo checkpoint",
              where, report)
        _copy(model.heads, photo_model.heads, "heads.", "heads.", "photo checkpoint", where, report)
        _photo_passthrough(model, photo_model, photo_names, class_names, report)
        for part in (k.split(".", 1)[0] for k in photo_model.state_dict()):
            if part not in _STREAM_PARTS:
                _unused(report, "photo", photo_model, part, "not applied by DDAMFN's forward")
    if render_model is not None:
        where = render_path or "<model>"
        _copy(render_backbone, render_model.backbone, "render_backbone.", "backbone.", "render checkpoint", where,
              report)
        _unused(report, "render", render_model, "heads", "If3D's DDA heads are shared by both streams; they come "
                "from the photo model" if photo_model is not None else "If3D's DDA heads are shared by both "
                "streams and serve the photo too")
        for part in ("gdc", "fc"):
            _unused(report, "render", render_model, part, "the fusion pools and classifies both streams itself")
        for part in (k.split(".", 1)[0] for k in render_model.state_dict()):
            if part not in _STREAM_PARTS:
                _unused(report, "render", render_model, part, "not applied by DDAMFN's forward")
    report.left = [k for k in model.state_dict() if k not in report.origin]
    return report


@torch.no_grad()
def calibrate_passthrough_norms(model: nn.Module, batches: Iterable[Sequence[Tensor]],
                                norms: Mapping[str, int]) -> int:
    """Give the BatchNorm layers a pass-through set to the identity the statistics of real inputs.

    Each named layer's input is measured over ``batches`` with the model in eval mode (per channel over the
    batch and spatial positions; the leading ``norms[name]`` channels only); then ``running_mean = mean``,
    ``running_var = var`` (unbiased), ``γ = sqrt(var + ε)``, ``β = mean``: the identity in eval mode as before,
    and close to it in training mode, where the layer normalises with the batch's own statistics.

    Args:
        model: the warm-started model (its training flag is restored).
        batches: model inputs, e.g. ``(photo [B, 3, H, W], render [B, 3, H, W])`` tuples on the model's device.
        norms: :attr:`WarmStartReport.norms`.

    Returns:
        The number of samples measured (0: nothing changed).
    """
    layers = {name: model.get_submodule(name) for name in norms}
    sums: dict[str, list[Tensor]] = {}
    handles = []
    for name, layer in layers.items():
        def hook(module, args, name=name):
            x = args[0].detach().double()
            n = norms[name]
            dims = [d for d in range(x.dim()) if d != 1]
            x = x[:, :n]
            entry = sums.setdefault(name, [x.new_zeros(n), x.new_zeros(n), x.new_zeros(())])
            entry[0] += x.sum(dims)
            entry[1] += (x * x).sum(dims)
            entry[2] += x.numel() / n
        handles.append(layer.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    samples = 0
    try:
        for inputs in batches:
            model(*inputs)
            samples += int(inputs[0].shape[0])
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    for name, (total, squares, count) in sums.items():
        if count < 2:
            continue
        layer, n = layers[name], norms[name]
        mean = total / count
        var = ((squares - count * mean * mean) / (count - 1)).clamp_min(0)
        layer.running_mean[:n] = mean.to(layer.running_mean)
        layer.running_var[:n] = var.to(layer.running_var)
        layer.weight[:n] = torch.sqrt(var + layer.eps).to(layer.weight)
        layer.bias[:n] = mean.to(layer.bias)
    return samples
