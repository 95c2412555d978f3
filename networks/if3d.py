"""If3D: two-stream facial expression model fusing a face photo with a render of its 3D face.

Wang et al., "If3D: Enhancing Facial Expression Inference with 3D Face Representations via
Intermediate Fusion"; original implementation ``networks/DDAM_smirkpic_fusion.py`` and the training
scripts ``affectnet_*_train.py`` of https://github.com/WangXiaoShawn/If3d (read as a source of facts;
no code is copied). Forward pass, for ``H`` DDA heads and ``C`` classes (each fact from the original's
``forward`` methods)::

    photo  [B,3,112,112] --photo backbone-->  P [B,512,7,7]     MixedFeatureNet without its last
    render [B,3,112,112] --render backbone--> R [B,512,7,7]     four children (If3D: features[:-4])
    alignment = mean((P − R)²)                                    on the backbone maps (If3D l3_loss)
    a_i = DDAHead_i(P), b_i = DDAHead_i(R)                        the SAME H heads on both streams
    P' = P · max_i a_i,  R' = R · max_i b_i                       element-wise max over heads
    z  = fusion(P', R')                                           networks.fusion (linear/attention/gate/spp)
    o  = MLP(z) [B, C+2]                                          fc1..fc4 (2048) + BN1d + LeakyReLU(0.2)
    logits = o[:, :C],  valence = o[:, C],  arousal = o[:, C+1]

Backbones: the linear strategy runs ONE MixedFeatureNet on both streams (If3D's
``DDAMNet_Smirk_Spatial_Alignment.features``); attention, gate and SPP run two
(``orig_features`` for the photo, ``smirk_features`` for the render). Each stream is a separate
backbone call (photo first), so in training mode BatchNorm sees each stream's own batch statistics, as
in If3D.

MLP head (:class:`If3DClassifier`): ``fc_k → BN1d_k → LeakyReLU(0.2) → dropout_k`` for k = 1..3, then
``fc4 → BN4 → LeakyReLU(0.2) → output``. If3D's dropout rates after fc1, fc2, fc3 differ by strategy
(its ``forward`` methods apply only some of the dropouts it builds): linear and attention (0.5, 0, 0),
gate and SPP (0.5, 0.4, 0.3) — each strategy's :class:`~networks.registry.FusionSpec` says which.

Output columns — read this before using an If3D checkpoint
----------------------------------------------------------
If3D's output layer has ``C + 2`` rows; its ``forward`` names column ``C`` ``arousal`` and column
``C + 1`` ``valence``. But its training loop unpacks the dataset's ``(image, label, val, aro)`` as
``(…, aro_true, val_true)``, swapping the two names once more, so in every trained If3D checkpoint
**column C was fitted to the valence annotation and column C + 1 to the arousal annotation.** This
model's output layer keeps If3D's row order and names it by what it predicts: ``valence = o[:, C]``,
``arousal = o[:, C + 1]``. A converted If3D checkpoint therefore needs no row permutation; only
If3D's names were wrong. (If3D's ``forward`` also hard-codes ``output[:, :8]``, ``[:, 8]``, ``[:, 9]``;
we slice with ``C``, which is the same for its 8-class checkpoints.)

Faithful mode (``faithful=True``) reproduces If3D's architecture and state-dict content exactly (the
key names are ours; :meth:`If3DNet.remap_state_dict` converts): If3D's attention fusion on 1×1 maps
(whose query/key never learn), the unused ``Smirk_Linear`` (358 → 512, no bias) of the linear
model, each DDA head's unused 7×7 block, and If3D's backbone sharing and dropout. Unused layers are
frozen (``requires_grad=False``; they never receive a gradient in If3D either). Parameter counts with 8
classes and 4 heads: linear 19.21 M, attention 22.35 M, gate 72.85 M, SPP 64.99 M.

Default (improved) mode differs only where If3D is defective: ``if3d_attention`` uses
:class:`~networks.fusion.CrossAttentionFusion` over the 49 spatial tokens, and the unused
``Smirk_Linear`` is not built. Loss-side defects of If3D (head-diversity loss, CCC) live in
:mod:`networks.criteria`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.ddamfn import DDAHead, remap_original_dda_head_keys
from networks.mixedfeaturenet import MixedFeatureNet, _freeze, remap_original_mfn_keys
from networks.outputs import If3DOutput
from networks.registry import (
    FusionSpec,
    backbone_spec,
    create_backbone,
    create_fusion,
    fusion_spec,
    list_fusions,
)

__all__ = [
    "If3DClassifier",
    "If3DFeatures",
    "If3DNet",
    "infer_if3d_config",
]

#: Width of If3D's unused ``Smirk_Linear`` input (SMIRK's 358 parameters per face, presumably:
#: 300 shape + 50 expression + 3 pose + 3 jaw + 2 eyelid).
SMIRK_PARAMS_WIDTH = 358

_VA_OUTPUTS = 2
_CLASSIFIER_LAYERS = ("fc1", "bn1", "fc2", "bn2", "fc3", "bn3", "fc4", "bn4", "output")


class If3DClassifier(nn.Module):
    """If3D's MLP head: three hidden 2048-wide blocks and an output layer.

    ``y = drop_k(LeakyReLU_0.2(BN1d_k(fc_k(y))))`` for k = 1, 2, 3; ``y = LeakyReLU_0.2(BN1d_4(fc4(y)))``;
    ``out = output(y)`` (source: the ``forward`` methods of If3D's four fusion classes; layer names
    ``fc1..fc4``, ``bn1..bn4``, ``output`` are If3D's).

    Args:
        in_features: fusion width (1024 linear, 512 attention, 25088 gate, 21504 SPP).
        num_outputs: C + 2 with valence/arousal outputs, else C.
        hidden: width of the hidden layers (2048).
        dropout: rates after fc1, fc2, fc3 (0 = no dropout layer).
        negative_slope: LeakyReLU slope (0.2).

    Shapes: [B, in_features] → [B, num_outputs] (raw outputs: logits, then valence, arousal).
    """

    def __init__(
        self,
        in_features: int,
        num_outputs: int,
        hidden: int = 2048,
        dropout: Sequence[float] = (0.5, 0.0, 0.0),
        negative_slope: float = 0.2,
    ) -> None:
        super().__init__()
        dropout = tuple(float(p) for p in dropout)
        if len(dropout) != 3 or not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError(f"If3DClassifier: dropout must be three rates in [0, 1), got {dropout}")
        self.dropout_rates = dropout
        self.fc1 = nn.Linear(in_features, hidden)
        self.bn1 = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.bn2 = nn.BatchNorm1d(hidden)
        self.fc3 = nn.Linear(hidden, hidden)
        self.bn3 = nn.BatchNorm1d(hidden)
        self.fc4 = nn.Linear(hidden, hidden)
        self.bn4 = nn.BatchNorm1d(hidden)
        self.output = nn.Linear(hidden, num_outputs)
        self.act = nn.LeakyReLU(negative_slope)
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(p) if p > 0 else nn.Identity() for p in dropout)

    @torch.no_grad()
    def init_passthrough(self, weight: Tensor, bias: Tensor) -> dict[str, int]:
        """Make the first K outputs compute ``z = x @ weight.T + bias`` exactly (eval mode), K = weight rows.

        The MLP is not linear (LeakyReLU with slope a), but ``f(z) − f(−z) = (1 + a)·z`` for any z, so K signals
        pass every hidden layer as the pair (z, −z) in units 0..2K−1:

        * fc1 rows 0..K−1 = ``weight``, rows K..2K−1 = ``−weight`` (biases likewise);
        * fc2, fc3, fc4 and the output rows 0..K−1 read ``(f(z) − f(−z)) / (1 + a)`` from those units and
          re-split it into the pair;
        * the BN1d layers of those units are the identity (γ = sqrt(running_var + ε), β = running_mean).

        The other hidden units keep their initial weights (random features of the whole input), and every
        weight *from* them into the pass-through units and the first K outputs is 0, so they add nothing at
        first yet receive gradients from the first step (zero-initialised read-outs rather than dead units).
        Output rows K and above (valence, arousal) keep their initialisation. Dropout is inactive in eval mode.

        Args:
            weight: [K, in_features]; 2K must not exceed the hidden width.
            bias: [K].

        Returns:
            The BatchNorm1d layers whose units 0..2K−1 were set to the identity, name → 2K (their statistics
            are calibrated by :func:`networks.warmstart.calibrate_passthrough_norms`).

        Raises:
            ValueError: shapes that do not fit this classifier.
        """
        k, width = weight.shape
        hidden = self.fc1.out_features
        if width != self.fc1.in_features or bias.shape != (k,) or 2 * k > hidden or k > self.output.out_features:
            raise ValueError(f"If3DClassifier.init_passthrough: a [{k}, {width}] map does not fit "
                             f"{self.fc1.in_features} inputs, {hidden} hidden units, {self.output.out_features} outputs")
        weight, bias = weight.to(self.fc1.weight), bias.to(self.fc1.bias)
        self.fc1.weight[: 2 * k] = torch.cat([weight, -weight])
        self.fc1.bias[: 2 * k] = torch.cat([bias, -bias])
        eye = torch.eye(k, device=weight.device, dtype=weight.dtype) / (1.0 + self.act.negative_slope)
        unpair = torch.cat([eye, -eye], dim=1)  # [K, 2K]: (f(z) − f(−z)) / (1 + a)
        for layer in (self.fc2, self.fc3, self.fc4):
            layer.weight[: 2 * k] = 0.0
            layer.weight[: 2 * k, : 2 * k] = torch.cat([unpair, -unpair])
            layer.bias[: 2 * k] = 0.0
        self.output.weight[:k] = 0.0
        self.output.weight[:k, : 2 * k] = unpair
        self.output.bias[:k] = 0.0
        norms = {name: 2 * k for name in ("bn1", "bn2", "bn3", "bn4")}
        for name in norms:
            bn = getattr(self, name)
            bn.weight[: 2 * k] = torch.sqrt(bn.running_var[: 2 * k] + bn.eps)
            bn.bias[: 2 * k] = bn.running_mean[: 2 * k]
        return norms

    def forward(self, x: Tensor) -> Tensor:
        y = self.drop1(self.act(self.bn1(self.fc1(x))))
        y = self.drop2(self.act(self.bn2(self.fc2(y))))
        y = self.drop3(self.act(self.bn3(self.fc3(y))))
        y = self.act(self.bn4(self.fc4(y)))
        return self.output(y)


@dataclass
class If3DFeatures:
    """Intermediate result of :meth:`If3DNet.forward_features`.

    Attributes:
        photo_features, render_features: [B, 512, 7, 7] backbone maps.
        photo_heads, render_heads: [H, B, 512, 7, 7] DDA head maps, values in (0, 1).
        alignment: [] MSE between the two backbone maps.
        fused: [B, F] fusion output (F = ``model.fusion.out_features``).
    """

    photo_features: Tensor
    render_features: Tensor
    photo_heads: Tensor
    render_heads: Tensor
    alignment: Tensor
    fused: Tensor


class If3DNet(nn.Module):
    """Two-stream If3D model: photo and render through MixedFeatureNet, shared DDA heads, fusion, MLP.

    See the module docstring for the forward pass, the output columns and faithful mode.

    Args:
        strategy: registered fusion strategy (:func:`networks.registry.list_fusions`: ``linear``,
            ``attention``, ``gate``, ``spp`` and any registered later).
        num_classes: C, expression classes (8 for AffectNet-8).
        num_heads: H, DDA heads shared by both streams (If3D's scripts use 4).
        shared_backbone: one backbone for both streams; default (``None``) the strategy's
            (:attr:`FusionSpec.shared_backbone`: If3D shares it for ``linear`` only).
        va_outputs: predict valence and arousal (output layer C + 2 wide) or not (C wide).
        dropout: MLP dropout after fc1, fc2, fc3: three rates, or one rate for all three; default
            (``None``) the strategy's (:attr:`FusionSpec.dropout`, If3D's rates).
        faithful: reproduce If3D's architecture exactly (see the module docstring); requires If3D's
            backbone, backbone sharing, dropout and VA outputs, and a strategy If3D has.
        backbone: registered backbone (:func:`networks.registry.list_backbones`) of both streams;
            default MixedFeatureNet, as in If3D. Its :class:`~networks.registry.BackboneSpec` sets the
            input size and the map the heads and the fusion see.
        fusion_kwargs: extra arguments of the fusion module (e.g. ``{"num_heads": 8}`` for the
            improved attention); not allowed with ``faithful``.

    Attributes:
        backbone (shared) or photo_backbone and render_backbone (separate): the registered backbone
            (MixedFeatureNet without embedding head by default).
        backbone_spec: its :class:`~networks.registry.BackboneSpec` (input size, mean/std, map).
        heads: ``nn.ModuleList`` of H :class:`~networks.ddamfn.DDAHead`, applied to both streams.
        fusion: the fusion module (``networks.fusion``).
        classifier: :class:`If3DClassifier`.
        smirk_linear: faithful linear model only: If3D's unused ``Smirk_Linear`` (frozen).
        input_streams: ``("photo", "render")``: the engine calls ``model(photo, render)``.

    Raises:
        ValueError: unknown strategy, bad sizes, or a faithful model with non-If3D settings.
    """

    input_streams = ("photo", "render")

    def __init__(
        self,
        strategy: str,
        num_classes: int = 8,
        num_heads: int = 4,
        shared_backbone: bool | None = None,
        va_outputs: bool = True,
        dropout: float | Sequence[float] | None = None,
        faithful: bool = False,
        fusion_kwargs: Mapping | None = None,
        backbone: str = "mixedfeaturenet",
    ) -> None:
        super().__init__()
        if strategy not in list_fusions():
            raise ValueError(f"unknown If3D fusion strategy {strategy!r}; known: {', '.join(list_fusions())}")
        if num_classes < 1 or num_heads < 1:
            raise ValueError(f"If3DNet needs num_classes >= 1 and num_heads >= 1, got {num_classes}, {num_heads}")
        spec: FusionSpec = fusion_spec(strategy)
        if shared_backbone is None:
            shared_backbone = spec.shared_backbone
        if dropout is None:
            dropout = spec.dropout
        elif isinstance(dropout, (int, float)):
            dropout = (float(dropout),) * 3
        dropout = tuple(float(p) for p in dropout)
        if faithful:
            problems = []
            if spec.if3d_class is None:
                problems.append(f"strategy {strategy!r} (If3D has no such model)")
            if backbone != "mixedfeaturenet":
                problems.append(f"backbone={backbone!r} (If3D: mixedfeaturenet)")
            if shared_backbone != spec.shared_backbone:
                problems.append(f"shared_backbone={shared_backbone} (If3D: {spec.shared_backbone})")
            if dropout != tuple(spec.dropout):
                problems.append(f"dropout={dropout} (If3D: {spec.dropout})")
            if not va_outputs:
                problems.append("va_outputs=False (If3D always predicts valence and arousal)")
            if fusion_kwargs:
                problems.append(f"fusion_kwargs={dict(fusion_kwargs)}")
            if problems:
                raise ValueError(f"faithful If3D {strategy} model cannot have " + "; ".join(problems))

        self.strategy = strategy
        self.spec = spec
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.shared_backbone = shared_backbone
        self.va_outputs = va_outputs
        self.faithful = faithful
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)

        if shared_backbone:
            self.backbone = create_backbone(backbone)
        else:
            self.photo_backbone = create_backbone(backbone)
            self.render_backbone = create_backbone(backbone)
        channels, side = self.backbone_spec.out_channels, self.backbone_spec.feature_size
        self.heads = nn.ModuleList(DDAHead(channels, map_size=side) for _ in range(num_heads))
        self.fusion = create_fusion(strategy, faithful=faithful, channels=channels, spatial=side,
                                    **dict(fusion_kwargs or {}))
        self.classifier = If3DClassifier(
            self.fusion.out_features, num_classes + (_VA_OUTPUTS if va_outputs else 0), dropout=dropout
        )
        if faithful and spec.faithful_smirk_linear:
            # If3D builds nn.Linear(358, 512, bias=False) but never calls it; kept frozen for checkpoints
            self.smirk_linear = _freeze(nn.Linear(SMIRK_PARAMS_WIDTH, channels, bias=False))

    # ------------------------------------------------------------------------------------------
    # forward
    # ------------------------------------------------------------------------------------------
    @property
    def backbone_prefixes(self) -> tuple[str, ...]:
        """State-dict prefixes of the backbone(s): ``("backbone.",)`` or photo's and render's."""
        return ("backbone.",) if self.shared_backbone else ("photo_backbone.", "render_backbone.")

    def _backbones(self) -> tuple[nn.Module, nn.Module]:
        if self.shared_backbone:
            return self.backbone, self.backbone
        return self.photo_backbone, self.render_backbone

    def _heads(self, features: Tensor) -> tuple[Tensor, Tensor]:
        maps = [head(features) for head in self.heads]
        combined = maps[0]
        for m in maps[1:]:
            combined = torch.maximum(combined, m)
        return torch.stack(maps), combined

    def forward_features(self, photo: Tensor, render: Tensor) -> If3DFeatures:
        """Photo and render → backbone maps, head maps, alignment term and fused vector.

        Args:
            photo: [B, 3, 112, 112] RGB face, float, ImageNet-normalised.
            render: [B, 3, 112, 112] the render of the same face, same normalisation.

        Raises:
            ValueError: inputs are not two float [B, 3, 112, 112] batches of the same shape.
        """
        size = self.backbone_spec.input_size
        for name, x in (("photo", photo), ("render", render)):
            if x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[-2:]) != (size, size):
                raise ValueError(f"If3DNet: {name} must be [B, 3, {size}, {size}], got {tuple(x.shape)}")
            if not x.is_floating_point():
                raise ValueError(f"If3DNet: {name} must be normalised float, got dtype {x.dtype}")
        if photo.shape != render.shape:
            raise ValueError(f"If3DNet: photo {tuple(photo.shape)} and render {tuple(render.shape)} differ")
        photo_backbone, render_backbone = self._backbones()
        photo_features = photo_backbone.forward_features(photo)
        render_features = render_backbone.forward_features(render)
        alignment = F.mse_loss(photo_features, render_features)
        photo_heads, photo_attention = self._heads(photo_features)
        render_heads, render_attention = self._heads(render_features)
        fused = self.fusion(photo_features * photo_attention, render_features * render_attention)
        return If3DFeatures(photo_features, render_features, photo_heads, render_heads, alignment, fused)

    def forward_head(self, fused: Tensor) -> Tensor:
        """Fused vector [B, F] → raw outputs [B, C + 2] (logits, valence, arousal) or [B, C]."""
        return self.classifier(fused)

    def forward(self, photo: Tensor, render: Tensor) -> If3DOutput:
        """Photo and render of the same faces → :class:`~networks.outputs.If3DOutput`.

        Args:
            photo: [B, 3, 112, 112] float, ImageNet-normalised RGB.
            render: [B, 3, 112, 112] float, same normalisation.

        Returns:
            ``logits`` [B, C]; ``valence``, ``arousal`` [B] (unbounded linear outputs, trained on the
            AffectNet [-1, 1] scale) or ``None`` without VA outputs; backbone maps [B, 512, 7, 7]; head
            maps [H, B, 512, 7, 7]; ``alignment`` [] MSE of the backbone maps.
        """
        feats = self.forward_features(photo, render)
        out = self.forward_head(feats.fused)
        c = self.num_classes
        valence = out[:, c] if self.va_outputs else None
        arousal = out[:, c + 1] if self.va_outputs else None
        return If3DOutput(
            logits=out[:, :c],
            valence=valence,
            arousal=arousal,
            photo_features=feats.photo_features,
            render_features=feats.render_features,
            photo_heads=feats.photo_heads,
            render_heads=feats.render_heads,
            alignment=feats.alignment,
        )

    # ------------------------------------------------------------------------------------------
    # foreign weights
    # ------------------------------------------------------------------------------------------
    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (protocol in docs/INTERFACES.md).

        Args:
            state_dict: original key names (a ``{'model_state_dict': ...}`` wrapper is unwrapped).
            source:
                ``"if3d"``: an If3D model (keys of ``../shared/spec/state_dict_specs.json``). Into a
                model of the same strategy every corresponding layer is mapped (faithful: the whole
                model; improved attention: all but If3D's query/key/value convs, the 7×7 depthwise
                block initialising the pooling); into another strategy only backbone(s) and DDA heads.
                The output layer keeps its row order (rows 0..C−1 logits, row C → our ``valence``,
                row C+1 → our ``arousal``: If3D's names for these two rows are swapped, see the module
                docstring); a model without VA outputs takes rows 0..C−1.
                ``"mfn_module"``: an original MixedFeatureNet (MS-Celeb-1M ``MFN_msceleb.pth``) → each
                backbone; its embedding head is discarded as If3D's ``children()[:-4]`` does. Likewise any
                other source of the backbone's own weights (``"torchvision_mobilenet_v2"`` …), passed on
                to the backbone's ``remap_state_dict``.
                ``"ddamfn"``: a DDAMFN ``DDAMNet`` → backbone(s), heads 0..min(H, H_ckpt)−1, and its
                7×7 ``Linear`` into the fusion's depthwise block where the shapes agree.

        Returns:
            ``(mapped, prefixes, discarded)``: mapped state dict; the model key prefixes it fills
            (``None`` = whole model); source keys intentionally left out.

        Raises:
            ValueError: unsupported source, or an If3D checkpoint with separate backbones loaded into
                a shared-backbone model (which of the two would be ambiguous).
        """
        sd = _unwrap(state_dict)
        if source in ("if3d", "ddamfn"):
            if not isinstance(self._backbones()[0], MixedFeatureNet):
                raise ValueError(f"{source} checkpoints hold MixedFeatureNet backbones; this model's backbone is "
                                 f"{self.backbone_name!r}")
            return self._remap_if3d(sd) if source == "if3d" else self._remap_ddamfn(sd)
        # any other source is a backbone's own weights (MS-Celeb MixedFeatureNet, an ImageNet file …): each backbone
        remap = getattr(self._backbones()[0], "remap_state_dict", None)
        if remap is None:
            raise ValueError(f"If3DNet cannot load weights of source {source!r} into a {self.backbone_name} backbone")
        mapped_one, _, discarded = remap(sd, source)
        mapped = {p + k: v for p in self.backbone_prefixes for k, v in mapped_one.items()}
        return mapped, list(self.backbone_prefixes), discarded

    def _map_backbones(self, sd: Mapping[str, Tensor], layout: str) -> dict[str, Tensor]:
        """Backbone keys of an If3D/DDAMFN state dict (``features.`` or ``orig_/smirk_features.``)."""
        out: dict[str, Tensor] = {}
        if layout == "shared":
            feats = {k: v for k, v in sd.items() if k.startswith("features.")}
            for prefix in self.backbone_prefixes:
                out.update(remap_original_mfn_keys(feats, src_prefix="features.", dst_prefix=prefix))
            return out
        if self.shared_backbone:
            raise ValueError(
                "this If3D checkpoint has separate photo and render backbones (orig_features, "
                "smirk_features); build the model with shared_backbone=False to load it"
            )
        for src, dst in (("orig_features.", "photo_backbone."), ("smirk_features.", "render_backbone.")):
            part = {k: v for k, v in sd.items() if k.startswith(src)}
            out.update(remap_original_mfn_keys(part, src_prefix=src, dst_prefix=dst))
        return out

    def _map_heads(self, sd: Mapping[str, Tensor], limit: int | None = None) -> tuple[dict[str, Tensor], list[int]]:
        ids = sorted(_head_ids(sd))
        if limit is not None:
            ids = [i for i in ids if i < limit]
        out: dict[str, Tensor] = {}
        for i in ids:
            out.update(remap_original_dda_head_keys(sd, f"cat_head{i}.", f"heads.{i}."))
        return out, ids

    def _remap_if3d(self, sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        name, _ = infer_if3d_config(sd)
        source_strategy = name.removeprefix("if3d_")
        mapped = self._map_backbones(sd, "shared" if fusion_spec(source_strategy).shared_backbone else "separate")
        heads, _ = self._map_heads(sd)
        mapped.update(heads)
        prefixes = [*self.backbone_prefixes, "heads."]
        used = ["features.", "orig_features.", "smirk_features.", "cat_head"]
        if source_strategy == self.strategy:
            own = [*self.spec.if3d_keys, *(self.spec.faithful_keys if self.faithful else ())]
            pairs = [("Linear.", "fusion.depthwise."), *((src, f"fusion.{dst}") for src, dst in own)]
            if hasattr(self, "smirk_linear"):
                pairs.append(("Smirk_Linear.", "smirk_linear."))
            pairs += [(f"{layer}.", f"classifier.{layer}.") for layer in _CLASSIFIER_LAYERS]
            for src, dst in pairs:
                mapped.update(_prefixed(sd, src, dst))
                used.append(src)
                if not dst.startswith("classifier."):
                    prefixes.append(dst)
            prefixes.append("classifier.")
            if not self.va_outputs:
                for key in ("classifier.output.weight", "classifier.output.bias"):
                    if key in mapped:
                        mapped[key] = mapped[key][: self.num_classes]
        discarded = [k for k in sd if not k.startswith(tuple(used))]
        return mapped, self._whole_or(prefixes), discarded

    def _whole_or(self, prefixes: list[str]) -> list[str] | None:
        """``None`` (whole model) when ``prefixes`` cover every state-dict key of the model."""
        covered = all(k.startswith(tuple(prefixes)) for k in self.state_dict())
        return None if covered else prefixes

    def _remap_ddamfn(self, sd: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        mapped = self._map_backbones(sd, "shared")
        heads, ids = self._map_heads(sd, limit=self.num_heads)
        mapped.update(heads)
        prefixes = [*self.backbone_prefixes, *(f"heads.{i}." for i in ids)]
        used_prefixes = ["features.", *(f"cat_head{i}." for i in ids)]
        gdc = sd.get("Linear.conv.weight")
        if gdc is not None and gdc.shape == self.fusion.depthwise.conv.weight.shape:
            mapped.update(_prefixed(sd, "Linear.", "fusion.depthwise."))
            prefixes.append("fusion.depthwise.")
            used_prefixes.append("Linear.")
        discarded = [k for k in sd if not k.startswith(tuple(used_prefixes))]
        return mapped, prefixes, discarded


def _prefixed(sd: Mapping[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
    return {dst + k[len(src) :]: v for k, v in sd.items() if k.startswith(src)}


def _head_ids(sd: Mapping[str, Tensor]) -> set[int]:
    ids = set()
    for key in sd:
        m = re.match(r"^cat_head(\d+)\.", key)
        if m:
            ids.add(int(m.group(1)))
    return ids


def _unwrap(state_dict: Mapping) -> Mapping[str, Tensor]:
    inner = state_dict.get("model_state_dict") if isinstance(state_dict, Mapping) else None
    return inner if isinstance(inner, Mapping) else state_dict


def infer_if3d_config(state_dict: Mapping) -> tuple[str, dict]:
    """Recognise an If3D state dict: ``(model name, builder kwargs)`` for :func:`networks.create_model`.

    The strategy follows from If3D's layer names, as each registered strategy declares them
    (:attr:`FusionSpec.if3d_marker`: ``attention_fusion.*`` → attention, ``gate_fusion.*`` → gate); a
    checkpoint without such layers is told apart by its backbone layout (separate
    ``orig_features``/``smirk_features`` → SPP, one ``features`` → linear); the number of heads is the number of
    ``cat_head{i}`` modules and the number of classes is the output layer's rows minus 2.

    Args:
        state_dict: If3D's ``model_state_dict`` (or the whole ``{'model_state_dict': ...}`` file).

    Returns:
        e.g. ``("if3d_gate", {"num_classes": 8, "num_heads": 4, "faithful": True})``.

    Raises:
        ValueError: not an If3D state dict (e.g. a DDAMFN or our own checkpoint); the message says which
            keys are missing.
    """
    sd = _unwrap(state_dict)
    keys = set(sd)
    missing = [k for k in ("output.weight", "fc1.weight", "Linear.conv.weight") if k not in keys]
    heads = _head_ids(sd)
    if missing or not heads:
        raise ValueError(
            "not an If3D state dict: missing "
            + ", ".join(missing + ([] if heads else ["cat_head0.*"]))
        )
    separate = any(k.startswith("orig_features.") for k in keys) and any(k.startswith("smirk_features.") for k in keys)
    shared = any(k.startswith("features.") for k in keys)
    if not (separate or shared):
        raise ValueError("not an If3D state dict: no backbone keys (features.* or orig_features.*/smirk_features.*)")
    if3d_strategies = {n: fusion_spec(n) for n in list_fusions() if fusion_spec(n).if3d_class is not None}
    marked = [n for n, spec in if3d_strategies.items()
              if spec.if3d_marker and any(k.startswith(spec.if3d_marker) for k in keys)]
    if not marked:  # no strategy-specific layers: told apart by the backbone layout
        marked = [n for n, spec in if3d_strategies.items() if spec.if3d_marker is None
                  and spec.shared_backbone == (not separate)]
    if len(marked) != 1:
        raise ValueError(f"cannot tell the If3D strategy of this state dict (candidates: {marked or 'none'})")
    strategy = marked[0]
    if if3d_strategies[strategy].shared_backbone == separate:
        raise ValueError(f"inconsistent If3D state dict: {strategy} fusion with the other strategies' backbone layout")
    rows = sd["output.weight"].shape[0]
    if rows <= _VA_OUTPUTS:
        raise ValueError(f"If3D output layer has {rows} rows; expected num_classes + 2")
    if sorted(heads) != list(range(len(heads))):
        raise ValueError(f"If3D DDA heads are not numbered 0..H-1: {sorted(heads)}")
    return f"if3d_{strategy}", {"num_classes": rows - _VA_OUTPUTS, "num_heads": len(heads), "faithful": True}
