"""Growth read from the pictures, not from two outlines: the magnification about the lesion's centre
that best matches the earlier lesion to the later photo (already registered onto the earlier one on
the skin), divided by the same for the skin around it. A lesion that grew is magnified, the skin
around it is not; a closer shot magnifies both; a segmenter's wobble between two photos (outlines of
clinical photos differ by tens of percent between repeats) moves neither, because the outline only
chooses which pixels are compared. What the best magnification cannot explain (1 - its normalised
correlation) is the appearance change: a new colour, a new lobe, a changed pattern."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import color

SCALES = np.exp(np.linspace(np.log(0.7), np.log(1.7), 49))  # about 1.9 % apart
SHIFTS = [(dy, dx) for dy in (-2, 0, 2) for dx in (-2, 0, 2)]  # px at the work size: registration's slack
MAX_SAMPLES = 4000  # pixels compared per window
MIN_SKIN_R = 0.5  # the skin's own best match must be at least this good to correct the lesion's scale


@dataclass(frozen=True)
class Growth:
    scale: float  # linear magnification of the lesion relative to its skin (1: no growth)
    lesion_r: float  # normalised correlation of the lesion window at its best magnification
    skin_scale: float  # the skin's own best magnification (1 when it could not be read)
    skin_r: float

    @property
    def area_change_pct(self) -> float:
        return 100 * (self.scale**2 - 1)

    @property
    def appearance_change(self) -> float:
        return 1 - self.lesion_r


def _channels(rgb: np.ndarray) -> np.ndarray:
    """Lightness and red-green (CIELAB L*, a*), lightly smoothed: the contrast of pink lesions lies in a*."""
    lab = color.rgb2lab(np.clip(rgb, 0, 1))
    return np.stack([ndimage.gaussian_filter(lab[..., c], 1.0) for c in (0, 1)])


def _ncc(ref: np.ndarray, got: np.ndarray) -> float:
    """Mean over channels of the normalised correlation of (C, N) samples."""
    a = ref - ref.mean(1, keepdims=True)
    b = got - got.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    return float(np.mean(np.where(den > 1e-9, (a * b).sum(1) / np.maximum(den, 1e-9), 0.0)))


def _best_scale(ea: np.ndarray, lb: np.ndarray, centre: tuple[float, float], where: np.ndarray) -> tuple[float, float]:
    """The magnification s (and its correlation) for which later(centre + s (p - centre)) best matches
    earlier(p) over `where`, allowing the centre a few pixels of slack."""
    ys, xs = np.nonzero(where)
    step = max(1, len(ys) // MAX_SAMPLES)  # an even subsample keeps the search fast on large lesions
    ys, xs = ys[::step], xs[::step]
    if len(ys) < 50:
        return 1.0, 0.0
    cy, cx = centre
    ref = ea[:, ys, xs]

    def score(s: float, dy: float, dx: float) -> float:
        coords = [cy + dy + s * (ys - cy), cx + dx + s * (xs - cx)]
        got = np.stack([ndimage.map_coordinates(ch, coords, order=1, mode="nearest") for ch in lb])
        return _ncc(ref, got)

    s_best = max(SCALES, key=lambda s: score(s, 0, 0))
    dy, dx = max(SHIFTS, key=lambda d: score(s_best, *d))
    fine = s_best * np.exp(np.linspace(-0.02, 0.02, 5))
    s_best = max(fine, key=lambda s: score(s, dy, dx))
    return float(s_best), score(s_best, dy, dx)


def lesion_growth(earlier: np.ndarray, later_on_earlier: np.ndarray, mask: np.ndarray, covered: np.ndarray) -> Growth:
    """`earlier` and `later_on_earlier`: float RGB in one frame; `mask`: the earlier lesion there;
    `covered`: where the later photo has pixels."""
    ea, lb = _channels(earlier), _channels(later_on_earlier)
    radius = float(np.sqrt(mask.sum() / np.pi))
    centre = ndimage.center_of_mass(mask)
    window = ndimage.binary_dilation(mask, iterations=max(2, round(0.3 * radius))) & covered
    s_lesion, r_lesion = _best_scale(ea, lb, centre, window)
    yy, xx = np.indices(mask.shape)
    dist = np.hypot(yy - centre[0], xx - centre[1])
    near = ndimage.binary_dilation(mask, iterations=max(3, round(0.6 * radius)))
    ring = (dist < 3 * radius) & ~near & covered
    s_skin, r_skin = _best_scale(ea, lb, centre, ring)
    usable = r_skin >= MIN_SKIN_R
    return Growth(
        scale=s_lesion / s_skin if usable else s_lesion,
        lesion_r=r_lesion,
        skin_scale=s_skin if usable else 1.0,
        skin_r=r_skin,
    )
