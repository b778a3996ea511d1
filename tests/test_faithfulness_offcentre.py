"""Heatmap tests a centred photo set cannot fool: off-centre composites, pointing game and energy,
the finer fused map, and the model-randomisation sanity check (all on synthetic data, fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_explain import NAMES, TinyBackend, model_inputs, synthetic_photos, to_pil

from explain import METHODS
from explain.capture import finer_stage
from explain.composites import (
    CompositeConfig,
    box_mask,
    composite_rng,
    lesion_region,
    make_composite,
    mirror_tile,
)
from explain.faithfulness import FaithfulnessConfig
from explain.gradcam import SimilarityTarget
from explain.offcentre import energy_in_box, evaluate_offcentre, pointing_hit
from explain.sanity import rank_correlation, reinitialised, sanity_check
from models.backends.base import Preprocessing
from models.scoring.zeroshot import LabelSet

PRE = Preprocessing(image_size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), crop_pct=0.8)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def a_photo(width: int = 300, height: int = 240, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


# --- composites -------------------------------------------------------------------------------


def test_composite_box_lies_inside_what_the_model_sees() -> None:
    for index in range(40):
        comp = make_composite(a_photo(seed=index), PRE, composite_rng(0, index))
        w, h = comp.image.size
        assert (w, h) == (280, 280)
        left, top, right, bottom = comp.box
        vl, vt, vr, vb = PRE.geometry(w, h)
        assert vl <= left < right <= vr and vt <= top < bottom <= vb
        side = right - left
        assert side == bottom - top and 0.25 * 224 - 1 <= side <= 0.45 * 224 + 1
        il, it, ir, ib = comp.input_box
        assert 0 <= il < ir <= 224 and 0 <= it < ib <= 224
        assert (il, it) == pytest.approx((left - vl, top - vt))  # 1:1 canvas: the crop only shifts


def test_composite_is_deterministic_with_a_seed() -> None:
    photo = a_photo()
    first = make_composite(photo, PRE, composite_rng(3, 7))
    again = make_composite(photo, PRE, composite_rng(3, 7))
    assert first.box == again.box and np.array_equal(np.asarray(first.image), np.asarray(again.image))
    others = {make_composite(photo, PRE, composite_rng(3, i)).box for i in range(10)}
    assert len(others) > 5  # positions and sizes vary with the index


def test_pasted_pixels_equal_the_source_crop() -> None:
    photo = a_photo(320, 250, seed=1)
    comp = make_composite(photo, PRE, composite_rng(0, 0))
    assert comp.source_box == lesion_region(320, 250, 0.6) == (85, 50, 235, 200)
    left, top, right, bottom = comp.box
    expected = np.asarray(photo.crop(comp.source_box).resize((right - left, bottom - top), Image.Resampling.LANCZOS))
    assert np.array_equal(np.asarray(comp.image)[top:bottom, left:right], expected)


def test_background_is_the_photos_plainest_corner_mirror_tiled() -> None:
    photo = np.full((100, 100, 3), 200, dtype=np.uint8)
    photo[30:70, 30:70] = 20  # the "lesion"
    noisy = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    photo[:20, :20] = noisy  # a hairy corner
    comp = make_composite(Image.fromarray(photo), PRE, composite_rng(0, 0), CompositeConfig())
    canvas = np.asarray(comp.image).copy()
    left, top, right, bottom = comp.box
    canvas[top:bottom, left:right] = 200
    assert (canvas == 200).all()  # plain skin everywhere outside the box
    tile = mirror_tile(noisy, 50)
    assert np.array_equal(tile[:, 19], tile[:, 20]) and np.array_equal(tile[19], tile[20])  # mirrored, no seam


def test_box_mask_counts_pixel_centres() -> None:
    mask = box_mask((1.0, 2.0, 3.0, 5.0), 6)
    assert mask.sum() == 2 * 3 and mask[2, 1] and mask[4, 2] and not mask[5, 1] and not mask[2, 3]


# --- pointing game and energy -------------------------------------------------------------------


def test_pointing_game_and_energy_on_a_synthetic_map() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:5, 6:9] = True
    saliency = np.zeros((10, 10))
    saliency[3, 7] = 1.0
    saliency[8, 1] = 0.5
    assert pointing_hit(saliency, mask)
    assert energy_in_box(saliency, mask) == pytest.approx(1.0 / 1.5)
    saliency[8, 1] = 2.0
    assert not pointing_hit(torch.tensor(saliency), mask)
    assert energy_in_box(np.ones((10, 10)), mask) == pytest.approx(9 / 100)
    assert energy_in_box(np.zeros((10, 10)), mask) == 0.0


def test_offcentre_evaluation_reports_every_map() -> None:
    backend = TinyBackend()
    photos, _, _ = synthetic_photos(3, torch.Generator().manual_seed(0))
    labels = LabelSet(tuple(NAMES), backend.class_embeddings())
    items = [(i, (lambda p=p: to_pil(p))) for i, p in enumerate(photos)]
    report = evaluate_offcentre(
        backend, items, labels, method="fusedcam", compare=["gradcampp"], config=FaithfulnessConfig(steps=4)
    )
    keys = {"fusedcam", "gradcampp", "random", "center"}
    assert report.n == 3 and set(report.pointing_game) == set(report.energy_in_box) == keys
    assert set(report.deletion_auc) == set(report.insertion_auc) == keys
    assert all(0 <= v <= 1 for v in [*report.pointing_game.values(), *report.energy_in_box.values()])
    assert "pointing game" in report.table()
    fast = evaluate_offcentre(backend, items, labels, method="fusedcam", curves=False)
    assert fast.pointing_game["fusedcam"] == report.pointing_game["fusedcam"] and not fast.deletion_auc


# --- the finer fused map ------------------------------------------------------------------------


def test_fused_map_hooks_the_finer_stage_and_is_twice_as_fine() -> None:
    backend = TinyBackend()
    assert finer_stage(backend) is backend.net.visual[2]  # 32x32, before the stride-2 convolution
    pixels = model_inputs(synthetic_photos(1, torch.Generator().manual_seed(1))[0])
    text = [SimilarityTarget(c) for c in backend.class_embeddings()]
    coarse = METHODS["gradcampp"](backend)(pixels, text)
    fine = METHODS["fusedcam"](backend)(pixels, text)
    assert coarse.shape == (1, 3, 16, 16) and fine.shape == (1, 3, 32, 32)
    assert fine.min() >= 0 and fine.amax(dim=(2, 3)).max() == pytest.approx(1.0)
    layer = backend.spatial_target().layer
    assert not layer._forward_hooks and not backend.net.visual[2]._forward_hooks


# --- randomisation sanity check -----------------------------------------------------------------


def tiny_groups(backend: TinyBackend) -> list[tuple[str, list[torch.nn.Module]]]:
    v = backend.net.visual
    return [("projection", [backend.net.image_proj]), ("conv 3", [v[6], v[7]]), ("conv 2", [v[3], v[4]])]


def test_reinitialisation_changes_the_weights_and_puts_them_back() -> None:
    backend = TinyBackend()
    before = {k: t.clone() for k, t in backend.net.state_dict().items()}
    rng_state = torch.random.get_rng_state()
    modules = [m for _, group in tiny_groups(backend)[:2] for m in group]
    with reinitialised(modules, seed=0):
        now = backend.net.state_dict()
        assert not torch.equal(now["image_proj.weight"], before["image_proj.weight"])
        assert not torch.equal(now["visual.6.weight"], before["visual.6.weight"])
        assert torch.equal(now["visual.3.weight"], before["visual.3.weight"])  # not in the groups
    assert torch.equal(torch.random.get_rng_state(), rng_state)
    for key, tensor in backend.net.state_dict().items():
        assert torch.equal(tensor, before[key]), key


def test_sanity_check_maps_change_when_the_model_is_randomised() -> None:
    backend = TinyBackend()
    photos, kind, _ = synthetic_photos(6, torch.Generator().manual_seed(2))
    pixels = model_inputs(photos)
    texts = backend.class_embeddings()[kind]
    report = sanity_check(backend, pixels, texts, tiny_groups(backend), method="gradcampp")
    assert report.steps == ["projection", "projection + conv 3", "projection + conv 3 + conv 2"]
    assert report.spearman[report.steps[-1]] < 0.9
    independent = sanity_check(backend, pixels, texts, tiny_groups(backend), method="gradcampp", mode="independent")
    assert independent.steps == ["projection", "conv 3", "conv 2"]
    assert rank_correlation(np.arange(5.0), np.arange(5.0)) == pytest.approx(1.0)
    assert rank_correlation(np.ones(5), np.arange(5.0)) is None
