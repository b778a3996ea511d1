"""Compare two photos of one lesion: are they comparable, how were they registered, what changed
(area, diameter, colour relative to the surrounding skin, shape), and a verdict with reasons.

Every measure is taken after registering the later photo onto the earlier one on the whole scene
(models/lesions/registration.py), so a zoomed-in repeat photo is not read as growth. Thresholds
(`ChangeThresholds`) were tuned on development pairs (models/fitting/change_eval.py); the figures
on held-out pairs are in the README.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, measure, transform

from models.lesions.registration import Registration, register, to_work, warp_affine

Verdict = Literal["changed", "stable", "cannot tell"]


@dataclass(frozen=True)
class ChangeThresholds:
    # Tuned on the development half of the PAD pairs (`dermtriage compare-eval`): each the 98.5th
    # percentile over the comparable stable pairs. The area threshold came out useless (a few stable
    # pairs whose outlines differ wildly set it): size change is not called on clinical photos yet.
    area_pct: float = 588.0  # |area change| in % that alone says changed
    delta_e: float = 7.53  # CIE76 Delta E of the lesion's colour relative to its skin
    shape: float = 0.65  # 1 - IoU of the registered outlines at equal area
    min_inliers: int = 8  # RANSAC inliers on the skin for a registration to count
    min_skin_correlation: float = 0.4  # grey-level r of the registered skin around the lesions
    max_scale_ratio: float = 3.0  # zoom between the photos
    min_overlap: float = 0.3  # share of the earlier frame the later photo covers
    max_skin_lightness_diff: float = 25.0  # CIELAB L* of the skin: exposure too different beyond this


@dataclass(frozen=True)
class PhotoSide:
    """One visit's photo: (H, W, 3) uint8 pixels, its lesion mask (same size; None: not found)
    and what the caller or the triage said about it."""

    rgb: np.ndarray
    mask: np.ndarray | None
    body_site: str | None = None
    modality: str | None = None
    probabilities: dict[str, float] | None = None
    not_skin: str | None = None  # why the photo is not a skin photo, when a gate said so


@dataclass
class Comparison:
    verdict: Verdict
    reasons: list[str]
    comparable: bool
    registration: dict[str, object]
    area_change_pct: float | None = None
    diameter_change_pct: float | None = None
    delta_e: float | None = None
    shape_change: float | None = None
    border_irregularity_change: float | None = None
    differential_change: dict[str, float] = field(default_factory=dict)
    change_score: float | None = None  # max of each measure over its threshold: >= 1 means changed
    later_outline_on_earlier: list[tuple[int, int]] = field(default_factory=list)  # earlier photo's pixels


def _resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return transform.resize(mask.astype(float), shape, order=1, anti_aliasing=False) > 0.5


def _ring(mask: np.ndarray, width: int = 12) -> np.ndarray:
    """Skin just around the lesion (a band outside the dilated mask)."""
    inner = ndimage.binary_dilation(mask, iterations=4)
    return ndimage.binary_dilation(mask, iterations=4 + width) & ~inner


def _relative_lab(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, float]:
    """Lesion mean CIELAB minus its surrounding skin's (cancels lighting and white balance to first
    order), and the skin's L*."""
    ring = _ring(mask)
    ring = ring if ring.sum() > 50 else ~mask

    def lab(where: np.ndarray) -> np.ndarray:
        return color.rgb2lab(rgb[where].reshape(-1, 1, 3)).reshape(-1, 3).mean(0)

    skin = lab(ring)
    return lab(mask) - skin, float(skin[0])


def _equal_area_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of `a` and `b` after moving b's centroid onto a's and scaling b to a's area."""
    ca, cb = ndimage.center_of_mass(a), ndimage.center_of_mass(b)
    k = float(np.sqrt(a.sum() / max(b.sum(), 1)))
    t = (
        transform.SimilarityTransform(translation=(-cb[1], -cb[0]))
        + transform.SimilarityTransform(scale=k)
        + transform.SimilarityTransform(translation=(ca[1], ca[0]))
    )
    b2 = warp_affine(b.astype(float), t, a.shape, order=0) > 0.5
    union = (a | b2).sum()
    return float((a & b2).sum() / union) if union else 0.0


def _registration_summary(reg: Registration) -> dict[str, object]:
    return {
        "method": reg.method,
        "ok": reg.ok,
        "scale": round(reg.scale, 4),
        "rotation_deg": round(reg.rotation_deg, 2),
        "shift_px": [round(reg.shift_px[0], 1), round(reg.shift_px[1], 1)],
        "inliers": reg.inliers,
        "matches": reg.matches,
        "overlap": round(reg.overlap, 3),
        "skin_correlation": round(reg.skin_correlation, 3),
    }


def _cannot_tell(reasons: list[str], reg: Registration | None = None) -> Comparison:
    summary = _registration_summary(reg) if reg else {"method": "none", "ok": False}
    return Comparison("cannot tell", reasons, False, summary)


def _side_reasons(earlier: PhotoSide, later: PhotoSide) -> list[str]:
    """Why the two photos cannot be compared, from what is known before registering them."""
    reasons = []
    for name, side in (("earlier", earlier), ("later", later)):
        if side.not_skin:
            reasons.append(f"the {name} photo does not look like a skin photo: {side.not_skin}")
        elif side.mask is None or not side.mask.any():
            reasons.append(f"no lesion could be outlined in the {name} photo")
    if earlier.modality and later.modality and earlier.modality != later.modality:
        reasons.append(f"different kinds of photo ({earlier.modality} vs {later.modality}) cannot be compared")
    if earlier.body_site and later.body_site and earlier.body_site.casefold() != later.body_site.casefold():
        reasons.append(f"different body sites ({earlier.body_site} vs {later.body_site}): not the same lesion")
    return reasons


def _registration_reasons(reg: Registration, th: ChangeThresholds, a_mask: np.ndarray, b_on_a: np.ndarray) -> list[str]:
    """Why a registration does not show the same place (or the same lesion)."""
    reasons = []
    if reg.inliers < th.min_inliers:
        reasons.append(f"only {reg.inliers} landmarks agree between the photos: probably not the same place")
    if reg.skin_correlation < th.min_skin_correlation:
        reasons.append("the skin around the lesion does not match after registration: probably not the same lesion")
    if not 1 / th.max_scale_ratio <= reg.scale <= th.max_scale_ratio:
        reasons.append(f"the photos' scales differ too much ({reg.scale:.2f}x)")
    if reg.overlap < th.min_overlap:
        reasons.append(f"the photos overlap too little ({reg.overlap:.0%} of the earlier frame)")
    if not b_on_a.any() or not (ndimage.binary_dilation(a_mask, iterations=10) & b_on_a).any():
        reasons.append("the two outlines fall in different places after registration: not the same lesion")
    return reasons


def _verdict(out: Comparison, th: ChangeThresholds) -> None:
    """Score the measures against the thresholds; set the verdict and its reasons."""
    assert out.area_change_pct is not None and out.delta_e is not None and out.shape_change is not None
    parts = {
        "size": abs(out.area_change_pct) / th.area_pct,
        "colour": out.delta_e / th.delta_e,
        "shape": out.shape_change / th.shape,
    }
    out.change_score = round(max(parts.values()), 3)
    if out.change_score < 1:
        out.reasons.append(
            f"no measured change beyond the thresholds (area {th.area_pct:.0f} %, Delta E {th.delta_e:.0f}, "
            f"shape {th.shape:.2f})"
        )
        return
    out.verdict = "changed"
    if parts["size"] >= 1:
        grew = "grew" if out.area_change_pct > 0 else "shrank"
        out.reasons.append(f"measured change in size: the area {grew} by {abs(out.area_change_pct):.0f} %")
    if parts["colour"] >= 1:
        out.reasons.append(f"measured change in colour: Delta E {out.delta_e:.1f} relative to the skin")
    if parts["shape"] >= 1:
        out.reasons.append(f"measured change in shape: outlines differ by {out.shape_change:.0%} at equal area")


def _outline_on(mask: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """A work-frame mask's outline in the pixels of a photo of `shape`."""
    sy, sx = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
    contours = measure.find_contours(np.pad(mask, 1).astype(float), 0.5)
    if not contours:
        return []
    poly = measure.approximate_polygon(max(contours, key=len) - 1, 1.5)
    return [(round(c * sx), round(r * sy)) for r, c in poly[:-1]]


def compare(earlier: PhotoSide, later: PhotoSide, thresholds: ChangeThresholds | None = None) -> Comparison:
    """The verdict on one pair; 'cannot tell' (with every reason found) unless the pair is comparable."""
    th = thresholds or ChangeThresholds()
    reasons = _side_reasons(earlier, later)
    if reasons:
        return _cannot_tell(reasons)
    assert earlier.mask is not None and later.mask is not None
    a_rgb, b_rgb = to_work(earlier.rgb), to_work(later.rgb)
    a_mask, b_mask = _resize_mask(earlier.mask, a_rgb.shape[:2]), _resize_mask(later.mask, b_rgb.shape[:2])
    skin_a, skin_b = (~ndimage.binary_dilation(m, iterations=6) for m in (a_mask, b_mask))
    reg = register(a_rgb, b_rgb, skin_a, skin_b)
    if not reg.ok or reg.transform is None:
        return _cannot_tell([reg.reason or "the photos could not be registered"], reg)
    b_on_a = warp_affine(b_mask.astype(float), reg.transform, a_mask.shape, order=0) > 0.5
    reasons = _registration_reasons(reg, th, a_mask, b_on_a)
    rel_a, skin_la = _relative_lab(a_rgb, a_mask)
    rel_b, skin_lb = _relative_lab(b_rgb, b_mask)
    if abs(skin_la - skin_lb) > th.max_skin_lightness_diff:
        reasons.append(f"the exposure differs too much (skin L* {skin_la:.0f} vs {skin_lb:.0f})")
    if reasons:
        return _cannot_tell(reasons, reg)
    area_a, area_b = float(a_mask.sum()), float(b_mask.sum()) * reg.scale**2
    pa = measure.regionprops(a_mask.astype(np.uint8))[0]
    pb = measure.regionprops(b_mask.astype(np.uint8))[0]
    diam_a, diam_b = float(pa.feret_diameter_max), float(pb.feret_diameter_max) * reg.scale
    irr = [float(measure.perimeter(m) ** 2 / (4 * np.pi * m.sum())) for m in (a_mask, b_mask)]
    out = Comparison(
        verdict="stable",
        reasons=[],
        comparable=True,
        registration=_registration_summary(reg),
        area_change_pct=round(100 * (area_b / area_a - 1), 1),
        diameter_change_pct=round(100 * (diam_b / diam_a - 1), 1),
        delta_e=round(float(np.linalg.norm(rel_b - rel_a)), 2),
        shape_change=round(1 - _equal_area_iou(a_mask, b_on_a), 3),
        border_irregularity_change=round(irr[1] - irr[0], 3),
        later_outline_on_earlier=_outline_on(b_on_a, earlier.mask.shape),
    )
    if earlier.probabilities and later.probabilities:
        out.differential_change = {
            k: round(later.probabilities[k] - earlier.probabilities[k], 4)
            for k in earlier.probabilities
            if k in later.probabilities
        }
    _verdict(out, th)
    return out


def compare_segmented(
    earlier: Image.Image, later: Image.Image, thresholds: ChangeThresholds | None = None
) -> Comparison:
    """Segment both photos with the served segmenter, then `compare` (the evaluation's entry point)."""
    from models.segmentation import segment

    made = []
    for photo in (earlier, later):
        seg = segment(photo)
        made.append(PhotoSide(np.asarray(photo.convert("RGB")), seg.mask if seg.found else None))
    return compare(made[0], made[1], thresholds)
