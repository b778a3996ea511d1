"""Heatmap overlays as PNG: a perceptually uniform colour map, alpha blending, a legend.

Colours come from matplotlib's colour-map data (`matplotlib.colormaps`), never from pyplot, so
nothing here needs a display or a GUI backend. Perceptually uniform maps (inferno, viridis, ...)
keep equal steps in heat looking like equal steps in colour, and read in greyscale too; rainbow
"jet" invents edges that are not in the data.
"""

from __future__ import annotations

import io
from functools import lru_cache

import cv2
import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

DEFAULT_COLORMAP = "inferno"
DEFAULT_MAX_SIDE = 640  # the viewer shows an overlay at most 640 px wide (viewer.css .heat-stage)
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


def _box_heat(grid: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The (h, w) grid stretched bilinearly to `size` (width, height), clipped to [0, 1]."""
    g = torch.as_tensor(np.asarray(grid, dtype=np.float32))[None, None]
    up = F.interpolate(g, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0]
    return up.clamp(0, 1).numpy()


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
    heat = np.zeros((ch, cw), dtype=np.float32)
    mask = np.zeros((ch, cw), dtype=bool)
    heat[top:bottom, left:right] = _box_heat(grid, (right - left, bottom - top))
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
    box is smaller than the photo a dashed outline marks it. The blend runs in uint8 on the box
    alone (cv2.addWeighted, rounded): a third of the float32 blend over the whole canvas.
    """
    left, top, right, bottom = _canvas_box(box, photo_size, base.size)
    heat = _box_heat(grid, (right - left, bottom - top))
    rgb = np.array(base.convert("RGB"))  # a writable copy
    region = rgb[top:bottom, left:right]
    colours = colormap_lut(colormap)[(heat * 255 + 0.5).astype(np.uint8)]
    cv2.addWeighted(region, 1 - alpha, colours, alpha, 0.0, dst=region)
    out = Image.fromarray(rgb, "RGB")
    if (left, top, right, bottom) != (0, 0, *base.size):
        _dashed_rectangle(out, (left, top, right, bottom))
    y, x = np.unravel_index(int(np.argmax(heat)), heat.shape)
    sx, sy = base.size[0] / photo_size[0], base.size[1] / photo_size[1]
    return out, (round((left + x + 0.5) / sx, 2), round((top + y + 0.5) / sy, 2))


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


def png_bytes(img: Image.Image) -> bytes:
    """Lossless PNG of an RGB image: OpenCV's encoder with the 'sub' filter and Huffman-only deflate.

    Why not Pillow: its adaptive per-row filter choice was most of the cost. On development photos
    (issue 19) a 300x300 overlay took 2.0 ms here against Pillow's 6.1 ms at zlib level 1, a
    486x486 one 5.3 against 15.7 ms, for the same pixels and 1-10 % fewer bytes. A 256-colour
    palette PNG was faster still (1.5 ms, a quarter of the bytes) but lossy (PSNR 37 dB), so not used.
    """
    rgb = np.asarray(img.convert("RGB"))
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), _PNG_PARAMS)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


_PNG_PARAMS = [
    cv2.IMWRITE_PNG_COMPRESSION,
    1,
    cv2.IMWRITE_PNG_FILTER,
    cv2.IMWRITE_PNG_FILTER_SUB,
    cv2.IMWRITE_PNG_STRATEGY,
    cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
]
