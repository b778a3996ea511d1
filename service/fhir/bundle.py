"""One TriageResult as a FHIR R4 Bundle (``collection``), every resource validated with fhir.resources R4B.

What goes where:
- ``RiskAssessment``: one ``prediction`` per differential (outcome coded with SNOMED CT / ICD-10-CM and
  the taxonomy id, ``probabilityDecimal``, ``qualitativeRisk`` from the urgency category), ``basis``
  referencing the inputs (photo, risk factors, findings), ``note`` with the urgency reasons,
  next step and disclaimer; ``parent`` points at the DiagnosticReport.
- ``Observation``: the risk factors received, the findings parsed from the symptoms text, the
  urgency (score, category, NG12 points, red flags, SHAP values) and the uncertainty (summary
  plus one per flag, with value and threshold).
- ``DiagnosticReport`` (``preliminary``: machine output no clinician has reviewed) ties the
  Observations and heatmap Media together with a conclusion in words.
- ``Media``: the input photo's description (no pixels echoed) and one PNG overlay per heatmap,
  linked to the differential it explains (``reasonCode`` and the report's ``media.comment``).
- ``Device`` (the model: name, version, AI device type, model card) with a model-card
  ``DocumentReference``, and a ``Provenance`` whose reason is ``AIAST`` (artificial intelligence
  asserted), as the HL7 AI Transparency on FHIR guide does; every generated resource also carries
  the ``AIAST`` security label.

Fields of the result that are null (heatmaps, findings, urgency, uncertainty, ...) simply add no
resources. Resource ids are uuid5 of the request id, so the same answer gives the same Bundle.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle

from models.knowledge.risk_factors import BODY_SITE_SNOMED, BodySite, RiskFactors
from models.knowledge.symptoms import SymptomFindings
from models.scoring.urgency import UrgencyResult
from models.uncertainty.contract import Flag, Uncertainty
from service.schemas import SNOMED_CT, Differential, TriageResult

DT = "https://dermtriage.dev/fhir/CodeSystem/"
CS_CONDITION = DT + "condition"
CS_RISK_FACTOR = DT + "risk-factor"
CS_FINDING = DT + "symptom-finding"
CS_TRIAGE = DT + "triage"
CS_URGENCY = DT + "urgency-category"
CS_FLAG = DT + "uncertainty-flag"
REQUEST_ID_SYSTEM = "https://dermtriage.dev/fhir/request-id"

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V3_OBS_VALUE = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
RISK_PROBABILITY = "http://terminology.hl7.org/CodeSystem/risk-probability"
MEDIA_TYPE = "http://terminology.hl7.org/CodeSystem/media-type"
PROVENANCE_PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
AI_IG = "http://hl7.org/fhir/uv/aitransparency/"
AI_DEVICE_TYPE = AI_IG + "CodeSystem/AIdeviceTypeCS"
AI_INPUTS = AI_IG + "CodeSystem/AIinputsCS"
AI_MODEL_CARD_EXT = AI_IG + "StructureDefinition/aitransparency.modelCardDescription"

AI_ASSERTED = {"system": V3_OBS_VALUE, "code": "AIAST", "display": "Artificial Intelligence asserted"}
AI_META = {"security": [AI_ASSERTED]}
_SURVEY = {"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}], "text": "Survey"}
_NAMESPACE = uuid.UUID("6f1c2d3e-4b5a-5c6d-8e7f-9a0b1c2d3e4f")

# urgency category -> (risk-probability code, display); the case's urgency, shown on every prediction
QUALITATIVE_RISK = {
    "emergency": ("high", "High likelihood"),
    "urgent": ("high", "High likelihood"),
    "soon": ("moderate", "Moderate likelihood"),
    "routine": ("low", "Low likelihood"),
    "self_care": ("negligible", "Negligible likelihood"),
}
# RiskFactors fields with a unit: field -> (unit text, UCUM code)
_QUANTITIES = {"age": ("years", "a"), "diameter_mm": ("mm", "mm"), "lesion_duration_days": ("days", "d")}


def _id(request_id: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{request_id}/{name}"))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: dict[str, Any] = {"coding": [coding]}
    if text or display:
        out["text"] = text or display
    return out


def _quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    q: dict[str, Any] = {"value": round(float(value), 6), "unit": unit}
    if code:
        q |= {"system": UCUM, "code": code}
    return q


def condition_concept(d: Differential) -> dict[str, Any]:
    """A differential's outcome: its SNOMED CT / ICD-10-CM codes plus the taxonomy id (or caller label)."""
    codings = [{"system": c.system, "code": c.code, "display": c.display} for c in d.codes]
    if d.condition_id:
        codings.append({"system": CS_CONDITION, "code": d.condition_id, "display": d.name})
    out: dict[str, Any] = {"text": d.name}
    if codings:
        out["coding"] = codings
    return out


class _Builder:
    """Collects validated resources with urn:uuid full URLs."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.entries: list[tuple[str, Any]] = []

    def add(self, name: str, resource: dict[str, Any], *, ai: bool = True) -> str:
        rid = _id(self.request_id, name)
        resource = {"id": rid, **resource}
        if ai:
            resource["meta"] = AI_META
        model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        url = f"urn:uuid:{rid}"
        self.entries.append((url, model))
        return url


def _observation(status: str, code: dict[str, Any], subject: str, when: str, **fields: Any) -> dict[str, Any]:
    """An Observation of ``subject`` at ``when``; ``fields`` add the value, category, device, notes ..."""
    return {
        "resourceType": "Observation",
        "status": status,
        "code": code,
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        **fields,
    }


def _patient(result: TriageResult) -> dict[str, Any]:
    patient: dict[str, Any] = {"resourceType": "Patient", "active": True}
    sex = result.risk_factors.sex if result.risk_factors else None
    if sex is not None:
        patient["gender"] = sex.value
    return patient


def _value(field: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"valueBoolean": value}
    if field in _QUANTITIES:
        unit, code = _QUANTITIES[field]
        return {"valueQuantity": _quantity(value, unit, code)}
    if isinstance(value, int):
        return {"valueInteger": value}
    if isinstance(value, BodySite):
        concept = _concept(CS_RISK_FACTOR + "/body-site", value.value, value.value.replace("_", " "))
        snomed = BODY_SITE_SNOMED.get(value)
        if snomed is not None:
            concept["coding"].insert(0, {"system": SNOMED_CT, "code": snomed.code, "display": snomed.display})
        return {"valueCodeableConcept": concept}
    if isinstance(value, Enum):
        return {"valueCodeableConcept": _concept(CS_RISK_FACTOR + "/" + field, str(value.value), str(value.value))}
    if isinstance(value, float):
        return {"valueQuantity": _quantity(value, "1", "1")}
    return {"valueString": str(value)}


def _risk_factor_observations(b: _Builder, risk: RiskFactors, subject: str, when: str) -> list[str]:
    refs = []
    for field in risk.model_dump(exclude_none=True):
        description = RiskFactors.model_fields[field].description or field
        code = _concept(CS_RISK_FACTOR, field, field.replace("_", " "), text=description.split(" True = ")[0])
        if field == "age":
            code["coding"].insert(0, {"system": LOINC, "code": "30525-0", "display": "Age"})
        obs = _observation("final", code, subject, when, category=[_SURVEY], **_value(field, getattr(risk, field)))
        refs.append(b.add(f"risk-factor/{field}", obs, ai=False))
    return refs


def _finding_observations(b: _Builder, findings: SymptomFindings, subject: str, when: str) -> list[str]:
    note = [{"text": "Parsed from the patient's own words by dermtriage (negations kept)."}]
    refs = []

    def add(name: str, code: dict[str, Any], value: dict[str, Any]) -> None:
        obs = _observation("preliminary", code, subject, when, category=[_SURVEY], note=note, **value)
        refs.append(b.add(f"finding/{name}", obs))

    for concept in sorted(findings.present):
        add(concept, _concept(CS_FINDING, concept, concept.replace("_", " ")), {"valueBoolean": True})
    for concept in sorted(findings.absent - findings.present):
        add(concept, _concept(CS_FINDING, concept, concept.replace("_", " ")), {"valueBoolean": False})
    if findings.duration_days is not None:
        add(
            "duration",
            _concept(CS_FINDING, "duration", "lesion duration", text=findings.duration_text or "lesion duration"),
            {"valueQuantity": _quantity(findings.duration_days, "days", "d")},
        )
    if findings.diameter_mm is not None:
        add(
            "diameter",
            _concept(CS_FINDING, "diameter", "diameter"),
            {"valueQuantity": _quantity(findings.diameter_mm, "mm", "mm")},
        )
    if findings.immunosuppression_kind is not None:
        kind = findings.immunosuppression_kind.value
        add(
            "immunosuppression",
            _concept(CS_FINDING, "immunosuppression", "immunosuppression"),
            {"valueCodeableConcept": _concept(CS_RISK_FACTOR + "/immunosuppression", kind, kind)},
        )
    return refs


def _urgency_observation(
    b: _Builder, result: TriageResult, urgency: UrgencyResult, subject: str, when: str, device: str
) -> str:
    components: list[dict[str, Any]] = [
        {
            "code": _concept(CS_TRIAGE, "urgency-category", "urgency category"),
            "valueCodeableConcept": _concept(
                CS_URGENCY, urgency.category.value, urgency.category.value.replace("_", " ")
            ),
        },
        {
            "code": _concept(CS_TRIAGE, "ng12-points", "NICE NG12 weighted 7-point checklist points"),
            "valueInteger": urgency.ng12.points,
        },
    ]
    components += [
        {"code": _concept(CS_TRIAGE, "red-flag", "red flag"), "valueString": flag} for flag in urgency.red_flags
    ]
    if result.urgency_shap is not None:
        components += [
            {
                "code": _concept(
                    CS_TRIAGE, f"urgency-shap-{feature}", f"SHAP value of {feature} for the urgency score"
                ),
                "valueQuantity": _quantity(value, "1", "1"),
            }
            for feature, value in result.urgency_shap.values.items()
        ]
    notes = [{"text": f"{r.category.value}: {r.text}"} for r in urgency.reasons]
    notes.append({"text": f"Next step: {urgency.next_step}"})
    obs = _observation(
        "preliminary",
        _concept(CS_TRIAGE, "urgency-score", "triage urgency score", text="Triage urgency score (0-1)"),
        subject,
        when,
        device={"reference": device},
        valueQuantity=_quantity(urgency.score, "1", "1"),
        interpretation=[_concept(CS_URGENCY, urgency.category.value, urgency.category.value.replace("_", " "))],
        component=components,
        note=notes,
    )
    return b.add("urgency", obs)


def _flag_value(flag: Flag) -> dict[str, Any]:
    if isinstance(flag.value, bool) or flag.value is None:
        return {"valueString": "unknown" if flag.value is None else str(flag.value)}
    if isinstance(flag.value, int | float):
        return {"valueQuantity": _quantity(flag.value, flag.measure)}
    return {"valueString": str(flag.value)}


def _uncertainty_observations(
    b: _Builder, unc: Uncertainty, subject: str, when: str, device: str, names: dict[str, str]
) -> list[str]:
    components: list[dict[str, Any]] = [
        {"code": _concept(CS_TRIAGE, "entropy", "entropy (nats)"), "valueQuantity": _quantity(unc.entropy, "nat")},
        {
            "code": _concept(CS_TRIAGE, "top2-margin", "top-1 minus top-2 probability"),
            "valueQuantity": _quantity(unc.top2_margin, "1", "1"),
        },
        {"code": _concept(CS_TRIAGE, "needs-review", "needs human review"), "valueBoolean": unc.needs_review},
        {"code": _concept(CS_TRIAGE, "calibrated", "calibrated probabilities"), "valueBoolean": unc.calibrated},
    ]
    if unc.coverage is not None:
        components.append(
            {
                "code": _concept(CS_TRIAGE, "set-coverage", "conformal set nominal coverage"),
                "valueQuantity": _quantity(unc.coverage, "1", "1"),
            }
        )
    components += [
        {
            "code": _concept(CS_TRIAGE, "prediction-set-member", "member of the conformal prediction set"),
            "valueCodeableConcept": _concept(CS_CONDITION, member, names.get(member, member.replace("_", " "))),
        }
        for member in unc.prediction_set
    ]
    summary = _observation(
        "preliminary",
        _concept(CS_TRIAGE, "uncertainty", "triage uncertainty"),
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
        obs = _observation(
            "preliminary",
            _concept(CS_FLAG, flag.name, flag.name.replace("_", " "), text=f"{flag.name} ({flag.measure})"),
            subject,
            when,
            device={"reference": device},
            **_flag_value(flag),
            referenceRange=[{"text": f"threshold {threshold}"}],
            interpretation=[_concept(CS_TRIAGE, review, review.replace("-", " "))],
            note=[{"text": flag.message}],
        )
        refs.append(b.add(f"uncertainty-flag/{i}/{flag.name}", obs))
    return refs


def _conclusion(result: TriageResult) -> str:
    parts = []
    if result.urgency is not None:
        parts.append(f"Urgency {result.urgency.category.value.replace('_', ' ')} ({result.urgency.score:.2f}).")
    ranked = ", ".join(f"{d.name} {d.probability:.0%}" for d in result.differentials)
    parts.append(f"Differentials: {ranked}.")
    if result.urgency is not None:
        parts.append(f"Next step: {result.urgency.next_step}")
    if result.uncertainty is not None and result.uncertainty.needs_review:
        reasons = "; ".join(result.uncertainty.review_reasons) or "see the uncertainty flags"
        parts.append(f"Needs human review: {reasons}.")
    parts.append(f"AI-generated by {result.model.name} {result.model.version}. {result.disclaimer}")
    return " ".join(parts)


def triage_bundle(
    result: TriageResult,
    base_url: str = "",
    *,
    subject: str | None = None,
    photo: str | None = None,
    inputs: list[str] | None = None,
    timestamp: str | None = None,
) -> Bundle:
    """The Bundle for one answer.

    ``subject``: a reference to the caller's Patient (``Patient/123``); without it an anonymous Patient
    (gender only) is added. ``photo``: a reference to the caller's photo resource; without it a Media
    describing the photo (format, size, no pixels) is added. ``inputs``: further references to the
    caller's resources used (e.g. Observations). ``base_url`` makes the model card link absolute.
    """
    b = _Builder(result.request_id)
    when = timestamp or _now()
    subject_ref = subject or b.add("patient", _patient(result), ai=False)
    card_url = base_url.rstrip("/") + result.model.card_url if result.model.card_url else None

    card_ref = None
    if card_url:
        card_ref = b.add(
            "model-card",
            {
                "resourceType": "DocumentReference",
                "status": "current",
                "type": _concept(AI_INPUTS, "AIModelCard", "AI Model-Card"),
                "description": f"Model card of {result.model.name} {result.model.version}",
                "content": [{"attachment": {"contentType": "application/json", "url": card_url}}],
            },
            ai=False,
        )
    device: dict[str, Any] = {
        "resourceType": "Device",
        "status": "active",
        "manufacturer": "dermtriage",
        "deviceName": [{"name": result.model.name, "type": "model-name"}],
        "type": _concept(AI_DEVICE_TYPE, "Artificial-Intelligence", "All kinds of Artificial Intelligence"),
        "version": [{"value": result.model.version}],
        "note": [
            {
                "text": f"Zero-shot image-text model with symptom and risk-factor fusion "
                f"({result.fusion_model or 'image only'}); taxonomy {result.taxonomy_version}."
            }
        ],
    }
    if card_url:
        device["url"] = card_url
    if card_ref:
        device["extension"] = [{"url": AI_MODEL_CARD_EXT, "valueReference": {"reference": card_ref}}]
    device_ref = b.add("device", device, ai=False)

    photo_ref = photo
    if photo_ref is None:
        info = result.image
        photo_ref = b.add(
            "photo",
            {
                "resourceType": "Media",
                "status": "completed",
                "type": _concept(MEDIA_TYPE, "image", "Image"),
                "subject": {"reference": subject_ref},
                "width": info.width,
                "height": info.height,
                "content": {"contentType": f"image/{info.format}", "size": info.bytes, "title": "the photo triaged"},
                "note": [{"text": "The photo as received (metadata stripped); its pixels are not echoed."}],
            },
            ai=False,
        )

    inputs_refs = list(inputs or [])
    if result.risk_factors is not None:
        inputs_refs += _risk_factor_observations(b, result.risk_factors, subject_ref, when)
    finding_refs = _finding_observations(b, result.findings, subject_ref, when) if result.findings else []
    names = {d.condition_id or d.label: d.name for d in result.differentials}
    output_obs: list[str] = list(finding_refs)
    if result.urgency is not None:
        output_obs.append(_urgency_observation(b, result, result.urgency, subject_ref, when, device_ref))
    if result.uncertainty is not None:
        output_obs += _uncertainty_observations(b, result.uncertainty, subject_ref, when, device_ref, names)

    media_links: list[dict[str, Any]] = []
    for heatmap in result.heatmaps or []:
        if not 0 <= heatmap.index < len(result.differentials):
            continue
        d = result.differentials[heatmap.index]
        title = f"{heatmap.method} heatmap for differential {d.rank}: {d.name}"
        media_ref = b.add(
            f"heatmap/{heatmap.index}",
            {
                "resourceType": "Media",
                "status": "completed",
                "type": _concept(MEDIA_TYPE, "image", "Image"),
                "subject": {"reference": subject_ref},
                "createdDateTime": when,
                "device": {"reference": device_ref},
                "reasonCode": [condition_concept(d)],
                "width": heatmap.width,
                "height": heatmap.height,
                "content": {"contentType": "image/png", "data": heatmap.png_base64, "title": title},
                "note": [
                    {"text": f"Explains differential rank {d.rank} ({d.name}); peak at {heatmap.peak} photo pixels."},
                    {"text": heatmap.covers.note},
                ],
            },
        )
        media_links.append({"comment": title, "link": {"reference": media_ref}})

    report_ref = f"urn:uuid:{_id(result.request_id, 'report')}"
    qualitative = None
    if result.urgency is not None:
        code, display = QUALITATIVE_RISK[result.urgency.category.value]
        qualitative = {
            "coding": [
                {"system": RISK_PROBABILITY, "code": code, "display": display},
                {"system": CS_URGENCY, "code": result.urgency.category.value},
            ],
            "text": f"case urgency: {result.urgency.category.value.replace('_', ' ')}",
        }
    predictions = []
    for d in result.differentials:
        rationale = [f"rank {d.rank}"]
        if d.image_probability is not None:
            rationale.append(f"photo alone {d.image_probability:.1%}")
        if d.contributions:
            rationale.append("log-odds " + ", ".join(f"{k} {v:+.2f}" for k, v in d.contributions.items()))
        if d.look_alikes:
            rationale.append("look-alikes: " + ", ".join(x.name for x in d.look_alikes))
        if not d.validated_for_model:
            rationale.append("not validated for this model")
        prediction: dict[str, Any] = {
            "outcome": condition_concept(d),
            "probabilityDecimal": round(d.probability, 6),
            "rationale": "; ".join(rationale),
        }
        if qualitative:
            prediction["qualitativeRisk"] = qualitative
        predictions.append(prediction)
    notes = []
    if result.urgency is not None:
        notes += [{"text": f"{r.category.value}: {r.text}"} for r in result.urgency.reasons]
        notes.append({"text": f"Next step: {result.urgency.next_step}"})
    notes.append({"text": result.disclaimer})
    b.add(
        "risk-assessment",
        {
            "resourceType": "RiskAssessment",
            "identifier": [{"system": REQUEST_ID_SYSTEM, "value": result.request_id}],
            "status": "preliminary",
            "method": {
                "text": f"{result.model.name} {result.model.version} ({result.label_source}, {result.modality})"
            },
            "subject": {"reference": subject_ref},
            "occurrenceDateTime": when,
            "performer": {"reference": device_ref},
            "parent": {"reference": report_ref},
            "basis": [{"reference": r} for r in [photo_ref, *inputs_refs, *finding_refs]],
            "prediction": predictions,
            "note": notes,
        },
    )
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": REQUEST_ID_SYSTEM, "value": result.request_id}],
        "status": "preliminary",
        "code": _concept(CS_TRIAGE, "skin-photo-triage", "Skin photo triage (AI decision support)"),
        "subject": {"reference": subject_ref},
        "effectiveDateTime": when,
        "issued": when,
        "conclusion": _conclusion(result),
    }
    if output_obs:
        report["result"] = [{"reference": r} for r in output_obs]
    if media_links:
        report["media"] = media_links
    b.add("report", report)

    generated = [u for u, _ in b.entries if u not in {subject_ref, photo_ref, device_ref, card_ref, *inputs_refs}]
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": u} for u in generated],
        "recorded": when,
        "reason": [{"coding": [AI_ASSERTED], "text": "AI-generated decision support; not reviewed by a clinician"}],
        "agent": [
            {
                "type": _concept(PROVENANCE_PARTICIPANT, "author", "Author"),
                "role": [_concept(AI_DEVICE_TYPE, "Artificial-Intelligence", "All kinds of Artificial Intelligence")],
                "who": {"reference": device_ref, "display": f"{result.model.name} {result.model.version}"},
            }
        ],
        "entity": [{"role": "source", "what": {"reference": photo_ref}}],
    }
    if card_ref:
        provenance["entity"].append({"role": "derivation", "what": {"reference": card_ref}})
    b.add("provenance", provenance)

    bundle = {
        "resourceType": "Bundle",
        "id": _id(result.request_id, "bundle"),
        "meta": AI_META,
        "identifier": {"system": REQUEST_ID_SYSTEM, "value": result.request_id},
        "type": "collection",
        "timestamp": when,
        "entry": [{"fullUrl": url, "resource": model} for url, model in b.entries],
    }
    return Bundle.model_validate(bundle)


def bundle_json(result: TriageResult, base_url: str = "", **kwargs: Any) -> bytes:
    """The Bundle as compact FHIR JSON bytes."""
    return triage_bundle(result, base_url, **kwargs).model_dump_json().encode()
