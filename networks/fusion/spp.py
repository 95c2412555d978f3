"""If3D's spatial-pyramid-pooling fusion strategy."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks.fusion.common import DepthwiseConvBN, PassThrough, check_maps, pool_affine, set_identity
from networks.registry import FusionSpec, register_fusion

__all__ = ["SPPFusion", "adaptive_max_pool_bins"]


def adaptive_max_pool_bins(x: Tensor, level: int) -> Tensor:
    """``F.adaptive_max_pool2d(x, level)`` written as maxima over its bins, for the ONNX export.

    PyTorch's adaptive pooling bin ``i`` of a side ``S`` spans ``[floor(i·S/l), ceil((i+1)·S/l))``; here ``S`` is
    read as a constant, the form torch's ONNX exporters take (they cannot export adaptive max pooling of a map
    whose side is not static, which it is not once the batch axis is dynamic). The maxima are the same numbers.

    Shapes: x [B, C, H, W] → [B, C, level, level].
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    rows = []
    for i in range(level):
        r0, r1 = (i * h) // level, -(-(i + 1) * h // level)
        cols = [x[..., r0:r1, (j * w) // level:-(-(j + 1) * w // level)].amax(dim=(-2, -1)) for j in range(level)]
        rows.append(torch.stack(cols, dim=-1))
    return torch.stack(rows, dim=-2)


@register_fusion(
    "spp",
    FusionSpec(
        dropout=(0.5, 0.4, 0.3),  # ..._SPPFusion.forward applies all three dropouts
        final_checkpoint="SPPFusion.pth",
        if3d_class="DDAMNet_Smirk_Spatial_Alignment_SPPFusion",
    ),
)
class SPPFusion(nn.Module):
    """If3D's spatial-pyramid-pooling fusion.

    Source: ``SpatialPyramidPooling`` and ``DDAMNet_Smirk_Spatial_Alignment_SPPFusion.forward`` in If3D's
    ``networks/DDAM_smirkpic_fusion.py``: shared depthwise 3×3 conv (padding 1) + BN per stream; per
    stream, adaptive max pooling to 1×1, 2×2 and 4×4, each flattened in (C, l, l) order and
    concatenated by level; the photo vector comes first, then the render vector.

    Args:
        channels: C (512).
        levels: pooled sides (1, 2, 4).
        spatial: side of the maps (7).

    Shapes: photo_map, render_map [B, C, 7, 7] → [B, 2·C·Σ l²] = [B, 21504].
    """

    def __init__(self, channels: int = 512, levels: tuple[int, ...] = (1, 2, 4), spatial: int = 7) -> None:
        super().__init__()
        self.channels = channels
        self.spatial = spatial
        self.levels = tuple(levels)
        self.depthwise = DepthwiseConvBN(channels, kernel_size=3, padding=1)
        self.out_features = 2 * channels * sum(level * level for level in self.levels)

    def _pyramid(self, x: Tensor) -> Tensor:
        pool = adaptive_max_pool_bins if torch.onnx.is_in_onnx_export() else F.adaptive_max_pool2d
        return torch.cat([pool(x, level).flatten(1) for level in self.levels], dim=1)

    def forward(self, photo_map: Tensor, render_map: Tensor) -> Tensor:
        check_maps(self, photo_map, render_map, self.channels, self.spatial)
        photo = self._pyramid(self.depthwise(photo_map))
        render = self._pyramid(self.depthwise(render_map))
        return torch.cat([photo, render], dim=1)

    @torch.no_grad()
    def init_passthrough(self, pool: nn.Module) -> PassThrough:
        """The closest start from a photo model SPP allows: an approximation, not a pass-through.

        **Why exactness is impossible:** the photo model pools the attended map with a learned weighted *sum*
        over all S×S = 49 positions of each channel; SPP keeps only window *maxima* (1 + 4 + 16 = 21 per channel)
        after a 3×3 depthwise block, which mixes at most 9 neighbouring positions. Two maps with the same window
        maxima but different values elsewhere have different weighted sums, so no setting of the 3×3 block and no
        readout of the pyramid reproduces the photo model's feature on every input.

        **Closest:** the 3×3 block becomes the identity (eval mode), so the finest pyramid level holds the maxima
        of the attended photo map over its L×L windows (L = max level, 4); the readout gives each window the sum
        of the photo model's 7×7 kernel weights of the positions it stands for (position (h, w) → window
        (⌊h·L/S⌋, ⌊w·L/S⌋), which contains it), scaled by its BN. Exact when each channel is constant within
        each window; the coarser levels and the render half get zero readout weight.

        Args:
            pool: the photo model's 7×7 depthwise conv + BN (DDAMFN's ``gdc``), kernel [C, 1, S, S].

        Returns:
            :class:`PassThrough` with readout [C, out_features], ``exact=False``, ``norms`` naming the 3×3 block's BN.

        Raises:
            ValueError: the pooling kernel is not [C, 1, S, S] for this fusion's C and side.
        """
        c, side = self.channels, self.spatial
        kernel, scale, shift = pool_affine(pool, self.channels, self.spatial)
        set_identity(self.depthwise)
        finest = max(self.levels)
        offset = c * sum(level * level for level in self.levels[: self.levels.index(finest)])
        cell = torch.arange(side, device=kernel.device) * finest // side  # position → window along one axis
        window = (cell[:, None] * finest + cell[None, :]).flatten()  # [S·S] window index of each position
        per_window = torch.zeros(c, finest * finest, device=kernel.device)
        per_window.index_add_(1, window, kernel * scale[:, None])
        weight = torch.zeros(c, self.out_features, device=kernel.device)
        rows = torch.arange(c, device=kernel.device)
        cols = offset + rows[:, None] * finest * finest + torch.arange(finest * finest, device=kernel.device)
        weight[rows[:, None], cols] = per_window
        return PassThrough(weight, shift, exact=False, norms={"depthwise.bn": self.channels},
                           note=f"approximate: window maxima of the {finest}×{finest} level stand for the photo "
                                "model's weighted sum over all positions (a max pyramid cannot hold a sum)")
