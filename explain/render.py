"""Heatmap overlays as PNG: a perceptually uniform colour map, alpha blending, a legend.

Colours come from matplotlib's colour-map data (`matplotlib.colormaps`), never from pyplot, so
nothing here needs a display or a GUI backend. Perceptually uniform maps (inferno, viridis, ...)
keep equal steps in heat looking like equal steps in colour, and read in greyscale too; rainbow
"jet" invents edges that are not in the data.
"""

from __future__ import annotations

import io
from functools import lru_cache

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

DEFAULT_COLORMAP = "inferno"
DEFAULT_MAX_SIDE = 768
DEFAULT_ALPHA = 0.5
PERCEPTUAL = ("inferno", "viridis", "magma", "plasma", "cividis")
OUTSIDE_NOTE = "No heat outside the dashed box: the model did not see that part of the photo."
Box = tuple[float, float, float, float]


@lru_cache(maxsize=8)
def colormap_lut(name: str = DEFAULT_COLORMAP) -> np.ndarray:
    """(256, 3) uint8 lookup table of a perceptually uniform matplotlib colour map."""
    if name not in PERCEPTUAL:
        raise ValueError(f"colour map {name!r} is not one of the perceptually uniform maps {PERCEPTUAL}")
    rgba = matplotlib.colormaps[name](np.linspace(0.0, 1.0, 256))
    lut = (rgba[:, :3] * 255).round().astype(np.uint8)
    lut.flags.writeable = False
    return lut


def fit(photo: Image.Image, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """The photo scaled down (never up) so its long side is at most `max_side`; same aspect ratio."""
    w, h = photo.size
    scale = min(1.0, max_side / max(w, h))
    if scale == 1.0:
        return photo.convert("RGB")
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return photo.convert("RGB").resize(size, Image.Resampling.LANCZOS)


def _canvas_box(box: Box, photo_size: tuple[int, int], canvas_size: tuple[int, int]) -> tuple[int, int, int, int]:
    sx, sy = canvas_size[0] / photo_size[0], canvas_size[1] / photo_size[1]
    left, top = round(box[0] * sx), round(box[1] * sy)
    right, bottom = max(left + 1, round(box[2] * sx)), max(top + 1, round(box[3] * sy))
    return left, top, min(right, canvas_size[0]), min(bottom, canvas_size[1])


def heat_on_canvas(
    grid: np.ndarray, box: Box, photo_size: tuple[int, int], canvas_size: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Undo resize + centre crop: the (h, w) grid stretched over the crop box of a canvas.

    `box` is in photo pixels (`Preprocessing.geometry`); the canvas is the photo or a scaled copy
    (default: the photo's size). Returns heat (H, W) in [0, 1] and the mask of the crop box;
    outside the box the heat is 0 and the mask False.
    """
    cw, ch = canvas_size or photo_size
    left, top, right, bottom = _canvas_box(box, photo_size, (cw, ch))
    g = torch.as_tensor(np.asarray(grid, dtype=np.float32))[None, None]
    up = F.interpolate(g, size=(bottom - top, right - left), mode="bilinear", align_corners=False)[0, 0]
    heat = np.zeros((ch, cw), dtype=np.float32)
    mask = np.zeros((ch, cw), dtype=bool)
    heat[top:bottom, left:right] = up.clamp(0, 1).numpy()
    mask[top:bottom, left:right] = True
    return heat, mask


def overlay(
    base: Image.Image,
    grid: np.ndarray,
    box: Box,
    photo_size: tuple[int, int],
    *,
    colormap: str = DEFAULT_COLORMAP,
    alpha: float = DEFAULT_ALPHA,
) -> tuple[Image.Image, tuple[float, float]]:
    """Blend the heat over `base` (the photo, possibly scaled) inside the crop box only.

    Returns the overlay (base's size) and the heat's peak (x, y) in photo pixels. When the crop
    box is smaller than the photo a dashed outline marks it.
    """
    heat, mask = heat_on_canvas(grid, box, photo_size, base.size)
    rgb = np.asarray(base.convert("RGB"), dtype=np.float32)
    colours = colormap_lut(colormap)[(heat * 255).round().astype(np.uint8)].astype(np.float32)
    blended = np.where(mask[..., None], (1 - alpha) * rgb + alpha * colours, rgb)
    out = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8), "RGB")
    if not mask.all():
        _dashed_rectangle(out, _canvas_box(box, photo_size, base.size))
    y, x = np.unravel_index(int(np.argmax(np.where(mask, heat, -1.0))), heat.shape)
    sx, sy = base.size[0] / photo_size[0], base.size[1] / photo_size[1]
    return out, (round((x + 0.5) / sx, 2), round((y + 0.5) / sy, 2))


def _dashed_rectangle(img: Image.Image, box: tuple[int, int, int, int], dash: int = 8) -> None:
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = box[0], box[1], box[2] - 1, box[3] - 1
    width = max(1, round(max(img.size) / 400))
    for x in range(left, right, 2 * dash):
        for y in (top, bottom):
            draw.line([(x, y), (min(x + dash, right), y)], fill=(255, 255, 255), width=width)
    for y in range(top, bottom, 2 * dash):
        for x in (left, right):
            draw.line([(x, y), (x, min(y + dash, bottom))], fill=(255, 255, 255), width=width)


@lru_cache(maxsize=16)
def legend_png(colormap: str, method: str, width: int = 480) -> bytes:
    """The legend as PNG bytes (cached: it is the same for every map of a method)."""
    colormap_lut(colormap)  # validates the name
    font = ImageFont.load_default(size=12)
    pad, bar_h = 8, 14
    lines = [
        f"Heatmap ({method}): where the image evidence for this condition lies",
        "Scaled per map: the brightest area = 1, relative, not a probability.",
        OUTSIDE_NOTE,
    ]
    line_h = 16
    height = pad + bar_h + 4 + line_h + len(lines) * line_h + pad
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    lut = colormap_lut(colormap)
    bar_w = width - 2 * pad
    ramp = lut[np.linspace(0, 255, bar_w).round().astype(int)]
    img.paste(Image.fromarray(np.repeat(ramp[None], bar_h, axis=0), "RGB"), (pad, pad))
    draw.rectangle([pad - 1, pad - 1, pad + bar_w, pad + bar_h], outline=(0, 0, 0))
    y = pad + bar_h + 4
    draw.text((pad, y), "low", fill=(0, 0, 0), font=font)
    draw.text((width - pad, y), "high", fill=(0, 0, 0), font=font, anchor="ra")
    for i, line in enumerate(lines):
        draw.text((pad, y + line_h * (i + 1)), line, fill=(0, 0, 0), font=font)
    return png_bytes(img)


def legend(colormap: str, method: str, width: int = 480) -> Image.Image:
    """A standalone colour-bar legend (low -> high) saying what the colours and the box mean."""
    return Image.open(io.BytesIO(legend_png(colormap, method, width))).convert("RGB")


def png_bytes(img: Image.Image, compress_level: int = 1) -> bytes:
    """PNG-encode. zlib level 3 was about 4x faster than Pillow's default 6 for ~9 % more bytes on
    lesion photos; level 1 takes 8.4 ms an overlay against level 3's 13.3 ms for 152 KB against 142 KB
    (25 overlays of 5 development photos, issue 19): the encoding was half of a heatmap request."""
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=compress_level)
    return buf.getvalue()
