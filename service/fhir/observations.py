"""The Observations of the triage Bundle: risk factors received, findings parsed from the symptoms
text, the urgency (score, category, NG12 points, red flags, SHAP values) and the uncertainty
(summary plus one per flag, with value and threshold)."""

from __future__ import annotations

from enum import Enum
from typing import Any

from models.knowledge.risk_factors import BODY_SITE_SNOMED, BodySite, RiskFactors
from models.knowledge.symptoms import SymptomFindings
from models.scoring.urgency import UrgencyResult
from models.uncertainty.contract import Flag, Uncertainty
from service.fhir.codes import (
    CS_CONDITION,
    CS_FINDING,
    CS_FLAG,
    CS_RISK_FACTOR,
    CS_TRIAGE,
    CS_URGENCY,
    LOINC,
    OBS_CATEGORY,
    BundleBuilder,
    codeable,
    observation,
    quantity,
)
from service.schemas import SNOMED_CT, TriageResult

__all__ = ["finding_observations", "risk_factor_observations", "uncertainty_observations", "urgency_observation"]

_SURVEY = {"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}], "text": "Survey"}
# RiskFactors fields with a unit: field -> (unit text, UCUM code)
_QUANTITIES = {"age": ("years", "a"), "diameter_mm": ("mm", "mm"), "lesion_duration_days": ("days", "d")}


def _value(field: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if field in _QUANTITIES:
        unit, code = _QUANTITIES[field]
        return {"valueQuantity": quantity(value, unit, code)}
    if isinstance(value, int):
        return {"valueInteger": value}
    if isinstance(value, BodySite):
        concept = codeable(CS_RISK_FACTOR + "/body-site", value.value, value.value.replace("_", " "))
        snomed = BODY_SITE_SNOMED.get(value)
        if snomed is not None:
            concept["coding"].insert(0, {"system": SNOMED_CT, "code": snomed.code, "display": snomed.display})
        return {"valueCodeableConcept": concept}
    if isinstance(value, Enum):
        return {"valueCodeableConcept": codeable(CS_RISK_FACTOR + "/" + field, str(value.value), str(value.value))}
    if isinstance(value, float):
        return {"valueQuantity": quantity(value, "1", "1")}
    return {"valueString": str(value)}


def risk_factor_observations(b: BundleBuilder, risk: RiskFactors, subject: str, when: str) -> list[str]:
    refs = []
    for field in risk.model_dump(exclude_none=True):
        description = RiskFactors.model_fields[field].description or field
        code = codeable(CS_RISK_FACTOR, field, field.replace("_", " "), text=description.split(" True = ")[0])
        if field == "age":
            code["coding"].insert(0, {"system": LOINC, "code": "30525-0", "display": "Age"})
        obs = observation("final", code, subject, when, category=[_SURVEY], **_value(field, getattr(risk, field)))
        refs.append(b.add(f"risk-factor/{field}", obs, ai=False))
    return refs


def finding_observations(b: BundleBuilder, findings: SymptomFindings, subject: str, when: str) -> list[str]:
    note = [{"text": "Parsed from the patient's own words by dermtriage (negations kept)."}]
    refs = []

    def add(name: str, code: dict[str, Any], value: dict[str, Any]) -> None:
        obs = observation("preliminary", code, subject, when, category=[_SURVEY], note=note, **value)
        refs.append(b.add(f"finding/{name}", obs))

    for concept in sorted(findings.present):
        add(concept, codeable(CS_FINDING, concept, concept.replace("_", " ")), {"valueBoolean": True})
    for concept in sorted(findings.absent - findings.present):
        add(concept, codeable(CS_FINDING, concept, concept.replace("_", " ")), {"valueBoolean": False})
    if findings.duration_days is not None:
        add(
            "duration",
            codeable(CS_FINDING, "duration", "lesion duration", text=findings.duration_text or "lesion duration"),
            {"valueQuantity": quantity(findings.duration_days, "days", "d")},
        )
    if findings.diameter_mm is not None:
        add(
            "diameter",
            codeable(CS_FINDING, "diameter", "diameter"),
            {"valueQuantity": quantity(findings.diameter_mm, "mm", "mm")},
        )
    if findings.immunosuppression_kind is not None:
        kind = findings.immunosuppression_kind.value
        add(
            "immunosuppression",
            codeable(CS_FINDING, "immunosuppression", "immunosuppression"),
            {"valueCodeableConcept": codeable(CS_RISK_FACTOR + "/immunosuppression", kind, kind)},
        )
    return refs


def urgency_observation(
    b: BundleBuilder, result: TriageResult, urgency: UrgencyResult, subject: str, when: str, device: str
) -> str:
    components: list[dict[str, Any]] = [
        {
            "code": codeable(CS_TRIAGE, "urgency-category", "urgency category"),
            "valueCodeableConcept": codeable(
                CS_URGENCY, urgency.category.value, urgency.category.value.replace("_", " ")
            ),
        },
        {
            "code": codeable(CS_TRIAGE, "ng12-points", "NICE NG12 weighted 7-point checklist points"),
            "valueInteger": urgency.ng12.points,
        },
    ]
    components += [
        {"code": codeable(CS_TRIAGE, "red-flag", "red flag"), "valueString": flag} for flag in urgency.red_flags
    ]
    if result.urgency_shap is not None:
        components += [
            {
                "code": codeable(
                    CS_TRIAGE, f"urgency-shap-{feature}", f"SHAP value of {feature} for the urgency score"
                ),
                "valueQuantity": quantity(value, "1", "1"),
            }
            for feature, value in result.urgency_shap.values.items()
        ]
    notes = [{"text": f"{r.category.value}: {r.text}"} for r in urgency.reasons]
    notes.append({"text": f"Next step: {urgency.next_step}"})
    obs = observation(
        "preliminary",
        codeable(CS_TRIAGE, "urgency-score", "triage urgency score", text="Triage urgency score (0-1)"),
        subject,
        when,
        device={"reference": device},
        valueQuantity=quantity(urgency.score, "1", "1"),
        interpretation=[codeable(CS_URGENCY, urgency.category.value, urgency.category.value.replace("_", " "))],
        component=components,
        note=notes,
    )
    return b.add("urgency", obs)


def _flag_value(flag: Flag) -> dict[str, Any]:
    if isinstance(flag.value, bool) or flag.value is None:
        return {"valueString": "unknown" if flag.value is None else str(flag.value)}
    if isinstance(flag.value, int | float):
        return {"valueQuantity": quantity(flag.value, flag.measure)}
    return {"valueString": str(flag.value)}


def uncertainty_observations(
    b: BundleBuilder, unc: Uncertainty, subject: str, when: str, device: str, names: dict[str, str]
) -> list[str]:
    components: list[dict[str, Any]] = [
        {"code": codeable(CS_TRIAGE, "entropy", "entropy (nats)"), "valueQuantity": quantity(unc.entropy, "nat")},
        {
            "code": codeable(CS_TRIAGE, "top2-margin", "top-1 minus top-2 probability"),
            "valueQuantity": quantity(unc.top2_margin, "1", "1"),
        },
        {"code": codeable(CS_TRIAGE, "needs-review", "needs human review"), "valueBoolean": unc.needs_review},
        {"code": codeable(CS_TRIAGE, "calibrated", "calibrated probabilities"), "valueBoolean": unc.calibrated},
    ]
    if unc.coverage is not None:
        components.append(
            {
                "code": codeable(CS_TRIAGE, "set-coverage", "conformal set nominal coverage"),
                "valueQuantity": quantity(unc.coverage, "1", "1"),
            }
        )
    components += [
        {
            "code": codeable(CS_TRIAGE, "prediction-set-member", "member of the conformal prediction set"),
            "valueCodeableConcept": codeable(CS_CONDITION, member, names.get(member, member.replace("_", " "))),
        }
        for member in unc.prediction_set
    ]
    summary = observation(
        "preliminary",
        codeable(CS_TRIAGE, "uncertainty", "triage uncertainty"),
        subject,
        when,
        device={"reference": device},
        valueBoolean=unc.needs_review,
        component=components,
    )
    if unc.review_reasons:
        summary["note"] = [{"text": reason} for reason in unc.review_reasons]
    refs = [b.add("uncertainty", summary)]
    for i, flag in enumerate(unc.flags):
        threshold = "none" if flag.threshold is None else str(flag.threshold)
        review = "requires-review" if flag.requires_review else "informational"
        obs = observation(
            "preliminary",
            codeable(CS_FLAG, flag.name, flag.name.replace("_", " "), text=f"{flag.name} ({flag.measure})"),
            subject,
            when,
            device={"reference": device},
            **_flag_value(flag),
            referenceRange=[{"text": f"threshold {threshold}"}],
            interpretation=[codeable(CS_TRIAGE, review, review.replace("-", " "))],
            note=[{"text": flag.message}],
        )
        refs.append(b.add(f"uncertainty-flag/{i}/{flag.name}", obs))
    return refs
