"""Each gate fires on an input built to trip it and stays quiet on a clean photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageFilter

from models.fitting.ood_data import synthetic_images
from models.uncertainty.gates import GateThresholds, assess, quality_flags
from models.uncertainty.ood import OodScore
from service.images import decode_image

CLEAN = np.array([0.85, 0.08, 0.04, 0.02, 0.01])
LABELS = ["a", "b", "c", "d", "e"]


def names(u) -> set[str]:
    return {f.name for f in u.flags}


def _quality(im: Image.Image) -> dict:
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return decode_image(buf.getvalue()).info.quality.model_dump()


def _skin_like(size: int = 400, seed: int = 0) -> Image.Image:
    """A textured skin-toned frame with a darker blob: sharp, well exposed."""
    rng = np.random.default_rng(seed)
    a = np.zeros((size, size, 3)) + np.array([205, 150, 125]) + rng.normal(0, 12, (size, size, 3))
    y, x = np.mgrid[0:size, 0:size]
    a[(x - size / 2) ** 2 + (y - size / 2) ** 2 < (size / 6) ** 2] = [120, 70, 50]
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def test_clean_answer_raises_no_flag():
    u = assess(LABELS, CLEAN, np.array([True, False, False, False, False]), calibrated_ok=True, top_validated=True)
    assert u.flags == [] and not u.needs_review and u.prediction_set == ["a"]
    assert u.top2_margin == pytest.approx(0.77) and u.entropy > 0


def test_low_confidence_and_ambiguous():
    flat = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
    u = assess(LABELS, flat, np.ones(5, dtype=bool), calibrated_ok=True, coverage=0.9)
    assert {"low_confidence", "ambiguous"} <= names(u) and u.needs_review
    f = next(f for f in u.flags if f.name == "ambiguous")
    assert f.value == 5.0 and f.threshold == 3.0
    assert u.prediction_set == LABELS  # most probable first


def test_unvalidated_condition_underrepresented_skin_type_and_uncalibrated():
    u = assess(LABELS, CLEAN, None, calibrated_ok=False, top_validated=False, fitzpatrick=6, underrepresented=[5, 6])
    assert {"unvalidated_condition", "underrepresented_skin_type", "uncalibrated"} <= names(u)
    assert u.coverage is None and u.prediction_set == []
    quiet = assess(LABELS, CLEAN, None, calibrated_ok=True, top_validated=True, fitzpatrick=2, underrepresented=[5, 6])
    assert not names(quiet)


def test_out_of_distribution_flags_each_signal():
    far = OodScore(900.0, 500.0, 0.9, 0.0, 0.5, 0.03)
    prompts = OodScore(100.0, 500.0, 0.1, 0.5, 0.5, 0.03)
    pixels = OodScore(100.0, 500.0, 0.9, 0.0, 0.001, 0.03)
    imagenet = OodScore(100.0, 500.0, 0.9, 0.0, 0.5, 0.03, -6.0, -2.0)
    clean = OodScore(100.0, 500.0, 0.9, 0.0, 0.5, 0.03, -0.5, -2.0)
    measures = {
        f.measure
        for s in (far, prompts, pixels, imagenet)
        for f in assess(LABELS, CLEAN, None, calibrated_ok=True, ood=s).flags
        if f.name == "out_of_distribution"
    }
    assert measures == {
        "mahalanobis_sq_distance",
        "skin_prompt_probability",
        "skin_pixel_fraction",
        "imagenet_skin_class_log_mass",
    }
    assert "out_of_distribution" not in names(assess(LABELS, CLEAN, None, calibrated_ok=True, ood=clean))


@pytest.mark.parametrize(
    ("make", "measure"),
    [
        (lambda im: im.filter(ImageFilter.GaussianBlur(8)), "blur_laplacian_var"),
        (lambda im: Image.eval(im, lambda v: v // 12), "mean_brightness"),
        (lambda im: Image.eval(im, lambda v: min(255, v * 3)), "bright_fraction"),
        (lambda im: im.resize((100, 100)), "min_side"),
    ],
)
def test_poor_quality_fires_on_a_broken_capture_and_not_on_a_clean_one(make, measure):
    t = GateThresholds()
    assert quality_flags(_quality(_skin_like()), t) == []
    flags = quality_flags(_quality(make(_skin_like())), t)
    assert measure in {f.measure for f in flags} and all(f.name == "poor_quality" for f in flags)


# ----------------------------------------------------------------------------- the embedded model, end to end


@pytest.fixture(scope="module")
def embedded_engine():
    import torch

    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
    from service.engine import TriageEngine

    torch.set_num_threads(1)
    return TriageEngine(load_model("embedded-pad-lite0"), load_taxonomy())


def _triage(engine, im: Image.Image):
    from service.schemas import TriageOptions

    buf = io.BytesIO()
    im.convert("RGB").save(buf, format="PNG")
    return engine.triage(decode_image(buf.getvalue()), TriageOptions(), request_id="t")


def test_engine_calibrates_and_flags_a_screenshot_but_not_a_clean_skin_photo(embedded_engine, pad_dir):
    clean = _triage(embedded_engine, Image.open(pad_dir / "images" / "PAT_9_17_80.jpg"))
    u = clean.uncertainty
    assert u is not None and u.calibrated and u.temperature and u.coverage == 0.9
    assert not u.needs_review and u.flags == []
    assert u.prediction_set[0] == clean.differentials[0].condition_id
    probs = [d.probability for d in clean.differentials]
    assert probs == sorted(probs, reverse=True)
    screenshot = dict(synthetic_images(per_kind=1, seed=0))["synthetic:screenshot:0"]
    flagged = _triage(embedded_engine, screenshot).uncertainty
    assert flagged is not None and flagged.needs_review
    assert "out_of_distribution" in {f.name for f in flagged.flags}


def test_frozen_imagenet_view_flags_a_cat_but_not_a_skin_photo(embedded_engine, pad_dir):
    """The ImageNet rule reads the frozen trunk inside the served forward: same embedding, plus a view
    that knows cats (skimage's Chelsea is skin-coloured enough to pass the pixel rule)."""
    import torch
    from skimage import data

    engine = embedded_engine
    assert engine.with_domain
    skin = Image.open(pad_dir / "images" / "PAT_9_17_80.jpg").convert("RGB")
    pixels = engine.model.preprocessing.batch([skin])
    features = engine.embed(pixels)
    emb, probs = features.embedding, features.domain
    assert probs is not None and probs.shape == (1, 1000)
    assert torch.allclose(torch.from_numpy(emb), engine.model.encode_image(pixels), atol=1e-5)  # untouched
    stats = engine.uncertainty.ood.stats
    assert stats.imagenet_log_mass(probs)[0] > stats.imagenet_threshold
    cat = _triage(engine, Image.fromarray(data.chelsea())).uncertainty
    assert cat is not None and cat.needs_review
    assert "imagenet_skin_class_log_mass" in {f.measure for f in cat.flags if f.name == "out_of_distribution"}
