"""Heatmap tests a centred photo set cannot fool: off-centre composites, pointing game and energy,
the finer fused map, and the model-randomisation sanity check (all on synthetic data, fast)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_explain import KINDS, NAMES, TinyBackend, model_inputs, synthetic_photos, to_pil, train_tiny_clip

from explain import DEFAULT_METHOD, METHODS
from explain.capture import finer_stage
from explain.composites import (
    CompositeConfig,
    box_map,
    box_mask,
    composite_rng,
    lesion_region,
    make_composite,
    mirror_tile,
)
from explain.faithfulness import FaithfulnessConfig, FaithfulnessReport, better
from explain.gradcam import SimilarityTarget
from explain.offcentre import OffcentreReport, energy_in_box, evaluate_offcentre, pointing_hit
from explain.sanity import SanityReport, rank_correlation, reinitialised, sanity_check
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
    assert set(report.deletion_auc) == set(report.insertion_auc) == keys | {"box"}
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


# --- the generator does not leak the lesion; the curves' removed state is the lesion-free canvas ---


def coded_photo(width: int = 300, height: int = 240) -> Image.Image:
    """Every pixel's colour encodes where it came from: red = x mod 256, green = y, blue = 100 * (x // 256)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return Image.fromarray(np.stack([xs % 256, ys, 100 * (xs // 256)], axis=-1).astype(np.uint8), "RGB")


def test_background_holds_no_pixel_of_the_lesion_region_or_near_it() -> None:
    """Decode each canvas pixel outside the pasted box back to its source position: all come from
    one corner square of the margin the lesion region leaves, none from the lesion region (a
    blurred, inpainted or shifted copy of the photo would fail this)."""
    width, height = 300, 240
    left, top, right, bottom = lesion_region(width, height, 0.6)
    margin = int(min(width, height) * 0.2)
    for index in range(8):
        comp = make_composite(coded_photo(width, height), PRE, composite_rng(0, index))
        canvas = np.asarray(comp.image).astype(int)
        outside = np.ones(canvas.shape[:2], dtype=bool)
        bl, bt, br, bb = comp.box
        outside[bt:bb, bl:br] = False
        x = canvas[..., 0] + 256 * (canvas[..., 2] // 100)
        y = canvas[..., 1]
        xo, yo = x[outside], y[outside]
        in_lesion = (xo >= left) & (xo < right) & (yo >= top) & (yo < bottom)
        assert not in_lesion.any()
        in_corner = ((xo < margin) | (xo >= width - margin)) & ((yo < margin) | (yo >= height - margin))
        assert in_corner.all()
        corners = {(int(a >= width / 2), int(b >= height / 2)) for a, b in zip(xo, yo, strict=True)}
        assert len(corners) == 1  # one corner, mirror-tiled
        assert np.array_equal(np.asarray(comp.background)[outside], np.asarray(comp.image)[outside])


def test_background_is_the_composite_without_its_lesion() -> None:
    """Removing exactly the box's pixels with the background baseline leaves no lesion pixel: what the
    model sees equals the lesion-free canvas."""
    photo = np.full((200, 200, 3), 190, dtype=np.uint8)
    photo[60:140, 60:140] = (40, 20, 10)
    comp = make_composite(Image.fromarray(photo), PRE, composite_rng(0, 3))
    background = np.asarray(comp.background)
    assert (background == 190).all()  # the lesion colour appears nowhere in it
    assert (np.asarray(comp.image) == (40, 20, 10)).all(axis=-1).any()
    pixels, base = PRE.batch([comp.image]), PRE.batch([comp.background])
    mask = torch.from_numpy(box_mask(comp.input_box, 224))
    removed = torch.where(mask, base, pixels)
    assert torch.allclose(removed, base, atol=0.05)  # only resampling at the box edge differs


def test_box_map_ranks_the_pasted_box_first() -> None:
    input_box = (30.0, 120.0, 90.0, 180.0)
    values = box_map(input_box, 224)
    mask = box_mask(input_box, 224)
    assert values[mask].min() > values[~mask].max()
    assert np.unravel_index(values.argmax(), values.shape) in {(149, 59), (149, 60), (150, 59), (150, 60)}


# --- the targets' ordering logic: lower deletion and higher insertion are better ------------------


def offcentre_report(pointing: float, deletion: dict[str, float], insertion: dict[str, float]) -> OffcentreReport:
    maps = ["fusedcam", "random", "center"]
    return OffcentreReport(
        method="fusedcam",
        n=30,
        pointing_game={k: (pointing if k == "fusedcam" else 0.2) for k in maps},
        energy_in_box=dict.fromkeys(maps, 0.5),
        deletion_auc=deletion,
        insertion_auc=insertion,
    )


def test_targets_read_deletion_as_lower_is_better_and_insertion_as_higher() -> None:
    good_d = {"fusedcam": 0.20, "random": 0.45, "center": 0.30, "box": 0.15}
    good_i = {"fusedcam": 0.70, "random": 0.50, "center": 0.55, "box": 0.80}
    report = offcentre_report(0.95, good_d, good_i)
    assert all(report.targets().values()) and report.curves_can_tell()
    worse_deletion = offcentre_report(0.95, {**good_d, "fusedcam": 0.35}, good_i)
    t = worse_deletion.targets()
    assert not t["deletion better than center"] and t["deletion better than random"]
    assert t["insertion better than center"] and t["insertion better than random"]
    # an insertion below the references fails even though a smaller number is "better" for deletion
    assert not offcentre_report(0.95, good_d, {**good_i, "fusedcam": 0.40}).targets()["insertion better than random"]
    assert not offcentre_report(0.91, good_d, good_i).targets()["pointing game >= 0.92"]
    cannot_tell = offcentre_report(0.95, good_d, good_i).model_copy(update={"deletion_auc": {**good_d, "box": 0.31}})
    assert cannot_tell.curves_can_tell() is False
    assert "NOT met" in worse_deletion.table() and "NO" in cannot_tell.table()
    assert better("deletion", 0.1, 0.2) and not better("deletion", 0.2, 0.1)
    assert better("insertion", 0.2, 0.1) and not better("insertion", 0.1, 0.2)


def test_photo_targets_ask_deletion_only_against_random() -> None:
    report = FaithfulnessReport(
        method="fusedcam",
        n=2,
        deletion_auc={"fusedcam": 0.37, "random": 0.55, "center": 0.30},
        insertion_auc={"fusedcam": 0.67, "random": 0.52, "center": 0.54},
    )
    assert report.targets() == {
        "deletion better than random": True,
        "insertion better than random": True,
        "insertion better than center": True,
    }
    report.insertion_auc["fusedcam"] = 0.53
    assert report.targets()["insertion better than center"] is False


def test_sanity_target_is_every_step_at_most_0_3() -> None:
    steps = ["projection", "projection + head conv"]
    rhos = {"projection": 0.2, "projection + head conv": 0.3}
    passing = SanityReport(
        method="fusedcam", mode="cascading", n=3, steps=steps, spearman=rhos, flat=dict.fromkeys(steps, 0)
    )
    assert all(passing.targets().values())
    assert "mean Spearman <= 0.3 at every step: met" in passing.table()
    failing = passing.model_copy(update={"spearman": {"projection": 0.2, "projection + head conv": 0.31}})
    assert not any(failing.targets().values())
    flat = passing.model_copy(update={"spearman": {"projection": float("nan"), "projection + head conv": 0.1}})
    assert not any(flat.targets().values())


@pytest.fixture(scope="module")
def trained() -> TinyBackend:
    return train_tiny_clip()[0]


def centred_blob_photos(n: int) -> list[tuple[Image.Image, int]]:
    """44x44 skin-toned photos with one coloured blob (radius 10) in the middle: the lesion region
    (central 60 %) holds the whole blob, as PAD's centred close-ups are assumed to."""
    rng = np.random.default_rng(5)
    colours = list(KINDS.values())
    ys, xs = np.mgrid[0:44, 0:44]
    blob = (xs - 21.5) ** 2 + (ys - 21.5) ** 2 <= 100
    out = []
    for i in range(n):
        kind = i % len(colours)
        img = np.array((214, 160, 128)) + rng.normal(0, 6, (44, 44, 3))
        img[blob] = np.array(colours[kind]) + rng.normal(0, 8, (int(blob.sum()), 3))
        out.append((Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB"), kind))
    return out


def test_offcentre_curves_with_the_background_baseline_rank_the_pasted_box_first(trained: TinyBackend) -> None:
    """Composites for a tiny CLIP-style model trained here to name coloured blobs: removing the
    pasted box (background baseline) lowers the score sooner than removing random cells, and
    revealing it raises it sooner; the report carries the box as a curve reference only."""
    labels = LabelSet(tuple(NAMES), trained.class_embeddings())
    items = [(i, (lambda p=p: p)) for i, (p, _) in enumerate(centred_blob_photos(9))]
    config = FaithfulnessConfig(steps=8, baseline="background")
    report = evaluate_offcentre(trained, items, labels, method="fusedcam", config=config)
    assert set(report.deletion_auc) == {"fusedcam", "random", "center", "box"}
    assert "box" not in report.pointing_game
    assert report.curves is not None and report.curves.references == ("random", "center", "box")
    assert better("deletion", report.deletion_auc["box"], report.deletion_auc["random"])
    assert better("insertion", report.insertion_auc["box"], report.insertion_auc["random"])
    assert report.curves_can_tell()


def test_offcentre_command_removes_to_the_background_and_reports_targets(
    pad_small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    args = ["faithfulness", "--data", str(pad_small), "--layout", "offcentre", "--limit", "2", "--steps", "2"]
    assert main([*args, "--json", "--threads", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layout"] == "offcentre" and set(out["deletion_auc"]) == {DEFAULT_METHOD, "random", "center", "box"}
    assert set(out["targets"]) == {
        "pointing game >= 0.92",
        "deletion better than random",
        "deletion better than center",
        "insertion better than random",
        "insertion better than center",
    }
    assert main(["faithfulness", "--data", str(pad_small), "--baseline", "background", "--limit", "1"]) == 2
