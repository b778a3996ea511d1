"""Urgency must not fall because of a misread: each red flag, said plainly and then in five
pseudo-negated or uncertain ways, through `assess_urgency(fuse(...))` (issue 17)."""

from __future__ import annotations

import pytest

from models.knowledge.risk_factors import Immunosuppression, RiskFactors
from models.knowledge.symptoms import FindingStatus, extract_findings
from models.knowledge.taxonomy import UrgencyTier, load_taxonomy
from models.scoring.fusion import FusionModel, fuse, load_fusion
from models.scoring.urgency import assess_urgency

TAX = load_taxonomy()
MODELS = {"generic": FusionModel(), "fitted": load_fusion()}
LABELS = [*sorted(load_fusion().classes), "cellulitis", "sjs_ten", "herpes_zoster"]


def _probs(**mass: float) -> dict[str, float]:
    rest = (1 - sum(mass.values())) / (len(LABELS) - len(mass))
    return {c: mass.get(c, rest) for c in LABELS}


IMAGES = {
    "benign mole": _probs(melanocytic_nevus=0.9, melanoma=0.0, basal_cell_carcinoma=0.0, squamous_cell_carcinoma=0.0),
    "borderline": _probs(melanocytic_nevus=0.5, melanoma=0.1, seborrheic_keratosis=0.2),
}

# red flag -> (risk given explicitly, the plain statement, five hedged or pseudo-negated ones)
FLAGS: dict[str, tuple[RiskFactors | None, str, tuple[str, ...]]] = {
    "bleeding": (
        None,
        "it is bleeding",
        (
            "not only bleeding but also itchy",
            "no doubt it is bleeding",
            "not sure if it bleeds",
            "might be bleeding a little",
            "can't stop it bleeding",
        ),
    ),
    "ulceration": (
        None,
        "it is ulcerated",
        (
            "could be ulcerated, hard to tell",
            "?ulceration",
            "no question it has ulcerated",
            "maybe an open sore",
            "not just sore but ulcerated",
        ),
    ),
    "rapid growth": (
        None,
        "growing very fast",
        (
            "it might be growing very fast",
            "not only itchy but growing rapidly",
            "possibly rapid growth",
            "no doubt it is growing quickly",
            "unsure whether it is growing fast",
        ),
    ),
    "cellulitis": (
        None,
        "fever and spreading redness",
        (
            "fever and possibly spreading redness",
            "maybe a fever, and spreading redness",
            "no doubt about the fever, spreading redness too",
            "not sure if I have a fever; spreading redness",
            "fever, not only spreading redness",
        ),
    ),
    "sjs_ten": (
        None,
        "blisters all over my body",
        (
            "might be blistering all over",
            "not only blisters all over my body but peeling",
            "perhaps widespread blisters",
            "no doubt there are blisters everywhere",
            "I think skin is peeling",
        ),
    ),
    "shingles near the eye": (
        None,
        "shingles near my eye",
        (
            "possible shingles near my eye",
            "not sure if it's shingles, near my eye",
            "suspected zoster on my eyelid",
            "could be shingles on my forehead",
            "no doubt it's shingles near my eye",
        ),
    ),
    "immunosuppressed and changing": (
        RiskFactors(immunosuppression=Immunosuppression.TRANSPLANT),
        "it has grown",
        (
            "it may have grown",
            "not sure whether it has grown",
            "no doubt it has grown",
            "not only changed colour but grown",
            "maybe getting bigger",
        ),
    ),
}
CASES = [(flag, text) for flag, (_, _, hedged) in FLAGS.items() for text in hedged]


def _category(image: dict[str, float], risk: RiskFactors | None, text: str, model: FusionModel) -> UrgencyTier:
    return assess_urgency(fuse(image, None, risk, extract_findings(text), model=model), taxonomy=TAX).category


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize(("flag", "text"), CASES)
def test_hedged_flag_at_most_one_tier_below_plain(flag: str, text: str, image: str, model: str) -> None:
    risk, plain, _ = FLAGS[flag]
    said = extract_findings(text).status.values()
    assert FindingStatus.POSSIBLE in said or FindingStatus.PRESENT in said, text  # the test is not vacuous
    want = _category(IMAGES[image], risk, plain, MODELS[model])
    got = _category(IMAGES[image], risk, text, MODELS[model])
    assert got.rank <= want.rank + 1, (flag, text, want, got)


def test_hedged_red_flags_are_named_and_one_tier_less() -> None:
    image, model = IMAGES["benign mole"], MODELS["generic"]
    plain = assess_urgency(fuse(image, None, None, extract_findings("fever and spreading redness"), model=model))
    hedged = assess_urgency(fuse(image, None, None, extract_findings("fever and maybe spreading redness"), model=model))
    assert plain.category is UrgencyTier.EMERGENCY and hedged.category is UrgencyTier.URGENT
    assert any(f.startswith("possible fever with spreading redness") for f in hedged.red_flags)
    # a possible finding is unknown to fusion: the posterior is the one without it
    fused = fuse(image, None, None, extract_findings("might be bleeding"), model=model)
    assert fused.risk.bleeding is None and fused.risk.possible_findings == {"bleeding"}
    assert fused.posterior == fuse(image, None, None, None, model=model).posterior


@pytest.mark.parametrize(
    "text", ["call if it starts to bleed", "it bled last year but has healed", "my sister's mole bleeds"]
)
def test_hypothetical_historical_and_family_bleeding_are_unknown(text: str) -> None:
    findings = extract_findings(text)
    assert findings.status["bleeding"] is not FindingStatus.PRESENT
    fused = fuse(IMAGES["benign mole"], None, None, findings, model=MODELS["generic"])
    assert fused.risk.bleeding is None and not fused.risk.possible_findings
    assert "bleeding" not in assess_urgency(fused).red_flags
