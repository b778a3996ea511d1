"""Image intake: validate, decode, orient, normalise to RGB and strip metadata.

No HTTP here: every failure is an :class:`ImageError` subclass carrying a stable
``code`` and an HTTP ``status`` for the web layer to turn into problem+json.
Nothing in this module logs; image bytes and metadata never leave it except as
the returned, metadata-free pixels and the :class:`ImageInfo` summary.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, Field

from models.photos import to_rgb
from service.image_sniff import PNG_SIGNATURE, looks_accepted, sniff_unsupported

__all__ = [
    "CorruptImageError",
    "DecodedImage",
    "DecompressionBombError",
    "EmptyImageError",
    "ImageError",
    "ImageInfo",
    "ImageLimits",
    "ImageQuality",
    "ImageTooLargeError",
    "ImageTooSmallError",
    "NotAnImageError",
    "UnsupportedImageFormatError",
    "decode_image",
]

ImageFormat = Literal["jpeg", "png", "webp", "heif"]

# Pillow format ids passed to ``Image.open(formats=...)``. "MPO" is not listed
# because Pillow's JPEG opener itself promotes multi-picture JPEGs (common from
# phone cameras) to MPO; those are ordinary JPEGs for us.
_PILLOW_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "HEIF")
_FORMAT_NAMES: dict[str, ImageFormat] = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "WEBP": "webp",
    "HEIF": "heif",
}
_ACCEPTED_HUMAN = "JPEG, PNG, WebP or HEIC"

_MIB = 1024 * 1024
_EXIF_GPS_IFD = 0x8825
_QUALITY_LONG_SIDE = 512


# --------------------------------------------------------------------------- errors


class ImageError(Exception):
    """Base for every intake failure; ``code`` and ``status`` are stable API."""

    code: ClassVar[str] = "invalid-image"
    status: ClassVar[int] = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EmptyImageError(ImageError):
    code = "empty-image"
    status = 400


class ImageTooLargeError(ImageError):
    code = "image-too-large"
    status = 413


class UnsupportedImageFormatError(ImageError):
    code = "unsupported-image-format"
    status = 415


class NotAnImageError(ImageError):
    code = "not-an-image"
    status = 400


class CorruptImageError(ImageError):
    code = "corrupt-image"
    status = 400


class DecompressionBombError(ImageError):
    """Declared dimensions are over the limits; refused before pixels are allocated."""

    code = "image-dimensions-too-large"
    status = 413


class ImageTooSmallError(ImageError):
    code = "image-too-small"
    status = 400


# --------------------------------------------------------------------------- models


@dataclass(frozen=True, slots=True)
class ImageLimits:
    max_bytes: int = 10 * _MIB
    max_pixels: int = 40_000_000
    max_side: int = 12_000
    min_side: int = 64
    working_side: int = 2048  # decoded photos are downscaled to this long side before they are queued


class ImageQuality(BaseModel):
    """Cheap capture-quality signals, computed on a 512 px (long side) grayscale copy."""

    blur_laplacian_var: float = Field(
        description="Variance of a 3x3 Laplacian (0-255 intensity scale); low means blurry."
    )
    mean_brightness: float = Field(ge=0.0, le=1.0)
    dark_fraction: float = Field(ge=0.0, le=1.0, description="Share of pixels with luminance < 0.05.")
    bright_fraction: float = Field(ge=0.0, le=1.0, description="Share of pixels with luminance > 0.95.")
    min_side: int = Field(description="Shorter side of the decoded image, in pixels.")


class ImageInfo(BaseModel):
    format: ImageFormat
    width: int = Field(
        description="Width after EXIF orientation was applied, as sent (the model and heatmaps work on a copy "
        "downscaled to at most 2048 px on the long side; heatmaps give that copy's size as photo_width/height)."
    )
    height: int = Field(description="Height after EXIF orientation was applied, as sent.")
    original_width: int
    original_height: int
    bytes: int = Field(description="Size of the encoded upload.")
    orientation_applied: int | None = Field(
        default=None,
        description="EXIF orientation (1-8) found and applied, or null if none.",
    )
    metadata_stripped: list[str] = Field(default_factory=list)
    quality: ImageQuality


@dataclass(frozen=True, slots=True)
class DecodedImage:
    image: Image.Image  # RGB, no info/EXIF/ICC, long side at most ImageLimits.working_side
    info: ImageInfo  # the photo as sent (sizes, quality measured before downscaling)


# --------------------------------------------------------------------------- checks


def _verify_png_chunks(data: bytes) -> None:
    """Check every PNG chunk CRC up to IEND.

    Pillow verifies CRCs of header chunks only, not of IDAT, so a flipped bit in
    pixel data can otherwise decode silently into wrong pixels.
    """
    pos = len(PNG_SIGNATURE)
    end = len(data)
    while True:
        if pos + 8 > end:
            raise CorruptImageError("PNG is truncated: it ends before the IEND chunk.")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        body_end = pos + 8 + length
        if body_end + 4 > end:
            raise CorruptImageError(
                f"PNG is truncated: chunk {ctype!r} declares {length} bytes but the file ends first."
            )
        expected = struct.unpack(">I", data[body_end : body_end + 4])[0]
        if zlib.crc32(data[pos + 4 : body_end]) != expected:
            raise CorruptImageError(f"PNG chunk {ctype!r} at byte {pos} fails its CRC check.")
        if ctype == b"IEND":
            return
        pos = body_end + 4


# --------------------------------------------------------------------------- helpers


def _metadata_present(im: Image.Image) -> list[str]:
    """Names of privacy-relevant metadata blocks present in the decoded file."""
    info = im.info
    found: list[str] = []
    exif: Image.Exif | None = None
    try:
        exif = im.getexif()
    except Exception:  # unparsable EXIF: still stripped, just not inspected
        exif = None
    if info.get("exif") or info.get("Raw profile type exif") or (exif is not None and len(exif) > 0):
        found.append("exif")
    has_gps = False
    if exif is not None:
        try:
            has_gps = _EXIF_GPS_IFD in exif or bool(exif.get_ifd(_EXIF_GPS_IFD))
        except Exception:  # broken GPS IFD still counts as present
            has_gps = _EXIF_GPS_IFD in exif
    if has_gps:
        found.append("gps")
    if info.get("xmp") or info.get("XML:com.adobe.xmp"):
        found.append("xmp")
    if info.get("icc_profile"):
        found.append("icc_profile")
    if info.get("comment") or info.get("Comment"):
        found.append("comment")
    if info.get("photoshop"):
        found.append("iptc")
    if info.get("mp") or im.format == "MPO":
        found.append("mpf")
    text = getattr(im, "text", None) if im.format == "PNG" else None
    skip = {"XML:com.adobe.xmp", "Comment", "comment", "Raw profile type exif"}
    if isinstance(text, dict) and any(key not in skip for key in text):
        found.append("text")
    return found


def _quality(rgb: Image.Image) -> ImageQuality:
    gray = rgb.convert("L")
    w, h = gray.size
    scale = _QUALITY_LONG_SIDE / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != gray.size:
        # Fixed working size so the blur measure does not depend on resolution.
        gray = gray.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    g = np.asarray(gray, dtype=np.float64)
    if g.shape[0] >= 3 and g.shape[1] >= 3:
        lap = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
        blur = float(lap.var())
    else:
        blur = 0.0
    lum = g / 255.0
    return ImageQuality(
        blur_laplacian_var=blur,
        mean_brightness=float(np.clip(lum.mean(), 0.0, 1.0)),
        dark_fraction=float((lum < 0.05).mean()),
        bright_fraction=float((lum > 0.95).mean()),
        min_side=min(w, h),
    )


def _downscale(rgb: Image.Image, long_side: int) -> Image.Image:
    """``rgb`` scaled down (never up) so its long side is at most ``long_side``; same aspect ratio.

    Memory: a 40-megapixel upload would otherwise wait in the queue as 120 MB of pixels, and the
    model's preprocessing resizes to a few hundred pixels anyway.
    """
    w, h = rgb.size
    if max(w, h) <= long_side:
        return rgb
    scale = long_side / max(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return rgb.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(_PILLOW_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own hard stop (2x Image.MAX_IMAGE_PIXELS) fires inside open()
        # for absurd headers, before our explicit check can run. The warning is
        # only raised when warnings are turned into errors (e.g. ``-W error``).
        raise DecompressionBombError(
            f"Image declares far more pixels than the limit of {limits.max_pixels:,}; "
            f"it was refused without decoding ({exc})"
        ) from exc
    except UnidentifiedImageError as exc:
        name = sniff_unsupported(data)
        if name is not None:
            raise UnsupportedImageFormatError(f"{name} is not accepted; send {_ACCEPTED_HUMAN}.") from exc
        if looks_accepted(data):
            raise CorruptImageError(
                "The file starts like an accepted image format but its header could not be parsed."
            ) from exc
        raise NotAnImageError(f"The data is not a recognisable image; send {_ACCEPTED_HUMAN}.") from exc
    except Exception as exc:
        raise CorruptImageError(f"The image header could not be read: {_describe(exc)}.") from exc


def _describe(exc: BaseException) -> str:
    """Short, developer-facing cause; Pillow messages carry no pixel data."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


def _check_dimensions(width: int, height: int, limits: ImageLimits) -> None:
    if width <= 0 or height <= 0:
        raise CorruptImageError(f"Image header declares invalid dimensions {width}x{height}.")
    if width > limits.max_side or height > limits.max_side:
        raise DecompressionBombError(f"Image is {width}x{height}; each side must be at most {limits.max_side} pixels.")
    if width * height > limits.max_pixels:
        raise DecompressionBombError(
            f"Image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,} pixels."
        )


# --------------------------------------------------------------------------- API


def decode_image(data: bytes, limits: ImageLimits | None = None) -> DecodedImage:
    """Validate and decode an upload into a metadata-free RGB image plus a summary.

    Raises only :class:`ImageError` subclasses, whatever the input bytes.
    Dimensions are checked from the header before any pixel buffer exists. The returned pixels are
    downscaled to ``limits.working_side`` on the long side; the summary describes the photo as sent.
    """
    limits = limits if limits is not None else ImageLimits()
    size = len(data)
    if size == 0:
        raise EmptyImageError("The upload is empty (0 bytes); send a JPEG, PNG, WebP or HEIC image.")
    if size > limits.max_bytes:
        raise ImageTooLargeError(
            f"The upload is {size:,} bytes; the limit is {limits.max_bytes:,} bytes "
            f"({limits.max_bytes / _MIB:.1f} MiB)."
        )

    with _open(data, limits) as im:
        fmt = _FORMAT_NAMES.get(im.format or "")
        if fmt is None:  # defensive: formats= should make this unreachable
            raise UnsupportedImageFormatError(f"{im.format} is not accepted; send {_ACCEPTED_HUMAN}.")
        original_width, original_height = im.size
        _check_dimensions(original_width, original_height, limits)
        if fmt == "png":
            _verify_png_chunks(data)

        try:
            im.load()
        except Image.DecompressionBombError as exc:
            raise DecompressionBombError(
                f"Image exceeds the decoder's safety limit; the limit is {limits.max_pixels:,} pixels."
            ) from exc
        except Exception as exc:
            raise CorruptImageError(
                f"The {fmt.upper()} image could not be decoded (truncated or corrupt): {_describe(exc)}."
            ) from exc

        try:
            # Orientation, mode, ICC -> sRGB, alpha onto white, a fresh image: the one photo loader.
            rgb, orientation = to_rgb(im)
            if fmt == "heif" and orientation in (5, 6, 7, 8):
                # libheif hands over already-rotated dimensions; report the stored ones.
                original_width, original_height = original_height, original_width
            stripped = _metadata_present(im)
        except ImageError:
            raise
        except Exception as exc:
            raise CorruptImageError(
                f"The {fmt.upper()} image decoded but could not be converted to RGB: {_describe(exc)}."
            ) from exc

    width, height = rgb.size
    if min(width, height) < limits.min_side:
        raise ImageTooSmallError(
            f"Image is {width}x{height}; the shorter side must be at least {limits.min_side} pixels."
        )
    try:
        quality = _quality(rgb)
    except Exception as exc:  # pragma: no cover - numpy on a valid RGB image
        raise CorruptImageError(f"Quality metrics could not be computed: {_describe(exc)}.") from exc
    info = ImageInfo(
        format=fmt,
        width=width,
        height=height,
        original_width=original_width,
        original_height=original_height,
        bytes=size,
        orientation_applied=orientation,
        metadata_stripped=stripped,
        quality=quality,
    )
    return DecodedImage(image=_downscale(rgb, limits.working_side), info=info)


STORED_MEDIA_TYPE = "image/jpeg"
STORED_JPEG_QUALITY = 92


def storable_copy(data: bytes, limits: ImageLimits | None = None) -> bytes:
    """The photo as kept with a consented case: decoded like :func:`decode_image` (orientation applied,
    RGB, full size, so annotation coordinates match ``image.width`` x ``image.height``) and re-encoded
    as a fresh JPEG that carries no EXIF, GPS, XMP or ICC data. Never the upload's own bytes."""
    limits = limits if limits is not None else ImageLimits()
    with _open(data, limits) as im:
        _check_dimensions(*im.size, limits)
        im.load()
        rgb, _ = to_rgb(im)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=STORED_JPEG_QUALITY, optimize=True)
    return out.getvalue()
