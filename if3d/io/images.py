"""The one image decoder of the toolkit: dataset samples, render inputs, converter sources and the
converters' check of what they wrote all read image files through :func:`decode_image`.

Decoding is Pillow's (libjpeg-turbo, libpng, libtiff, libwebp, ...). Every image comes out as uint8
``[H, W, 3]`` RGB, whatever is stored:

=====================  =========================================================================
stored as              decoded as
=====================  =========================================================================
8-bit grey (``L``)     grey replicated to three channels
1-bit (``1``)          black and white, replicated
16-bit grey (``I;16``  ``round(v / 257)``: 65535 -> 255, so a 16-bit copy of an 8-bit image (``v * 257``)
and variants)          decodes to the 8-bit original exactly
32-bit integer (``I``) as 16-bit when a value exceeds 255, else as 8-bit; values outside 0..65535 are
                       refused (the scale is unknown)
float (``F``)          ``v * 255`` when all values are in [0, 1], as is when in [0, 255]; anything
                       else (or NaN/inf) is refused
16-bit RGB PNG         Pillow's 8-bit RGB (the high byte of each sample)
RGBA, LA, PA           the colour channels; alpha is dropped (not composited)
palette (``P``)        the palette colours (transparency dropped)
CMYK, YCbCr            converted to RGB by Pillow
=====================  =========================================================================

EXIF orientation is *not* applied: pixels are used as stored, as PyTorch/PIL data loaders (and
If3D's and DDAMFN's loaders, whose weights the toolkit loads) do, so that a photo, its render and a
published model all see the same pixels. Multi-frame files (GIF, TIFF) give their first frame.

Any failure raises :class:`~if3d.io.report.CorruptImageError` with the message ``"<path>: <problem>"``
(missing, empty, not an image, truncated or corrupt, unsupported mode, too large, a folder, a symbolic
link loop, no permission). Truncated files are refused, never padded (Pillow's ``LOAD_TRUNCATED_IMAGES``
is left off).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np

from if3d.io.report import CorruptImageError

__all__ = ["decode_image", "verify_image"]

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I;16S", "I;16BS", "I;16LS")


def _fail(path: Path, problem: str, cause: BaseException | None = None) -> CorruptImageError:
    err = CorruptImageError(f"{path}: {problem}", path=path, problem=problem)
    if cause is not None:
        err.__cause__ = cause
    return err


def _to_rgb(im, path: Path) -> np.ndarray:
    mode = im.mode
    if mode in _SIXTEEN_BIT or mode == "I":
        arr = np.asarray(im).astype(np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise _fail(path, f"{mode} image with values {arr.min()}..{arr.max()} outside 0..65535 "
                              "(unknown scale); save it with 8 or 16 bits per sample")
        if mode in _SIXTEEN_BIT or (arr.size and arr.max() > 255):
            arr = (arr + 128) // 257  # round(v / 257)
        grey = arr.astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise _fail(path, "float image with NaN or infinite values")
        lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
        if lo >= 0.0 and hi <= 1.0:
            arr = arr * 255.0
        elif not (lo >= 0.0 and hi <= 255.0):
            raise _fail(path, f"float image with values {lo:g}..{hi:g} outside [0, 1] and [0, 255] (unknown scale)")
        grey = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow's path for palettes with transparency; alpha dropped below
    if im.mode != "RGB":
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise _fail(path, f"unsupported image mode {mode}", e) from e
    return np.array(im, dtype=np.uint8)


def decode_image(path: str | os.PathLike, *, min_size: int | None = None) -> np.ndarray:
    """Decode an image file to RGB (see the module docstring for every stored format).

    Args:
        path: any image file Pillow reads (JPEG, PNG, BMP, TIFF, WebP, GIF, ...).
        min_size: when given, a JPEG may be decoded at a reduced scale (libjpeg's DCT scaling,
            ``Image.draft``) as long as both sides stay >= ``min_size`` pixels; much faster for large
            photos that are resized to ``min_size`` anyway.

    Returns:
        uint8 ``[H, W, 3]`` RGB array (C-contiguous), H, W >= 1.

    Raises:
        CorruptImageError: the file cannot be decoded; the message names it and the problem.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            if min_size is not None and im.format == "JPEG":
                im.draft("RGB", (min_size, min_size))
            im.load()
            arr = _to_rgb(im, path)
    except CorruptImageError:
        raise
    except FileNotFoundError as e:
        if path.is_symlink():
            raise _fail(path, f"broken symbolic link (its target {os.readlink(path)} does not exist)", e) from None
        raise _fail(path, "file not found", e) from None
    except IsADirectoryError as e:
        raise _fail(path, "is a folder, not an image file", e) from None
    except PermissionError as e:
        raise _fail(path, "permission denied", e) from None
    except UnidentifiedImageError as e:
        problem = "empty file" if _is_empty(path) else "not an image (or a format Pillow cannot read)"
        raise _fail(path, problem, e) from None
    except Image.DecompressionBombError as e:
        raise _fail(path, f"image too large to decode safely ({e})", e) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _fail(path, "symbolic link loop (too many levels of symbolic links)", e) from None
        raise _fail(path, f"truncated or corrupt image ({e})", e) from None
    except (ValueError, SyntaxError, EOFError, MemoryError) as e:
        raise _fail(path, f"corrupt image ({type(e).__name__}: {e})", e) from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise _fail(path, f"decoded to an unusable array of shape {arr.shape}")
    return np.ascontiguousarray(arr)


def verify_image(path: str | os.PathLike) -> None:
    """Decode ``path`` completely and discard the pixels.

    Raises:
        CorruptImageError: as :func:`decode_image`.
    """
    decode_image(path)


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False
