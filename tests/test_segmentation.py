"""Lesion segmentation: the measures of a mask, the outline, the served segmenter on photos."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from models.segmentation import LesionSegmentation, mask_png, segment
from models.segmentation.classical import otsu_mask
from models.segmentation.measures import measure_mask, outline_polygon
from service.schemas import LesionOutline

ISIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "isic-2017"


def disc(shape=(200, 240), centre=(100, 120), r=40) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r**2


def skin_photo(mask: np.ndarray, lesion=(90, 55, 40), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    px = np.array([200, 155, 128], float) + rng.normal(0, 6, (*mask.shape, 3))
    px[mask] = np.array(lesion, float) + rng.normal(0, 6, (int(mask.sum()), 3))
    return Image.fromarray(np.clip(px, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def test_disc_measures_match_geometry() -> None:
    m = disc(r=40)
    rgb = np.asarray(skin_photo(m))
    got = measure_mask(m, rgb, mm_per_px=0.1)
    assert got.area_px == int(m.sum())
    assert abs(got.longest_diameter_px - 81) < 2.5
    assert 0.9 < got.border_irregularity < 1.15
    assert got.solidity > 0.97
    assert got.area_mm2 == pytest.approx(m.sum() * 0.01, rel=1e-3)
    assert got.longest_diameter_mm == pytest.approx(got.longest_diameter_px * 0.1, rel=1e-2)


def test_ragged_border_and_two_colours_score_higher() -> None:
    m = disc(r=40)
    yy, xx = np.mgrid[:200, :240]
    angle = np.arctan2(yy - 100, xx - 120)
    star = np.hypot(yy - 100, xx - 120) <= 40 * (1 + 0.35 * np.sin(9 * angle))
    plain = measure_mask(m, np.asarray(skin_photo(m)))
    ragged = measure_mask(star, np.asarray(skin_photo(star)))
    assert ragged.border_irregularity > plain.border_irregularity + 0.3
    assert ragged.solidity < plain.solidity - 0.1
    two = np.asarray(skin_photo(m)).copy()
    two[m & (xx > 120)] = (30, 30, 60)
    assert measure_mask(m, two).colour_variegation > plain.colour_variegation + 10


def test_outline_polygon_runs_along_the_border() -> None:
    m = disc(r=40)
    poly = outline_polygon(m)
    assert len(poly) >= 8
    radii = [np.hypot(x - 120, y - 100) for x, y in poly]
    assert all(37 <= r <= 42 for r in radii)
    drawn = Image.new("1", (240, 200))
    ImageDraw.Draw(drawn).polygon(poly, fill=1)
    back = np.asarray(drawn)
    assert (back & m).sum() / (back | m).sum() > 0.93


def test_mask_png_round_trips() -> None:
    m = disc()
    back = np.asarray(Image.open(io.BytesIO(mask_png(m))).convert("L")) > 127
    assert np.array_equal(back, m)


def test_otsu_baseline_finds_a_dark_lesion() -> None:
    m = disc((256, 256), (128, 128), 50)
    got = otsu_mask(skin_photo(m))
    assert (got & m).sum() / (got | m).sum() > 0.8


def test_outline_converts_working_pixels_to_the_photo_as_sent() -> None:
    m = disc((300, 400), (140, 210), 60)
    seg = LesionSegmentation(m, True, 0.9, outline_polygon(m), measure_mask(m, np.asarray(skin_photo(m))))
    # the working copy is half the size of the photo as sent (800 px wide)
    out = LesionOutline.of(seg, sent_width=800, mm_per_pixel=0.05)
    assert out.area_px == pytest.approx(m.sum() * 4, rel=1e-3)
    assert out.area_mm2 == pytest.approx(m.sum() * 0.1**2, rel=1e-2)
    assert out.longest_diameter_mm == pytest.approx(seg.measures.longest_diameter_px * 0.1, rel=1e-2)
    png = Image.open(io.BytesIO(base64.b64decode(out.mask_png)))
    assert png.size == (400, 300)


def test_plain_skin_has_no_lesion() -> None:
    seg = segment(skin_photo(np.zeros((256, 256), bool)))
    assert not seg.found and seg.measures is None and seg.reason


@pytest.mark.skipif(not (ISIC / "masks").exists(), reason="ISIC 2017 masks not present")
def test_segmenter_beats_the_baseline_on_isic_validation_images() -> None:
    from models.fitting.segmentation_fit import evaluate_segmentation

    report = evaluate_segmentation("validation", limit=24, root=ISIC)
    assert report["n"] == 24
    assert report["head"]["jaccard"] > 0.65
    assert report["head"]["jaccard"] > report["otsu"]["jaccard"]


def test_every_dihedral_view_turns_back_onto_the_input() -> None:
    import torch

    from models.segmentation.tta import DIHEDRAL, from_view, to_view, tta_logits

    x = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5)  # no symmetry at all
    assert len(set(DIHEDRAL)) == 8
    for view in DIHEDRAL:
        assert torch.equal(from_view(to_view(x, view), view), x)
        if view != (0, False):
            assert not torch.equal(to_view(x, view), x)
    # a per-pixel model is equivariant: averaged views inverted correctly give its plain output back
    assert torch.allclose(tta_logits(lambda v: v[:, :1] * 2, x, DIHEDRAL), x[:, :1] * 2)


def test_served_segmenter_follows_a_flipped_photo() -> None:
    from models.segmentation import segment_probability

    m = disc((256, 256), (80, 170), 45)  # off-centre, so a flip moves it
    photo = skin_photo(m, seed=3)
    probs = segment_probability([photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    assert probs[0][m].mean() > probs[0][~m].mean() + 0.1  # the map sees the off-centre lesion
    assert np.abs(probs[1] - probs[0]).max() > 0.1  # and moves when the photo is flipped
    # the four flips are averaged, so the served map is exactly flip-equivariant when each view's
    # map is turned back correctly
    np.testing.assert_allclose(probs[1], probs[0][:, ::-1], atol=1e-4)


def test_mask_keeps_the_lesion_fills_its_hole_and_drops_a_speck() -> None:
    from models.segmentation import THRESHOLD, mask_from_probability

    lesion = disc((256, 256), (128, 128), 60)
    hole = disc((256, 256), (128, 128), 12)
    speck = disc((256, 256), (20, 230), 5)
    prob = np.where(lesion & ~hole | speck, 0.9, 0.05).astype(np.float32)
    prob[disc((256, 256), (128, 60), 8) & ~lesion] = THRESHOLD + 0.05  # just over: joins the lesion
    mask = mask_from_probability(prob, (512, 512))
    assert mask.shape == (512, 512)
    assert mask[256, 256]  # the hole is filled
    assert not mask[40, 460]  # the speck is gone
    assert mask[256, 112]  # the rim at the threshold is kept
    assert mask.sum() == pytest.approx(np.pi * 120**2, rel=0.05)


def test_augmented_copy_moves_the_mask_with_the_photo() -> None:
    import torch

    from models.fitting.segmentation_fit import augment_pair
    from models.segmentation.preprocess import to_input

    m = disc((256, 256), (70, 180), 40)  # off-centre, so rotation, zoom and shift all move it
    x, mask = to_input(skin_photo(m, lesion=(40, 30, 30))), torch.from_numpy(m)
    moved = 0
    for seed in range(4):
        ax, am = augment_pair(x, mask, torch.Generator().manual_seed(seed), colour_seed=seed)
        bx, bm = augment_pair(x, mask, torch.Generator().manual_seed(seed), colour_seed=seed)
        assert torch.equal(ax, bx) and torch.equal(am, bm)  # reproducible from its seeds
        assert ax.shape == x.shape and am.shape == mask.shape and am.dtype == torch.bool
        dark = ax.mean(0) < ax.mean(0)[~am].mean() - 0.3  # the lesion's pixels in the copy
        assert (dark & am).sum() / (dark | am).sum() > 0.85  # ... are where the copy's mask says
        moved += int((am ^ mask).sum() > 0.2 * mask.sum())
    assert moved >= 3  # the copies really are transformed


def test_head_weights_round_trip_in_half_precision(tmp_path) -> None:
    import torch

    from models.fitting.segmentation_fit import save_head
    from models.segmentation.network import TAP_CHANNELS, UNetHead, load_segmenter

    torch.manual_seed(0)
    head = UNetHead()
    head.train()
    taps = [torch.randn(2, c, s, s) for c, s in zip(TAP_CHANNELS, (64, 32, 16, 8), strict=True)]
    head(taps)  # moves the batch-norm running statistics off their defaults
    head.eval()
    save_head(head, tmp_path / "head.safetensors")
    assert (tmp_path / "head.safetensors").stat().st_size < 2 * sum(p.numel() for p in head.parameters()) + 100_000
    loaded = load_segmenter(tmp_path / "head.safetensors").head
    with torch.no_grad():
        want, got = head(taps), loaded(taps)
    assert got.shape == (2, 1, 64, 64)
    assert torch.allclose(got, want, atol=2e-2 * want.abs().max().item())


def test_head_training_learns_from_its_copies_and_keeps_the_best_epoch() -> None:
    import torch
    from torch.nn import functional as F

    from models.fitting.segmentation_fit import mean_scores, predict_masks, train_head
    from models.segmentation.network import TAP_CHANNELS

    def copy(seed: int, n: int = 48) -> tuple[list[torch.Tensor], torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        masks = torch.stack(
            [
                torch.from_numpy(disc((256, 256), tuple(torch.randint(70, 186, (2,), generator=g).tolist()), 50))
                for _ in range(n)
            ]
        )
        taps = [torch.randn(n, c, s, s, generator=g) for c, s in zip(TAP_CHANNELS, (16, 8, 4, 2), strict=True)]
        taps[0][:, 0] += 4 * F.adaptive_avg_pool2d(masks[:, None].float(), 16)[:, 0] - 2  # the lesion is readable
        return [t.half() for t in taps], masks

    val = copy(9)
    head, report = train_head([copy(1), copy(2)], val, epochs=4, batch=8, lr=1e-2, log=lambda _: None)
    assert len(report["history"]) == 4
    assert report["val_jaccard"] == pytest.approx(max(h["val_jaccard"] for h in report["history"]), abs=1e-4)
    assert report["val_jaccard"] > 0.6  # it learned where the lesion is (nothing found scores 0)
    again = mean_scores(predict_masks(head, val[0]), val[1].numpy())["jaccard"]
    assert again == pytest.approx(report["val_jaccard"], abs=1e-6)  # the kept head is the best epoch's
