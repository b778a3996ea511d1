"""What a lesion mask measures: area, longest diameter, border irregularity, colour variegation
and the outline polygon, all in the photo's own pixels (mm when the caller gives the scale)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage import color, measure


@dataclass(frozen=True)
class MaskMeasures:
    area_px: int
    longest_diameter_px: float
    border_irregularity: float  # perimeter² / (4π area): 1 for a disc, larger for ragged borders
    solidity: float  # area / convex hull area: 1 for a convex outline
    colour_variegation: float  # RMS CIELAB Delta E of lesion pixels from the lesion's mean colour
    mean_lab: tuple[float, float, float]
    area_mm2: float | None = None
    longest_diameter_mm: float | None = None


def largest_component(mask: np.ndarray) -> np.ndarray:
    labels = measure.label(mask)
    if labels.max() <= 1:
        return labels > 0
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(sizes.argmax())


def measure_mask(mask: np.ndarray, rgb: np.ndarray, mm_per_px: float | None = None) -> MaskMeasures:
    """Measures of a non-empty bool mask over its (H, W, 3) uint8 photo."""
    props = measure.regionprops(mask.astype(np.uint8))[0]
    area = int(props.area)
    perimeter = float(measure.perimeter(mask))
    lab = color.rgb2lab(rgb[mask].reshape(-1, 1, 3)).reshape(-1, 3)
    mean = lab.mean(0)
    variegation = float(np.sqrt(((lab - mean) ** 2).sum(1).mean()))
    diameter = float(props.feret_diameter_max)
    return MaskMeasures(
        area_px=area,
        longest_diameter_px=round(diameter, 2),
        border_irregularity=round(perimeter**2 / (4 * np.pi * area), 3),
        solidity=round(float(props.solidity), 3),
        colour_variegation=round(variegation, 2),
        mean_lab=(round(float(mean[0]), 2), round(float(mean[1]), 2), round(float(mean[2]), 2)),
        area_mm2=round(area * mm_per_px**2, 2) if mm_per_px else None,
        longest_diameter_mm=round(diameter * mm_per_px, 2) if mm_per_px else None,
    )


def outline_polygon(mask: np.ndarray, tolerance: float = 1.5, max_points: int = 400) -> list[tuple[int, int]]:
    """The mask's outer outline as (x, y) photo pixels, simplified (Douglas-Peucker), not closed."""
    padded = np.pad(mask, 1)
    contours = measure.find_contours(padded.astype(np.float32), 0.5)
    if not contours:
        return []
    outer = max(contours, key=len) - 1  # undo the padding
    tol = tolerance
    poly = measure.approximate_polygon(outer, tol)
    while len(poly) > max_points:
        tol *= 1.5
        poly = measure.approximate_polygon(outer, tol)
    h, w = mask.shape
    pts = [(int(np.clip(round(c), 0, w - 1)), int(np.clip(round(r), 0, h - 1))) for r, c in poly]
    return pts[:-1] if len(pts) > 1 and pts[0] == pts[-1] else pts
