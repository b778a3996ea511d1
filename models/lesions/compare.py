"""Compare two photos of one lesion: are they comparable, how were they registered, what changed
(area, diameter, colour relative to the surrounding skin, shape, appearance), and a verdict with reasons.

Every measure is taken after registering the later photo onto the earlier one on the skin
(models/lesions/registration.py), so a zoomed-in repeat photo is not read as growth; with a
segmenter both photos are outlined again on the same registered crop, and growth is read from the
pictures (models/lesions/growth.py). Thresholds
(`ChangeThresholds`) were tuned on development pairs (models/fitting/change_eval.py); the figures
on held-out pairs are in the README.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, measure, transform

from models.lesions.growth import lesion_growth
from models.lesions.registration import Registration, register, to_work, warp_affine

Verdict = Literal["changed", "stable", "cannot tell"]


@dataclass(frozen=True)
class ChangeThresholds:
    # Fitted on the development half of the PAD pairs by `dermtriage compare-eval --photos 15
    # --different-lesions 20` (models/fitting/change_eval.py::tune_thresholds); changed when any
    # measure reaches its threshold.
    area_pct: float = 11.5  # |area change| in %
    delta_e: float = 22.12  # CIE76 Delta E of the lesion's colour relative to its skin
    shape: float = 0.963  # 1 - IoU of the registered outlines at equal area
    appearance: float = 0.44  # 1 - correlation of the lesion's picture at its best magnification
    min_inliers: int = 8  # RANSAC inliers on the skin for a registration to count
    min_skin_correlation: float = 0.4  # grey-level r of the registered skin around the lesions
    max_scale_ratio: float = 3.0  # zoom between the photos
    min_overlap: float = 0.3  # share of the earlier frame the later photo covers
    max_skin_lightness_diff: float = 25.0  # CIELAB L* of the skin: exposure too different beyond this
    min_outline_stability: float = 0.5  # IoU of each outline between a loose and a tight crop


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
    appearance_change: float | None = None  # 1 - correlation of the lesion at its best magnification
    differential_change: dict[str, float] = field(default_factory=dict)
    change_score: float | None = None  # the largest measure over its threshold: >= 1 means changed
    outline_stability: float | None = None  # IoU of the outlines between two framings (1: the caller's masks)
    later_outline_on_earlier: list[tuple[int, int]] = field(default_factory=list)  # earlier photo's pixels


# Outlines both crops (H, W, 3 uint8, the same framing) -> their bool masks: the served segmenter in
# `compare_segmented` and the route; None keeps the masks the caller gave (warped into register).
CropSegmenter = Callable[[list[np.ndarray]], list[np.ndarray]]


def _crop_box(a_mask: np.ndarray, b_on_a: np.ndarray, margin: float = 0.6) -> tuple[slice, slice]:
    """A box around both registered outlines, `margin` of its size added on each side (the context
    the segmenter sees is then the same in both crops)."""
    rows, cols = np.nonzero(a_mask | b_on_a)
    h, w = a_mask.shape
    dy, dx = np.ptp(rows) + 1, np.ptp(cols) + 1
    side = max(dy, dx) * (1 + 2 * margin)
    cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
    y0, x0 = int(max(0, cy - side / 2)), int(max(0, cx - side / 2))
    return slice(y0, int(min(h, cy + side / 2)) + 1), slice(x0, int(min(w, cx + side / 2)) + 1)


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


def change_parts(c: Comparison, th: ChangeThresholds) -> dict[str, float]:
    """Each measure of a comparable result over its threshold; the largest is the change score."""
    assert c.area_change_pct is not None and c.delta_e is not None and c.shape_change is not None
    return {
        "size": abs(c.area_change_pct) / th.area_pct,
        "colour": c.delta_e / th.delta_e,
        "shape": c.shape_change / th.shape,
        "appearance": (c.appearance_change or 0.0) / th.appearance,
    }


def _verdict(out: Comparison, th: ChangeThresholds) -> None:
    """The change score is the largest measure over its threshold (a change of any one kind, size or
    colour or shape or appearance, is a change); the verdict and the reasons naming what changed."""
    parts = change_parts(out, th)
    out.change_score = round(max(parts.values()), 3)
    if out.change_score < 1:
        out.reasons.append(
            f"no measured change beyond the thresholds: area {out.area_change_pct:+.0f} % (threshold "
            f"{th.area_pct:.0f} %), Delta E {out.delta_e:.1f} ({th.delta_e:.1f}), shape {out.shape_change:.2f} "
            f"({th.shape:.2f}), appearance {out.appearance_change:.2f} ({th.appearance:.2f})"
        )
        return
    out.verdict = "changed"
    named = {k for k, v in parts.items() if v >= 1}
    if "size" in named:
        grew = "grew" if out.area_change_pct > 0 else "shrank"
        out.reasons.append(f"measured change in size: the area {grew} by {abs(out.area_change_pct):.0f} %")
    if "colour" in named:
        out.reasons.append(f"measured change in colour: Delta E {out.delta_e:.1f} relative to the skin")
    if "shape" in named:
        out.reasons.append(f"measured change in shape: outlines differ by {out.shape_change:.0%} at equal area")
    if "appearance" in named:
        out.reasons.append(
            f"measured change in appearance: the lesion's picture matches its earlier one only to r = "
            f"{1 - (out.appearance_change or 0):.2f} at its best magnification"
        )


def _outline_on(mask: np.ndarray, shape: tuple[int, int]) -> list[tuple[int, int]]:
    """A work-frame mask's outline in the pixels of a photo of `shape`."""
    sy, sx = shape[0] / mask.shape[0], shape[1] / mask.shape[1]
    contours = measure.find_contours(np.pad(mask, 1).astype(float), 0.5)
    if not contours:
        return []
    poly = measure.approximate_polygon(max(contours, key=len) - 1, 1.5)
    return [(round(c * sx), round(r * sy)) for r, c in poly[:-1]]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else 0.0


def _in_register(
    a_rgb: np.ndarray,
    b_rgb: np.ndarray,
    a_mask: np.ndarray,
    b_mask: np.ndarray,
    reg: Registration,
    segment_crops: CropSegmenter | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """The later photo moved into the earlier's frame, where it has pixels, both outlines in that frame,
    and how stable the
    outlines are (1 when the masks are the caller's). The later mask is warped or, with `segment_crops`,
    both photos are outlined again on the same crop of the registered pair (a zoom or framing difference
    then changes neither what the segmenter sees nor the areas compared), each also on a tighter crop:
    the lower IoU of the two framings says whether the outline is stable enough to measure change."""
    assert reg.transform is not None
    h, w = a_mask.shape
    m = reg.transform.params[:2]
    b_img = cv2.warpAffine(b_rgb.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR)
    covered = cv2.warpAffine(np.ones(b_rgb.shape[:2], np.float32), m, (w, h), flags=cv2.INTER_NEAREST) > 0.5
    b_on_a = warp_affine(b_mask.astype(float), reg.transform, a_mask.shape, order=0) > 0.5
    if segment_crops is None or not b_on_a.any():
        return b_img, covered, a_mask, b_on_a, 1.0
    skin = covered & ~ndimage.binary_dilation(a_mask | b_on_a, iterations=6)
    if skin.any():  # uncovered pixels take the skin's median colour: no black or mirrored edges
        b_img[~covered] = np.median(b_img[skin], axis=0)
    boxes = [_crop_box(a_mask, b_on_a, margin) for margin in (0.6, 0.3)]
    crops = [(np.clip(img[box], 0, 1) * 255).astype(np.uint8) for box in boxes for img in (a_rgb, b_img)]
    masks = []
    for box, mask in zip([boxes[0], boxes[0], boxes[1], boxes[1]], segment_crops(crops), strict=True):
        full = np.zeros_like(a_mask)
        full[box] = mask
        masks.append(full)
    stability = min(_iou(masks[0], masks[2]), _iou(masks[1], masks[3]))
    return b_img, covered, masks[0], masks[1], stability


def compare(
    earlier: PhotoSide,
    later: PhotoSide,
    thresholds: ChangeThresholds | None = None,
    segment_crops: CropSegmenter | None = None,
) -> Comparison:
    """The verdict on one pair; 'cannot tell' (with every reason found) unless the pair is comparable.
    `segment_crops` outlines both photos again in register (see `_in_register`)."""
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
    b_img, covered, a_m, b_m, stability = _in_register(a_rgb, b_rgb, a_mask, b_mask, reg, segment_crops)
    reasons = _registration_reasons(reg, th, a_mask, b_m)
    if not reasons and not a_m.any():
        reasons.append("no lesion could be outlined in the earlier photo's registered crop")
    elif not reasons and stability < th.min_outline_stability:
        reasons.append(
            f"the lesion's outline is not stable enough to measure change (IoU {stability:.2f} between two "
            "framings of the same photo)"
        )
    if reasons:
        return _cannot_tell(reasons, reg)
    rel_a, skin_la = _relative_lab(a_rgb, a_m)
    rel_b, skin_lb = _relative_lab(np.clip(b_img, 0, 1), b_m)
    if abs(skin_la - skin_lb) > th.max_skin_lightness_diff:
        return _cannot_tell([f"the exposure differs too much (skin L* {skin_la:.0f} vs {skin_lb:.0f})"], reg)
    growth = lesion_growth(a_rgb, np.clip(b_img, 0, 1), a_m, covered)
    irr = [float(measure.perimeter(m) ** 2 / (4 * np.pi * m.sum())) for m in (a_m, b_m)]
    out = Comparison(
        verdict="stable",
        reasons=[],
        comparable=True,
        registration=_registration_summary(reg),
        area_change_pct=round(growth.area_change_pct, 1),
        diameter_change_pct=round(100 * (growth.scale - 1), 1),
        appearance_change=round(growth.appearance_change, 3),
        delta_e=round(float(np.linalg.norm(rel_b - rel_a)), 2),
        shape_change=round(1 - _equal_area_iou(a_m, b_m), 3),
        border_irregularity_change=round(irr[1] - irr[0], 3),
        later_outline_on_earlier=_outline_on(b_m, earlier.mask.shape),
        outline_stability=round(stability, 3),
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
    from models.segmentation import segment, segment_masks

    made = []
    for photo in (earlier, later):
        seg = segment(photo)
        made.append(PhotoSide(np.asarray(photo.convert("RGB")), seg.mask if seg.found else None))
    return compare(made[0], made[1], thresholds, segment_masks)
