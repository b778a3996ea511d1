"""What a generic FHIR client reads first: the CapabilityStatement (``GET /fhir/metadata``) and the
OperationDefinition of ``$triage`` (``GET /fhir/OperationDefinition/triage``).

FHIR version: every resource is built with fhir.resources' R4B models but uses only elements that are
the same in R4, and the tests validate each against the official R4 (4.0.1) JSON schema, so the
service declares ``fhirVersion`` 4.0.1. No profile is claimed (no ``meta.profile`` anywhere).
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from service.fhir.codes import CS_RISK_FACTOR, CS_TRIAGE

FHIR_VERSION = "4.0.1"
SOFTWARE = "dermtriage"
TRIAGE_PATH = "OperationDefinition/triage"
RELEASE_DATE = "2026-12-01"  # of this CapabilityStatement and OperationDefinition's content

_IN = (  # name, type, min, max, documentation
    ("patient", "Patient", 0, "1", "Age from birthDate, sex from gender; its reference becomes the subject."),
    (
        "observation",
        "Observation",
        0,
        "*",
        f"Risk factors ({CS_RISK_FACTOR}, one code per field), LOINC 30525-0 age, {CS_TRIAGE}#symptoms.",
    ),
    (
        "image",
        "Resource",
        1,
        "1",
        "The skin photo: a Media, Binary or DocumentReference with inline data, or a reference to one "
        "(Attachment.url, Binary/{id}) on a FHIR server configured for the caller.",
    ),
    ("symptoms", "string", 0, "1", "The patient's words."),
    ("topK", "integer", 0, "1", "How many differentials (1-10, default 3)."),
    ("explain", "boolean", 0, "1", "Add one heatmap Media per differential."),
    ("modality", "code", 0, "1", "clinical | dermoscopic | auto."),
)


def _parameter(name: str, use: str, kind: str, low: int, high: str, doc: str) -> dict[str, Any]:
    return {"name": name, "use": use, "min": low, "max": high, "documentation": doc, "type": kind}


def operation_definition_json(base_url: str) -> dict[str, Any]:
    """``$triage`` as an R4 OperationDefinition (system level, POST only: it is not idempotent)."""
    parameters = [_parameter(n, "in", t, lo, hi, d) for n, t, lo, hi, d in _IN]
    parameters.append(
        _parameter(
            "return",
            "out",
            "Bundle",
            1,
            "1",
            "A collection Bundle: RiskAssessment, Observations, DiagnosticReport, heatmap Media, Device, "
            "Provenance (AI asserted). Errors are an OperationOutcome.",
        )
    )
    resource = {
        "resourceType": "OperationDefinition",
        "id": "triage",
        "url": f"{base_url}/fhir/{TRIAGE_PATH}",
        "version": FHIR_VERSION,
        "name": "Triage",
        "title": "Skin photo triage (AI decision support)",
        "status": "active",
        "kind": "operation",
        "date": RELEASE_DATE,
        "publisher": SOFTWARE,
        "description": "Differentials with SNOMED CT / ICD-10-CM codes, urgency, uncertainty and heatmaps for one "
        "skin photo with the patient's risk factors and symptoms. Decision support, not a diagnosis.",
        "affectsState": False,
        "code": "triage",
        "system": True,
        "type": False,
        "instance": False,
        "parameter": parameters,
    }
    return _validated(resource)


def capability_statement_json(base_url: str, *, smart_launch: bool) -> dict[str, Any]:
    """The server's R4 CapabilityStatement: the ``$triage`` operation and the OperationDefinition read.

    Security is an API key sent as a bearer token; the ``SMART-on-FHIR`` security service code is not
    claimed, since this server does not accept SMART access tokens (it is a SMART *client*: the viewer's
    launch, named in the description when ``smart_launch``)."""
    security_text = (
        "Send an API key as `Authorization: Bearer <key>` (or `X-API-Key`). CDS Hooks calls use the EHR's signed JWT."
    )
    if smart_launch:
        security_text += f" The viewer is a SMART App Launch client (EHR launch): {base_url}/viewer/launch."
    resource = {
        "resourceType": "CapabilityStatement",
        "id": SOFTWARE,
        "url": f"{base_url}/fhir/metadata",
        "version": FHIR_VERSION,
        "name": "DermtriageCapabilities",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": SOFTWARE,
        "kind": "instance",
        "software": {"name": SOFTWARE},
        "implementation": {"description": "dermtriage FHIR face", "url": f"{base_url}/fhir"},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {"description": security_text},
                "resource": [
                    {
                        "type": "OperationDefinition",
                        "interaction": [{"code": "read"}],
                        "documentation": "Only `triage`.",
                    }
                ],
                "operation": [{"name": "triage", "definition": f"{base_url}/fhir/{TRIAGE_PATH}"}],
            }
        ],
    }
    return _validated(resource)


def _validated(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource after fhir.resources has validated it (as built, not as the model re-serialises it)."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    return resource


@lru_cache(maxsize=8)
def capability_statement(base_url: str, smart_launch: bool) -> bytes:
    """The CapabilityStatement as JSON bytes, built and validated once per base URL."""
    return json.dumps(capability_statement_json(base_url, smart_launch=smart_launch)).encode()


@lru_cache(maxsize=8)
def operation_definition(base_url: str) -> bytes:
    return json.dumps(operation_definition_json(base_url)).encode()
