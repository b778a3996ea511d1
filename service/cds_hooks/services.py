"""The CDS Hooks discovery document and the shapes of a service call."""

from __future__ import annotations

import urllib.parse
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SERVICE_ID = "dermtriage-skin-photo"
PHOTO_KEYS = ("photos", "photoDocuments")
REQUIRED_PREFETCH = ("patient",)  # plus one of PHOTO_KEYS

PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    # recent skin photos, newest first: Media (R4) and photo DocumentReferences (LOINC 72170-4)
    "photos": "Media?patient={{context.patientId}}&_sort=-created&_count=3",
    "photoDocuments": "DocumentReference?patient={{context.patientId}}&type=http://loinc.org|72170-4&_sort=-date&_count=3",
    # risk factors and symptoms recorded with dermtriage's codes, plus age (LOINC 30525-0)
    "observations": (
        "Observation?patient={{context.patientId}}"
        "&code=https://dermtriage.dev/fhir/CodeSystem/risk-factor|,https://dermtriage.dev/fhir/CodeSystem/triage|symptoms,"
        "http://loinc.org|30525-0&_sort=-date&_count=100"
    ),
}

SERVICE = {
    "hook": "patient-view",
    "id": SERVICE_ID,
    "title": "Skin photo triage (AI decision support)",
    "description": (
        "Triages the patient's most recent skin photo (Media or DocumentReference) with the patient's age, "
        "sex, risk factors and symptoms: differentials with SNOMED CT / ICD-10-CM codes, urgency, flags and "
        "a link to the viewer. Decision support, not a diagnosis."
    ),
    "prefetch": PREFETCH,
    "usageRequirements": (
        "Send a JWT signed by a registered key (aud = this service's URL). Prefetch 'patient' and at least one "
        "of 'photos' / 'photoDocuments' with inline image data, or grant fhirAuthorization so they can be fetched."
    ),
}


def prefetch_path(key: str, patient_id: str) -> str:
    """The FHIR query of a prefetch template for one patient (the id URL-quoted)."""
    return PREFETCH[key].replace("{{context.patientId}}", urllib.parse.quote(patient_id, safe=""))


def discovery() -> dict[str, Any]:
    return {"services": [SERVICE]}


class PatientViewContext(BaseModel):
    model_config = ConfigDict(extra="allow")

    userId: str | None = None
    patientId: str = Field(min_length=1)
    encounterId: str | None = None


class FhirAuthorization(BaseModel):
    model_config = ConfigDict(extra="allow")

    access_token: str
    token_type: str = "Bearer"
    expires_in: int | None = None
    scope: str | None = None
    subject: str | None = None


class CdsRequest(BaseModel):
    """A CDS Hooks service call (only the parts this service reads are validated)."""

    model_config = ConfigDict(extra="allow")

    hook: str
    hookInstance: str = Field(min_length=1)
    fhirServer: str | None = None
    fhirAuthorization: FhirAuthorization | None = None
    context: PatientViewContext
    prefetch: dict[str, Any] | None = None


class OverrideReason(BaseModel):
    model_config = ConfigDict(extra="allow")

    reason: dict[str, Any] | None = None
    userComment: str | None = Field(default=None, max_length=2000)


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="allow")

    card: str = Field(min_length=1, max_length=128)
    outcome: str = Field(pattern="^(accepted|overridden)$")
    acceptedSuggestions: list[dict[str, Any]] = Field(default_factory=list)
    overrideReason: OverrideReason | None = None
    outcomeTimestamp: str


class FeedbackRequest(BaseModel):
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=100)
