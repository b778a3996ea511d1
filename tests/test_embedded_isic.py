"""The dermoscopic embedded model `embedded-isic-lite0`: its spec and declared files, its identity,
and the test-split figures on its card recomputed from the committed predictions (ISIC 2017 test,
never trained or tuned on). No training here: `dermtriage train-embedded --dataset isic` makes them."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from models.backends.artifacts import ModelIdentity
from models.backends.base import ModelCard
from models.backends.registry import get_spec

REPO = Path(__file__).resolve().parents[1]
ISIC_DIR = REPO.parent / "shared" / "data" / "isic-2017"
NAME = "embedded-isic-lite0"
MEL_AUROC_TARGET, SK_AUROC_TARGET = 0.80, 0.90


@pytest.fixture(scope="module")
def spec():
    return get_spec(NAME)


@pytest.fixture(scope="module")
def card(spec) -> ModelCard:
    assert spec.card is not None, "the spec's card_path must point at model_card.json"
    return spec.card


def test_spec_declares_its_own_files(spec, card: ModelCard) -> None:
    arts = spec.declared_artifacts()
    assert Path(spec.pretrained).is_file() and Path(spec.pretrained).stat().st_size <= 30 * 1024 * 1024
    assert "embedded_isic" in str(spec.pretrained) and "embedded_isic" in str(arts.text_cache)
    assert arts.urgency_thresholds is not None and arts.urgency_thresholds.is_file()
    assert arts.text_cache is not None and list(arts.text_cache.glob("text-*.pt"))
    assert arts.calibration is None and arts.fusion is None  # nothing fitted for it yet: it must not borrow PAD's
    assert card.name == NAME and card.modality == ["dermoscopic"]
    assert spec.resolve_path(spec.model_extra["config"]).is_file()


def test_declared_files_name_its_weights(spec, card: ModelCard) -> None:
    from models.backends.artifacts import sha256_file

    sha = sha256_file(Path(spec.pretrained))
    assert card.inference["weights_sha256"] == sha
    identity = ModelIdentity(card.name, card.version, sha)
    blob = json.loads(spec.declared_artifacts().urgency_thresholds.read_text())
    assert identity.accepts(ModelIdentity.parse(blob["model"]))
    assert not ModelIdentity("embedded-pad-lite0", card.version, sha).accepts(ModelIdentity.parse(blob["model"]))


def test_urgency_thresholds_load_in_the_service_schema(spec, card: ModelCard) -> None:
    from models.scoring.urgency import load_thresholds

    t = load_thresholds(spec.declared_artifacts().urgency_thresholds)
    test = next(r for r in card.validation if "test split" in r.dataset)
    assert t.malignant["melanoma"] == pytest.approx(test.metrics["melanoma_threshold"], abs=1e-6)


def test_card_states_the_licence_caveat_and_separation(card: ModelCard, spec) -> None:
    text = " ".join(card.limitations + card.credits)
    assert "commonly listed as CC-0" in text and "CC-0, CC-BY or CC-BY-NC" in text and "not checked" in text
    assert "ISIC Archive (International Skin Imaging Collaboration)" in text
    md = Path(spec.resolve_path(spec.card_path)).with_name("MODEL_CARD.md").read_text()
    assert "commonly listed as CC-0" in md and "Artefact check" in md
    pad = get_spec("embedded-pad-lite0")
    assert Path(pad.pretrained).parent != Path(spec.pretrained).parent


def _labels(split: str) -> dict[str, str]:
    path = ISIC_DIR / "labels.csv"
    if not path.exists():
        pytest.skip(f"ISIC 2017 data not found at {ISIC_DIR}")
    from models.fitting.datasets import resolve_label
    from models.knowledge.taxonomy import load_taxonomy

    tax = load_taxonomy()
    with path.open(newline="") as fh:
        return {
            Path(r["file"]).stem: resolve_label(tax, r["label"]).id for r in csv.DictReader(fh) if r["split"] == split
        }


def _test_report(spec, card: ModelCard) -> dict:
    from models.fitting.train_splits import split_report

    labels = _labels("test")
    path = Path(spec.resolve_path(spec.card_path)).parent / "validation" / "test_predictions.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    class_ids = [k[2:] for k in rows[0] if k.startswith("p_")]
    assert len(rows) == len(labels) == 600
    assert not {r["image_id"] for r in rows} & set(card.training_image_ids)
    probs = np.array([[float(r[f"p_{c}"]) for c in class_ids] for r in rows])
    rec = next(r for r in card.validation if "test split" in r.dataset)
    rep = split_report(probs, [labels[r["image_id"]] for r in rows], class_ids, rec.metrics["melanoma_threshold"])
    for key in ("melanoma_auroc", "seborrheic_keratosis_auroc", "balanced_accuracy", "melanoma_sensitivity_urgent"):
        assert rep[key] == pytest.approx(rec.metrics[key], abs=1e-3), key
    return rep


def test_test_split_figures_recompute_from_the_committed_predictions(spec, card: ModelCard) -> None:
    rep = _test_report(spec, card)
    assert rep["n"] == 600 and rep["counts"] == {"melanocytic_nevus": 393, "melanoma": 117, "seborrheic_keratosis": 90}


@pytest.mark.xfail(
    strict=True,
    reason="issue 16 targets not met by 1.0.0: test melanoma AUROC 0.751 (< 0.80), SK AUROC 0.887 (< 0.90); "
    "strict, so a model that meets them turns this into a failure that asks to drop the marker",
)
def test_test_split_meets_the_issue_targets(spec, card: ModelCard) -> None:
    rep = _test_report(spec, card)
    assert rep["melanoma_auroc"] >= MEL_AUROC_TARGET
    assert rep["seborrheic_keratosis_auroc"] >= SK_AUROC_TARGET


def test_threshold_was_set_on_validation(spec, card: ModelCard) -> None:
    from models.fitting.train_splits import melanoma_threshold

    labels = _labels("validation")
    path = Path(spec.resolve_path(spec.card_path)).parent / "validation" / "validation_predictions.csv"
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    p = np.array([float(r["p_melanoma"]) for r in rows])
    is_mel = np.array([labels[r["image_id"]] == "melanoma" for r in rows])
    rec = next(r for r in card.validation if "test split" in r.dataset)
    assert melanoma_threshold(p, is_mel) == pytest.approx(rec.metrics["melanoma_threshold"], abs=1e-5)
    assert (p[is_mel] >= rec.metrics["melanoma_threshold"]).mean() >= 0.90


def test_the_one_loader_builds_it(spec, card: ModelCard) -> None:
    from models.backends.registry import load_model

    model = load_model(NAME)
    assert model.card.name == NAME and model.artifacts.identity.name == NAME
    assert model.artifacts.fingerprint.startswith(f"{NAME}@{card.version}#{card.inference['weights_sha256'][:12]}")
