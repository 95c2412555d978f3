"""DDAMFN: MixedFeatureNet + dual-direction attention (DDA) heads, for facial expression recognition.

Zhang, Li, Liu, Xu, "A Dual-Direction Attention Mixed Feature Network for Facial Expression
Recognition", Electronics 12(17):3595, 2023; original implementation ``networks/DDAM.py``
(``DDAMNet``, ``CoordAttHead``, ``CoordAtt``) and the ``AttentionLoss`` of its training scripts,
https://github.com/SainingZhang/DDAMFN.

Forward pass (shapes for a 112×112 input, ``H`` heads, ``C`` classes)::

    x [B,3,112,112] --MixedFeatureNet.forward_features--> f [B,512,7,7]
    a_i = DDAHead_i(f)                            [B,512,7,7]   i = 0..H-1
    y   = f * max_i a_i                           [B,512,7,7]
    logits = fc(flatten(gdc(y)))                 [B,C]          gdc: 7×7 depthwise conv + BN

Module names are ours (``backbone``, ``heads``, ``gdc``, ``fc``); :meth:`DDAMFN.remap_state_dict`
loads the original layouts (``features.*``, ``cat_head{i}.CoordAtt.*``, ``Linear``, ``fc``, ``bn``).

Faithfulness notes: the original DDA head's ``CoordAtt.Linear`` (a 7×7 depthwise linear block) and
``DDAMNet.bn`` (``BatchNorm1d(num_class)``) are built but never used in ``forward``. They are kept
as frozen parameters (``heads.{i}.unused_gdc``, ``unused_bn``) so checkpoints load strictly and the
parameter count matches the original's 4.19 M (8 classes, 2 heads); see also
:mod:`networks.mixedfeaturenet` for the backbone's own unused MixConv BN/PReLU.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.mixedfeaturenet import ConvBnAct, MixedFeatureNet, _freeze, remap_original_mfn_keys
from networks.outputs import DDAMFNOutput
from networks.registry import backbone_spec, create_backbone, register_model

__all__ = [
    "ATTENTION_LOSS_EPS",
    "DDAHead",
    "DDAMFN",
    "attention_loss",
    "ddamfn",
    "remap_original_dda_head_keys",
]

#: ``eps`` of DDAMFN's ``AttentionLoss``: Python's ``sys.float_info.epsilon`` (2.22e-16).
ATTENTION_LOSS_EPS = sys.float_info.epsilon

class DDAHead(nn.Module):
    """Dual-direction attention head (the original ``CoordAttHead`` / its ``CoordAtt``).

    Like coordinate attention, but the two directional descriptors come from learned depthwise
    ``1×S`` and ``S×1`` linear convolutions over the whole ``S×S`` map instead of average pooling;
    the result is the attention map itself (not multiplied with the input)::

        d_h = BN(dwconv_1xS(x))              [B,C,S,1]   (one value per row)
        d_w = BN(dwconv_Sx1(x))^T            [B,C,S,1]   (one value per column)
        y   = hswish(BN(conv1x1(cat(d_h, d_w, dim=2))))   [B,mip,2S,1]
        a   = sigmoid(conv_h(y_h)) * sigmoid(conv_w(y_w)^T)  → [B,C,S,S], values in (0, 1)

    Args:
        channels: channels of the feature map (512).
        map_size: side ``S`` of the square feature map (7).
        groups: reduction; hidden channels ``mip = max(8, channels // groups)`` (16 for 512).

    Shapes: ``[B, C, S, S]`` → ``[B, C, S, S]``.
    """

    def __init__(self, channels: int = 512, map_size: int = 7, groups: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // groups)
        self.dw_h = ConvBnAct(channels, channels, (1, map_size), groups=channels, act=False)
        self.dw_w = ConvBnAct(channels, channels, (map_size, 1), groups=channels, act=False)
        self.conv_reduce = nn.Conv2d(channels, mip, 1)
        self.bn = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)
        # built by the original but never applied; frozen, kept for checkpoints and parameter count
        self.unused_gdc = _freeze(ConvBnAct(channels, channels, map_size, groups=channels, act=False))

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        d_h = self.dw_h(x)  # [B, C, H, 1]
        d_w = self.dw_w(x).transpose(2, 3)  # [B, C, W, 1]
        y = self.act(self.bn(self.conv_reduce(torch.cat([d_h, d_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid().expand(-1, -1, h, w)
        a_w = self.conv_w(y_w.transpose(2, 3)).sigmoid().expand(-1, -1, h, w)
        return a_w * a_h


class DDAMFN(nn.Module):
    """DDAMFN expression classifier (the original ``DDAMNet``).

    Args:
        num_classes: expression classes (7 or 8 for AffectNet; any positive number).
        num_heads: DDA heads (≥ 1; the paper uses 2).
        backbone: registered backbone (:func:`networks.registry.list_backbones`); default
            MixedFeatureNet as in DDAMFN. Its :class:`~networks.registry.BackboneSpec` sets the input
            size and the feature map (C, S) the heads and the S×S depthwise GDC work on.

    Attributes:
        backbone: the backbone (MixedFeatureNet without embedding head by default).
        backbone_spec: its :class:`~networks.registry.BackboneSpec`.
        heads: ``nn.ModuleList`` of :class:`DDAHead`.
        gdc: 7×7 depthwise linear conv + BN (the original ``Linear``).
        fc: ``nn.Linear(512, num_classes)``.
        input_streams: ``("photo",)``: the engine calls ``model(photo)``.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, num_heads: int = 2, backbone: str = "mixedfeaturenet") -> None:
        super().__init__()
        if num_classes < 1 or num_heads < 1:
            raise ValueError(f"DDAMFN needs num_classes >= 1 and num_heads >= 1, got {num_classes}, {num_heads}")
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)
        self.backbone = create_backbone(backbone)
        c, side = self.backbone_spec.out_channels, self.backbone_spec.feature_size
        self.heads = nn.ModuleList(DDAHead(c, map_size=side) for _ in range(num_heads))
        self.gdc = ConvBnAct(c, c, side, groups=c, act=False)
        self.fc = nn.Linear(c, num_classes)
        # the original's BatchNorm1d(num_class), never applied; frozen
        self.unused_bn = _freeze(nn.BatchNorm1d(num_classes))

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, 112, 112]`` (ImageNet-normalised float) → ``[B, 512, 7, 7]``."""
        return self.backbone.forward_features(x)

    def forward_heads(self, features: Tensor) -> Tensor:
        """Feature map ``[B, 512, 7, 7]`` → stacked DDA attention maps ``[H, B, 512, 7, 7]`` in (0, 1)."""
        return torch.stack([head(features) for head in self.heads])

    def forward_head(self, features: Tensor, heads: Tensor | None = None) -> Tensor:
        """Feature map ``[B, 512, 7, 7]`` (and its head maps ``[H, B, 512, 7, 7]``) → logits ``[B, C]``.

        The heads are combined by element-wise maximum, multiplied with the feature map, reduced by
        the 7×7 depthwise conv and classified linearly. ``heads`` is computed when not given.
        """
        if heads is None:
            heads = self.forward_heads(features)
        y = features * heads.amax(dim=0)
        return self.fc(self.gdc(y).flatten(1))

    def forward(self, x: Tensor) -> DDAMFNOutput:
        """Faces ``[B, 3, 112, 112]`` → :class:`~networks.outputs.DDAMFNOutput`
        (logits ``[B, C]``, features ``[B, 512, 7, 7]``, heads ``[H, B, 512, 7, 7]``)."""
        features = self.forward_features(x)
        heads = self.forward_heads(features)
        return DDAMFNOutput(logits=self.forward_head(features, heads), features=features, heads=heads)

    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (protocol in docs/INTERFACES.md).

        Args:
            state_dict: original key names.
            source: ``"ddamfn"`` (a whole ``DDAMNet`` state dict), or a source of the backbone's own
                weights, passed on to its ``remap_state_dict`` and loaded into ``backbone.``:
                ``"mfn_module"`` (pickled original MixedFeatureNet; its embedding head — conv_6_dw, linear,
                bn — is discarded exactly as DDAMNet's ``children()[:-4]`` does), an ImageNet file of a
                registered backbone (``"torchvision_mobilenet_v2"`` …).

        Returns:
            ``(mapped, prefixes, discarded)`` as in :meth:`MixedFeatureNet.remap_state_dict`.

        Raises:
            ValueError: a source neither this model nor its backbone reads.
        """
        if source == "ddamfn":
            if not isinstance(self.backbone, MixedFeatureNet):
                raise ValueError(f"DDAMFN checkpoints hold a MixedFeatureNet backbone; this model's backbone is "
                                 f"{self.backbone_name!r}")
            return remap_original_ddamnet_keys(state_dict), None, []
        # any other source is a backbone's own weights (MS-Celeb MixedFeatureNet, an ImageNet file …)
        remap = getattr(self.backbone, "remap_state_dict", None)
        if remap is None:
            raise ValueError(f"DDAMFN cannot load weights of source {source!r} into a {self.backbone_name} backbone")
        mapped, _, discarded = remap(state_dict, source)
        return {f"backbone.{k}": v for k, v in mapped.items()}, ["backbone."], discarded


_HEAD_RULES = {
    "Linear_h": "dw_h",
    "Linear_w": "dw_w",
    "conv1": "conv_reduce",
    "bn1": "bn",
    "conv2": "conv_h",
    "conv3": "conv_w",
    "Linear": "unused_gdc",
}


def remap_original_dda_head_keys(
    state_dict: Mapping[str, Tensor], src_prefix: str, dst_prefix: str
) -> dict[str, Tensor]:
    """Rename one original DDA head's keys (``cat_head0.CoordAtt.conv1.weight`` …) to :class:`DDAHead` keys.

    Args:
        state_dict: tensors; only keys starting with ``src_prefix`` (e.g. ``"cat_head0."``) are taken.
        src_prefix: the original head's prefix, including the trailing dot.
        dst_prefix: our head's prefix (e.g. ``"heads.0."``).

    Returns:
        Renamed dict. Keys no rule recognises are kept as ``dst_prefix + "<unmapped>." + key`` so a
        strict load reports them.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(src_prefix):
            continue
        rest = key[len(src_prefix) :]
        parts = rest.split(".")
        name = None
        if len(parts) >= 3 and parts[0] == "CoordAtt" and parts[1] in _HEAD_RULES:
            name = ".".join([_HEAD_RULES[parts[1]], *parts[2:]])
        out[dst_prefix + (name if name is not None else f"<unmapped>.{key}")] = value
    return out


def remap_original_ddamnet_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename a whole original ``DDAMNet`` state dict (``module.`` already stripped) to :class:`DDAMFN` keys.

    ``features.*`` → ``backbone.*``, ``cat_head{i}.*`` → ``heads.{i}.*``, ``Linear.*`` → ``gdc.*``,
    ``fc.*`` → ``fc.*``, ``bn.*`` → ``unused_bn.*``; anything else is kept under ``<unmapped>.`` so
    a strict load reports it.
    """
    out: dict[str, Tensor] = {}
    features = {k: v for k, v in state_dict.items() if k.startswith("features.")}
    out.update(remap_original_mfn_keys(features, src_prefix="features.", dst_prefix="backbone."))
    head_ids = sorted({k.split(".", 1)[0] for k in state_dict if k.startswith("cat_head")})
    for head in head_ids:
        suffix = head[len("cat_head") :]
        if suffix.isdigit():
            out.update(remap_original_dda_head_keys(state_dict, f"{head}.", f"heads.{int(suffix)}."))
    for key, value in state_dict.items():
        top, _, rest = key.partition(".")
        if key in features or (top.startswith("cat_head") and top[len("cat_head") :].isdigit()):
            continue
        if top == "Linear":
            out[f"gdc.{rest}"] = value
        elif top == "fc":
            out[key] = value
        elif top == "bn":
            out[f"unused_bn.{rest}"] = value
        else:
            out[f"<unmapped>.{key}"] = value
    return out


def attention_loss(heads: Tensor | Sequence[Tensor], eps: float = ATTENTION_LOSS_EPS) -> Tensor:
    """DDAMFN's attention (head diversity) loss.

    ``loss = P / (sum_{i<j} mean((a_i - a_j)^2) + eps)`` with ``P = H(H-1)/2`` head pairs, the mean
    taken over all elements of a pair's maps (``F.mse_loss`` with ``reduction='mean'``), and
    ``eps = sys.float_info.epsilon`` as in the original ``AttentionLoss``. Minimising it pushes
    the heads apart. With a single head the loss is 0. (In float32, ``eps`` only matters when all
    heads are identical, where the loss becomes ``P / eps``, about ``4.5e15·P``.)

    Args:
        heads: ``[H, B, C, S, S]`` stacked head maps, or a sequence of ``H`` tensors ``[B, C, S, S]``.
        eps: added to the denominator.

    Returns:
        Scalar tensor ``[]`` (on the heads' device and dtype).
    """
    num_heads = len(heads)
    if num_heads < 2:
        ref = heads[0] if num_heads else torch.zeros(())
        return ref.new_zeros(())
    total = None
    pairs = 0
    for i in range(num_heads - 1):
        for j in range(i + 1, num_heads):
            mse = F.mse_loss(heads[i], heads[j])
            total = mse if total is None else total + mse
            pairs += 1
    return pairs / (total + eps)


@register_model(criterion="ddamfn", default_preset="ddamfn", final_checkpoint="DDAMFN.pth")
def ddamfn(num_classes: int = 7, num_heads: int = 2, backbone: str = "mixedfeaturenet", **kwargs) -> DDAMFN:
    """DDAMFN classifier: MixedFeatureNet + ``num_heads`` DDA heads + ``num_classes``-way linear layer.

    Load the MS-Celeb-1M backbone with ``networks.load_weights(model, "pretrained/MFN_msceleb.pth")``
    or a DDAMFN checkpoint the same way.

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"ddamfn() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return DDAMFN(num_classes=num_classes, num_heads=num_heads, backbone=backbone)
