"""Off-centre composites: a photo's lesion region pasted at a random place on its own skin (offline).

PAD-UFES-20 photos are close-ups centred on the lesion, so "the centre" is a strong prior that a
heatmap can match without looking at the photo. A composite moves the lesion, so the place it
went is known and a centred map no longer wins by default:

* lesion region (an assumption, not an annotation): the central square of side `lesion_fraction`
  (60 %) of the photo's short side. The photos are centred close-ups, so it holds the lesion and
  some skin around it; PAD-UFES-20 has no lesion masks.
* background: the photo's own skin, from one of its four corner squares (side = the margin the
  lesion region leaves, 20 % of the short side): the one with the least luminance spread (the
  plainest skin, least hair, ruler or lesion), mirror-tiled to the canvas (no seams).
* canvas: square, side `image_size / crop_pct` so the model's centre crop sees it at 1:1; the
  pasted box has side `uniform(0.25, 0.45)` of the model's visible side and lies wholly inside
  the visible square, at a uniform random position. Seeded per (seed, index): deterministic.
* the canvas before the paste is kept (`Composite.background`): the composite without its lesion,
  which deletion and insertion on composites use as the removed state (`explain.offcentre`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from models.backends.base import Preprocessing

Box = tuple[int, int, int, int]  # left, top, right, bottom; right and bottom exclusive


@dataclass(frozen=True)
class CompositeConfig:
    lesion_fraction: float = 0.6  # of the short side, centred: the assumed lesion region
    scale: tuple[float, float] = (0.25, 0.45)  # pasted side, as a fraction of the visible side
    seed: int = 0


@dataclass(frozen=True)
class Composite:
    image: Image.Image  # the canvas, RGB
    background: Image.Image  # the same canvas before the paste: the composite without its lesion
    box: Box  # where the lesion region was pasted, canvas pixels
    input_box: tuple[float, float, float, float]  # the same box in the model's input pixels
    source_box: Box  # the lesion region in the source photo


def lesion_region(width: int, height: int, fraction: float = 0.6) -> Box:
    """The central square of side `fraction` of the short side."""
    side = max(1, round(min(width, height) * fraction))
    left, top = (width - side) // 2, (height - side) // 2
    return (left, top, left + side, top + side)


def skin_patch(photo: np.ndarray, fraction: float = 0.6) -> np.ndarray:
    """The plainest of the four corner squares outside the lesion region: (c, c, 3) uint8."""
    h, w = photo.shape[:2]
    c = max(1, int(min(h, w) * (1 - fraction) / 2))
    corners = [photo[:c, :c], photo[:c, w - c :], photo[h - c :, :c], photo[h - c :, w - c :]]
    spread = [float((p.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).std()) for p in corners]
    return corners[int(np.argmin(spread))]


def mirror_tile(patch: np.ndarray, size: int) -> np.ndarray:
    """Fill a (size, size) canvas with the patch and its mirror images, alternating: no seams."""
    block = np.concatenate([patch, patch[:, ::-1]], axis=1)
    block = np.concatenate([block, block[::-1]], axis=0)
    reps = math.ceil(size / block.shape[0]), math.ceil(size / block.shape[1])
    return np.tile(block, (*reps, 1))[:size, :size].copy()


def make_composite(
    photo: Image.Image, preprocessing: Preprocessing, rng: np.random.Generator, config: CompositeConfig | None = None
) -> Composite:
    """One composite of `photo` for a model with this preprocessing."""
    config = config or CompositeConfig()
    source = np.asarray(photo.convert("RGB"))
    size = round(preprocessing.image_size / preprocessing.crop_pct)
    background = mirror_tile(skin_patch(source, config.lesion_fraction), size)
    canvas = background.copy()
    vl, vt, vr, vb = preprocessing.geometry(size, size)
    left, top = math.ceil(vl), math.ceil(vt)
    visible = min(math.floor(vr), math.floor(vb)) - max(left, top)
    side = max(2, round(visible * rng.uniform(*config.scale)))
    x = left + int(rng.integers(0, visible - side + 1))
    y = top + int(rng.integers(0, visible - side + 1))
    src_box = lesion_region(photo.width, photo.height, config.lesion_fraction)
    crop = photo.convert("RGB").crop(src_box).resize((side, side), Image.Resampling.LANCZOS)
    canvas[y : y + side, x : x + side] = np.asarray(crop)
    scale = preprocessing.image_size / (vr - vl)
    input_box = ((x - vl) * scale, (y - vt) * scale, (x + side - vl) * scale, (y + side - vt) * scale)
    box = (x, y, x + side, y + side)
    return Composite(Image.fromarray(canvas, "RGB"), Image.fromarray(background, "RGB"), box, input_box, src_box)


def composite_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of composite number `index`: the same composite for the same (seed, index)."""
    return np.random.default_rng([seed, index])


def box_map(input_box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """(size, size) known-answer order: the pasted box first, from its centre outward, then the rest by
    distance to the box centre. The curves' own check: an order that can only be right."""
    left, top, right, bottom = input_box
    centres = np.arange(size) + 0.5
    d2 = (centres[None, :] - (left + right) / 2) ** 2 + (centres[:, None] - (top + bottom) / 2) ** 2
    return box_mask(input_box, size) + np.exp(-d2 / (2 * (right - left) ** 2))


def box_mask(input_box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """(size, size) bool: the input pixels whose centres lie inside the box."""
    centres = np.arange(size) + 0.5
    left, top, right, bottom = input_box
    inside_x = (centres >= left) & (centres < right)
    inside_y = (centres >= top) & (centres < bottom)
    return inside_y[:, None] & inside_x[None, :]
