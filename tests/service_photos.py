"""Photos for the HTTP tests, generated with Pillow (no binary fixtures)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import ExifTags, Image, ImageDraw, ImageFilter

MIB = 1024 * 1024


def lesion_photo(seed: int = 0, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A skin-toned, noisy photo with a darker irregular blob: enough texture to look like a close-up."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = np.array([198, 150, 122], dtype=np.float64) + rng.normal(0, 6, 3)
    pixels = base + rng.normal(0, 9, (h, w, 3))
    im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(im)
    cx, cy = w // 2 + int(rng.integers(-40, 40)), h // 2 + int(rng.integers(-30, 30))
    r = min(w, h) // 6
    points = [
        (cx + r * (0.7 + 0.4 * rng.random()) * np.cos(a), cy + r * (0.7 + 0.4 * rng.random()) * np.sin(a))
        for a in np.linspace(0, 2 * np.pi, 14, endpoint=False)
    ]
    tone = tuple(int(x) for x in rng.integers([70, 40, 25], [120, 80, 60]))
    draw.polygon(points, fill=tone)
    return im.filter(ImageFilter.GaussianBlur(1.5))


def jpeg_bytes(im: Image.Image, *, with_gps: bool = False, quality: int = 90) -> bytes:
    """JPEG bytes; ``with_gps`` adds EXIF (orientation 1, camera make) and a GPS position."""
    buf = io.BytesIO()
    if with_gps:
        exif = Image.Exif()
        exif[ExifTags.Base.Orientation] = 1
        exif[ExifTags.Base.Make] = "TestPhone"
        gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
        gps[ExifTags.GPS.GPSLatitudeRef] = "N"
        gps[ExifTags.GPS.GPSLatitude] = (52.0, 31.0, 12.0)
        im.save(buf, "JPEG", quality=quality, exif=exif)
    else:
        im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def gif_bytes() -> bytes:
    buf = io.BytesIO()
    lesion_photo(1, (128, 128)).convert("P").save(buf, "GIF")
    return buf.getvalue()


def pdf_bytes() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def corrupt_png(im: Image.Image) -> bytes:
    """A PNG with one flipped byte inside the pixel data (its IDAT CRC no longer matches)."""
    data = bytearray(png_bytes(im))
    idat = data.index(b"IDAT")
    data[idat + 20] ^= 0xFF
    return bytes(data)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(side: int = 7000) -> bytes:
    """A valid grayscale PNG of side x side zeros: tens of KB on the wire, ``side**2`` pixels decoded."""
    comp = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
