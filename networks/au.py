"""Action-unit (AU) intensity regression on any registered backbone, with its criterion.

A face crop goes through a registered backbone's ``forward_features`` (MixedFeatureNet by default, as
DDAMFN), the feature map is reduced by a global depthwise convolution (GDC: an S×S depthwise linear
convolution + batch norm, MobileFaceNet's and DDAMFN's reduction) and a linear layer gives one intensity
per AU::

    x [B,3,S,S] --backbone.forward_features--> f [B,C,s,s] --GDC--> [B,C] --Linear--> au [B,A]

The A outputs are the AUs of the training data in the canonical AU order of :mod:`if3d.data.au` (the
checkpoint's ``class_names``, e.g. DISFA's 12: AU1, AU2, AU4, AU5, AU6, AU9, AU12, AU15, AU17, AU20,
AU25, AU26), on the FACS intensity scale 0–5 (0 absent, 1 = A … 5 = E); the output is linear (unbounded);
the analysis clips it to [0, 5].

Criterion ``au_regressor`` (:class:`AURegressionCriterion`): the mean squared error over the labelled
(frame, AU) pairs of the batch, ``MSE = Σ_{(i,a) labelled} (au_ia − y_ia)² / #labelled``; pairs without a
label (``au_mask`` False, NaN target: BP4D's "9", an AU a dataset does not code) are removed by indexing,
never zero-filled. Validation (:class:`~networks.validation.ValidationSpec`): ICC(3,1), Pearson correlation
and mean absolute error per AU (:func:`if3d.metrics.au_metrics`), ``best.pth`` by the mean ICC(3,1) over the
AUs, the measure of the FERA 2015 AU-intensity challenge (Valstar et al., FG 2015) and of DISFA/BP4D
intensity papers.

Recipe (preset ``au_regressor``, our choice: no paper defines one for this head): Adam, lr 1e-4, no weight
decay, ExponentialLR γ = 0.9 per epoch, batch 64, 20 epochs, uniform sampling (AU data has no class labels
to balance). Start the backbone from DDAMFN's MS-Celeb-1M MixedFeatureNet with
``--pretrained pretrained/MFN_msceleb.pth``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from networks.criteria import Criterion, LossOutput
from networks.mixedfeaturenet import ConvBnAct, MixedFeatureNet
from networks.registry import backbone_spec, create_backbone, register_criterion, register_model
from networks.validation import ValidationSpec

__all__ = ["AUOutput", "AURegressionCriterion", "AURegressor", "au_regressor", "summarize_au_validation"]


@dataclass
class AUOutput:
    """Result of :class:`AURegressor`.

    Attributes:
        au: [B, A] AU intensities (0–5 scale, unbounded linear output), in the checkpoint's AU order.
        features: [B, C, s, s] the backbone's feature map.
    """

    au: Tensor
    features: Tensor


class AURegressor(nn.Module):
    """AU-intensity regressor (module docstring).

    Args:
        num_classes: A, the number of AU outputs (the training engine's name for a model's output units; the
            AU names are the dataset's, stored as the checkpoint's ``class_names``).
        backbone: registered backbone (``networks.list_backbones()``); default MixedFeatureNet.

    Attributes:
        input_streams: ``("photo",)``.
        backbone_spec: the backbone's :class:`~networks.registry.BackboneSpec` (input size, normalisation).

    Shapes: ``forward(x [B,3,S,S] normalised float) -> AUOutput(au [B,A], features [B,C,s,s])``.

    Raises:
        ValueError: ``num_classes`` < 1.
    """

    input_streams = ("photo",)

    def __init__(self, num_classes: int = 12, backbone: str = "mixedfeaturenet") -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"the AU regressor needs at least one AU output, got {num_classes}")
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        self.backbone_spec = backbone_spec(backbone)
        self.backbone = create_backbone(backbone)
        c, side = self.backbone_spec.out_channels, self.backbone_spec.feature_size
        self.gdc = ConvBnAct(c, c, side, groups=c, act=False)
        self.head = nn.Linear(c, self.num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """Faces ``[B, 3, S, S]`` → feature map ``[B, C, s, s]``."""
        return self.backbone.forward_features(x)

    def forward_head(self, features: Tensor) -> Tensor:
        """Feature map ``[B, C, s, s]`` → AU intensities ``[B, A]``."""
        return self.head(self.gdc(features).flatten(1))

    def forward(self, x: Tensor) -> AUOutput:
        features = self.forward_features(x)
        return AUOutput(au=self.forward_head(features), features=features)

    def remap_state_dict(self, state_dict: Mapping[str, Tensor], source: str
                         ) -> tuple[dict[str, Tensor], list[str] | None, list[str]]:
        """Load a MixedFeatureNet backbone from DDAMFN's files (protocol in docs/INTERFACES.md).

        Args:
            state_dict: original key names.
            source: ``"mfn_module"`` (``MFN_msceleb.pth``) or ``"ddamfn"`` (a DDAMFN checkpoint's backbone).

        Raises:
            ValueError: another source, or a backbone that is not MixedFeatureNet.
        """
        if source not in ("mfn_module", "ddamfn") or not isinstance(self.backbone, MixedFeatureNet):
            raise ValueError(f"the AU regressor loads MixedFeatureNet backbones from mfn_module or ddamfn weights, "
                             f"not {source!r} into a {self.backbone_name!r} backbone")
        mapped, prefixes, discarded = self.backbone.remap_state_dict(state_dict, source)
        return ({f"backbone.{k}": v for k, v in mapped.items()},
                [f"backbone.{p}" for p in prefixes] if prefixes else ["backbone."], discarded)


def summarize_au_validation(results: Mapping[str, np.ndarray], class_names: Sequence[str]) -> dict[str, Any]:
    """ICC(3,1), PCC and MAE per AU and their means (:func:`if3d.metrics.au_metrics`) of the validation split.

    Args:
        results: ``au_pred`` [N, A], ``au`` [N, A] (NaN where not labelled), ``au_mask`` [N, A] bool.
        class_names: the A AU names.
    """
    from if3d.metrics import au_metrics

    target = np.where(np.asarray(results["au_mask"], dtype=bool), np.asarray(results["au"], dtype=np.float64), np.nan)
    return au_metrics(np.asarray(results["au_pred"], dtype=np.float64), target, class_names)


@register_criterion("au_regressor")
class AURegressionCriterion(Criterion):
    """Masked mean squared error of AU intensities (module docstring). Term ``mse``.

    ``forward(output, batch)``: ``output.au`` [B, A]; ``batch["au"]`` [B, A] float (NaN where not labelled)
    and ``batch["au_mask"]`` [B, A] bool → ``mse`` (float32; 0 with a gradient when nothing is labelled).
    """

    terms = ("mse",)
    default_weights = {"mse": 1.0}
    validation = ValidationSpec(outputs=("au",), targets=("au", "au_mask"), summarize=summarize_au_validation,
                                metrics=("icc_mean", "pcc_mean", "mae_mean"), select="icc_mean")

    def forward(self, output: Any, batch: Mapping[str, Tensor]) -> LossOutput:
        pred = output.au.float()
        target = batch["au"].to(pred.device).float()
        mask = batch["au_mask"].to(pred.device).bool() & torch.isfinite(target)
        if not bool(mask.any()):
            return self.combine({"mse": pred.sum() * 0.0})
        diff = pred[mask] - target[mask]
        return self.combine({"mse": (diff * diff).mean()})


@register_model(criterion="au_regressor", final_checkpoint="AURegressor.pth",
                recipe={"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "scheduler": "exponential",
                        "exp_gamma": 0.9, "batch_size": 64, "epochs": 20, "balanced_sampling": False})
def au_regressor(num_classes: int = 12, backbone: str = "mixedfeaturenet", **kwargs) -> AURegressor:
    """AU-intensity regressor: a registered backbone + GDC + one linear output per AU (0–5 scale).

    Raises:
        TypeError: unknown keyword arguments.
    """
    if kwargs:
        raise TypeError(f"au_regressor() got unexpected keyword arguments: {', '.join(sorted(kwargs))}")
    return AURegressor(num_classes=num_classes, backbone=backbone)
