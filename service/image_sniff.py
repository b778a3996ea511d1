"""Magic bytes: which accepted format an upload claims to be, and which refused format it is.

Only read after Pillow (restricted to the accepted formats) failed to identify the data, to
turn that failure into a precise message. Pure functions of the bytes; no Pillow, no HTTP.
"""

from __future__ import annotations

__all__ = ["PNG_SIGNATURE", "looks_accepted", "sniff_unsupported"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# (prefix, offset, human name). Only checked after Pillow (restricted to the
# accepted formats) failed to identify the data, to give a precise message.
UNSUPPORTED_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"GIF87a", 0, "GIF"),
    (b"GIF89a", 0, "GIF"),
    (b"%PDF-", 0, "PDF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
    (b"II+\x00", 0, "TIFF"),
    (b"MM\x00+", 0, "TIFF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "JPEG 2000"),
    (b"\xff\x4f\xff\x51", 0, "JPEG 2000"),
    (b"qoif", 0, "QOI"),
    (b"DDS ", 0, "DDS"),
    (b"\x76\x2f\x31\x01", 0, "OpenEXR"),
    (b"PK\x03\x04", 0, "ZIP"),
    (b"\x1f\x8b", 0, "gzip"),
)
ISOBMFF_BRANDS: dict[bytes, str] = {
    b"avif": "AVIF",
    b"avis": "AVIF",
    b"isom": "MP4 video",
    b"iso2": "MP4 video",
    b"mp41": "MP4 video",
    b"mp42": "MP4 video",
    b"M4V ": "MP4 video",
    b"qt  ": "QuickTime video",
    b"3gp4": "3GP video",
    b"3gp5": "3GP video",
}
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"})


def sniff_unsupported(data: bytes) -> str | None:
    """Name a known, non-accepted format from its magic bytes, if recognisable."""
    for magic, offset, name in UNSUPPORTED_MAGIC:
        if data[offset : offset + len(magic)] == magic:
            return name
    if data[4:8] == b"ftyp":
        brand = data[8:12]
        if brand in ISOBMFF_BRANDS:
            return ISOBMFF_BRANDS[brand]
    if data[:4] == b"RIFF" and data[8:12] in (b"AVI ", b"WAVE"):
        return "AVI video" if data[8:12] == b"AVI " else "WAV audio"
    head = data[:1024].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "SVG"
    return None


def looks_accepted(data: bytes) -> bool:
    """True when the magic bytes claim an accepted format (so a failure means corrupt)."""
    if data[:3] == b"\xff\xd8\xff" or data[:8] == PNG_SIGNATURE:
        return True
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return True
    return data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS
