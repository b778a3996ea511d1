"""Fusion: additive, transparent contributions; no missingness features; fitted JSON matches its model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.backends.artifacts import ModelArtifacts, ModelIdentity
from models.backends.registry import default_artifacts
from models.knowledge.risk_factors import RiskFactors
from models.knowledge.risk_priors import load_priors
from models.knowledge.symptoms import extract_findings
from models.knowledge.taxonomy import load_taxonomy
from models.scoring.fusion import ALARM_FIELDS, FusionModel, fuse, load_fusion

TAX = load_taxonomy()
PAD = ["actinic_keratosis", "basal_cell_carcinoma", "melanocytic_nevus", "melanoma", "seborrheic_keratosis",
       "squamous_cell_carcinoma"]  # fmt: skip


def _image(labels: list[str], seed: int = 0) -> dict[str, float]:
    p = np.random.default_rng(seed).dirichlet(np.ones(len(labels)))
    return dict(zip(labels, p.tolist(), strict=True))


@pytest.fixture(scope="module")
def fitted() -> FusionModel:
    model = load_fusion()
    assert model.fitted, "models/embedded/fusion.json must hold a fitted fusion"
    return model


def test_fitted_json_matches_model_and_taxonomy(fitted: FusionModel) -> None:
    from models.backends.artifacts import sha256_file
    from models.embedded.model import CARD_PATH, WEIGHTS_PATH

    card = json.loads(CARD_PATH.read_text())
    assert fitted.image_model["name"] == card["name"] and fitted.image_model["version"] == card["version"]
    if WEIGHTS_PATH.exists():
        assert fitted.image_model["weights_sha256"] == sha256_file(WEIGHTS_PATH)
    assert fitted.taxonomy == {"version": TAX.version, "fingerprint": TAX.fingerprint}
    assert sorted(fitted.classes) == PAD and all(c in TAX for c in fitted.classes)
    assert fitted.fit["image_probabilities"] == "out-of-fold"
    load_priors().check(TAX.ids)  # every cited prior names a real factor and condition


def test_other_model_gets_generic_form(fitted: FusionModel) -> None:
    assert not load_fusion(ModelIdentity("some-other-model", "1")).fitted
    assert load_fusion(ModelIdentity("embedded-pad-lite0", "1.1.0", "0" * 64)).name == "generic"


@pytest.mark.parametrize("labels", [PAD, TAX.ids])
def test_contributions_sum_to_centred_log_odds(fitted: FusionModel, labels: list[str]) -> None:
    risk = RiskFactors(age=70, body_site="nose", bleeding=True, personal_history_skin_cancer=True, fitzpatrick=1)
    findings = extract_findings("itchy and growing for 3 months, no pain")
    sims = dict(zip(labels, np.linspace(0.1, 0.4, len(labels)).tolist(), strict=True))
    r = fuse(_image(labels), sims, risk, findings, model=fitted)
    assert sum(r.posterior.values()) == pytest.approx(1.0)
    log_p = np.log([r.posterior[c] for c in labels])
    for i, c in enumerate(labels):
        total = sum(r.contributions[m][c] for m in r.contributions)
        assert total == pytest.approx(log_p[i] - log_p.mean(), abs=1e-9)
        assert r.log_odds[c] == pytest.approx(total, abs=1e-9)
    # the per-factor detail adds up to the two risk modalities (minus the text similarity term)
    factor_sum = {c: sum(f.effects[c] for f in r.factors if f.modality == "risk_factors") for c in labels}
    assert all(factor_sum[c] == pytest.approx(r.contributions["risk_factors"][c], abs=1e-9) for c in labels)
    sources = {f.factor: f.source for f in r.factors}
    assert sources["personal_history_skin_cancer"] == "relative_risk" and sources["bleeding"] == "fitted"
    assert {f.modality for f in r.factors if f.factor in ("itch", "changed_size")} == {"symptoms"}
    assert "basal_cell_carcinoma" in r.prior_conditions and r.risk.itch is True


def test_unknown_fields_contribute_nothing(fitted: FusionModel) -> None:
    """No missingness features: an all-missing record is exactly 'unknown', i.e. image evidence alone."""
    image = _image(PAD)
    empty = fuse(image, None, RiskFactors(), None, model=fitted)
    none = fuse(image, None, None, None, model=fitted)
    assert empty.posterior == none.posterior
    assert all(abs(v) < 1e-12 for v in empty.contributions["risk_factors"].values())
    assert all(abs(v) < 1e-12 for v in empty.contributions["symptoms"].values())
    assert empty.factors == []
    # a PAD-style row with every column missing maps to the same thing
    from models.knowledge.risk_factors import risk_factors_from_pad

    row = fuse(image, None, risk_factors_from_pad({"fitspatrick": "", "smoke": "", "region": "", "itch": "UNK"}))
    assert row.contributions["risk_factors"] == empty.contributions["risk_factors"]


def test_no_missingness_indicator_features(fitted: FusionModel) -> None:
    assert not any("missing" in f or "unknown" in f or f.endswith("_na") for f in fitted.features)
    assert set(fitted.fit["risk_fields"]) <= {"age", "body_site", "itch", "changed_size", "pain", "changed_shape",
                                             "changed_colour", "bleeding", "elevation"}  # fmt: skip


def test_uniform_image_and_no_inputs_give_the_baseline(fitted: FusionModel) -> None:
    r = fuse(dict.fromkeys(TAX.ids, 1 / len(TAX.ids)), None, None, None, model=fitted)
    outside = [c for c in TAX.ids if c not in PAD]
    assert np.allclose([r.posterior[c] for c in outside], r.posterior[outside[0]])
    assert r.fitted_conditions == [c for c in TAX.ids if c in PAD]


def test_literature_priors_move_the_cited_condition(fitted: FusionModel) -> None:
    image = _image(TAX.ids, seed=3)
    base = fuse(image, None, None, None, model=fitted)
    transplant = fuse(image, None, RiskFactors(immunosuppression="transplant"), None, model=fitted)
    ratio = transplant.posterior["squamous_cell_carcinoma"] / base.posterior["squamous_cell_carcinoma"]
    assert ratio > 10
    cellulitis = fuse(image, None, RiskFactors(fever=True, spreading_redness=True), None, model=fitted)
    assert cellulitis.posterior["cellulitis"] > 5 * base.posterior["cellulitis"]


def test_posterior_upper_bounds_posterior_and_alarm_fields(fitted: FusionModel) -> None:
    r = fuse(_image(PAD), None, RiskFactors(bleeding=True, changed_size=True), None, model=fitted)
    assert all(r.posterior_upper[c] >= r.posterior[c] - 1e-12 for c in PAD)
    assert set(ALARM_FIELDS) >= {"bleeding", "changed_size"}


def test_committed_cross_validated_figures_meet_targets(fitted: FusionModel) -> None:
    cv = fitted.fit["cross_fitted"]
    assert cv["fused"]["balanced_accuracy"] >= cv["image_only"]["balanced_accuracy"] + 0.08  # issue 4 target
    assert cv["fused"]["malignant_auroc"] >= 0.90  # issue 4 target
    assert cv["fused"]["malignant_auroc"] > cv["image_only"]["malignant_auroc"] + 0.03  # the risk factors add


def test_fusion_json_is_small() -> None:
    assert default_artifacts().fusion.stat().st_size < 20_000


def test_fusion_for_model_checks_name_and_weights(fitted: FusionModel) -> None:
    from types import SimpleNamespace

    from models.scoring.fusion import fusion_for_model

    sha = fitted.image_model["weights_sha256"]
    declared = default_artifacts()

    def model(name: str, sha: str | None, fusion=declared.fusion) -> SimpleNamespace:
        return SimpleNamespace(artifacts=ModelArtifacts(ModelIdentity(name, "x", sha), fusion=fusion))

    assert fusion_for_model(model("embedded-pad-lite0", sha[:12])).fitted
    assert not fusion_for_model(model("embedded-pad-lite0", "000000000000")).fitted
    assert not fusion_for_model(model("monet", None)).fitted
    assert not fusion_for_model(model("embedded-pad-lite0", sha, fusion=None)).fitted  # declares none


def test_fit_shares_out_its_group_mass_over_the_full_taxonomy(fitted: FusionModel) -> None:
    """Over 53 labels, the generic form decides the fitted group's mass and the other labels; the fit,
    applied exactly as on its 6 classes, shares the group's mass out. A confident BCC stays on top."""
    image = dict.fromkeys(TAX.ids, 0.08 / (len(TAX.ids) - 1))
    image["basal_cell_carcinoma"] = 0.92
    risk = RiskFactors(age=70, body_site="nose", bleeding=True)
    full = fuse(image, None, risk, None, model=fitted)
    generic = fuse(image, None, risk, None, model=fitted.generic())
    within = fuse({c: image[c] / sum(image[p] for p in PAD) for c in PAD}, None, risk, None, model=fitted)
    mass = sum(generic.posterior[c] for c in PAD)
    for c in TAX.ids:
        expected = mass * within.posterior[c] if c in PAD else generic.posterior[c]
        assert full.posterior[c] == pytest.approx(expected, rel=1e-9)
    assert max(full.posterior, key=full.posterior.get) == "basal_cell_carcinoma"
    assert full.posterior["basal_cell_carcinoma"] > 0.5
    assert sorted(full.fitted_conditions) == PAD and full.fusion_model == fitted.name
    # labels the fit never saw: the generic form, not a fit tempered over the wrong label set
    custom = fuse({"a rash": 0.7, "a mole": 0.3}, None, None, None, model=fitted)
    assert custom.posterior["a rash"] == pytest.approx(0.7) and custom.fusion_model == "generic"
