"""DDAMFN on the 3D render alone: the render-only stream of the 2D vs 3D comparison.

The same network as the photo-only baseline (``ddamfn``: MixedFeatureNet + DDA heads, DDAMFN's loss and recipe),
fed the grey shaded render of the face (``render`` stream, what the If3D fusion models add to the photo) instead
of the photo: how much the render alone carries.
"""

from __future__ import annotations

from torch import Tensor

from networks.ddamfn import DDAMFN
from networks.outputs import DDAMFNOutput
from networks.registry import register_model
from networks.zoo._common import reject_arguments

__all__ = ["DDAMFNRender", "ddamfn_render"]


class DDAMFNRender(DDAMFN):
    """DDAMFN reading the render: ``forward(render [B, 3, 112, 112]) -> DDAMFNOutput``."""

    input_streams = ("render",)

    def forward(self, render: Tensor) -> DDAMFNOutput:  # type: ignore[override]
        return super().forward(render)


@register_model(criterion="ddamfn", default_preset="ddamfn", final_checkpoint="DDAMFNRender.pth")
def ddamfn_render(num_classes: int = 7, num_heads: int = 2, backbone: str = "mixedfeaturenet",
                  **kwargs) -> DDAMFNRender:
    """DDAMFN on the render only (MixedFeatureNet + DDA heads; the render stream of If3D).

    Raises:
        UnexpectedArgumentError: unknown keyword arguments (a TypeError and a ValueError).
    """
    reject_arguments("ddamfn_render", kwargs)
    return DDAMFNRender(num_classes=num_classes, num_heads=num_heads, backbone=backbone)
