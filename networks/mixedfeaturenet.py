"""MixedFeatureNet: the DDAMFN face backbone.

MobileFaceNet (Chen et al., "MobileFaceNets", CCBR 2018) with mixed-kernel depthwise convolutions
(MixConv, Tan & Le, BMVC 2019) and coordinate attention (Hou et al., CVPR 2021) in every bottleneck,
as used by DDAMFN (Zhang et al., "A Dual-Direction Attention Mixed Feature Network for Facial
Expression Recognition", Electronics 2023; original implementation
``networks/MixedFeatureNet.py`` of https://github.com/SainingZhang/DDAMFN).

Input: RGB faces ``[B, 3, 112, 112]``, float, normalised with the ImageNet mean/std
(:data:`IMAGENET_MEAN`, :data:`IMAGENET_STD`), as in DDAMFN's training scripts.

* :meth:`MixedFeatureNet.forward_features` → ``[B, 512, 7, 7]``: the backbone without its last
  four children, which is what DDAMFN and If3D build on.
* :meth:`MixedFeatureNet.forward_head` → ``[B, 256]``: global depthwise conv (GDC), linear,
  BatchNorm1d, L2 normalisation: the MS-Celeb-1M face-recognition embedding.

Module names are ours (timm style); :func:`remap_original_mfn_keys` converts the original
``networks.MixedFeatureNet`` key names (``conv1``, ``conv_23``, ``conv_3.model.0``, ...) or the
``nn.Sequential`` names DDAMFN/If3D use (``features.0`` ... ``features.8``) to them.

Faithfulness notes (facts of the original that are kept so its weights load and give the same
numbers):

* The original ``MDConv`` owns a BatchNorm2d and a PReLU that its ``forward`` never applies. They are
  kept here as frozen parameters (``conv_dw.unused_bn``, ``conv_dw.unused_prelu``;
  ``requires_grad=False``) so checkpoints round-trip and the parameter count matches the original
  (they never receive a gradient in the original either, so freezing them changes no training run;
  it also keeps DDP from complaining about parameters without gradients).
* Coordinate attention uses average pooling along each axis, ``mip = max(8, C // 32)`` hidden
  channels and h-swish (``x * relu6(x + 3) / 6``, i.e. :class:`torch.nn.Hardswish`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.registry import BackboneSpec, register_backbone

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INPUT_SIZE",
    "ConvBnAct",
    "CoordinateAttention",
    "MixedDepthwiseBlock",
    "MixedDepthwiseConv",
    "MixedFeatureNet",
    "ORIGINAL_CHILDREN",
    "mixedfeaturenet",
    "remap_original_mfn_keys",
]

#: Input side in pixels (square faces).
INPUT_SIZE = 112
#: Per-channel RGB mean / std DDAMFN normalises its inputs with (torchvision ImageNet values).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: Children of the original ``MixedFeatureNet`` in order; DDAMFN keeps ``[:-4]`` of them as
#: ``features`` (an ``nn.Sequential`` indexed 0..8).
ORIGINAL_CHILDREN = (
    "conv1",
    "conv2_dw",
    "conv_23",
    "conv_3",
    "conv_34",
    "conv_4",
    "conv_45",
    "conv_5",
    "conv_6_sep",
    "conv_6_dw",
    "conv_6_flatten",
    "linear",
    "bn",
)


def _freeze(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class ConvBnAct(nn.Module):
    """Conv2d (no bias) → BatchNorm2d → optional PReLU.

    The original's ``Conv_block`` (with PReLU) and ``Linear_block`` (``act=False``).

    Args:
        in_chs, out_chs: channels.
        kernel_size, stride, padding: as in :class:`torch.nn.Conv2d` (int or pair).
        groups: convolution groups (``groups == in_chs == out_chs`` for depthwise).
        act: append a per-channel PReLU (else identity).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int | tuple[int, int] = 1,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        groups: int = 1,
        act: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chs, out_chs, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chs)
        self.act = nn.PReLU(out_chs) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(x)))


class MixedDepthwiseConv(nn.Module):
    """Mixed-kernel depthwise convolution (MixConv; the original's ``MDConv``).

    Splits the channels into groups of ``split_chs`` and convolves group ``i`` depthwise with a
    ``kernel_sizes[i]`` square kernel (padding ``k // 2``), then concatenates. No normalisation or
    activation is applied (see the module docstring for the frozen ``unused_bn`` / ``unused_prelu``).

    Args:
        channels: total channels (``sum(split_chs)``).
        kernel_sizes: one odd kernel size per group.
        split_chs: channels per group.
        stride: spatial stride of every group.

    Shapes: ``[B, channels, H, W]`` → ``[B, channels, H/stride, W/stride]``.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int], split_chs: Sequence[int], stride: int = 1):
        super().__init__()
        if len(kernel_sizes) != len(split_chs) or sum(split_chs) != channels:
            raise ValueError(
                f"MixedDepthwiseConv: kernel_sizes {list(kernel_sizes)} and split_chs {list(split_chs)} "
                f"must have the same length and split_chs must sum to channels={channels}"
            )
        self.split_chs = [int(c) for c in split_chs]
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False)
            for c, k in zip(self.split_chs, kernel_sizes)
        )
        self.unused_bn = _freeze(nn.BatchNorm2d(channels))
        self.unused_prelu = _freeze(nn.PReLU(channels))

    def forward(self, x: Tensor) -> Tensor:
        if len(self.convs) == 1:
            return self.convs[0](x)
        parts = torch.split(x, self.split_chs, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.convs, parts)], dim=1)


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021), as in the original ``CoordAtt``.

    Average-pools along W and along H, encodes both directions with one shared 1×1 conv + BN +
    h-swish, and rescales the input by ``sigmoid(conv_h(·)) * sigmoid(conv_w(·))``.

    Args:
        channels: input = output channels.
        groups: reduction; hidden channels ``mip = max(8, channels // groups)``.

    Shapes: ``[B, C, H, W]`` → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, groups: int = 32) -> None:
        super().__init__()
        mip = max(8, channels // groups)
        self.conv_reduce = nn.Conv2d(channels, mip, 1)
        self.bn = nn.BatchNorm2d(mip)
        self.act = nn.Hardswish()
        self.conv_h = nn.Conv2d(mip, channels, 1)
        self.conv_w = nn.Conv2d(mip, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        x_h = x.mean(dim=3, keepdim=True)  # [B, C, H, 1]
        x_w = x.mean(dim=2, keepdim=True).transpose(2, 3)  # [B, C, W, 1]
        y = self.act(self.bn(self.conv_reduce(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv_h(y_h).sigmoid()  # [B, C, H, 1]
        a_w = self.conv_w(y_w.transpose(2, 3)).sigmoid()  # [B, C, 1, W]
        return x * a_w * a_h


class MixedDepthwiseBlock(nn.Module):
    """Inverted bottleneck with MixConv and coordinate attention (the original ``Mix_Depth_Wise``).

    1×1 expansion (Conv-BN-PReLU) → :class:`MixedDepthwiseConv` → :class:`CoordinateAttention` →
    1×1 linear projection (Conv-BN), plus an identity shortcut when ``residual``.

    Args:
        in_chs, out_chs: block input / output channels.
        mid_chs: expanded channels.
        kernel_sizes, split_chs: MixConv groups (see :class:`MixedDepthwiseConv`).
        stride: depthwise stride.
        residual: add the input to the output (requires ``in_chs == out_chs`` and stride 1).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        kernel_sizes: Sequence[int],
        split_chs: Sequence[int],
        stride: int = 1,
        residual: bool = False,
    ) -> None:
        super().__init__()
        if residual and (in_chs != out_chs or stride != 1):
            raise ValueError("a residual MixedDepthwiseBlock needs in_chs == out_chs and stride 1")
        self.has_skip = residual
        self.conv_pw = ConvBnAct(in_chs, mid_chs, 1)
        self.conv_dw = MixedDepthwiseConv(mid_chs, kernel_sizes, split_chs, stride)
        self.attn = CoordinateAttention(mid_chs)
        self.conv_pwl = ConvBnAct(mid_chs, out_chs, 1, act=False)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv_pwl(self.attn(self.conv_dw(self.conv_pw(x))))
        return x + y if self.has_skip else y


# (in_chs, out_chs, mid_chs, downsample kernels, downsample split, residual kernels, residual split, depth)
_STAGES = (
    (64, 64, 128, (3, 5, 7), (64, 32, 32), (3, 5), (96, 32), 9),
    (64, 128, 256, (3, 5, 7), (128, 64, 64), (3, 5), (192, 64), 16),
    (128, 256, 1024, (3, 5, 7, 9), (256, 256, 256, 256), (3, 5, 7), (172, 170, 170), 6),
)
# mid channels of the residual blocks differ from the downsampling block's in the last stage
_RESIDUAL_MID = (128, 256, 512)


class MixedFeatureNet(nn.Module):
    """MixedFeatureNet backbone (DDAMFN), 112×112 face → 7×7 map (→ 256-d embedding).

    Layout (original names in brackets): ``stem`` = 3×3/2 conv [conv1] + 3×3 depthwise conv
    [conv2_dw]; ``stages[0..2]`` = one stride-2 :class:`MixedDepthwiseBlock` [conv_23, conv_34,
    conv_45] followed by 9, 16, 6 residual blocks [conv_3, conv_4, conv_5]; ``conv_expand`` = 1×1
    256→512 [conv_6_sep]. Embedding head (only when ``embedding_size``): ``gdc`` 7×7 depthwise
    linear conv [conv_6_dw], ``embedding`` linear 512→``embedding_size`` without bias [linear],
    ``embedding_bn`` BatchNorm1d [bn], then L2 normalisation.

    Args:
        embedding_size: embedding width (256 in the MS-Celeb-1M weights); ``None`` builds the
            feature extractor only (what DDAMFN keeps: ``forward`` then returns the 7×7 map).
        map_size: side of the final feature map (7 for 112×112 input); sets the GDC kernel.

    Attributes:
        num_features: channels of the feature map (512).
    """

    num_features = 512

    def __init__(self, embedding_size: int | None = 256, map_size: int = 7) -> None:
        super().__init__()
        self.embedding_size = embedding_size
        self.stem = nn.Sequential(
            ConvBnAct(3, 64, 3, stride=2, padding=1),
            ConvBnAct(64, 64, 3, stride=1, padding=1, groups=64),
        )
        stages = []
        for (cin, cout, mid, dk, ds, rk, rs, depth), rmid in zip(_STAGES, _RESIDUAL_MID):
            blocks = [MixedDepthwiseBlock(cin, cout, mid, dk, ds, stride=2)]
            blocks += [MixedDepthwiseBlock(cout, cout, rmid, rk, rs, residual=True) for _ in range(depth)]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.conv_expand = ConvBnAct(256, self.num_features, 1)
        if embedding_size is not None:
            self.gdc = ConvBnAct(
                self.num_features, self.num_features, map_size, groups=self.num_features, act=False
            )
            self.embedding = nn.Linear(self.num_features, embedding_size, bias=False)
            self.embedding_bn = nn.BatchNorm1d(embedding_size)

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, 112, 112]`` (normalised float) → feature map ``[B, 512, 7, 7]``."""
        return self.conv_expand(self.stages(self.stem(x)))

    def forward_head(self, x: Tensor) -> Tensor:
        """Feature map ``[B, 512, 7, 7]`` → L2-normalised embedding ``[B, embedding_size]``.

        Raises:
            RuntimeError: the model was built with ``embedding_size=None``.
        """
        if self.embedding_size is None:
            raise RuntimeError("this MixedFeatureNet was built without an embedding head (embedding_size=None)")
        x = self.gdc(x).flatten(1)
        x = self.embedding_bn(self.embedding(x))
        return F.normalize(x, p=2.0, dim=1, eps=0.0)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, 112, 112]`` → ``[B, 256]`` unit-norm embedding, or ``[B, 512, 7, 7]`` without head."""
        x = self.forward_features(x)
        return x if self.embedding_size is None else self.forward_head(x)

    def remap_state_dict(
        self, state_dict: Mapping[str, Tensor], source: str
    ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Map a foreign state dict onto this model's keys (see docs/INTERFACES.md).

        Args:
            state_dict: original key names.
            source: ``"mfn_module"`` (keys of a pickled original ``MixedFeatureNet``) or
                ``"ddamfn"`` (a DDAMNet state dict; its ``features.*`` backbone is taken).

        Returns:
            ``(mapped, prefixes, discarded)``: mapped state dict; the model key prefixes it fills
            (``None`` = whole model); source keys intentionally left out (embedding head when this
            model has none; DDAMNet heads/classifier).

        Raises:
            ValueError: unsupported ``source``.
        """
        if source == "mfn_module":
            sd, discarded = dict(state_dict), []
            if self.embedding_size is None:
                discarded = [k for k in sd if k.split(".", 1)[0] in ORIGINAL_CHILDREN[9:]]
                sd = {k: v for k, v in sd.items() if k not in set(discarded)}
            return remap_original_mfn_keys(sd), None, discarded
        if source == "ddamfn":
            feats = {k: v for k, v in state_dict.items() if k.startswith("features.")}
            discarded = [k for k in state_dict if k not in feats]
            return remap_original_mfn_keys(feats, src_prefix="features."), ["stem.", "stages.", "conv_expand."], discarded
        raise ValueError(f"MixedFeatureNet cannot load weights of source {source!r}")


# --------------------------------------------------------------------------------------------
# Original key names → ours
# --------------------------------------------------------------------------------------------
_BLOCK_RULES = (
    (re.compile(r"^conv\.(conv|bn)\.(.+)$"), r"conv_pw.\1.\2"),
    (re.compile(r"^conv\.prelu\.(.+)$"), r"conv_pw.act.\1"),
    (re.compile(r"^conv_dw\.mixed_depthwise_conv\.(\d+)\.(.+)$"), r"conv_dw.convs.\1.\2"),
    (re.compile(r"^conv_dw\.bn\.(.+)$"), r"conv_dw.unused_bn.\1"),
    (re.compile(r"^conv_dw\.prelu\.(.+)$"), r"conv_dw.unused_prelu.\1"),
    (re.compile(r"^CA\.conv1\.(.+)$"), r"attn.conv_reduce.\1"),
    (re.compile(r"^CA\.bn1\.(.+)$"), r"attn.bn.\1"),
    (re.compile(r"^CA\.conv2\.(.+)$"), r"attn.conv_h.\1"),
    (re.compile(r"^CA\.conv3\.(.+)$"), r"attn.conv_w.\1"),
    (re.compile(r"^project\.(conv|bn)\.(.+)$"), r"conv_pwl.\1.\2"),
)
_CONV_BLOCK_RULES = (
    (re.compile(r"^(conv|bn)\.(.+)$"), r"\1.\2"),
    (re.compile(r"^prelu\.(.+)$"), r"act.\1"),
)


def _apply(rules, rest: str) -> str | None:
    for pattern, repl in rules:
        if pattern.match(rest):
            return pattern.sub(repl, rest)
    return None


def _map_child(child: str, rest: str) -> str | None:
    stage_down = {"conv_23": 0, "conv_34": 1, "conv_45": 2}
    stage_res = {"conv_3": 0, "conv_4": 1, "conv_5": 2}
    if child in ("conv1", "conv2_dw"):
        sub = _apply(_CONV_BLOCK_RULES, rest)
        return None if sub is None else f"stem.{0 if child == 'conv1' else 1}.{sub}"
    if child in stage_down:
        sub = _apply(_BLOCK_RULES, rest)
        return None if sub is None else f"stages.{stage_down[child]}.0.{sub}"
    if child in stage_res:
        m = re.match(r"^model\.(\d+)\.(.+)$", rest)
        sub = None if m is None else _apply(_BLOCK_RULES, m.group(2))
        return None if sub is None else f"stages.{stage_res[child]}.{int(m.group(1)) + 1}.{sub}"
    if child == "conv_6_sep":
        sub = _apply(_CONV_BLOCK_RULES, rest)
        return None if sub is None else f"conv_expand.{sub}"
    if child == "conv_6_dw":
        sub = _apply(_CONV_BLOCK_RULES[:1], rest)
        return None if sub is None else f"gdc.{sub}"
    if child == "linear" and rest == "weight":
        return "embedding.weight"
    if child == "bn":
        return f"embedding_bn.{rest}"
    return None


def remap_original_mfn_keys(
    state_dict: Mapping[str, Tensor], src_prefix: str = "", dst_prefix: str = ""
) -> dict[str, Tensor]:
    """Rename original ``networks.MixedFeatureNet`` keys to :class:`MixedFeatureNet` keys.

    Args:
        state_dict: tensors keyed by original names. Keys must start with ``src_prefix``; after it
            comes either an original child name (``conv_23.CA.conv1.weight``) or, when the
            backbone was wrapped as DDAMFN's ``nn.Sequential(*children[:-4])``, its index
            (``features.2.CA.conv1.weight`` with ``src_prefix="features."``).
        src_prefix: prefix to strip (e.g. ``"features."``, ``"orig_features."``).
        dst_prefix: prefix to add (e.g. ``"backbone."``).

    Returns:
        A new dict with renamed keys (same tensor objects). A key no rule recognises is kept as
        ``dst_prefix + "<unmapped>." + original key`` so that a strict load reports it as
        unexpected instead of dropping it silently.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        mapped = None
        if key.startswith(src_prefix):
            child, _, rest = key[len(src_prefix) :].partition(".")
            if child.isdigit() and int(child) < len(ORIGINAL_CHILDREN):
                child = ORIGINAL_CHILDREN[int(child)]
            mapped = _map_child(child, rest)
        out[dst_prefix + (mapped if mapped is not None else f"<unmapped>.{key}")] = value
    return out


@register_backbone(
    "mixedfeaturenet",
    BackboneSpec(
        input_size=INPUT_SIZE,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        out_channels=MixedFeatureNet.num_features,
        feature_size=7,
        weights="MS-Celeb-1M face recognition (DDAMFN's pretrained/MFN_msceleb.pth; the user's own file)",
    ),
)
def mixedfeaturenet(**kwargs) -> MixedFeatureNet:
    """MixedFeatureNet feature extractor (no embedding head): ``forward_features`` [B,3,112,112] → [B,512,7,7]."""
    return MixedFeatureNet(embedding_size=None, **kwargs)
