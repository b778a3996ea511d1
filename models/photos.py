"""The one photo loader: every path that turns a photo into pixels (service, training, evaluation,
calibration, OOD fitting, faithfulness) decodes it here, so a model is fitted on photos decoded
exactly as the photos it is applied to.

What it does to a decoded Pillow image, in order: EXIF orientation (pillow-heif has already
rotated HEIF pixels: only the value is read), high-bit-depth and exotic modes to 8-bit RGB(A)
(16-bit grey scaled, not clipped), an embedded RGB ICC profile to sRGB, alpha composited onto
white, and the pixels copied into a brand-new RGB image so no metadata (EXIF, ICC, XMP, text)
survives. No limits, no sniffing, no HTTP: the service adds those on top (service/images.py).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import IO, Any

import numpy as np
import pillow_heif
from PIL import Image, ImageCms

__all__ = ["load_photo", "read_orientation", "to_rgb"]

pillow_heif.register_heif_opener()

_EXIF_ORIENTATION = 0x0112
_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WHITE = (255, 255, 255)
_ROWS = 256  # rows per float64 band when scaling float images


def read_orientation(im: Image.Image) -> int | None:
    """EXIF orientation 1-8, or None when absent, invalid or unreadable."""
    if "original_orientation" in im.info:
        # pillow_heif: libheif has already applied the container's rotation and
        # reset the EXIF tag to 1; this key keeps the value it found.
        value: Any = im.info.get("original_orientation")
    else:
        try:
            value = im.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # malformed EXIF must not sink a fine image
            return None
    if isinstance(value, int) and 1 <= value <= 8:
        return value
    return None


def _scale_to_l(im: Image.Image) -> Image.Image:
    """High-bit-depth grayscale (I;16*, I, F) to 8-bit L by scaling, not clipping.

    Pillow's own ``convert("L")`` clips at 255, which turns 16-bit images white. No float64
    copy of the whole image: integer modes use integer arithmetic (round(v * 255 / 65535)
    equals (v + 128) // 257 for every v in 0..65535, since 65535 = 255 * 257 and no v falls
    on a tie), and float images are scaled in float64 a band of rows at a time.
    """
    arr = np.asarray(im)
    if im.mode == "F":
        hi = float(arr.max()) if arr.size else 1.0
        scale = 255.0 if hi <= 1.0 else 255.0 / 65535.0
        out = np.empty(arr.shape, np.uint8)
        for r in range(0, arr.shape[0], _ROWS):
            band = np.clip(arr[r : r + _ROWS].astype(np.float64) * scale, 0, 255)
            out[r : r + _ROWS] = np.rint(band)
        return Image.fromarray(out, mode="L")
    wide = np.clip(arr, 0, 65535).astype(np.uint32)
    wide += 128
    wide //= 257
    return Image.fromarray(wide.astype(np.uint8), mode="L")


def _normalise_mode(im: Image.Image) -> Image.Image:
    """Return an image in mode RGB or RGBA (alpha still to be composited)."""
    mode = im.mode
    if mode in ("RGB", "RGBA"):
        return im
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(im).convert("RGB")
    if mode in ("LA", "La", "PA", "RGBa", "RGBX") or "transparency" in im.info:
        return im.convert("RGBA")
    return im.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


def _to_srgb(im: Image.Image, icc: bytes | None) -> Image.Image:
    """Convert RGB(A) pixels from an embedded ICC profile to sRGB before it is dropped.

    Phone photos are often Display P3; dropping the profile without converting
    would shift colours. An unusable profile is ignored (pixels kept as-is).
    """
    if not icc or im.mode not in ("RGB", "RGBA"):
        return im
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if src.profile.xcolor_space.strip() != "RGB":
            return im
        converted = ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode=im.mode)
    except Exception:  # a bad profile is dropped, pixels kept as-is
        return im
    return converted if converted is not None else im


def _flatten_to_new_rgb(im: Image.Image) -> Image.Image:
    """Copy only the pixels into a brand-new RGB image, compositing alpha onto white.

    ``convert``/``transpose``/``copy`` carry ``info`` (EXIF, ICC, XMP, ...) over;
    ``Image.new`` + ``paste`` does not, so nothing but pixels survives.
    """
    out = Image.new("RGB", im.size, _WHITE)
    if im.mode == "RGBA":
        out.paste(im.convert("RGB"), (0, 0), im.getchannel("A"))
    else:
        out.paste(im, (0, 0))
    return out


def to_rgb(im: Image.Image) -> tuple[Image.Image, int | None]:
    """A decoded image as upright, sRGB, alpha-free RGB pixels with no metadata, and the EXIF
    orientation (1-8) found and applied (None: none found).

    `im` must be loaded (or loadable); it is not modified. Errors from Pillow propagate: the
    caller decides what a photo that decodes but cannot be converted means.
    """
    orientation = read_orientation(im)
    icc = im.info.get("icc_profile")
    # pillow_heif has already rotated HEIF pixels; for the rest do it here.
    method = _TRANSPOSE.get(orientation or 1) if im.format != "HEIF" else None
    oriented = im.transpose(method) if method is not None else im
    normalised = _to_srgb(_normalise_mode(oriented), icc if isinstance(icc, bytes) else None)
    return _flatten_to_new_rgb(normalised), orientation


def load_photo(path: str | Path | IO[bytes]) -> Image.Image:
    """A photo file (path or binary file object) as the model sees it: decoded and converted by
    :func:`to_rgb`."""
    with Image.open(path) as im:
        im.load()
        return to_rgb(im)[0]
