"""IR-50: the improved-residual ResNet-50 of ArcFace face recognition, as POSTER and POSTER++ use it.

Deng, Guo, Xue, Zafeiriou, "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019
(the IR unit: BN → 3×3 conv → PReLU → 3×3 conv (stride) → BN, plus a shortcut); the layout and file
``ir50.pth`` (MS-Celeb-1M) are face.evoLVe's ``Backbone(50, 0.0, 'ir')`` as copied into POSTER
(``models/ir50.py``, https://github.com/zczcwh/POSTER) and POSTER++ (``models/ir50.py``,
https://github.com/Talented-Q/POSTER_V2). Facts taken from there:

- stem: 3×3 conv (stride 1, no bias) → BN → PReLU(64);
- stages of IR units with (channels, units) = (64, 3), (128, 4), (256, 14), (512, 3), the first unit of
  each stage with stride 2; a unit's shortcut is ``MaxPool2d(1, stride)`` when the channels stay, else
  1×1 conv (stride) + BN;
- embedding head (``output_layer``): BN(512) → Dropout → flatten → Linear(512·7·7, 512) → BN1d(512).

POSTER and POSTER++ build only the first three stages (their maps at a 112 input: 64×56×56, 128×28×28,
256×14×14) and never call the embedding head, which their code still builds (12.85 M parameters; they
count in POSTER's published 71.85 M). ``IResNet50(num_stages=3, embedding_head=True)`` reproduces that
module set: the head is kept *frozen* (no gradient, never applied) so POSTER's checkpoints load strictly
and the parameter count matches; ``embedding_head=False`` leaves it out (POSTER++, whose paper count
43.7 M excludes it). Both originals resize their input to 112×112 (nearest) before the stem; that
resize belongs to the models (:mod:`networks.zoo.poster`), not to this backbone.

Module names are ours (``stem``, ``stages.{s}.{j}``, ``shortcut``, ``residual``, ``embedding``);
:func:`remap_ir50_keys` loads face.evoLVe/POSTER names (``input_layer``, ``body.{i}``, ``shortcut_layer``,
``res_layer``, ``output_layer``) and POSTER++'s (``body1``/``body2``/``body3``).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping

import torch.nn as nn
from torch import Tensor

from networks.mixedfeaturenet import _freeze
from networks.registry import BackboneSpec, register_backbone

__all__ = ["IR50_STAGES", "IRUnit", "IResNet50", "ir50", "remap_ir50_keys"]

#: (output channels, units) of the four IR-50 stages (face.evoLVe ``get_blocks(50)``)
IR50_STAGES = ((64, 3), (128, 4), (256, 14), (512, 3))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class IRUnit(nn.Module):
    """One improved-residual unit (face.evoLVe's ``bottleneck_IR``).

    ``y = residual(x) + shortcut(x)`` with ``residual = BN → conv3×3 → PReLU → conv3×3(stride) → BN``.

    Args:
        in_chs, out_chs: channels.
        stride: 1 or 2 (applied by the second conv and the shortcut).

    Shapes: ``[B, in_chs, H, W]`` → ``[B, out_chs, H/stride, W/stride]``.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int) -> None:
        super().__init__()
        if in_chs == out_chs:
            self.shortcut: nn.Module = nn.MaxPool2d(1, stride)  # a strided subsampling, no weights
        else:
            self.shortcut = nn.Sequential(OrderedDict(
                conv=nn.Conv2d(in_chs, out_chs, 1, stride, bias=False), bn=nn.BatchNorm2d(out_chs)))
        self.residual = nn.Sequential(OrderedDict(
            bn1=nn.BatchNorm2d(in_chs),
            conv1=nn.Conv2d(in_chs, out_chs, 3, 1, 1, bias=False),
            prelu=nn.PReLU(out_chs),
            conv2=nn.Conv2d(out_chs, out_chs, 3, stride, 1, bias=False),
            bn2=nn.BatchNorm2d(out_chs),
        ))

    def forward(self, x: Tensor) -> Tensor:
        return self.residual(x) + self.shortcut(x)


class IResNet50(nn.Module):
    """IR-50 feature extractor (see the module docstring).

    Args:
        num_stages: stages built, 1–4 (POSTER/POSTER++: 3).
        embedding_head: build the (frozen, never applied) face-recognition embedding head of the
            original, for strict loading of POSTER checkpoints and its parameter count.

    Attributes:
        stem, stages (``nn.Sequential`` of ``nn.Sequential`` of :class:`IRUnit`), embedding (or None).
        out_channels: channels of the last stage.
    """

    def __init__(self, num_stages: int = 3, embedding_head: bool = False) -> None:
        super().__init__()
        if not 1 <= num_stages <= 4:
            raise ValueError(f"IR-50 has 1 to 4 stages, got num_stages={num_stages}")
        self.num_stages = num_stages
        self.stem = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(3, 64, 3, 1, 1, bias=False), bn=nn.BatchNorm2d(64), prelu=nn.PReLU(64)))
        stages, in_chs = [], 64
        for out_chs, units in IR50_STAGES[:num_stages]:
            stages.append(nn.Sequential(*(IRUnit(in_chs if j == 0 else out_chs, out_chs, 2 if j == 0 else 1)
                                          for j in range(units))))
            in_chs = out_chs
        self.stages = nn.Sequential(*stages)
        self.out_channels = in_chs
        self.embedding = None
        if embedding_head:
            self.embedding = _freeze(nn.Sequential(OrderedDict(
                bn=nn.BatchNorm2d(512), dropout=nn.Dropout(0.0), flatten=nn.Flatten(),
                fc=nn.Linear(512 * 7 * 7, 512), bn1d=nn.BatchNorm1d(512))))

    def forward_stages(self, x: Tensor) -> list[Tensor]:
        """Faces ``[B, 3, S, S]`` (ImageNet-normalised) → the map of every stage, ``[B, C_s, S/2^(s+1), S/2^(s+1)]``
        (at S = 112: 64×56×56, 128×28×28, 256×14×14, 512×7×7)."""
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` → the last stage's map (``[B, 256, S/8, S/8]`` with three stages)."""
        return self.forward_stages(x)[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str):
        """Load face.evoLVe/POSTER IR-50 names (``source="ir50"``); protocol in docs/INTERFACES.md."""
        if source != "ir50":
            raise ValueError(f"IR-50 cannot load weights of source {source!r} (supported: ir50)")
        return remap_ir50_keys(state_dict, "", self.num_stages, self.embedding is not None)


_UNIT = {"shortcut_layer.0": "shortcut.conv", "shortcut_layer.1": "shortcut.bn",
         "res_layer.0": "residual.bn1", "res_layer.1": "residual.conv1", "res_layer.2": "residual.prelu",
         "res_layer.3": "residual.conv2", "res_layer.4": "residual.bn2"}
_STEM = {"0": "conv", "1": "bn", "2": "prelu"}
_HEAD = {"0": "bn", "3": "fc", "4": "bn1d"}


def _stage_of(flat_index: int) -> tuple[int, int]:
    for s, (_, units) in enumerate(IR50_STAGES):
        if flat_index < units:
            return s, flat_index
        flat_index -= units
    raise IndexError(flat_index)


def remap_ir50_keys(state_dict: Mapping[str, Tensor], dst_prefix: str, num_stages: int, embedding_head: bool,
                    src_prefix: str = "") -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Rename an original IR-50 state dict onto :class:`IResNet50` keys under ``dst_prefix``.

    Recognised source names (after ``src_prefix``): ``input_layer.{0,1,2}``, ``body.{i}.…`` (face.evoLVe
    and POSTER: one flat list of 24 units) or ``body{1,2,3}.{j}.…`` (POSTER++: one list per stage),
    ``shortcut_layer.{0,1}``, ``res_layer.{0..4}``, ``output_layer.{0,3,4}``.

    Args:
        state_dict: tensors; keys outside ``src_prefix`` are ignored.
        dst_prefix: our prefix (``""`` for the bare backbone, ``"image_backbone."`` in POSTER).
        num_stages: stages of the target; units of later stages are discarded (``ir50.pth`` holds all 4).
        embedding_head: the target has the embedding head; without it ``output_layer.*`` is discarded.
        src_prefix: the source's prefix (``"ir_back."`` in POSTER checkpoints).

    Returns:
        ``(mapped, [dst_prefix], discarded source keys)``; a key no rule knows is kept under
        ``<unmapped>.`` so a strict load reports it.
    """
    mapped: dict[str, Tensor] = {}
    discarded: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(src_prefix):
            continue
        rest = key[len(src_prefix):]
        new = None
        if m := re.fullmatch(r"input_layer\.(\d)\.(\w+)", rest):
            new = f"stem.{_STEM.get(m[1], '?')}.{m[2]}"
        elif m := re.fullmatch(r"body(\d?)\.(\d+)\.(\w+\.\d)\.(\w+)", rest):
            s, j = (int(m[1]) - 1, int(m[2])) if m[1] else _stage_of(int(m[2]))
            if s >= num_stages:
                discarded.append(key)
                continue
            new = f"stages.{s}.{j}.{_UNIT.get(m[3], '?')}.{m[4]}"
        elif m := re.fullmatch(r"output_layer\.(\d)\.(\w+)", rest):
            if not embedding_head:
                discarded.append(key)
                continue
            new = f"embedding.{_HEAD.get(m[1], '?')}.{m[2]}"
        if new is None or "?" in new:
            new = f"<unmapped>.{key}"
        mapped[dst_prefix + new] = value
    return mapped, [dst_prefix] if dst_prefix else None, discarded


@register_backbone(
    "ir50",
    BackboneSpec(input_size=112, mean=IMAGENET_MEAN, std=IMAGENET_STD, out_channels=256, feature_size=14,
                 weights="MS-Celeb-1M face recognition: POSTER's models/pretrain/ir50.pth (the user's own file)"),
)
def ir50(num_stages: int = 3, embedding_head: bool = False, **kwargs) -> IResNet50:
    """IR-50 feature extractor, three stages as POSTER uses it: ``forward_features`` [B,3,112,112] → [B,256,14,14].

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"ir50() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return IResNet50(num_stages=num_stages, embedding_head=embedding_head)
