"""Comparison of two photos of one lesion, on scenes whose lesion masks are known (the segmenter is
tested on its own in test_segmentation.py): stable, grown, darkened, not comparable."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage
from skimage import transform

from models.lesions import ChangeThresholds, PhotoSide, compare
from models.scoring.urgency import measured_change_reason

SIZE = (360, 480)


def scene(seed: int = 0, radius: float = 55.0) -> tuple[np.ndarray, np.ndarray]:
    """Skin with pores and creases (texture registration can hold on to) and a dark round lesion."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    fine, coarse = (ndimage.gaussian_filter(rng.normal(0, 1, (h, w)), s) for s in (2, 6))
    tex = fine * 40 + coarse * 60
    rgb = np.stack([200 + tex, 155 + tex * 0.8, 128 + tex * 0.7], -1)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - 175) ** 2 + (xx - 250) ** 2 <= radius**2
    rgb[mask] = rgb[mask] * 0.45
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def moved(rgb: np.ndarray, mask: np.ndarray, angle=6.0, scale=1.1, shift=(12, -8), light=1.06):
    """The same scene shot again: rotated, zoomed, shifted, a little brighter."""
    h, w = mask.shape
    t = (
        transform.SimilarityTransform(translation=(-w / 2, -h / 2))
        + transform.SimilarityTransform(scale=scale, rotation=np.radians(angle))
        + transform.SimilarityTransform(translation=(w / 2 + shift[0], h / 2 + shift[1]))
    )
    out = transform.warp(rgb, t.inverse, output_shape=(h, w), mode="reflect", preserve_range=True)
    m = transform.warp(mask.astype(float), t.inverse, output_shape=(h, w), order=0) > 0.5
    return np.clip(out * light, 0, 255).astype(np.uint8), m


def side(rgb, mask, **kw) -> PhotoSide:
    return PhotoSide(rgb, mask, **kw)


def test_the_same_lesion_shot_again_is_stable() -> None:
    rgb, m = scene()
    rgb2, m2 = moved(rgb, m)
    c = compare(side(rgb, m), side(rgb2, m2))
    assert c.comparable, c.reasons
    assert c.verdict == "stable", c.reasons
    assert abs(c.registration["scale"] - 1 / 1.1) < 0.04  # later pixels -> earlier pixels
    assert abs(c.area_change_pct) < 8
    assert c.delta_e < 4


def test_growth_is_measured_and_said() -> None:
    rgb, m = scene(radius=50)
    big, mb = scene(radius=50 * np.sqrt(1.3))  # the same skin, the lesion's area +30 %
    big2, mb2 = moved(big, mb)
    c = compare(side(rgb, m), side(big2, mb2))
    assert c.area_change_pct == pytest.approx(30, abs=8)
    strict = compare(side(rgb, m), side(big2, mb2), ChangeThresholds(area_pct=15))
    assert strict.verdict == "changed", strict.reasons
    assert any("change in size" in r for r in strict.reasons)
    under = compare(side(rgb, m), side(big2, mb2), ChangeThresholds(area_pct=40, delta_e=100, shape=100))
    assert under.verdict == "stable" and under.change_score < 1


def test_darkening_is_a_colour_change() -> None:
    rgb, m = scene()
    dark = rgb.copy()
    # to 30 % (Delta E about 28, past the tuned threshold of 22.1); halving this already dark
    # lesion measures about 20, which the thresholds tuned with segmenter 2.0 call stable
    dark[m] = (dark[m] * 0.3).astype(np.uint8)
    c = compare(side(rgb, m), side(*moved(dark, m)))
    assert c.verdict == "changed"
    assert c.delta_e > 8
    assert any("change in colour" in r for r in c.reasons)


def test_differential_change_is_later_minus_earlier() -> None:
    rgb, m = scene()
    c = compare(
        side(rgb, m, probabilities={"melanoma": 0.2, "melanocytic_nevus": 0.7}),
        side(*moved(rgb, m), probabilities={"melanoma": 0.5, "melanocytic_nevus": 0.4}),
    )
    assert c.differential_change == {"melanoma": 0.3, "melanocytic_nevus": -0.3}


@pytest.mark.parametrize(
    ("earlier", "later", "says"),
    [
        ({"body_site": "back"}, {"body_site": "face"}, "different body sites"),
        ({"modality": "clinical"}, {"modality": "dermoscopic"}, "different kinds of photo"),
        ({}, {"not_skin": "a general image network sees an object"}, "does not look like a skin photo"),
    ],
)
def test_not_comparable_pairs_cannot_tell(earlier, later, says) -> None:
    rgb, m = scene()
    c = compare(side(rgb, m, **earlier), side(*moved(rgb, m), **later))
    assert c.verdict == "cannot tell" and not c.comparable
    assert any(says in r for r in c.reasons)
    assert c.area_change_pct is None and c.delta_e is None and c.change_score is None


def test_a_different_lesion_cannot_tell() -> None:
    rgb, m = scene(seed=0)
    other, mo = scene(seed=7)  # other skin: nothing to register on
    c = compare(side(rgb, m), side(other, mo))
    assert c.verdict == "cannot tell"
    assert c.area_change_pct is None


def test_no_lesion_found_cannot_tell() -> None:
    rgb, m = scene()
    c = compare(side(rgb, m), side(rgb, None))
    assert c.verdict == "cannot tell"
    assert any("no lesion could be outlined in the later photo" in r for r in c.reasons)


def test_the_later_outline_lands_on_the_earlier_lesion() -> None:
    rgb, m = scene()
    c = compare(side(rgb, m), side(*moved(rgb, m)))
    img = Image.new("1", SIZE[::-1])
    ImageDraw.Draw(img).polygon(c.later_outline_on_earlier, fill=1)
    drawn = np.asarray(img)
    assert (drawn & m).sum() / (drawn | m).sum() > 0.85


def test_measured_change_reason_says_measured() -> None:
    text = measured_change_reason(["change in size"], {"change in size": "area +30 %"})
    assert "measured" in text and "area +30 %" in text


def test_measured_change_scores_the_ng12_points_of_a_reported_one() -> None:
    """A measured change in size and colour reaches the NG12 checklist exactly as the reported items do."""
    from models.knowledge.risk_factors import RiskFactors
    from models.scoring.urgency import ng12_checklist, with_measured_change

    none = ng12_checklist(RiskFactors())
    measured = ng12_checklist(with_measured_change(None, ["change in size", "change in colour"]))
    reported = ng12_checklist(RiskFactors(changed_size=True, changed_colour=True))
    assert measured.points == reported.points >= none.points + 4  # two major items, 2 points each
    assert measured.suspected_cancer and not none.suspected_cancer
    assert measured.items == reported.items


def dark_crops(crops: list[np.ndarray]) -> list[np.ndarray]:
    """A plain segmenter for the scenes above: the dark pixels, largest component."""
    from models.segmentation.measures import largest_component

    return [largest_component(ndimage.binary_opening(c.mean(-1) < 110, iterations=2)) for c in crops]


def test_outlines_redrawn_in_register_measure_growth_not_zoom() -> None:
    """With a segmenter, both photos are outlined again on the same registered crop: a zoomed repeat
    reads as no change, a real growth as growth."""
    rgb, m = scene(radius=50)
    again = compare(side(rgb, m), side(*moved(rgb, m, scale=1.3)), segment_crops=dark_crops)
    assert again.comparable and again.outline_stability > 0.9, again.reasons
    assert abs(again.area_change_pct) < 8 and again.verdict == "stable"
    big, mb = scene(radius=50 * np.sqrt(1.3))
    grown = compare(side(rgb, m), side(*moved(big, mb, scale=1.3)), segment_crops=dark_crops)
    assert grown.area_change_pct == pytest.approx(30, abs=8)


def test_an_outline_that_depends_on_the_framing_cannot_tell() -> None:
    """A segmenter whose outline changes with the crop's size is not trusted to measure change."""
    rgb, m = scene()

    def framing_dependent(crops: list[np.ndarray]) -> list[np.ndarray]:
        out = []
        for crop in crops:
            h, w = crop.shape[:2]
            yy, xx = np.mgrid[:h, :w]
            out.append((yy - h / 4) ** 2 + (xx - w / 4) ** 2 <= (min(h, w) / 5) ** 2)  # a crop's top left
        return out

    c = compare(side(rgb, m), side(*moved(rgb, m)), segment_crops=framing_dependent)
    assert c.verdict == "cannot tell" and c.area_change_pct is None
    assert any("not stable enough" in r for r in c.reasons)
