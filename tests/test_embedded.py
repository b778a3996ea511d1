"""The embedded default model: built from the wheels, loaded through the registry, honest card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.backends.base import ImageTextModel, ModelCard
from models.embedded.architecture import (
    build_model,
    convert_lukemelas_state_dict,
    efficientnet_weights_path,
    load_imagenet_trunk,
)
from models.embedded.model import CARD_PATH, WEIGHTS_PATH
from models.fitting.train_embedded import FrozenBottom, TrainableTop, TrainConfig, captions_for
from models.knowledge.taxonomy import load_taxonomy


@pytest.fixture(scope="module")
def fresh_model():
    model, tokenizer = build_model()
    load_imagenet_trunk(model)
    return model, tokenizer


def test_lukemelas_weights_map_onto_timm_by_order_and_shape(fresh_model) -> None:
    model, _ = fresh_model
    src = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    trunk = model.visual.trunk.state_dict()
    mapped = convert_lukemelas_state_dict(src, trunk)
    assert torch.equal(mapped["conv_stem.weight"], src["_conv_stem.weight"])
    assert torch.equal(trunk["conv_head.weight"], src["_conv_head.weight"])
    assert torch.equal(trunk["blocks.6.0.conv_pwl.weight"], src["_blocks.15._project_conv.weight"])
    bad = dict(src)
    bad["_conv_stem.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="shape mismatch"):
        convert_lukemelas_state_dict(bad, trunk)


def test_frozen_bottom_plus_trainable_top_is_the_image_tower(fresh_model) -> None:
    model, _ = fresh_model
    bottom = FrozenBottom(model.visual.trunk, 3).eval()
    top = TrainableTop(model.visual, 3).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        assert torch.allclose(top(bottom(x)), model.visual(x), atol=1e-5)


def test_captions_use_facts_and_never_biopsy(pad_dir: Path) -> None:
    from models.fitting.datasets import load_labelled_folder

    items = load_labelled_folder(pad_dir, load_taxonomy())
    assert all("biopsed" not in it.metadata and "diagnostic" not in it.metadata for it in items)
    import random

    caps = captions_for(items[1], load_taxonomy(), 4, random.Random(0))
    assert len(caps) == 4 and all(isinstance(c, str) and c for c in caps)
    assert any(items[1].metadata["region"].lower() in c for c in caps)


def test_weights_small_and_card_honest() -> None:
    assert WEIGHTS_PATH.exists()
    assert WEIGHTS_PATH.stat().st_size <= 30 * 1024 * 1024
    card = ModelCard.model_validate_json(CARD_PATH.read_text())
    assert card.name == "embedded-pad-lite0"
    assert any("PAD-UFES-20" in c and "CC BY 4.0" in c for c in card.credits)
    assert any("EfficientNet-Lite0" in c for c in card.credits) and any("MiniLM" in c for c in card.credits)
    rec = card.validation[0]
    assert "patient-grouped" in rec.protocol
    assert rec.n == 588
    assert set(card.validated_conditions) == {c.id for c in load_taxonomy().validated_for(card.name)}
    md = CARD_PATH.with_name("MODEL_CARD.md").read_text()
    assert f"{rec.metrics['balanced_accuracy']:.3f}" in md


def test_card_figures_match_out_of_fold_predictions(pad_dir: Path) -> None:
    """The card's figures are recomputed from the committed out-of-fold predictions and the labels."""
    import csv

    from models.embedded.model import OOF_PATH
    from models.fitting.datasets import load_labelled_folder
    from models.fitting.metrics import classification_report

    card = ModelCard.model_validate_json(CARD_PATH.read_text())
    chosen = "flip4" if card.inference.get("tta_flips") else "single"
    rec = next(r for r in card.validation if r.protocol.endswith(chosen))
    tax = load_taxonomy()
    items = {i.stem: i for i in load_labelled_folder(pad_dir, tax)}
    with OOF_PATH.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    class_ids = [k[2:] for k in rows[0] if k.startswith("p_")]
    assert len(rows) == len(items) == rec.n
    assert len({r["fold"] for r in rows}) == 5
    by_patient: dict[str, set[str]] = {}
    for r in rows:
        by_patient.setdefault(items[r["image_id"]].group, set()).add(r["fold"])
    assert all(len(folds) == 1 for folds in by_patient.values()), "a patient in two folds"
    probs = np.array([[float(r[f"p_{c}"]) for c in class_ids] for r in rows])
    labels = [class_ids.index(items[r["image_id"]].condition_id) for r in rows]
    report = classification_report(probs, labels, class_ids, [tax.get(c).malignant for c in class_ids])
    assert report["balanced_accuracy"] == pytest.approx(rec.metrics["balanced_accuracy"], abs=1e-4)
    assert report["malignant_auroc"] == pytest.approx(rec.metrics["malignant_auroc"], abs=1e-4)
    assert report["balanced_accuracy"] >= 0.55 and report["malignant_auroc"] >= 0.85  # issue 2 targets


def test_loads_through_registry(embedded_model) -> None:
    assert isinstance(embedded_model, ImageTextModel)
    assert embedded_model.card.name == "embedded-pad-lite0"
    assert embedded_model.preprocessing.mean == (0.5, 0.5, 0.5)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    pixels = embedded_model.preprocessing.batch([img, img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])
    emb = embedded_model.encode_image(pixels)
    assert emb.shape == (2, 256)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    txt = embedded_model.encode_text(["melanoma", "a photo of a mole"])
    assert torch.allclose(txt.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert 1.0 < embedded_model.logit_scale <= 100.0
    target = embedded_model.spatial_target()
    assert target.kind == "cnn"


def test_train_pipeline_runs_end_to_end(pad_small: Path, tmp_path: Path) -> None:
    """A two-fold, one-epoch run on 30 photos: produces out-of-fold figures and loadable weights."""
    from models.embedded.model import load_embedded, save_weights
    from models.fitting.train_embedded import train_embedded

    cfg = TrainConfig(folds=2, epochs=1, train_views=1, batch_size=8, captions_per_image=2)
    result = train_embedded(pad_small, cfg, cache_dir=tmp_path / "cache")
    assert set(result.reports) >= {"single", "flip2", "flip4"}  # 1, 2 and 4 test-time views scored (issue 19)
    rep = result.reports["flip4"]
    assert rep["n"] == 30 and 0.0 <= rep["balanced_accuracy"] <= 1.0
    assert result.oof_probs["flip4"].shape == (30, 6)
    assert np.allclose(result.oof_probs["flip4"].sum(1), 1.0, atol=1e-5)
    assert list((tmp_path / "cache").glob("features-*.pt"))
    # CV only (the train command's --dry-run): no final fit, and the fixed seed reproduces the figures
    cv_only = train_embedded(pad_small, cfg, cache_dir=tmp_path / "cache", final_fit=False)
    assert cv_only.state_dict is None
    assert np.allclose(cv_only.oof_probs["flip4"], result.oof_probs["flip4"], atol=1e-6)
    weights = tmp_path / "w.safetensors"
    save_weights(result.state_dict, weights)

    class Spec:
        pretrained = str(weights)
        card = None

    model = load_embedded(Spec())  # type: ignore[arg-type]
    assert model.encode_image(torch.zeros(1, 3, 224, 224)).shape == (1, 256)


def test_card_ships_only_views_the_service_can_serve() -> None:
    """Two views are scored out of fold but the card's `tta_flips` can say 1 or 4 only: even when the
    pair scores best, the chooser must not pick it (else the service would silently run 1 view)."""
    from models.fitting.embedded_card import choose_test_time_views

    def rep(auroc: float) -> dict[str, float]:
        return {"malignant_auroc": auroc, "balanced_accuracy": 0.5}

    assert choose_test_time_views({"single": rep(0.80), "flip2": rep(0.90), "flip4": rep(0.85)}) == "flip4"
    assert choose_test_time_views({"single": rep(0.86), "flip2": rep(0.90), "flip4": rep(0.85)}) == "single"


def test_model_card_json_is_machine_readable() -> None:
    data = json.loads(CARD_PATH.read_text())
    assert data["training_image_ids"] and data["license"]


def test_shipped_text_cache_is_current(embedded_model) -> None:
    """The packaged condition embeddings match this weights file and taxonomy (else: build-text-cache)."""
    from models.scoring.zeroshot import ZeroShotClassifier, ensemble_embedding

    tax = load_taxonomy()
    clf = ZeroShotClassifier(embedded_model, tax)
    for modality in ("clinical", "dermoscopic"):
        name = f"text-{clf.cache_key(modality)}.pt"
        assert (embedded_model.artifacts.text_cache / name).exists(), "run `dermtriage build-text-cache`"
    shipped = clf.condition_set("clinical")
    mel = tax.get("melanoma")
    fresh = ensemble_embedding(embedded_model, mel.prompt_names, tax.templates_for("clinical"))
    assert torch.allclose(shipped.embeddings[tax.ids.index("melanoma")], fresh, atol=1e-5)


def test_vignette_augment_makes_what_the_artefact_check_flags(tmp_path: Path) -> None:
    """The synthetic dermatoscope vignette darkens the corners the way `artefact_check` detects real
    ones, leaves the lesion centre as it was, and is off unless asked for (PAD's recipe unchanged)."""
    from models.fitting.artefact_check import artefact_flags
    from models.fitting.augment import DermatoscopeVignette, train_augment

    torch.manual_seed(0)
    skin = torch.full((3, 224, 224), 0.75)
    flagged = 0
    for k in range(20):
        out = DermatoscopeVignette()(skin)
        path = tmp_path / f"v{k}.png"
        Image.fromarray((out * 255).round().byte().permute(1, 2, 0).numpy()).save(path)
        flagged += artefact_flags(path)["vignette"]
        assert torch.allclose(out[:, 100:124, 100:124], skin[:, 100:124, 100:124], atol=0.01)
        corners = [out[:, :3, :3], out[:, :3, -3:], out[:, -3:, :3], out[:, -3:, -3:]]
        assert min(float(c.mean()) for c in corners) < 0.5 * 0.75  # a corner always lies in the dark field
    assert flagged >= 14  # the wider fields leave the corner patches partly lit, as mild real vignettes do
    plain = Image.fromarray(np.full((300, 300, 3), 190, np.uint8))
    assert float(train_augment(224)(plain).min()) > 0.0  # no vignette by default: nothing goes dark
    assert TrainConfig().fingerprint() == TrainConfig(vignette_augment=0.0).fingerprint()
    assert TrainConfig().fingerprint() != TrainConfig(vignette_augment=0.3).fingerprint()
