"""Urgency: NG12 worked examples, every red flag, condition thresholds, and monotonicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.backends.registry import default_artifacts
from models.knowledge.risk_factors import BodySite, Immunosuppression, RiskFactors
from models.knowledge.symptoms import extract_findings
from models.knowledge.taxonomy import UrgencyTier, load_taxonomy
from models.scoring.fusion import FusionModel, fuse, load_fusion
from models.scoring.urgency import assess_urgency, default_thresholds, ng12_checklist

TAX = load_taxonomy()
MODEL = load_fusion()
PAD = sorted(MODEL.classes)


def _probs(labels: list[str], **mass: float) -> dict[str, float]:
    rest = (1 - sum(mass.values())) / (len(labels) - len(mass))
    return {c: mass.get(c, rest) for c in labels}


GENERIC = FusionModel()  # image evidence + cited priors only: rule tests do not move when the fit is redone


def _urgency(
    image: dict[str, float], risk: RiskFactors | None = None, text: str | None = None, model: FusionModel = GENERIC
):
    findings = extract_findings(text) if text else None
    return assess_urgency(fuse(image, None, risk, findings, model=model), taxonomy=TAX)


BENIGN = _probs(PAD, melanocytic_nevus=0.9, melanoma=0.0, squamous_cell_carcinoma=0.0, basal_cell_carcinoma=0.0)


@pytest.mark.parametrize(
    ("risk", "points", "referral"),
    [
        # 66-year-old, pigmented lesion grown, symmetrical, uniform colour, 8 mm: 2 + 1 = 3 (refer)
        (RiskFactors(changed_size=True, diameter_mm=8), 3, True),
        (RiskFactors(changed_size=True), 2, False),
        (RiskFactors(irregular_shape=True, irregular_colour=True), 4, True),
        (RiskFactors(diameter_mm=7, inflammation=True, bleeding=True), 3, True),
        (RiskFactors(diameter_mm=6.9, itch=True, pain=True), 1, False),  # sensation counts once
        (
            RiskFactors(
                changed_size=True,
                changed_shape=True,
                changed_colour=True,
                diameter_mm=10,
                inflammation=True,
                bleeding=True,
                itch=True,
            ),
            10,
            True,
        ),
        (RiskFactors(), 0, False),
    ],
)
def test_ng12_worked_examples(risk: RiskFactors, points: int, referral: bool) -> None:
    result = ng12_checklist(risk)
    assert (result.points, result.suspected_cancer) == (points, referral)
    assert sum(int(i.rsplit("(", 1)[1].rstrip(")")) for i in result.items) == points


def test_ng12_on_pigmented_lesion_refers_on_cancer_pathway() -> None:
    image = _probs(PAD, melanocytic_nevus=0.95, melanoma=0.0)
    quiet = _urgency(image, RiskFactors(age=40))
    assert quiet.category in (UrgencyTier.SELF_CARE, UrgencyTier.ROUTINE)
    referred = _urgency(image, RiskFactors(age=40, changed_size=True, diameter_mm=8))
    assert referred.category is UrgencyTier.URGENT and referred.ng12.points == 3
    assert "suspected skin cancer pathway" in referred.next_step
    assert any(r.kind == "checklist" for r in referred.reasons)


@pytest.mark.parametrize(
    ("risk", "text", "category", "words"),
    [
        (RiskFactors(fever=True, spreading_redness=True), None, UrgencyTier.EMERGENCY, "cellulitis today"),
        (None, "fever and spreading redness on my shin", UrgencyTier.EMERGENCY, "cellulitis today"),
        (RiskFactors(widespread_blistering=True), None, UrgencyTier.EMERGENCY, "SJS/TEN"),
        (RiskFactors(skin_pain=True), None, UrgencyTier.EMERGENCY, "SJS/TEN"),
        (RiskFactors(near_eye=True), "painful shingles rash", UrgencyTier.EMERGENCY, "eye"),
        (
            RiskFactors(immunosuppression=Immunosuppression.TRANSPLANT, changed_shape=True),
            None,
            UrgencyTier.URGENT,
            "2 weeks",
        ),
        (RiskFactors(rapid_growth=True), None, UrgencyTier.URGENT, "2 weeks"),
        (RiskFactors(changed_size=True, lesion_duration_days=30), None, UrgencyTier.URGENT, "2 weeks"),
        (RiskFactors(ulceration=True), None, UrgencyTier.URGENT, "2 weeks"),
        (RiskFactors(bleeding=True), None, UrgencyTier.SOON, "few weeks"),
    ],
)
def test_each_red_flag(risk: RiskFactors | None, text: str | None, category: UrgencyTier, words: str) -> None:
    result = _urgency(BENIGN, risk, text)
    assert result.category is category
    assert words in result.next_step
    assert result.red_flags


def test_zoster_near_eye_from_the_image_alone() -> None:
    image = _probs(TAX.ids, herpes_zoster=0.6)
    assert _urgency(image, RiskFactors(near_eye=True)).category is UrgencyTier.EMERGENCY
    assert _urgency(image, RiskFactors(near_eye=False)).category is not UrgencyTier.EMERGENCY


def test_malignant_condition_escalates_even_when_not_top() -> None:
    t = default_thresholds().model_copy(
        update={"malignant": {"melanoma": 0.15, "squamous_cell_carcinoma": 0.5, "basal_cell_carcinoma": 0.5}}
    )
    image = _probs(PAD, melanocytic_nevus=0.7, melanoma=0.2)
    fused = fuse(image, None, None, None, model=FusionModel())  # image evidence only: posterior == image
    assert max(fused.posterior, key=fused.posterior.get) == "melanocytic_nevus"
    result = assess_urgency(fused, t, TAX)
    assert result.category is UrgencyTier.URGENT and result.driving_condition == "melanoma"
    assert any(r.kind == "condition" and r.condition == "melanoma" for r in result.reasons)
    strict = t.model_copy(update={"malignant": {"melanoma": 0.25}})
    assert assess_urgency(fused, strict, TAX).category in (UrgencyTier.ROUTINE, UrgencyTier.SELF_CARE)


def test_self_care_needs_a_self_care_condition_and_no_alarm() -> None:
    image = _probs(PAD, seborrheic_keratosis=0.97, melanoma=0.0, squamous_cell_carcinoma=0.0,
                   basal_cell_carcinoma=0.0)  # fmt: skip
    assert _urgency(image).category is UrgencyTier.SELF_CARE
    assert "Self-care" in _urgency(image).next_step
    assert _urgency(image, RiskFactors(itch=True)).category is UrgencyTier.ROUTINE


def test_score_bands_follow_category() -> None:
    for risk in (None, RiskFactors(bleeding=True), RiskFactors(ulceration=True), RiskFactors(skin_pain=True)):
        r = _urgency(BENIGN, risk)
        low = {"self_care": 0, "routine": 0.2, "soon": 0.4, "urgent": 0.6, "emergency": 0.8}[r.category.value]
        assert low <= r.score < low + 0.2 and 0 <= r.score <= 1


def test_default_thresholds_are_the_tuned_ones() -> None:
    committed = json.loads(default_artifacts().urgency_thresholds.read_text())
    tuned = committed["urgency_thresholds"]
    assert default_thresholds().model_dump(mode="json") == tuned
    assert committed["fit"]["cross_fitted"]["urgency"]["thresholds"] == tuned
    figures = committed["fit"]["cross_fitted"]["urgency"]
    assert figures["malignant_sensitivity"] >= 0.90 and figures["melanoma_sensitivity_urgent"] >= 0.90


flags = st.sampled_from([None, True, False])
risks = st.builds(
    RiskFactors,
    age=st.one_of(st.none(), st.floats(0, 120)),
    body_site=st.one_of(st.none(), st.sampled_from(list(BodySite))),
    changed_size=flags, changed_shape=flags, changed_colour=flags, bleeding=flags, itch=flags, pain=flags,
    elevation=flags, ulceration=flags, rapid_growth=flags,
    immunosuppression=st.one_of(st.none(), st.sampled_from(list(Immunosuppression))),
    personal_history_skin_cancer=flags, diameter_mm=st.one_of(st.none(), st.floats(0, 30)),
    lesion_duration_days=st.one_of(st.none(), st.floats(0, 1000)),
)  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    risk=risks,
    alarm=st.sampled_from(["bleeding", "changed_size", "rapid_growth", "changed_shape", "changed_colour"]),
    weights=st.lists(st.floats(0.01, 1.0), min_size=6, max_size=6),
)
def test_adding_bleeding_or_growth_never_lowers_urgency(risk: RiskFactors, alarm: str, weights: list[float]) -> None:
    p = np.array(weights) / sum(weights)
    image = dict(zip(PAD, p.tolist(), strict=True))
    before = _urgency(image, risk, model=MODEL)  # the fitted weights: monotone whatever they learnt
    after = _urgency(image, risk.model_copy(update={alarm: True}), model=MODEL)
    assert after.category.rank <= before.category.rank
    assert after.score >= before.score - 1e-12
