"""Pieces shared by the fusion modules: the map check, If3D's depthwise conv + BN block, and what a
fusion's ``init_passthrough`` returns (:class:`PassThrough`) with the helpers it is built from."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["DepthwiseConvBN", "PassThrough", "check_maps", "copy_pool", "pool_affine", "set_identity"]


def check_maps(module: nn.Module, photo_map: Tensor, render_map: Tensor, channels: int, spatial=None) -> None:
    """Check a fusion module's inputs: two [B, channels, H, W] maps of the same shape (H = W = ``spatial``).

    Raises:
        ValueError: naming the module and the offending shapes.
    """
    name = type(module).__name__
    if photo_map.dim() != 4 or render_map.dim() != 4:
        raise ValueError(
            f"{name}: expected 4-D maps [B, C, H, W], got photo {tuple(photo_map.shape)} "
            f"and render {tuple(render_map.shape)}"
        )
    if photo_map.shape != render_map.shape:
        raise ValueError(
            f"{name}: photo map {tuple(photo_map.shape)} and render map {tuple(render_map.shape)} differ in shape"
        )
    if photo_map.shape[1] != channels:
        raise ValueError(f"{name}: expected {channels} channels, got {photo_map.shape[1]}")
    if spatial is not None and tuple(photo_map.shape[-2:]) != (spatial, spatial):
        raise ValueError(
            f"{name}: expected {spatial}×{spatial} maps (MixedFeatureNet at 112×112 input), "
            f"got {tuple(photo_map.shape[-2:])}"
        )


class DepthwiseConvBN(nn.Module):
    """Depthwise convolution without bias followed by BatchNorm2d, no activation.

    This is DDAMFN's and If3D's ``Linear_block(512, 512, groups=512, kernel=(k, k), padding=(p, p))``
    (state-dict keys ``conv.weight`` [C, 1, k, k] and ``bn.*``). With ``k = 7, p = 0`` on a 7×7 map it
    is the learned global depthwise pooling (GDC) of MobileFaceNet/DDAMFN: [B, C, 7, 7] → [B, C, 1, 1].

    Args:
        channels: C, input and output channels.
        kernel_size: k.
        padding: p (zero padding on each side).
    """

    def __init__(self, channels: int = 512, kernel_size: int = 7, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            channels, channels, kernel_size, stride=1, padding=padding, groups=channels, bias=False
        )
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: Tensor) -> Tensor:
        """x [B, C, H, W] → [B, C, H + 2p − k + 1, W + 2p − k + 1]."""
        return self.bn(self.conv(x))


@dataclass(frozen=True)
class PassThrough:
    """What a fusion module's ``init_passthrough(pool)`` leaves: where the photo model's pooled feature is.

    After ``init_passthrough``, in eval mode, the photo model's pooled feature ``g = pool(photo_map)``
    [B, C] (DDAMFN's 7×7 depthwise conv + BN of the attended photo map) is read from the fusion output
    ``fused`` [B, out_features] as ``g ≈ fused @ weight.T + bias``; equal up to float rounding when
    ``exact``, an approximation (``note`` says why) otherwise.

    Attributes:
        weight: [C, out_features] readout.
        bias: [C].
        exact: whether the readout reproduces ``g`` on any input.
        note: one sentence on how the photo passes (and, when not exact, why it cannot).
        norms: BatchNorm layers set to the identity (name relative to the fusion module → number of leading
            channels concerned), whose statistics a warm start calibrates on training data
            (:func:`networks.warmstart.calibrate_passthrough_norms`).
    """

    weight: Tensor
    bias: Tensor
    exact: bool
    note: str
    norms: dict[str, int] = field(default_factory=dict)


def pool_affine(pool: nn.Module, channels: int, spatial: int) -> tuple[Tensor, Tensor, Tensor]:
    """A depthwise conv + BN pooling (DDAMFN's ``gdc``) as an affine map, in eval mode.

    ``g[b, c] = scale[c] · Σ_hw kernel[c, hw] · x[b, c, hw] + shift[c]``, with ``scale = γ / sqrt(running_var +
    ε)`` and ``shift = β − running_mean · scale`` (BatchNorm2d in eval mode, Ioffe & Szegedy 2015).

    Args:
        pool: module with ``conv`` (depthwise, no bias, weight [C, 1, S, S]) and ``bn`` (BatchNorm2d(C)).
        channels, spatial: the C and S the caller expects.

    Returns:
        ``(kernel [C, S·S], scale [C], shift [C])``, float32 on the pool's device.

    Raises:
        ValueError: the kernel is not [C, 1, S, S].
    """
    if tuple(pool.conv.weight.shape) != (channels, 1, spatial, spatial):
        raise ValueError(f"the photo model's pooling kernel {tuple(pool.conv.weight.shape)} does not fit "
                         f"{channels} channels of {spatial}×{spatial}")
    bn = pool.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().float()
    shift = (bn.bias.detach().float() - bn.running_mean.float() * scale)
    return pool.conv.weight.detach().float().flatten(1), scale, shift


@torch.no_grad()
def copy_pool(target: DepthwiseConvBN, pool: nn.Module) -> None:
    """Copy a photo model's 7×7 depthwise pooling (conv weight, BN parameters and running statistics) into
    ``target``.

    Raises:
        ValueError: the kernels differ in shape (e.g. a 3×3 fusion block).
    """
    if target.conv.weight.shape != pool.conv.weight.shape:
        raise ValueError(f"the photo model's pooling kernel {tuple(pool.conv.weight.shape)} does not fit the "
                         f"fusion's {tuple(target.conv.weight.shape)}")
    target.conv.weight.copy_(pool.conv.weight)
    target.bn.load_state_dict(pool.bn.state_dict())


@torch.no_grad()
def set_identity(block: DepthwiseConvBN) -> None:
    """Make a same-size depthwise conv + BN the identity in eval mode: centre tap 1, other taps 0, and
    ``γ = sqrt(running_var + ε)``, ``β = running_mean`` (so the BN undoes its own normalisation).

    Raises:
        ValueError: the block does not keep the map size (kernel even, or padding ≠ (k − 1) / 2).
    """
    k = block.conv.kernel_size[0]
    if k % 2 == 0 or block.conv.padding[0] != k // 2:
        raise ValueError(f"a depthwise {k}×{k} block with padding {block.conv.padding[0]} is no identity")
    block.conv.weight.zero_()
    block.conv.weight[:, :, k // 2, k // 2] = 1.0
    bn = block.bn
    bn.weight.copy_(torch.sqrt(bn.running_var + bn.eps))
    bn.bias.copy_(bn.running_mean)
