"""Free-text findings: concepts, negation scope, durations, merging, and PAD sentences."""

from __future__ import annotations

import itertools

import pytest

from models.fitting.datasets import PAD_FLAG_COLUMNS, sentence_from_pad
from models.knowledge.risk_factors import Immunosuppression, RiskFactors, risk_factors_from_pad
from models.knowledge.symptoms import (
    FindingStatus,
    apply_findings,
    extract_findings,
    findings_provenance,
    parse_duration,
)


@pytest.mark.parametrize(
    ("text", "present", "absent"),
    [
        ("no bleeding", set(), {"bleeding"}),
        ("denies itch", set(), {"itch"}),
        ("not painful", set(), {"pain"}),
        ("without fever", set(), {"fever"}),
        ("mole bleeding and getting bigger, no pain", {"bleeding", "changed_size"}, {"pain"}),
        ("no bleeding, itch or pain", set(), {"bleeding", "itch", "pain"}),
        ("No pain, but it bleeds", {"bleeding"}, {"pain"}),
        ("itchy red rash", {"itch"}, set()),
        ("it has not grown and never bled", set(), {"changed_size", "bleeding"}),
        ("Bleeding: no. Itch denied.", set(), {"bleeding", "itch"}),
        ("painless flat spot", set(), {"pain", "elevation"}),
        ("a sore that won't heal", {"ulceration"}, set()),
        ("growing very fast", {"rapid_growth", "changed_size"}, set()),
        ("no change in size", set(), {"changed_size"}),
        ("fever and spreading redness on my leg", {"fever", "spreading_redness"}, set()),
        ("blisters all over my body, my skin hurts", {"widespread_blistering", "skin_pain"}, set()),
        ("shingles near my left eye", {"shingles", "near_eye"}, set()),
        ("my mother had melanoma", {"family_history_melanoma"}, set()),
    ],
)
def test_concepts_and_negation(text: str, present: set[str], absent: set[str]) -> None:
    f = extract_findings(text)
    assert set(f.present) == present
    assert set(f.absent) == absent
    assert all(text[s.start : s.end] == s.text for s in f.spans)


@pytest.mark.parametrize(
    ("text", "concept", "status"),
    [
        ("not only bleeding but also growing", "bleeding", "present"),  # pseudo-negation
        ("no doubt it is bleeding", "bleeding", "present"),
        ("not sure if it bleeds", "bleeding", "possible"),
        ("call if it starts to bleed", "bleeding", "hypothetical"),
        ("sister had skin cancer", "personal_history_skin_cancer", "family"),
        ("sister had skin cancer", "family_history_skin_cancer", "present"),
        ("it bled last year but has healed", "bleeding", "historical"),
        ("started bleeding two weeks ago", "bleeding", "present"),  # an onset date is not history
        ("bleeding since last year", "bleeding", "present"),
        ("Mum says it has grown", "changed_size", "present"),  # she reports, the patient has it
        ("my sister's mole bleeds, mine itches", "itch", "present"),  # "mine" ends her scope
        ("bad sunburns as a child", "sunburn_history", "present"),  # a history concept is not historical
        ("my mother never had melanoma", "family_history_melanoma", "absent"),
        ("no bleeding now, but it might bleed if scratched", "bleeding", "possible"),  # possible > absent
    ],
)
def test_context_status(text: str, concept: str, status: str) -> None:
    f = extract_findings(text)
    assert f.status.get(concept) == FindingStatus(status), f.status
    assert (concept in f.present) == (status == "present") and (concept in f.absent) == (status == "absent")


def test_only_present_and_absent_fill_risk_factors() -> None:
    merged = apply_findings(None, extract_findings("might be bleeding; sister had melanoma; it used to itch; no pain"))
    assert merged.bleeding is None and merged.possible_findings == {"bleeding"}
    assert merged.family_history_melanoma is True and merged.personal_history_skin_cancer is None
    assert merged.itch is None and merged.pain is False
    # an explicit value wins over a possible one, which is then no longer possible
    assert not apply_findings(RiskFactors(bleeding=False), extract_findings("might be bleeding")).possible_findings


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("itchy red rash for 3 days", 3),
        ("there for two months", 2 * 30.44),
        ("since last year", 365.25),
        ("for a week", 7),
        ("a few weeks", 21),
        ("10 yrs", 3652.5),
        ("since yesterday", 1),
        ("2-3 weeks", 17.5),
        ("three-day history", 3),
    ],
)
def test_durations(text: str, days: float) -> None:
    parsed = parse_duration(text)
    assert parsed is not None and parsed[0] == pytest.approx(days)
    assert extract_findings(text).duration_days == pytest.approx(days)


def test_no_duration_or_size_confusion() -> None:
    assert parse_duration("mole bleeding and getting bigger") is None
    f = extract_findings("a 7 mm mole")
    assert f.duration_days is None and f.diameter_mm == 7


def test_findings_fill_unknowns_and_explicit_wins() -> None:
    f = extract_findings("bleeding for 2 weeks, no itch, kidney transplant")
    merged = apply_findings(RiskFactors(bleeding=False), f)
    assert merged.bleeding is False  # explicit wins
    assert merged.itch is False and merged.lesion_duration_days == 14
    assert merged.immunosuppression is Immunosuppression.TRANSPLANT
    assert findings_provenance(RiskFactors(bleeding=False), f) == {"itch", "lesion_duration_days", "immunosuppression"}
    assert apply_findings(None, None) == RiskFactors()


def test_pad_sentence_example_and_round_trip() -> None:
    s = sentence_from_pad({"itch": "True", "grew": "True", "bleed": "True", "hurt": "False"})
    assert s == "An itchy spot that has grown and bleeds. No pain."
    assert sentence_from_pad({c: "UNK" for c in PAD_FLAG_COLUMNS}) == ""
    for values in itertools.product(("True", "False", "UNK"), repeat=len(PAD_FLAG_COLUMNS)):
        row = dict(zip(PAD_FLAG_COLUMNS, values, strict=True))
        from_text = apply_findings(None, extract_findings(sentence_from_pad(row)))
        explicit = risk_factors_from_pad(row)
        for field in ("itch", "changed_size", "pain", "changed_shape", "bleeding", "elevation"):
            assert getattr(from_text, field) == getattr(explicit, field), (row, field)
