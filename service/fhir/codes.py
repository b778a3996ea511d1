"""FHIR vocabulary of the triage Bundle: code systems, coded values, ids and the resource collector.

Shared by service/fhir/bundle.py (the Bundle and its resources), service/fhir/observations.py
(the Observations) and the intake and CDS Hooks faces, which read the same code systems.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from service.schemas import Differential

DT = "https://dermtriage.dev/fhir/CodeSystem/"
CS_CONDITION = DT + "condition"
CS_RISK_FACTOR = DT + "risk-factor"
CS_FINDING = DT + "symptom-finding"
CS_TRIAGE = DT + "triage"
CS_URGENCY = DT + "urgency-category"
CS_FLAG = DT + "uncertainty-flag"
REQUEST_ID_SYSTEM = "https://dermtriage.dev/fhir/request-id"  # the caller's correlation id
RESULT_ID_SYSTEM = "https://dermtriage.dev/fhir/result-id"  # the server-minted id: GET /v1/triage/{id}

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

V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
# LOINC has no code for an AI triage of a skin photo; 18748-4 "Diagnostic imaging study" is the LOINC
# code EHRs file imaging reports under (US Core's report-and-note value set), and the triaged photo is
# the study. The dermtriage code follows as a second, more precise coding.
REPORT_CODE = {
    "coding": [
        {"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"},
        {"system": CS_TRIAGE, "code": "skin-photo-triage", "display": "Skin photo triage (AI decision support)"},
    ],
    "text": "Skin photo triage (AI decision support)",
}
# HL7 v2 table 0074 (diagnostic service section) has no dermatology or photography section; RAD is the
# imaging section, where EHRs list imaging reports, so the report shows with the patient's imaging.
REPORT_CATEGORY = {"coding": [{"system": V2_0074, "code": "RAD", "display": "Radiology"}], "text": "Imaging"}

AI_ASSERTED = {"system": V3_OBS_VALUE, "code": "AIAST", "display": "Artificial Intelligence asserted"}
AI_META = {"security": [AI_ASSERTED]}
_NAMESPACE = uuid.UUID("6f1c2d3e-4b5a-5c6d-8e7f-9a0b1c2d3e4f")

# urgency category -> (risk-probability code, display); the case's urgency, shown on every prediction
QUALITATIVE_RISK = {
    "emergency": ("high", "High likelihood"),
    "urgent": ("high", "High likelihood"),
    "soon": ("moderate", "Moderate likelihood"),
    "routine": ("low", "Low likelihood"),
    "self_care": ("negligible", "Negligible likelihood"),
}


def resource_id(request_id: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{request_id}/{name}"))


def codeable(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    coding: dict[str, Any] = {"system": system, "code": code}
    if display:
        coding["display"] = display
    out: dict[str, Any] = {"coding": [coding]}
    if text or display:
        out["text"] = text or display
    return out


def quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
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


class BundleBuilder:
    """Collects validated resources with urn:uuid full URLs."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.entries: list[tuple[str, Any]] = []

    def add(self, name: str, resource: dict[str, Any], *, ai: bool = True) -> str:
        rid = resource_id(self.request_id, name)
        resource = {"id": rid, **resource}
        if ai:
            resource["meta"] = AI_META
        model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        url = f"urn:uuid:{rid}"
        self.entries.append((url, model))
        return url


def observation(status: str, code: dict[str, Any], subject: str, when: str, **fields: Any) -> dict[str, Any]:
    """An Observation of ``subject`` at ``when``; ``fields`` add the value, category, device, notes ..."""
    return {
        "resourceType": "Observation",
        "status": status,
        "code": code,
        "subject": {"reference": subject},
        "effectiveDateTime": when,
        **fields,
    }
