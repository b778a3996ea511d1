# size: every urgency rule (NG12, red flags, condition tiers) and its figures in one place, so the rules are read
#   together
"""How soon should this be seen: a category, a score in [0, 1], the reasons and a next step.

Three sources, the most severe wins:
- conditions: every condition whose (alarm-robust) posterior reaches its threshold proposes its
  taxonomy tier; malignant conditions have their own, lower, thresholds, so a plausible melanoma
  escalates even when it is not the top differential;
- the NICE NG12 weighted 7-point checklist (change in size, irregular shape, irregular colour: 2
  points each; largest diameter >= 7 mm, inflammation, oozing or bleeding, change in sensation:
  1 point each); >= 3 points on a plausibly pigmented lesion -> suspected-cancer pathway;
- red flags: fever with spreading redness (cellulitis, same day), widespread blistering or skin
  pain (SJS/TEN), shingles near the eye, a changing lesion in an immunosuppressed patient, rapid
  growth or ulceration, bleeding.

A finding the text states with uncertainty ("might be bleeding", "not sure if it has grown";
`RiskFactors.possible_findings`) is neither yes nor no for the posterior, but urgency does not
ignore it: every rule that would fire were it stated plainly still fires one tier less
(`hedged_rules`: emergency -> urgent -> soon -> routine; the NG12 checklist with the possible items
counted, urgent -> soon), and it blocks self-care like any alarm fact. Since fusion varies a possible
alarm fact in `posterior_upper` as it does a reported one, the condition rules are the same as for
the plain statement, so a hedged flag lands at most one tier below the plain flag.

Monotone by construction: every rule only ever raises the category on more alarm facts, the
checklist only gains points, and the condition rule reads `FusionResult.posterior_upper`, which
cannot fall when bleeding or growth is added (see models/scoring/fusion.py). The score is the category's
band plus a monotone position inside it, so it is monotone too.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.backends.base import ImageTextModel
from models.backends.registry import default_artifacts
from models.knowledge.risk_factors import CHANGE_FIELDS, RiskFactors, is_immunosuppressed
from models.knowledge.taxonomy import Condition, Taxonomy, UrgencyTier, load_taxonomy
from models.scoring.fusion import FusionResult

__all__ = [
    "Decision",
    "LabelTable",
    "NG12Result",
    "Reason",
    "UrgencyResult",
    "UrgencyThresholds",
    "assess_urgency",
    "decide",
    "default_thresholds",
    "fired_rules",
    "hedged_rules",
    "label_table",
    "load_thresholds",
    "ng12_checklist",
    "thresholds_for_model",
    "urgency_inputs",
    "urgency_report",
]

BAND = {
    UrgencyTier.SELF_CARE: 0.0,
    UrgencyTier.ROUTINE: 0.2,
    UrgencyTier.SOON: 0.4,
    UrgencyTier.URGENT: 0.6,
    UrgencyTier.EMERGENCY: 0.8,
}


class UrgencyThresholds(BaseModel):
    """Every number the rules use. The defaults in force (`default_thresholds()`) are the ones tuned
    on PAD-UFES-20 cross-fitted fused answers (malignant in urgent/soon >= 0.90, melanoma in urgent
    >= 0.90) and stored with the fit in fusion.json; the field defaults here are the fallback."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    malignant: dict[str, float] = Field(
        default_factory=lambda: {"melanoma": 0.10, "squamous_cell_carcinoma": 0.10, "basal_cell_carcinoma": 0.20},
        description="posterior at which a malignant condition proposes its tier, by condition id",
    )
    malignant_default: float = Field(default=0.10, ge=0, le=1, description="for malignant conditions not listed")
    plausible: float = Field(default=0.35, ge=0, le=1, description="for every other condition")
    ng12_referral_points: int = Field(default=3, ge=1, le=11)
    pigmented_conditions: tuple[str, ...] = ("melanoma", "atypical_nevus", "melanocytic_nevus", "solar_lentigo")
    pigmented_threshold: float = Field(
        default=0.30, ge=0, le=1, description="summed posterior that makes the lesion plausibly pigmented (NG12)"
    )
    rapid_growth_days: float = Field(default=60, ge=0, description="growth within this many days counts as rapid")
    zoster_threshold: float = Field(default=0.15, ge=0, le=1)
    self_care_min: float = Field(default=0.5, ge=0, le=1, description="top self-care condition needs this much")

    def threshold(self, condition: Condition) -> float:
        if condition.malignant:
            return self.malignant.get(condition.id, self.malignant_default)
        return self.plausible


@functools.lru_cache(maxsize=8)
def load_thresholds(path: Path | None) -> UrgencyThresholds:
    """Thresholds from a declared file (a fusion file's `urgency_thresholds`, or a file of their own);
    the class defaults when there is none."""
    if path is None or not path.exists():
        return UrgencyThresholds()
    data = json.loads(path.read_text(encoding="utf-8"))
    tuned = data.get("urgency_thresholds", data) if isinstance(data, dict) else None
    return UrgencyThresholds.model_validate(tuned) if tuned else UrgencyThresholds()


def thresholds_for_model(model: ImageTextModel) -> UrgencyThresholds:
    """The thresholds an image model declares (`model.artifacts.urgency_thresholds`): tuned on its
    fused answers; the class defaults for a model that declares none."""
    return load_thresholds(model.artifacts.urgency_thresholds)


def default_thresholds() -> UrgencyThresholds:
    """The default model's declared thresholds (tuned with the committed fusion)."""
    return load_thresholds(default_artifacts().urgency_thresholds)


class NG12Result(BaseModel):
    model_config = ConfigDict(frozen=True)

    points: int
    items: list[str] = Field(description="items met, with their points")
    suspected_cancer: bool = Field(description="points reach the referral threshold")


class Reason(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: Literal["condition", "checklist", "red_flag", "default"]
    category: UrgencyTier
    text: str
    condition: str | None = None


class UrgencyResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    category: UrgencyTier
    score: float = Field(ge=0, le=1)
    reasons: list[Reason] = Field(description="every rule that fired, most severe first")
    ng12: NG12Result
    red_flags: list[str]
    driving_condition: str | None = Field(description="the condition behind the category, if one is")
    next_step: str


def ng12_checklist(risk: RiskFactors, referral_points: int = 3) -> NG12Result:
    """NICE NG12 weighted 7-point checklist from what is known (unknown items score 0).

    A patient-reported change in shape or colour counts for the irregular shape / colour items
    (the original Glasgow checklist asked about change; the weighted version about irregularity).
    """
    items: list[tuple[str, int]] = []
    if risk.changed_size or risk.rapid_growth:
        items.append(("change in size", 2))
    if risk.irregular_shape or risk.changed_shape:
        items.append(("irregular shape", 2))
    if risk.irregular_colour or risk.changed_colour:
        items.append(("irregular colour", 2))
    if risk.diameter_mm is not None and risk.diameter_mm >= 7:
        items.append(("largest diameter >= 7 mm", 1))
    if risk.inflammation:
        items.append(("inflammation", 1))
    if risk.bleeding:
        items.append(("oozing or bleeding", 1))
    if risk.itch or risk.pain:
        items.append(("change in sensation", 1))
    points = sum(p for _, p in items)
    return NG12Result(
        points=points,
        items=[f"{name} ({p})" for name, p in items],
        suspected_cancer=points >= referral_points,
    )


def _rapid_growth(risk: RiskFactors, days: float) -> bool:
    if risk.rapid_growth:
        return True
    return bool(risk.changed_size and risk.lesion_duration_days is not None and risk.lesion_duration_days <= days)


_ALARM = ("bleeding", "ulceration", "rapid_growth", *CHANGE_FIELDS)


@dataclass(frozen=True)
class Rule:
    category: UrgencyTier
    kind: Literal["condition", "checklist", "red_flag", "default"]
    text: str
    condition: str | None = None


@dataclass(frozen=True)
class LabelTable:
    """Per label set: each label's threshold, tier and role, as arrays (the rules run vectorised)."""

    ids: tuple[str, ...]
    conditions: tuple[Condition | None, ...]
    threshold: np.ndarray
    rank: np.ndarray
    serious: np.ndarray
    pigmented: np.ndarray
    self_care: np.ndarray
    zoster: int | None


_TABLES: dict[tuple[tuple[str, ...], str, str], LabelTable] = {}


def label_table(ids: tuple[str, ...], t: UrgencyThresholds, taxonomy: Taxonomy) -> LabelTable:
    key = (ids, t.model_dump_json(), taxonomy.fingerprint)
    table = _TABLES.get(key)
    if table is None:
        conds = tuple(taxonomy.get(c) if c in taxonomy else None for c in ids)
        never = 2.0  # a threshold no probability reaches: custom labels propose no tier
        table = LabelTable(
            ids=ids,
            conditions=conds,
            threshold=np.array([t.threshold(c) if c else never for c in conds]),
            rank=np.array([c.urgency.rank if c else UrgencyTier.SELF_CARE.rank for c in conds]),
            serious=np.array([bool(c and (c.malignant or c.urgency.rank <= UrgencyTier.URGENT.rank)) for c in conds]),
            pigmented=np.array([c in t.pigmented_conditions for c in ids]),
            self_care=np.array([bool(c and c.urgency is UrgencyTier.SELF_CARE) for c in conds]),
            zoster=ids.index("herpes_zoster") if "herpes_zoster" in ids else None,
        )
        if len(_TABLES) > 64:
            _TABLES.clear()
        _TABLES[key] = table
    return table


def fired_rules(
    upper: np.ndarray,
    risk: RiskFactors,
    said_shingles: bool,
    ng12: NG12Result,
    t: UrgencyThresholds,
    table: LabelTable,
) -> list[Rule]:
    """Checklist and red-flag rules that fired (condition rules are read off the posterior)."""
    out: list[Rule] = []
    if risk.fever and risk.spreading_redness:
        out.append(
            Rule(
                UrgencyTier.EMERGENCY,
                "red_flag",
                "fever with spreading redness: treat as cellulitis today",
                "cellulitis",
            )
        )
    if risk.widespread_blistering or risk.skin_pain:
        what = "widespread blistering" if risk.widespread_blistering else "painful skin"
        out.append(
            Rule(
                UrgencyTier.EMERGENCY,
                "red_flag",
                f"{what}: possible Stevens-Johnson syndrome / toxic epidermal necrolysis",
                "sjs_ten",
            )
        )
    zoster = table.zoster is not None and upper[table.zoster] >= t.zoster_threshold
    if risk.near_eye and (said_shingles or zoster):
        out.append(
            Rule(
                UrgencyTier.EMERGENCY,
                "red_flag",
                "shingles near the eye: sight-threatening, same-day eye assessment",
                "herpes_zoster",
            )
        )
    if is_immunosuppressed(risk) and any(getattr(risk, f) for f in (*CHANGE_FIELDS, "rapid_growth")):
        out.append(Rule(UrgencyTier.URGENT, "red_flag", "a changing lesion in an immunosuppressed patient"))
    if _rapid_growth(risk, t.rapid_growth_days):
        out.append(Rule(UrgencyTier.URGENT, "red_flag", "rapid growth"))
    if risk.ulceration:
        out.append(Rule(UrgencyTier.URGENT, "red_flag", "ulceration"))
    if risk.bleeding:
        out.append(Rule(UrgencyTier.SOON, "red_flag", "bleeding"))
    if ng12.suspected_cancer and upper[table.pigmented].sum() >= t.pigmented_threshold:
        # NG12's checklist is for pigmented lesions: it refers only a plausibly pigmented one
        mel = "melanoma" if "melanoma" in table.ids else None
        out.append(
            Rule(
                UrgencyTier.URGENT,
                "checklist",
                f"NG12 7-point checklist: {ng12.points} points on a pigmented lesion",
                mel,
            )
        )
    return out


def _one_tier_less(tier: UrgencyTier) -> UrgencyTier:
    tiers = list(UrgencyTier)
    return tiers[min(tier.rank + 1, UrgencyTier.ROUTINE.rank)]


def hedged_rules(
    upper: np.ndarray,
    risk: RiskFactors,
    said_shingles: bool,
    plain: list[Rule],
    t: UrgencyThresholds,
    table: LabelTable,
) -> list[Rule]:
    """Rules that fire only when what the text said with uncertainty ("might be bleeding",
    `risk.possible_findings`) is taken as said: each one tier less than the plain rule (emergency ->
    urgent -> soon -> routine), the NG12 checklist included. With the alarm-robust posterior (fusion
    varies a possible alarm like a reported one) a hedged red flag never sends urgency more than one
    tier below the same flag stated plainly."""
    possible = risk.possible_findings
    if not possible:
        return []
    plus = risk.model_copy(update={f: True for f in possible if f in RiskFactors.model_fields})
    shingles = said_shingles or "shingles" in possible
    ng12 = ng12_checklist(plus, t.ng12_referral_points)

    def key(r: Rule) -> str:
        return r.text if r.kind == "red_flag" else r.kind

    fired = {key(r) for r in plain}
    return [
        Rule(_one_tier_less(r.category), r.kind, f"possible {r.text} (said with uncertainty)", r.condition)
        for r in fired_rules(upper, plus, shingles, ng12, t, table)
        if key(r) not in fired
    ]


@dataclass(frozen=True)
class Decision:
    category: UrgencyTier
    score: float
    driver: Rule | None
    rules: list[Rule]
    plausible: np.ndarray  # condition rules that fired (mask over labels)
    ng12: NG12Result
    self_care_top: int | None


def decide(
    upper: np.ndarray,
    post: np.ndarray,
    risk: RiskFactors,
    said_shingles: bool,
    t: UrgencyThresholds,
    table: LabelTable,
) -> Decision:
    """Category and score: the one place the rules combine (assess_urgency and SHAP both call it)."""
    ng12 = ng12_checklist(risk, t.ng12_referral_points)
    rules = fired_rules(upper, risk, said_shingles, ng12, t, table)
    rules += hedged_rules(upper, risk, said_shingles, rules, t, table)
    plausible = upper >= table.threshold
    candidates: list[Rule] = list(rules)
    if plausible.any():
        idx = np.flatnonzero(plausible)
        best = idx[np.lexsort((-upper[idx], table.rank[idx]))[0]]
        cond = table.conditions[best]
        assert cond is not None
        candidates.append(Rule(cond.urgency, "condition", "", cond.id))
    candidates.sort(key=lambda r: (r.category.rank, r.kind != "condition"))
    category, driver = UrgencyTier.ROUTINE, None
    if candidates and candidates[0].category.rank <= UrgencyTier.ROUTINE.rank:
        driver, category = candidates[0], candidates[0].category
    top = int(post.argmax())
    alarm = ng12.points > 0 or any(getattr(risk, f) or f in risk.possible_findings for f in _ALARM)
    self_care_top = None
    if driver is None and not alarm and table.self_care[top] and post[top] >= t.self_care_min:
        category, self_care_top = UrgencyTier.SELF_CARE, top
    serious = upper[table.serious].max() if table.serious.any() else 0.0
    within = 0.5 * min(1.0, ng12.points / 7) + 0.5 * float(serious)
    score = BAND[category] + 0.2 * min(within, 0.999)
    return Decision(category, float(score), driver, rules, plausible, ng12, self_care_top)


def _next_step(category: UrgencyTier, driver: Rule | None, taxonomy: Taxonomy) -> str:
    cond = taxonomy.get(driver.condition) if driver and driver.condition and driver.condition in taxonomy else None
    if category is UrgencyTier.EMERGENCY:
        if driver and driver.condition == "cellulitis":
            return "Treat as cellulitis today: same-day assessment (urgent GP or emergency department)."
        if driver and driver.condition == "herpes_zoster":
            return "Same-day eye assessment and antivirals today: shingles near the eye can threaten sight."
        if driver and driver.condition == "sjs_ten":
            return "Go to an emergency department now: possible severe drug reaction (SJS/TEN)."
        return f"Seek emergency care today{f' (possible {cond.name})' if cond else ''}."
    if category is UrgencyTier.URGENT:
        if driver is None or driver.kind != "condition" or (cond and cond.malignant):
            return "Refer on the suspected skin cancer pathway (appointment within 2 weeks)."
        return f"See a doctor within days (possible {cond.name})." if cond else "See a doctor within days."
    if category is UrgencyTier.SOON:
        what = f" (possible {cond.name})" if cond else ""
        return f"Book a GP or dermatology appointment within the next few weeks{what}."
    if category is UrgencyTier.ROUTINE:
        return "Mention it at a routine appointment; photograph it now and compare in 8 weeks."
    return "Self-care advice; see a doctor if it is not better in 2 weeks, or if it grows, bleeds or changes."


def urgency_inputs(fused: FusionResult) -> tuple[tuple[str, ...], np.ndarray, np.ndarray, bool]:
    ids = tuple(fused.posterior)
    upper = np.array([fused.posterior_upper[c] for c in ids])
    post = np.array([fused.posterior[c] for c in ids])
    said_shingles = fused.findings is not None and "shingles" in fused.findings.present
    return ids, upper, post, said_shingles


_ALARM_WORDS = {
    "bleeding": "bleeding",
    "changed_size": "growth",
    "rapid_growth": "rapid growth",
    "changed_shape": "change in shape",
    "changed_colour": "change in colour",
}


def _condition_text(cond: Condition, shown: float, post: float, upper: float, threshold: float, alarms: str) -> str:
    """A condition rule's reason quotes the number the differential shows; only where that number is under
    the threshold does it add the figure the rule read, named for what it is (never a bare second number)."""
    name = f"{'malignant ' if cond.malignant else ''}{cond.name}"
    if round(shown * 100) >= round(threshold * 100):
        return f"{name} plausible: {shown:.0%} (threshold {threshold:.0%})"
    text = f"{name} kept in view: {shown:.0%}, under its threshold {threshold:.0%}"
    if alarms and upper > post + 0.005:
        return (
            f"{text}, but its alarm-robust figure (uncalibrated: its highest with the reported {alarms} taken as"
            f" present, unknown or absent, so that reporting an alarm sign never lowers urgency) is {upper:.0%}"
        )
    return f"{text} once calibrated; the urgency rule reads the figure before calibration, {upper:.0%}"


def assess_urgency(
    fused: FusionResult,
    thresholds: UrgencyThresholds | None = None,
    taxonomy: Taxonomy | None = None,
    shown: Mapping[str, float] | None = None,
) -> UrgencyResult:
    """Urgency of one answer from its fused posterior and (merged) risk factors. `shown` is the probability
    the answer shows for each label (the differential's calibrated number): the reasons quote it (the
    fused posterior when not given); the rules decide on the alarm-robust posterior either way."""
    t = thresholds or default_thresholds()
    taxonomy = taxonomy or load_taxonomy()
    ids, upper, post, said_shingles = urgency_inputs(fused)
    table = label_table(ids, t, taxonomy)
    d = decide(upper, post, fused.risk, said_shingles, t, table)
    quoted = np.array([shown[c] for c in ids]) if shown is not None else post
    possible = getattr(fused.risk, "possible_findings", None) or ()  # said with uncertainty: varied alike
    alarms = " or ".join(w for f, w in _ALARM_WORDS.items() if getattr(fused.risk, f) is True or f in possible)
    reasons: list[Reason] = []
    for i in np.flatnonzero(d.plausible):
        cond = table.conditions[i]
        assert cond is not None
        text = _condition_text(cond, quoted[i], post[i], upper[i], table.threshold[i], alarms)
        reasons.append(Reason(kind="condition", category=cond.urgency, condition=cond.id, text=text))
    reasons += [Reason(kind=r.kind, category=r.category, text=r.text, condition=r.condition) for r in d.rules]
    if d.self_care_top is not None:
        top = ids[d.self_care_top]
        reasons.append(
            Reason(
                kind="default",
                category=d.category,
                condition=top,
                text=f"{taxonomy.get(top).name} most likely ({quoted[d.self_care_top]:.0%}), no alarm features",
            )
        )
    elif d.driver is None:
        reasons.append(Reason(kind="default", category=d.category, text="no condition or rule above routine"))
    reasons.sort(key=lambda r: (r.category.rank, r.kind != "condition"))
    return UrgencyResult(
        category=d.category,
        score=d.score,
        reasons=reasons,
        ng12=d.ng12,
        red_flags=[r.text for r in d.rules if r.kind == "red_flag"],
        driving_condition=d.driver.condition if d.driver else None,
        next_step=_next_step(d.category, d.driver, taxonomy),
    )


def urgency_report(
    results: Sequence[FusionResult],
    true_ids: Sequence[str],
    thresholds: UrgencyThresholds | None = None,
    taxonomy: Taxonomy | None = None,
) -> dict[str, object]:
    """Triage figures on labelled answers: malignant (MEL/BCC/SCC...) sent urgent or sooner-than-routine,
    melanoma sent urgent, benign kept routine or self-care, and the category counts."""
    taxonomy = taxonomy or load_taxonomy()
    cats = [assess_urgency(r, thresholds, taxonomy).category for r in results]
    malignant = np.array([c in taxonomy and taxonomy.get(c).malignant for c in true_ids])
    melanoma = np.array([c == "melanoma" for c in true_ids])
    rank = np.array([c.rank for c in cats])
    soon_or_more = rank <= UrgencyTier.SOON.rank
    urgent_or_more = rank <= UrgencyTier.URGENT.rank

    def share(mask: np.ndarray, within: np.ndarray) -> float | None:
        return float(mask[within].mean()) if within.any() else None

    per_class: dict[str, dict[str, int]] = {}
    for cid, cat in zip(true_ids, cats, strict=True):
        per_class.setdefault(cid, {t.value: 0 for t in UrgencyTier})[cat.value] += 1
    return {
        "malignant_sensitivity": share(soon_or_more, malignant),
        "melanoma_sensitivity_urgent": share(urgent_or_more, melanoma),
        "specificity": share(~soon_or_more, ~malignant),
        "counts": {t.value: sum(c is t for c in cats) for t in UrgencyTier},
        "per_class": per_class,
        "thresholds": (thresholds or default_thresholds()).model_dump(mode="json"),
    }


# A change measured by comparing two photos (models/lesions) sets the same risk factors a patient's
# report sets, so it scores the same NG12 points through the same rules; only the reason differs.
MEASURED_CHANGE_FIELDS = {
    "change in size": "changed_size",
    "change in shape": "changed_shape",
    "change in colour": "changed_colour",
}


def with_measured_change(risk: RiskFactors | None, items: Iterable[str]) -> RiskFactors:
    """`risk` (or none known) with each measured change item set, exactly as if it had been reported."""
    base = risk or RiskFactors()
    return base.model_copy(update={MEASURED_CHANGE_FIELDS[i]: True for i in items})


def measured_change_reason(items: Sequence[str], details: Mapping[str, str]) -> str:
    said = "; ".join(f"{i} ({details[i]})" if details.get(i) else i for i in items)
    return f"NG12 change items measured by comparing two photos of the lesion, not reported: {said}"


def mark_measured(result: UrgencyResult, items: Sequence[str], details: Mapping[str, str]) -> UrgencyResult:
    """The urgency with a checklist reason saying which change items were measured (not reported)."""
    reason = Reason(kind="checklist", category=result.category, text=measured_change_reason(items, details))
    return result.model_copy(update={"reasons": [*result.reasons, reason]})
