"""The dermatology referral a CDS card suggests, as a draft FHIR ``ServiceRequest`` (R4; intent ``proposal``):
the EHR shows it for the clinician to accept, edit or drop; nothing is ordered by this service."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.servicerequest import ServiceRequest

from service.fhir.codes import AI_META, condition_concept
from service.schemas import TriageResult

SNOMED = "http://snomed.info/sct"
REFERRAL_CODE = {  # SNOMED CT 306206005 |Referral to dermatology service (procedure)|
    "coding": [{"system": SNOMED, "code": "306206005", "display": "Referral to dermatology service"}],
    "text": "Referral to dermatology",
}
REFERRAL_CATEGORY = {  # SNOMED CT 3457005 |Patient referral (procedure)|, the R4 servicerequest-category example
    "coding": [{"system": SNOMED, "code": "3457005", "display": "Patient referral"}]
}
PRIORITY = {"urgent": "urgent", "soon": "routine"}  # FHIR request-priority: the urgent pathway, else routine
REFERRED = frozenset(PRIORITY)


def referral_request(result: TriageResult, patient_id: str | None) -> dict[str, Any] | None:
    """A draft ServiceRequest for an ``urgent`` or ``soon`` answer, else None (validated with R4B)."""
    if result.urgency is None or result.urgency.category.value not in REFERRED:
        return None
    top = result.differentials[:3]
    request: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "meta": AI_META,
        "status": "draft",
        "intent": "proposal",
        "category": [REFERRAL_CATEGORY],
        "priority": PRIORITY[result.urgency.category.value],
        "code": REFERRAL_CODE,
        "reasonCode": [condition_concept(d) for d in top],
        "note": [
            {"text": f"Next step: {result.urgency.next_step}"},
            {"text": f"Suggested by {result.model.name} {result.model.version} (AI); result {result.id}."},
        ],
    }
    if patient_id:
        request["subject"] = {"reference": f"Patient/{patient_id}"}
    else:
        request["subject"] = {"display": "the patient in context"}
    return ServiceRequest.model_validate(request).model_dump(mode="json", exclude_none=True)
