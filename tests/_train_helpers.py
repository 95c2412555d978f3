"""Shared pieces of the training-engine tests: tiny registered models, a tiny registered backbone and a
generated dataset tree.

The tiny models return the real output types (``If3DOutput`` / ``DDAMFNOutput``) with BatchNorm
(running statistics must survive resumption) and dropout (its randomness must be reseeded per
step), so the engine is exercised exactly as with the real models, only much faster.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from networks.outputs import DDAMFNOutput, If3DOutput
from networks.registry import BackboneSpec, list_backbones, list_models, register_backbone, register_model

CLASS_NAMES_7 = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Angry"]


class _Stream(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), 2)  # [B, C, 2, 2]


class TinyFusion(nn.Module):
    """Two streams of one conv each, 2 "heads", linear classifier with valence/arousal outputs."""

    input_streams = ("photo", "render")

    def __init__(self, num_classes: int = 7, num_heads: int = 2, nan_after: int | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.photo = _Stream(8)
        self.render = _Stream(8)
        self.heads = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in range(num_heads))
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(64, num_classes + 2)
        self.nan_after = nan_after
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, photo: torch.Tensor, render: torch.Tensor) -> If3DOutput:
        p, r = self.photo(photo), self.render(render)
        ph = torch.stack([h(p) for h in self.heads])
        rh = torch.stack([h(r) for h in self.heads])
        fused = torch.cat([ph.mean(0), rh.mean(0)], 1).flatten(1)
        out = self.fc(self.drop(fused))
        logits = out[:, : self.num_classes]
        if self.training:
            self.calls += 1
            if self.nan_after is not None and int(self.calls) > self.nan_after:
                logits = logits * float("nan")
        return If3DOutput(
            logits=logits, valence=out[:, -2], arousal=out[:, -1], photo_features=p, render_features=r,
            photo_heads=ph, render_heads=rh, alignment=F.mse_loss(p, r),
        )


class TinyPhoto(nn.Module):
    """Photo-only DDAMFN-like tiny model."""

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 7, num_heads: int = 2) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.photo = _Stream(8)
        self.heads = nn.ModuleList(nn.Conv2d(8, 8, 1) for _ in range(num_heads))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, photo: torch.Tensor) -> DDAMFNOutput:
        p = self.photo(photo)
        heads = torch.stack([h(p) for h in self.heads])
        return DDAMFNOutput(logits=self.fc(heads.mean(0).flatten(1)), features=p, heads=heads)


if "tiny_fusion_test" not in list_models():

    @register_model(criterion="if3d")
    def tiny_fusion_test(**kwargs) -> TinyFusion:
        return TinyFusion(**kwargs)

    @register_model(criterion="ddamfn")
    def tiny_photo_test(**kwargs) -> TinyPhoto:
        return TinyPhoto(**kwargs)


#: A registered backbone of one strided convolution, for the real DDAMFN / If3D models at 24 px (no weights).
TINY_BACKBONE = "tiny_backbone_test"

if TINY_BACKBONE not in list_backbones():

    @register_backbone(TINY_BACKBONE, BackboneSpec(input_size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                                   out_channels=8, feature_size=3, weights="none (random)"))
    def tiny_backbone_test(**_) -> nn.Module:
        class Tiny(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.conv = nn.Conv2d(3, 8, 3, stride=8, padding=1)
                self.bn = nn.BatchNorm2d(8)

            def forward_features(self, x: torch.Tensor) -> torch.Tensor:
                return F.relu(self.bn(self.conv(x)))  # [B, 8, 3, 3]

        return Tiny()


def make_dataset(root: Path, per_class: int = 4, val_per_class: int = 2, size: int = 24,
                 missing_renders: int = 0, seed: int = 0) -> Path:
    """Write a generated canonical dataset (7 classes, class-dependent brightness so it is learnable).

    ``photos/{train,val}/<label>/*.jpg``, ``renders/...png``, ``annotations/{split}.csv`` with
    valence/arousal for every other photo, ``classes.json``. The first ``missing_renders`` training
    photos get no render.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.json").write_text(json.dumps(CLASS_NAMES_7))
    (root / "annotations").mkdir(exist_ok=True)
    for split, k in (("train", per_class), ("val", val_per_class)):
        rows = []
        dropped = 0
        for c in range(7):
            for i in range(k):
                base = (rng.random((size, size, 3)) * 60 + c * 28).astype(np.uint8)
                pdir = root / "photos" / split / str(c)
                pdir.mkdir(parents=True, exist_ok=True)
                Image.fromarray(base).save(pdir / f"s{c}_{i}.jpg", quality=95)
                if split == "train" and dropped < missing_renders:
                    dropped += 1
                else:
                    rdir = root / "renders" / split / str(c)
                    rdir.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(255 - base).save(rdir / f"s{c}_{i}.png")
                if i % 2 == 0:
                    rows.append(f"{c}/s{c}_{i}.jpg,{rng.uniform(-1, 1):.4f},{rng.uniform(-1, 1):.4f}")
        (root / "annotations" / f"{split}.csv").write_text("file,valence,arousal\n" + "\n".join(rows) + "\n")
    return root


def random_state_dict(shapes: dict, seed: int, batches_tracked: int = 0) -> dict[str, torch.Tensor]:
    """A seeded state dict of the given shapes in the spirit of a trained checkpoint: weights ~ N(0, 0.05²),
    batch-norm running variances in [0.5, 1.5), ``num_batches_tracked`` = ``batches_tracked``."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(batches_tracked)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.05
    return out
