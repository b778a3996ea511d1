"""Tests for service.images: every image is generated here, no binary fixtures."""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageFilter, PngImagePlugin

from service.images import (
    CorruptImageError,
    DecodedImage,
    DecompressionBombError,
    EmptyImageError,
    ImageError,
    ImageInfo,
    ImageLimits,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedImageFormatError,
    decode_image,
)

try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    given = None

LIMITS = ImageLimits()
GPS_IFD = 0x8825


# --------------------------------------------------------------------------- helpers


def noise(width: int = 160, height: int = 120, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        ctype = data[pos + 4 : pos + 8]
        chunks.append((ctype, data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def build_png(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = bytearray(b"\x89PNG\r\n\x1a\n")
    for ctype, body in chunks:
        out += struct.pack(">I", len(body)) + ctype + body
        out += struct.pack(">I", zlib.crc32(ctype + body))
    return bytes(out)


def png_with_ihdr_size(width: int, height: int) -> bytes:
    """A small valid PNG whose IHDR is patched to claim width x height (CRC fixed)."""
    chunks = png_chunks(encode(Image.new("RGB", (8, 8)), "PNG"))
    ctype, body = chunks[0]
    assert ctype == b"IHDR"
    chunks[0] = (ctype, struct.pack(">II", width, height) + body[8:])
    return build_png(chunks)


def decode(data: bytes, **limits: int) -> DecodedImage:
    return decode_image(data, ImageLimits(**limits) if limits else LIMITS)


def assert_clean_rgb(result: DecodedImage) -> None:
    im = result.image
    assert im.mode == "RGB"
    assert im.info == {}
    assert len(im.getexif()) == 0
    assert im.size == (result.info.width, result.info.height)


# --------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("pillow_format", "expected", "params"),
    [
        ("JPEG", "jpeg", {"quality": 95}),
        ("PNG", "png", {}),
        ("WEBP", "webp", {"lossless": True}),
        ("HEIF", "heif", {"quality": 90}),
    ],
)
def test_accepted_formats_round_trip(pillow_format: str, expected: str, params: dict[str, Any]) -> None:
    src = noise(160, 120)
    data = encode(src, pillow_format, **params)
    result = decode(data)
    assert_clean_rgb(result)
    info = result.info
    assert info.format == expected
    assert (info.width, info.height) == (160, 120)
    assert (info.original_width, info.original_height) == (160, 120)
    assert info.bytes == len(data)
    assert info.orientation_applied is None
    assert info.metadata_stripped == []
    assert info.quality.min_side == 120
    if pillow_format in ("PNG", "WEBP"):  # lossless: pixels must be identical
        assert np.array_equal(np.asarray(result.image), np.asarray(src))


def test_image_info_serialises_for_the_api() -> None:
    info = decode(encode(noise(), "PNG")).info
    again = ImageInfo.model_validate_json(info.model_dump_json())
    assert again == info
    assert set(info.model_dump()) >= {
        "format",
        "width",
        "height",
        "original_width",
        "original_height",
        "bytes",
        "orientation_applied",
        "metadata_stripped",
        "quality",
    }


def test_default_limits() -> None:
    expected = ImageLimits(max_bytes=10 * 1024 * 1024, max_pixels=40_000_000, max_side=12_000, min_side=64)
    assert expected == LIMITS


def test_multi_picture_jpeg_is_a_jpeg() -> None:
    """Phone cameras write MPO (JPEG + MPF); Pillow opens those as "MPO"."""
    data = encode(noise(), "MPO", save_all=True, append_images=[noise(seed=1)])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result = decode(data)
    assert result.info.format == "jpeg"
    assert "mpf" in result.info.metadata_stripped
    assert_clean_rgb(result)


# --------------------------------------------------------------------------- orientation


def left_red_right_blue(width: int = 120, height: int = 80) -> Image.Image:
    im = Image.new("RGB", (width, height), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, width // 2, height))
    return im


def exif_with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_exif_orientation_6_rotates_jpeg() -> None:
    data = encode(left_red_right_blue(), "JPEG", exif=exif_with_orientation(6), quality=95)
    result = decode(data)
    info = result.info
    assert info.orientation_applied == 6
    assert (info.original_width, info.original_height) == (120, 80)
    assert (info.width, info.height) == (80, 120)
    assert_clean_rgb(result)
    # Orientation 6 = rotate 90 degrees clockwise for display: left edge goes on top.
    px = np.asarray(result.image).astype(int)
    assert px[10, 40, 0] > 200 and px[10, 40, 2] < 60  # top is red
    assert px[110, 40, 2] > 200 and px[110, 40, 0] < 60  # bottom is blue


def test_exif_orientation_1_is_reported_and_changes_nothing() -> None:
    data = encode(left_red_right_blue(), "PNG", exif=exif_with_orientation(1))
    info = decode(data).info
    assert info.orientation_applied == 1
    assert (info.width, info.height) == (120, 80)


def test_heic_orientation_is_applied_once() -> None:
    data = encode(left_red_right_blue(), "HEIF", exif=exif_with_orientation(6).tobytes())
    result = decode(data)
    info = result.info
    assert info.format == "heif"
    assert info.orientation_applied == 6
    assert (info.width, info.height) == (80, 120)
    assert (info.original_width, info.original_height) == (120, 80)
    px = np.asarray(result.image).astype(int)
    assert px[10, 40, 0] > 200 and px[110, 40, 2] > 200


# --------------------------------------------------------------------------- privacy


def test_jpeg_metadata_is_stripped_and_reported() -> None:
    exif = Image.Exif()
    exif[0x010F] = "ACMECAM"  # Make
    exif[0x0132] = "2024:01:02 03:04:05"  # DateTime
    gps = exif.get_ifd(GPS_IFD)
    gps.update({1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 1.0)})
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(
        noise(),
        "JPEG",
        exif=exif,
        icc_profile=icc,
        comment=b"patient 4711 left forearm",
        xmp=b'<x:xmpmeta xmlns:x="adobe:ns:meta/">secret-xmp</x:xmpmeta>',
    )
    source = Image.open(io.BytesIO(data))  # sanity: the input really carries it all
    assert source.getexif().get_ifd(GPS_IFD)
    assert {"exif", "icc_profile", "comment", "xmp"} <= set(source.info)

    result = decode(data)
    assert_clean_rgb(result)
    assert result.image.info == {}
    assert set(result.info.metadata_stripped) >= {
        "exif",
        "gps",
        "icc_profile",
        "comment",
        "xmp",
    }

    reencoded = encode(result.image, "JPEG")
    assert b"Exif" not in reencoded
    for secret in (b"ACMECAM", b"2024:01:02", b"patient 4711", b"secret-xmp", b"acsp"):
        assert secret not in reencoded
    reopened = Image.open(io.BytesIO(reencoded))
    assert len(reopened.getexif()) == 0
    assert not reopened.getexif().get_ifd(GPS_IFD)
    assert "icc_profile" not in reopened.info
    assert "comment" not in reopened.info


def test_png_text_exif_and_icc_are_stripped() -> None:
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Dr. Example")
    text.add_text("Comment", "case 12")
    exif = Image.Exif()
    exif[0x010F] = "ACMECAM"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(noise(), "PNG", pnginfo=text, exif=exif, icc_profile=icc)
    result = decode(data)
    assert_clean_rgb(result)
    assert set(result.info.metadata_stripped) >= {"exif", "icc_profile", "comment", "text"}
    assert "gps" not in result.info.metadata_stripped
    assert b"Dr. Example" not in encode(result.image, "PNG")


def test_webp_exif_with_gps_is_stripped() -> None:
    exif = Image.Exif()
    exif.get_ifd(GPS_IFD).update({1: "S", 2: (33.0, 51.0, 54.0)})
    data = encode(noise(), "WEBP", exif=exif)
    result = decode(data)
    assert set(result.info.metadata_stripped) >= {"exif", "gps"}
    assert_clean_rgb(result)


# --------------------------------------------------------------------------- modes


def test_rgba_is_composited_onto_white() -> None:
    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))  # fully transparent black
    rgba.paste((200, 10, 10, 255), (0, 0, 50, 100))  # opaque red left half
    result = decode(encode(rgba, "PNG"))
    px = np.asarray(result.image)
    assert tuple(px[50, 75]) == (255, 255, 255)
    assert tuple(px[50, 25]) == (200, 10, 10)


def test_palette_with_transparency_is_composited_onto_white() -> None:
    pal = Image.new("P", (100, 100), 0)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * (256 * 3 - 6))
    pal.paste(1, (0, 0, 50, 100))
    data = encode(pal, "PNG", transparency=0)
    px = np.asarray(decode(data).image)
    assert tuple(px[50, 75]) == (255, 255, 255)
    assert tuple(px[50, 25]) == (10, 200, 10)


def sixteen_bit_ramp() -> Image.Image:
    ramp = np.linspace(0, 65535, 128 * 128).reshape(128, 128).astype(np.uint16)
    return Image.fromarray(ramp)


MODE_CASES: dict[str, Callable[[], bytes]] = {
    "RGBA": lambda: encode(noise().convert("RGBA"), "PNG"),
    "RGBA-webp": lambda: encode(noise().convert("RGBA"), "WEBP"),
    "P": lambda: encode(noise().convert("P"), "PNG"),
    "L": lambda: encode(noise().convert("L"), "PNG"),
    "L-jpeg": lambda: encode(noise().convert("L"), "JPEG"),
    "LA": lambda: encode(noise().convert("LA"), "PNG"),
    "1": lambda: encode(noise().convert("1"), "PNG"),
    "CMYK": lambda: encode(noise().convert("CMYK"), "JPEG"),
    "I;16": lambda: encode(sixteen_bit_ramp(), "PNG"),
}


@pytest.mark.parametrize("case", sorted(MODE_CASES))
def test_every_input_mode_comes_out_rgb(case: str) -> None:
    result = decode(MODE_CASES[case]())
    assert_clean_rgb(result)


def test_sixteen_bit_is_scaled_not_clipped() -> None:
    data = encode(sixteen_bit_ramp(), "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    px = np.asarray(decode(data).image)
    assert tuple(px[0, 0]) == (0, 0, 0)
    assert tuple(px[-1, -1]) == (255, 255, 255)
    assert 110 < px[64, 64, 0] < 145  # mid-grey, not white


def test_cmyk_colours_survive() -> None:
    data = encode(Image.new("RGB", (80, 80), (220, 30, 30)).convert("CMYK"), "JPEG")
    r, g, b = np.asarray(decode(data).image)[40, 40].astype(int)
    assert r > 180 and g < 80 and b < 80


# --------------------------------------------------------------------------- errors


def error_of(data: bytes, **limits: int) -> ImageError:
    with pytest.raises(ImageError) as excinfo:
        decode(data, **limits)
    return excinfo.value


def real_jpeg() -> bytes:
    return encode(noise(200, 150), "JPEG", quality=90)


def corrupt_png_idat() -> bytes:
    data = bytearray(encode(noise(), "PNG"))
    idat = data.find(b"IDAT")
    for offset in (40, 41, 42, 500):
        data[idat + offset] ^= 0xFF
    return bytes(data)


def png_idat_garbage_with_valid_crc() -> bytes:
    """Deflate stream broken, chunk CRC recomputed: only decoding can notice."""
    chunks = png_chunks(encode(noise(), "PNG"))
    out = []
    for ctype, body in chunks:
        if ctype == b"IDAT":
            body = b"\x00\x00" + body[2:]  # invalid zlib header
        out.append((ctype, body))
    return build_png(out)


def gif() -> bytes:
    return encode(noise(), "GIF")


ERROR_CASES: dict[str, tuple[Callable[[], bytes], type[ImageError], str]] = {
    "empty": (lambda: b"", EmptyImageError, "0 bytes"),
    "random": (
        lambda: bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8)),
        NotAnImageError,
        "not a recognisable image",
    ),
    "text": (
        lambda: b"Hello, this is a plain text note, not a photo.\n" * 20,
        NotAnImageError,
        "send JPEG, PNG, WebP or HEIC",
    ),
    "json": (lambda: b'{"image": "lesion.jpg"}', NotAnImageError, "not a recognisable"),
    "gif": (gif, UnsupportedImageFormatError, "GIF is not accepted; send JPEG, PNG, WebP or HEIC"),
    "pdf": (
        lambda: b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n",
        UnsupportedImageFormatError,
        "PDF is not accepted; send JPEG, PNG, WebP or HEIC",
    ),
    "bmp": (lambda: encode(noise(), "BMP"), UnsupportedImageFormatError, "BMP is not accepted"),
    "tiff": (lambda: encode(noise(), "TIFF"), UnsupportedImageFormatError, "TIFF is not accepted"),
    "svg": (
        lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
        UnsupportedImageFormatError,
        "SVG is not accepted",
    ),
    "truncated-jpeg": (
        lambda: real_jpeg()[: len(real_jpeg()) // 2],
        CorruptImageError,
        "JPEG",
    ),
    "truncated-png": (
        lambda: encode(noise(), "PNG")[:-200],
        CorruptImageError,
        "truncated",
    ),
    "png-idat-crc": (corrupt_png_idat, CorruptImageError, "CRC"),
    "png-idat-zlib": (png_idat_garbage_with_valid_crc, CorruptImageError, "PNG"),
    "png-signature-only": (lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, CorruptImageError, ""),
    "jpeg-header-only": (lambda: b"\xff\xd8\xff\xe0" + b"\x00" * 40, CorruptImageError, ""),
    "truncated-webp": (
        lambda: encode(noise(), "WEBP")[:300],
        CorruptImageError,
        "",
    ),
    "truncated-heic": (
        lambda: encode(noise(), "HEIF")[:400],
        CorruptImageError,
        "",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_error_cases(case: str) -> None:
    make, expected, message_part = ERROR_CASES[case]
    err = error_of(make())
    assert type(err) is expected, f"{case}: got {type(err).__name__}: {err}"
    assert message_part in str(err)
    if expected is CorruptImageError and case.startswith("truncated-j"):
        assert err.__cause__ is not None  # original Pillow error kept for debugging


def test_error_codes_and_statuses_are_stable() -> None:
    table = {
        EmptyImageError: ("empty-image", 400),
        ImageTooLargeError: ("image-too-large", 413),
        UnsupportedImageFormatError: ("unsupported-image-format", 415),
        NotAnImageError: ("not-an-image", 400),
        CorruptImageError: ("corrupt-image", 400),
        DecompressionBombError: ("image-dimensions-too-large", 413),
        ImageTooSmallError: ("image-too-small", 400),
    }
    for cls, (code, status) in table.items():
        assert issubclass(cls, ImageError)
        assert (cls.code, cls.status) == (code, status)
    assert len({code for code, _ in table.values()}) == len(table)


def test_over_byte_limit() -> None:
    data = encode(noise(), "PNG")
    err = error_of(data, max_bytes=1000)
    assert isinstance(err, ImageTooLargeError)
    assert f"{len(data):,}" in str(err) and "1,000" in str(err)
    # exactly at the limit is fine
    assert decode(data, max_bytes=len(data)).info.bytes == len(data)


def test_too_small() -> None:
    err = error_of(encode(noise(60, 200), "PNG"))
    assert isinstance(err, ImageTooSmallError)
    assert "60x200" in str(err) and "64" in str(err)
    assert decode(encode(noise(64, 64), "PNG")).info.quality.min_side == 64


# --------------------------------------------------------------------------- bombs


@pytest.fixture
def no_pixel_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to decode pixels fail loudly (it would surface as corrupt-image)."""

    def forbidden(self: Image.Image) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", forbidden)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_real_png_just_over_max_pixels_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (1001, 1000)), "PNG")  # ~1 KB on disk
    assert len(data) < 10_000
    err = error_of(data, max_pixels=1_000_000)
    assert isinstance(err, DecompressionBombError)
    assert "1001x1000" in str(err) and "1,000,000" in str(err)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_header_patched_png_50000_square_is_refused() -> None:
    err = error_of(png_with_ihdr_size(50_000, 50_000))
    assert isinstance(err, DecompressionBombError)
    assert err.status == 413


@pytest.mark.usefixtures("no_pixel_decoding")
def test_bomb_refused_even_without_pillow_global_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    for width, height in ((50_000, 50_000), (9_000, 9_000)):
        err = error_of(png_with_ihdr_size(width, height))
        assert isinstance(err, DecompressionBombError)
        assert f"{width}x{height}" in str(err)


@pytest.mark.usefixtures("no_pixel_decoding")
def test_side_over_max_side_is_refused() -> None:
    err = error_of(png_with_ihdr_size(12_001, 100))
    assert isinstance(err, DecompressionBombError)
    assert "12000" in str(err)


def test_bomb_under_pillow_warning_threshold_but_over_our_limit() -> None:
    # 9000x9000 = 81 MP: below Pillow's own warning level, above our 40 MP.
    err = error_of(png_with_ihdr_size(9_000, 9_000))
    assert isinstance(err, DecompressionBombError)
    assert "40,000,000" in str(err)


# --------------------------------------------------------------------------- robustness


def test_unexpected_internal_failure_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(self: Image.Image, *args: Any, **kwargs: Any) -> Image.Image:
        raise RuntimeError("simulated")

    monkeypatch.setattr(Image.Image, "transpose", boom)
    data = encode(left_red_right_blue(), "JPEG", exif=exif_with_orientation(6))
    err = error_of(data)
    assert isinstance(err, CorruptImageError)
    assert isinstance(err.__cause__, RuntimeError)


def seed_images() -> list[bytes]:
    small = noise(64, 64, seed=3)
    return [
        encode(small, "JPEG", quality=80, exif=exif_with_orientation(6)),
        encode(small, "PNG"),
        encode(small, "WEBP"),
        encode(small, "HEIF", quality=50),
    ]


SEEDS = seed_images()


def check_only_image_errors(data: bytes) -> None:
    try:
        result = decode_image(data, LIMITS)
    except ImageError:
        return
    assert_clean_rgb(result)


def mutate(data: bytes, rnd: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rnd.randint(1, 8)):
        buf[rnd.randrange(len(buf))] = rnd.randrange(256)
    if rnd.random() < 0.3:
        buf = buf[: rnd.randrange(1, len(buf))]
    return bytes(buf)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_seeded_fuzz_raises_only_image_errors() -> None:
    """Deterministic fuzz that runs even where hypothesis is not installed."""
    rnd = random.Random(1234)
    for i in range(240):
        seed = SEEDS[i % len(SEEDS)]
        check_only_image_errors(mutate(seed, rnd))
    for size in (1, 2, 3, 8, 12, 16, 64, 1024):
        check_only_image_errors(rnd.randbytes(size))
    for seed in SEEDS:  # every prefix length class
        for cut in (1, 4, 8, 12, 16, 33, 100, len(seed) - 1):
            check_only_image_errors(seed[:cut])


if given is not None:

    @pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(data=st.binary(max_size=4096))
    def test_arbitrary_bytes_raise_only_image_errors(data: bytes) -> None:
        check_only_image_errors(data)

    @pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
    @settings(max_examples=150, deadline=None)
    @given(
        seed=st.sampled_from(SEEDS),
        flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=8),
        cut=st.one_of(st.none(), st.integers(min_value=1)),
    )
    def test_mutated_images_raise_only_image_errors(seed: bytes, flips: list[tuple[int, int]], cut: int | None) -> None:
        buf = bytearray(seed)
        for index, value in flips:
            buf[index % len(buf)] = value
        if cut is not None:
            buf = buf[: cut % len(buf) or 1]
        check_only_image_errors(bytes(buf))

else:  # pragma: no cover

    @pytest.mark.skip(reason="hypothesis not installed")
    def test_arbitrary_bytes_raise_only_image_errors() -> None: ...


# --------------------------------------------------------------------------- quality


def checkerboard(size: int = 512, square: int = 8) -> Image.Image:
    yy, xx = np.indices((size, size))
    board = (((yy // square) + (xx // square)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(board).convert("RGB")


def test_sharp_checkerboard_beats_its_blurred_copy() -> None:
    sharp = checkerboard()
    blurred = sharp.filter(ImageFilter.GaussianBlur(3))
    q_sharp = decode(encode(sharp, "PNG")).info.quality
    q_blur = decode(encode(blurred, "PNG")).info.quality
    assert q_sharp.blur_laplacian_var > 5 * q_blur.blur_laplacian_var


def scaled_checkerboard(size: int, squares: int = 32) -> Image.Image:
    yy, xx = np.indices((size, size))
    step = size / squares
    board = (((yy // step) + (xx // step)) % 2 * 255).astype(np.uint8)
    return Image.fromarray(board).convert("RGB")


def blur_var(im: Image.Image) -> float:
    return decode(encode(im, "PNG")).info.quality.blur_laplacian_var


def test_blur_measure_is_roughly_resolution_independent() -> None:
    """The same scene at different resolutions scores alike (measured at 512 px)."""
    sharp = [blur_var(scaled_checkerboard(size)) for size in (1024, 3000)]
    assert 0.8 < sharp[0] / sharp[1] < 1.25
    soft = [
        blur_var(scaled_checkerboard(size).filter(ImageFilter.GaussianBlur(size / 256))) for size in (512, 1024, 2048)
    ]
    assert max(soft) / min(soft) < 1.25
    assert min(sharp) > 10 * max(soft)


def test_all_black_image() -> None:
    q = decode(encode(Image.new("RGB", (100, 100)), "PNG")).info.quality
    assert q.dark_fraction == pytest.approx(1.0)
    assert q.bright_fraction == 0.0
    assert q.mean_brightness == pytest.approx(0.0)
    assert q.blur_laplacian_var == pytest.approx(0.0)


def test_all_white_image() -> None:
    q = decode(encode(Image.new("RGB", (100, 100), "white"), "PNG")).info.quality
    assert q.bright_fraction == pytest.approx(1.0)
    assert q.dark_fraction == 0.0
    assert q.mean_brightness == pytest.approx(1.0)
