"""Paired batch augmentation: the same geometry for photo and render, photometric changes and erasing on the photo.

If3D applied its training transform to the photo and to the render separately, so each got its own random
flip and affine and the pair no longer lined up. :class:`PairedAugment` draws one geometric transform per
sample and applies it to both images of the pair; photometric augmentation (colour jitter) and random
erasing touch the photo only unless asked otherwise. It works on uint8 batches ``[B, 3, S, S]`` on any
device (the training loop calls it after moving the batch to the GPU) and returns ImageNet-normalised
float batches.

Recipes (facts from the original training scripts, all at 112x112 after ``Resize((112, 112))``):

* ``"affectnet"`` — DDAMFN ``affectnet_train.py`` and If3D's ``affectnet_*_train.py``:
  ``RandomHorizontalFlip()``, ``RandomApply([RandomAffine(20, scale=(0.8, 1), translate=(0.2, 0.2))],
  p=0.7)``, ``Normalize(ImageNet)``, ``RandomErasing()`` (p=0.5, scale=(0.02, 0.33), ratio=(0.3, 3.3),
  value 0 after normalisation, i.e. the mean colour).
* ``"rafdb"`` — DDAMFN ``rafdb_train.py``: ``RandomHorizontalFlip()``, ``RandomApply([RandomRotation(5),
  RandomCrop(112, padding=8)], p=0.2)``, ``Normalize(ImageNet)``, ``RandomErasing(scale=(0.02, 0.25))``.
* ``"light"`` — ``"rafdb"`` without the random erasing: for fine-tuning runs of a few epochs, which underfit
  (training loss above validation loss) and lose accuracy to erasing (FER2013 demo, 2 epochs from ImageNet
  MobileNetV2: 0.547 with erasing, 0.559 without, same seed; docs/RESULTS.md, the FER2013 demo).

The originals used the PIL default nearest-neighbour interpolation for the affine; ``interpolation``
defaults to bilinear here (``"nearest"`` reproduces them). Neither original used colour jitter
(``color_jitter`` is off by default).

Two implementations with the same distributions:

* ``backend="batched"`` (default): one ``affine_grid``/``grid_sample`` call for the whole batch with a
  per-sample matrix (photo and render are stacked along channels, so they cannot diverge), vectorised
  colour jitter and erasing. Fast on CPU and GPU.
* ``backend="v2"``: a per-sample loop over torchvision ``transforms.v2`` (``RandomHorizontalFlip``,
  ``RandomApply([RandomAffine, RandomCrop])``, ``ColorJitter``, ``RandomErasing``); v2 transforms called
  with both images as ``tv_tensors.Image`` apply the same parameters to both. The reference path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize(
    batch: torch.Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 images to normalised float: ``(x / 255 - mean) / std`` per channel (the evaluation transform).

    Args:
        batch: uint8 [B, 3, S, S] or [3, S, S], RGB, any device.
        mean, std: per-channel statistics of [0, 1] images (default ImageNet, as DDAMFN/If3D).
        dtype: output floating dtype.

    Returns:
        float [B, 3, S, S] (or [3, S, S]) on the same device.

    Raises:
        TypeError: ``batch`` is not uint8.
    """
    if batch.dtype != torch.uint8:
        raise TypeError(f"normalize expects uint8 images, got {batch.dtype}")
    scale, shift = _norm_coeffs(mean, std, batch.device, dtype)
    return batch.to(dtype) * scale + shift


def _norm_coeffs(mean, std, device, dtype):
    m = torch.tensor(mean, dtype=torch.float64)
    s = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * s)).to(device=device, dtype=dtype).view(-1, 1, 1)
    shift = (-m / s).to(device=device, dtype=dtype).view(-1, 1, 1)
    return scale, shift


@dataclass(frozen=True)
class AugmentRecipe:
    """Parameters of :class:`PairedAugment` (see the module docstring for the presets).

    Geometry (shared by photo and render): horizontal flip with probability ``hflip``; then, with
    probability ``geometric_p``, an affine (rotation uniform in ±``degrees`` about the centre, translation
    uniform in ±``translate`` x size rounded to pixels, isotropic ``scale`` uniform in the range) followed
    by a ``RandomCrop(S, padding=crop_padding)`` (an integer shift in ±``crop_padding`` pixels, zero fill).
    Photometric: ``color_jitter`` = (brightness, contrast, saturation, hue) as ``ColorJitter``.
    Erasing (after normalisation, value 0): probability ``erase_p``, area fraction ``erase_scale``,
    aspect ratio ``erase_ratio``.
    """

    hflip: float = 0.5
    geometric_p: float = 0.7
    degrees: float = 20.0
    translate: float = 0.2
    scale: tuple[float, float] = (0.8, 1.0)
    crop_padding: int = 0
    color_jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    erase_p: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.33)
    erase_ratio: tuple[float, float] = (0.3, 3.3)


PRESETS: dict[str, AugmentRecipe] = {
    "affectnet": AugmentRecipe(),
    "rafdb": AugmentRecipe(
        geometric_p=0.2, degrees=5.0, translate=0.0, scale=(1.0, 1.0), crop_padding=8, erase_scale=(0.02, 0.25)
    ),
    "none": AugmentRecipe(hflip=0.0, geometric_p=0.0, erase_p=0.0),
}
PRESETS["light"] = replace(PRESETS["rafdb"], erase_p=0.0)
"""Named recipes: ``affectnet`` (DDAMFN/If3D AffectNet), ``rafdb`` (DDAMFN RAF-DB), ``light`` (``rafdb``
without erasing), ``none``."""


class PairedAugment(nn.Module):
    """Batch augmentation of (photo, render) pairs; in ``eval()`` mode only :func:`normalize`.

    Args:
        image_size: side ``S`` of the input batches (used to build the v2 crop; inputs must be S x S).
        preset: a key of :data:`PRESETS` (default ``"affectnet"``, If3D's recipe).
        hflip, geometric_p, degrees, translate, scale, crop_padding, color_jitter, erase_p, erase_scale,
            erase_ratio: override single fields of the preset (``None`` keeps the preset's value);
            ``color_jitter`` may be one float (brightness = contrast = saturation, hue 0).
        erase_render: also erase the render, with the same rectangle as the photo (default: photo only).
        jitter_render: also colour-jitter the render, with the same factors (default: photo only).
        interpolation: ``"bilinear"`` or ``"nearest"`` for the geometric warp.
        mean, std: normalisation statistics (default ImageNet).
        backend: ``"batched"`` (vectorised) or ``"v2"`` (per-sample torchvision v2 loop).
        generator: optional CPU ``torch.Generator`` for the batched backend's draws (default: the global
            RNG; the v2 backend always uses the global RNG).

    Call: ``augment(photo)`` -> float [B, 3, S, S]; ``augment(photo, render)`` -> (photo, render), both
    float [B, 3, S, S], normalised, on the input device. Inputs: uint8 [B, 3, S, S] (or [3, S, S]).

    Raises:
        ValueError: unknown preset/backend/interpolation, or inputs of the wrong shape.
        TypeError: inputs are not uint8.
    """

    def __init__(
        self,
        image_size: int = 112,
        preset: str = "affectnet",
        *,
        hflip: float | None = None,
        geometric_p: float | None = None,
        degrees: float | None = None,
        translate: float | None = None,
        scale: tuple[float, float] | None = None,
        crop_padding: int | None = None,
        color_jitter: float | tuple[float, float, float, float] | None = None,
        erase_p: float | None = None,
        erase_scale: tuple[float, float] | None = None,
        erase_ratio: tuple[float, float] | None = None,
        erase_render: bool = False,
        jitter_render: bool = False,
        interpolation: str = "bilinear",
        mean: tuple[float, ...] = IMAGENET_MEAN,
        std: tuple[float, ...] = IMAGENET_STD,
        backend: str = "batched",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
        if backend not in ("batched", "v2"):
            raise ValueError(f"backend must be 'batched' or 'v2', got {backend!r}")
        if interpolation not in ("bilinear", "nearest"):
            raise ValueError(f"interpolation must be 'bilinear' or 'nearest', got {interpolation!r}")
        if isinstance(color_jitter, (int, float)):
            color_jitter = (float(color_jitter),) * 3 + (0.0,)
        overrides = {
            k: v for k, v in dict(
                hflip=hflip, geometric_p=geometric_p, degrees=degrees, translate=translate,
                scale=None if scale is None else tuple(scale), crop_padding=crop_padding,
                color_jitter=None if color_jitter is None else tuple(color_jitter), erase_p=erase_p,
                erase_scale=None if erase_scale is None else tuple(erase_scale),
                erase_ratio=None if erase_ratio is None else tuple(erase_ratio),
            ).items() if v is not None
        }
        self.recipe = replace(PRESETS[preset], **overrides)
        self.preset = preset
        self.image_size = int(image_size)
        self.erase_render = bool(erase_render)
        self.jitter_render = bool(jitter_render)
        self.interpolation = interpolation
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.backend = backend
        self.generator = generator
        r = self.recipe
        if len(r.color_jitter) != 4 or any(c < 0 for c in r.color_jitter) or r.color_jitter[3] > 0.5:
            raise ValueError(f"color_jitter must be 4 values >= 0 with hue <= 0.5, got {r.color_jitter}")
        self._v2 = self._build_v2() if backend == "v2" else None

    def extra_repr(self) -> str:
        return (f"image_size={self.image_size}, preset={self.preset!r}, recipe={self.recipe}, "
                f"erase_render={self.erase_render}, jitter_render={self.jitter_render}, "
                f"interpolation={self.interpolation!r}, backend={self.backend!r}")

    # ------------------------------------------------------------------------------------------------

    def forward(self, photo: torch.Tensor, render: torch.Tensor | None = None):
        single = photo.dim() == 3
        if single:
            photo = photo.unsqueeze(0)
            render = render.unsqueeze(0) if render is not None else None
        self._check(photo, "photo")
        if render is not None:
            self._check(render, "render")
            if render.shape != photo.shape:
                raise ValueError(f"photo {tuple(photo.shape)} and render {tuple(render.shape)} differ in shape")
        if not self.training:
            out_p = normalize(photo, self.mean, self.std)
            out_r = normalize(render, self.mean, self.std) if render is not None else None
        elif self.backend == "batched":
            out_p, out_r = self._batched(photo, render)
        else:
            out_p, out_r = self._per_sample_v2(photo, render)
        if single:
            out_p = out_p[0]
            out_r = out_r[0] if out_r is not None else None
        return out_p if render is None else (out_p, out_r)

    def _check(self, x: torch.Tensor, what: str) -> None:
        if x.dtype != torch.uint8:
            raise TypeError(f"{what} must be uint8 [B,3,S,S], got {x.dtype}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3]:
            raise ValueError(f"{what} must be [B,3,S,S] (square), got {tuple(x.shape)}")

    # ---------------------------------------------------------------------------------- batched backend

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator, dtype=torch.float64)

    def sample_geometry(self, batch_size: int, size: int) -> dict[str, torch.Tensor]:
        """Draw per-sample geometric parameters (CPU tensors of length ``batch_size``).

        Returns:
            ``flip`` bool, ``angle`` degrees, ``tx``/``ty`` integer pixels (affine translation),
            ``scale``, ``dx``/``dy`` integer pixels (crop shift; positive moves content right/down).
        """
        r = self.recipe
        b = batch_size
        flip = self._rand(b) < r.hflip
        apply = self._rand(b) < r.geometric_p
        angle = (self._rand(b) * 2 - 1) * r.degrees
        max_t = r.translate * size
        tx = torch.round((self._rand(b) * 2 - 1) * max_t)
        ty = torch.round((self._rand(b) * 2 - 1) * max_t)
        scale = r.scale[0] + self._rand(b) * (r.scale[1] - r.scale[0])
        pad = int(r.crop_padding)
        # RandomCrop(S, padding=pad) picks the top-left corner in [0, 2 pad]; content moves by pad - corner.
        dx = pad - torch.floor(self._rand(b) * (2 * pad + 1))
        dy = pad - torch.floor(self._rand(b) * (2 * pad + 1))
        zero = torch.zeros(b, dtype=torch.float64)
        return {
            "flip": flip,
            "angle": torch.where(apply, angle, zero),
            "tx": torch.where(apply, tx, zero),
            "ty": torch.where(apply, ty, zero),
            "scale": torch.where(apply, scale, torch.ones(b, dtype=torch.float64)),
            "dx": torch.where(apply, dx, zero),
            "dy": torch.where(apply, dy, zero),
        }

    @staticmethod
    def geometry_matrices(params: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """``affine_grid`` matrices (float64 [B, 2, 3], normalised coordinates, ``align_corners=False``).

        The output image is ``shift(affine(flip(input)))`` with torchvision's conventions (``TF.hflip``,
        ``TF.affine(angle, translate=(tx, ty), scale)`` about the centre, then the crop shift ``(dx, dy)``
        pixels), each zero-filled; the matrix maps output coordinates to input coordinates.
        """
        a = torch.deg2rad(params["angle"])
        s = params["scale"]
        cos, sin = torch.cos(a) / s, torch.sin(a) / s
        half = size / 2.0
        # inverse of (rotation x scale) about the centre, then of the translation (torchvision's
        # _get_inverse_affine_matrix with zero shear), in pixel units centred on the image
        inv = torch.stack([torch.stack([cos, sin], -1), torch.stack([-sin, cos], -1)], -2)  # [B,2,2]
        # output pixel p_out came from p_aff = p_out - (dx, dy); the affine input is inv @ (p_aff - t)
        shift = torch.stack([-params["dx"] - params["tx"], -params["dy"] - params["ty"]], -1) / half
        t = (inv @ shift.unsqueeze(-1)).squeeze(-1)
        theta = torch.cat([inv, t.unsqueeze(-1)], -1)
        sign = torch.where(params["flip"], -1.0, 1.0).to(theta.dtype)
        theta[:, 0, :] = theta[:, 0, :] * sign.unsqueeze(-1)
        return theta

    @staticmethod
    def shift_valid_mask(params: dict[str, torch.Tensor], size: int) -> torch.Tensor:
        """float32 [B, S, S]: 0 where the crop shift ``(dx, dy)`` brought in zero padding, else 1."""
        coords = torch.arange(size, dtype=torch.float64)
        src_x = coords[None, :] - params["dx"][:, None]
        src_y = coords[None, :] - params["dy"][:, None]
        ok_x = (src_x >= 0) & (src_x < size)
        ok_y = (src_y >= 0) & (src_y < size)
        return (ok_y[:, :, None] & ok_x[:, None, :]).to(torch.float32)

    def _batched(self, photo: torch.Tensor, render: torch.Tensor | None):
        b, _, size, _ = photo.shape
        device = photo.device
        r = self.recipe
        x = photo if render is None else torch.cat([photo, render], 1)
        x = x.to(torch.float32)  # [0, 255]: normalised below exactly as normalize() does

        x = self._apply_geometry(x, self.sample_geometry(b, size))

        if any(c > 0 for c in r.color_jitter):
            n_ch = 3 if (render is None or not self.jitter_render) else 6
            x[:, :n_ch] = self._jitter(x[:, :n_ch] / 255.0) * 255.0

        scale, shift = _norm_coeffs(self.mean, self.std, device, torch.float32)
        if render is None:
            x = x * scale + shift
        else:
            x = x * scale.repeat(2, 1, 1) + shift.repeat(2, 1, 1)

        if r.erase_p > 0:
            mask = self._erase_mask(b, size).to(device)
            n_ch = 6 if (render is not None and self.erase_render) else 3
            x[:, :n_ch] = x[:, :n_ch].masked_fill(mask.unsqueeze(1), 0.0)

        if render is None:
            return x, None
        return x[:, :3].contiguous(), x[:, 3:].contiguous()

    def _apply_geometry(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Warp float [B, K, S, S] (any number K of channels, all moved alike) with per-sample ``params``
        (:meth:`sample_geometry`); in place where possible, returns the result."""
        size, device = x.shape[-1], x.device
        warp = (params["angle"] != 0) | (params["tx"] != 0) | (params["ty"] != 0) | (params["scale"] != 1) \
            | (params["dx"] != 0) | (params["dy"] != 0)
        flip_only = params["flip"] & ~warp
        if bool(flip_only.any()):
            i = torch.nonzero(flip_only).squeeze(1).to(device)
            x[i] = x[i].flip(-1)
        if bool(warp.any()):
            # only the samples that move go through grid_sample (exact same result for the others)
            sel = torch.nonzero(warp).squeeze(1)
            sub = {k: v[sel] for k, v in params.items()}
            theta = self.geometry_matrices(sub, size).to(device=device, dtype=torch.float32)
            i = sel.to(device)
            xs = x[i]
            grid = F.affine_grid(theta, list(xs.shape), align_corners=False)
            xs = F.grid_sample(xs, grid, mode=self.interpolation, padding_mode="zeros", align_corners=False)
            if bool((sub["dx"] != 0).any() or (sub["dy"] != 0).any()):
                # the crop's zero padding: pixels shifted in from outside the affine output's frame
                xs = xs * self.shift_valid_mask(sub, size).to(device).unsqueeze(1)
            x[i] = xs
        return x

    def augment_clips(self, clip: torch.Tensor, render: torch.Tensor | None = None):
        """Augment clips of frames (and their renders): one geometry per clip, erasing per frame.

        Every frame of a clip, and its render, gets the same flip and affine (drawn once per clip by
        :meth:`sample_geometry`, as for a photo and its render), so the frames stay registered to each other
        and the face's motion is kept; colour jitter factors are drawn per clip; random erasing is drawn per
        frame (an occluded frame among clean ones, which the frame attention can learn to down-weight),
        on the photo frames only unless ``erase_render``. In ``eval()`` mode only :func:`normalize`.

        Args:
            clip: uint8 [B, T, 3, S, S].
            render: uint8 [B, T, 3, S, S] or None.

        Returns:
            normalised float [B, T, 3, S, S] (and the render likewise), on the input device.

        Raises:
            TypeError: not uint8; ValueError: wrong shapes.
        """
        if clip.dtype != torch.uint8 or (render is not None and render.dtype != torch.uint8):
            raise TypeError(f"clips must be uint8 [B,T,3,S,S], got {clip.dtype}")
        if clip.dim() != 5 or clip.shape[2] != 3 or clip.shape[3] != clip.shape[4]:
            raise ValueError(f"clips must be [B,T,3,S,S] (square frames), got {tuple(clip.shape)}")
        if render is not None and render.shape != clip.shape:
            raise ValueError(f"clip {tuple(clip.shape)} and render {tuple(render.shape)} differ in shape")
        b, t, _, size, _ = clip.shape
        if not self.training:
            out = normalize(clip.reshape(b * t, 3, size, size), self.mean, self.std).view(clip.shape)
            if render is None:
                return out
            return out, normalize(render.reshape(b * t, 3, size, size), self.mean, self.std).view(clip.shape)
        k = 1 if render is None else 2
        x = clip.reshape(b, t * 3, size, size)
        if render is not None:
            x = torch.cat([x, render.reshape(b, t * 3, size, size)], 1)
        x = self._apply_geometry(x.to(torch.float32), self.sample_geometry(b, size))
        r = self.recipe
        if any(c > 0 for c in r.color_jitter):
            n_ch = t * 3 * (2 if (render is not None and self.jitter_render) else 1)
            x[:, :n_ch] = self._jitter(x[:, :n_ch] / 255.0) * 255.0
        scale, shift = _norm_coeffs(self.mean, self.std, x.device, torch.float32)
        x = x * scale.repeat(k * t, 1, 1) + shift.repeat(k * t, 1, 1)
        x = x.view(b, k, t, 3, size, size)
        if r.erase_p > 0:
            mask = self._erase_mask(b * t, size).to(x.device).view(b, 1, t, 1, size, size)
            if render is not None and self.erase_render:
                x = x.masked_fill(mask, 0.0)
            else:
                x[:, 0] = x[:, 0].masked_fill(mask[:, 0], 0.0)
        if render is None:
            return x[:, 0].contiguous()
        return x[:, 0].contiguous(), x[:, 1].contiguous()

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """ColorJitter with per-sample factors on [B, 3k, S, S] floats in [0, 1] (k images per sample share them)."""
        b = x.shape[0]
        k = x.shape[1] // 3
        x = x.reshape(b * k, 3, *x.shape[-2:])
        bright, contrast, sat, hue = self.recipe.color_jitter

        def factors(amount: float) -> torch.Tensor:
            lo, hi = max(0.0, 1.0 - amount), 1.0 + amount
            f = lo + self._rand(b) * (hi - lo)
            return f.to(device=x.device, dtype=x.dtype).repeat_interleave(k).view(-1, 1, 1, 1)

        ops = []
        if bright > 0:
            fb = factors(bright)
            ops.append(lambda y: (y * fb).clamp_(0, 1))
        if contrast > 0:
            fc = factors(contrast)
            ops.append(lambda y: (fc * y + (1 - fc) * TF.rgb_to_grayscale(y).mean((-3, -2, -1), keepdim=True))
                       .clamp_(0, 1))
        if sat > 0:
            fs = factors(sat)
            ops.append(lambda y: (fs * y + (1 - fs) * TF.rgb_to_grayscale(y)).clamp_(0, 1))
        if hue > 0:
            fh = ((self._rand(b) * 2 - 1) * hue).repeat_interleave(k).tolist()
            ops.append(lambda y: torch.stack([TF.adjust_hue(y[i], fh[i]) for i in range(y.shape[0])]))
        order = torch.randperm(len(ops), generator=self.generator).tolist()
        for i in order:
            x = ops[i](x)
        return x.reshape(b, 3 * k, *x.shape[-2:])

    def _erase_mask(self, batch_size: int, size: int, attempts: int = 10) -> torch.Tensor:
        """bool [B, S, S]: the RandomErasing rectangle of each sample (all False when not erased).

        As ``torchvision.transforms.RandomErasing.get_params``: up to 10 tries of an area fraction uniform
        in ``erase_scale`` and a log-uniform aspect ratio in ``erase_ratio``; the first rectangle that fits
        strictly inside the image is placed uniformly.
        """
        r = self.recipe
        b = batch_size
        area = size * size * (r.erase_scale[0] + self._rand(b, attempts) * (r.erase_scale[1] - r.erase_scale[0]))
        log_lo, log_hi = math.log(r.erase_ratio[0]), math.log(r.erase_ratio[1])
        ratio = torch.exp(log_lo + self._rand(b, attempts) * (log_hi - log_lo))
        h = torch.round(torch.sqrt(area * ratio))
        w = torch.round(torch.sqrt(area / ratio))
        fits = (h < size) & (w < size)
        first = fits.to(torch.int8).argmax(1)
        rows = torch.arange(b)
        h, w = h[rows, first], w[rows, first]
        do = (self._rand(b) < r.erase_p) & fits.any(1)
        top = torch.floor(self._rand(b) * (size - h + 1))
        left = torch.floor(self._rand(b) * (size - w + 1))
        coords = torch.arange(size, dtype=torch.float64)
        in_y = (coords >= top[:, None]) & (coords < (top + h)[:, None])
        in_x = (coords >= left[:, None]) & (coords < (left + w)[:, None])
        return in_y[:, :, None] & in_x[:, None, :] & do[:, None, None]

    # --------------------------------------------------------------------------------------- v2 backend

    def _build_v2(self) -> dict[str, nn.Module | None]:
        r = self.recipe
        interp = v2.InterpolationMode.BILINEAR if self.interpolation == "bilinear" else v2.InterpolationMode.NEAREST
        geometric: list[nn.Module] = []
        if r.degrees > 0 or r.translate > 0 or r.scale != (1.0, 1.0):
            geometric.append(v2.RandomAffine(
                degrees=r.degrees, translate=(r.translate, r.translate) if r.translate > 0 else None,
                scale=r.scale if r.scale != (1.0, 1.0) else None, interpolation=interp,
            ))
        if r.crop_padding > 0:
            geometric.append(v2.RandomCrop(self.image_size, padding=r.crop_padding))
        steps: list[nn.Module] = [v2.RandomHorizontalFlip(r.hflip)]
        if geometric and r.geometric_p > 0:
            steps.append(v2.RandomApply(geometric, p=r.geometric_p))
        b, c, s, h = r.color_jitter
        jitter = v2.ColorJitter(brightness=b or None, contrast=c or None, saturation=s or None, hue=h or None) \
            if any(r.color_jitter) else None
        erase = v2.RandomErasing(p=r.erase_p, scale=r.erase_scale, ratio=r.erase_ratio, value=0) \
            if r.erase_p > 0 else None
        return {"geometry": v2.Compose(steps), "jitter": jitter, "erase": erase}

    def _per_sample_v2(self, photo: torch.Tensor, render: torch.Tensor | None):
        t = self._v2
        out_p, out_r = [], []
        for i in range(photo.shape[0]):
            p = tv_tensors.Image(photo[i])
            if render is None:
                p = t["geometry"](p)
                q = None
            else:
                p, q = t["geometry"](p, tv_tensors.Image(render[i]))
            if t["jitter"] is not None:
                if q is not None and self.jitter_render:
                    # one jitter draw for both: stack side by side so ColorJitter sees one image
                    both = t["jitter"](tv_tensors.Image(torch.cat([p, q], -1)))
                    p, q = both[..., : p.shape[-1]], both[..., p.shape[-1]:]
                else:
                    p = t["jitter"](p)
            p = normalize(p.as_subclass(torch.Tensor), self.mean, self.std)
            q = normalize(q.as_subclass(torch.Tensor), self.mean, self.std) if q is not None else None
            if t["erase"] is not None:
                if q is not None and self.erase_render:
                    p, q = t["erase"](tv_tensors.Image(p), tv_tensors.Image(q))
                else:
                    p = t["erase"](tv_tensors.Image(p))
            out_p.append(p.as_subclass(torch.Tensor))
            if q is not None:
                out_r.append(q.as_subclass(torch.Tensor))
        return torch.stack(out_p), (torch.stack(out_r) if render is not None else None)
