"""``POST /fhir/$triage``: a FHIR Parameters or Bundle in, the triage Bundle out; errors as OperationOutcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import anyio
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.exceptions import HTTPException
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example, OpenAPIMediaType, Operation, RequestBody, Schema
from litestar.openapi.spec.enums import OpenAPIType

from service.auth.guard import API_KEY_SECURITY, auth_of
from service.engine import TriageEngine
from service.fhir.conformance import capability_statement, operation_definition
from service.fhir.intake import read_fhir_body
from service.fhir.negotiate import fhir_response
from service.fhir.outcome import FHIR_JSON, FhirError, handle_fhir_error, handle_problem_as_outcome, outcome_response
from service.images import ImageError
from service.openapi import example_response
from service.problems import Problem, request_id_of
from service.results import client_of, principal_of
from service.runtime import InferenceRunner, ServiceState
from service.smart.photos import backend_photo_resolver
from service.smart.state import smart_state

_B64 = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHSEaHR8e..."
PARAMETERS_EXAMPLE = {
    "resourceType": "Parameters",
    "parameter": [
        {
            "name": "patient",
            "resource": {"resourceType": "Patient", "id": "p1", "gender": "male", "birthDate": "1958-04-02"},
        },
        {
            "name": "observation",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {
                    "coding": [{"system": "https://dermtriage.dev/fhir/CodeSystem/risk-factor", "code": "bleeding"}]
                },
                "valueBoolean": True,
            },
        },
        {"name": "symptoms", "valueString": "mole getting bigger, no pain"},
        {"name": "topK", "valueInteger": 3},
        {
            "name": "image",
            "resource": {
                "resourceType": "Media",
                "id": "m1",
                "status": "completed",
                "content": {"contentType": "image/jpeg", "data": _B64},
            },
        },
    ],
}
BUNDLE_EXAMPLE = {
    "resourceType": "Bundle",
    "type": "collection",
    "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "AIAST"}]},
    "entry": [
        {
            "fullUrl": "urn:uuid:0b6d...",
            "resource": {
                "resourceType": "RiskAssessment",
                "status": "preliminary",
                "subject": {"reference": "Patient/p1"},
                "prediction": [{"outcome": {"text": "melanoma"}, "probabilityDecimal": 0.41}],
            },
        },
        {
            "fullUrl": "urn:uuid:5c1e...",
            "resource": {
                "resourceType": "DiagnosticReport",
                "status": "preliminary",
                "code": {"text": "Skin photo triage (AI decision support)"},
                "conclusion": "Urgency urgent (0.72). Differentials: melanoma 41%, ...",
            },
        },
        {
            "fullUrl": "urn:uuid:9a7f...",
            "resource": {
                "resourceType": "Provenance",
                "recorded": "2026-01-01T00:00:00Z",
                "target": [{"reference": "urn:uuid:0b6d..."}],
                "agent": [{"who": {"reference": "urn:uuid:77aa..."}}],
            },
        },
    ],
}
OUTCOME_EXAMPLE = {
    "resourceType": "OperationOutcome",
    "issue": [
        {
            "severity": "error",
            "code": "required",
            "diagnostics": "No photo: add the skin photo as a Media, Binary or DocumentReference "
            "(inline data or a reference).",
        }
    ],
}


def _outcome_spec(description: str) -> ResponseSpec:
    return example_response(dict, description, "OperationOutcome", OUTCOME_EXAMPLE, FHIR_JSON)


def handle_image_error(request: Request[Any, Any, Any], exc: ImageError) -> Response[bytes]:
    return outcome_response(request, FhirError(exc.status, exc.message))


def handle_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    return outcome_response(request, FhirError(exc.status_code, str(exc.detail), headers=dict(exc.headers or {})))


@dataclass
class FhirTriageOperation(Operation):
    """The $triage operation with its FHIR request body documented."""

    def __post_init__(self) -> None:
        schema = Schema(type=OpenAPIType.OBJECT, description="a FHIR R4 Parameters or Bundle resource")
        self.request_body = RequestBody(
            required=True,
            description="Parameters (patient, observation*, image, symptoms, topK, explain, modality) or a Bundle",
            content={
                media: OpenAPIMediaType(
                    schema=schema,
                    examples={"parameters": Example(summary="Parameters with a Media photo", value=PARAMETERS_EXAMPLE)},
                )
                for media in (FHIR_JSON, "application/json")
            },
        )


class FhirController(Controller):
    path = "/fhir"
    tags = ("fhir",)
    exception_handlers = {  # noqa: RUF012 (Litestar reads it as a class attribute)
        FhirError: handle_fhir_error,
        Problem: handle_problem_as_outcome,
        ImageError: handle_image_error,
        HTTPException: handle_http_error,
    }

    @get(
        "/metadata",
        summary="FHIR CapabilityStatement (R4 4.0.1): the $triage operation, formats and security",
        opt={"auth": "open"},
        responses={
            200: example_response(
                dict, "CapabilityStatement", "metadata", {"resourceType": "CapabilityStatement"}, FHIR_JSON
            )
        },
        sync_to_thread=False,
    )
    def metadata(self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState]) -> Response[bytes]:
        smart = bool(service.settings.smart_client_configs())
        return Response(capability_statement(auth_of(request).base_url(request), smart), media_type=FHIR_JSON)

    @get(
        "/OperationDefinition/triage",
        summary="FHIR OperationDefinition of $triage",
        opt={"auth": "open"},
        responses={
            200: example_response(
                dict, "OperationDefinition", "triage", {"resourceType": "OperationDefinition"}, FHIR_JSON
            )
        },
        sync_to_thread=False,
    )
    def triage_definition(self, request: Request[Any, Any, Any]) -> Response[bytes]:
        return Response(operation_definition(auth_of(request).base_url(request)), media_type=FHIR_JSON)

    @post(
        "/$triage",
        status_code=200,
        summary="FHIR operation: triage a photo sent as FHIR, answer a FHIR Bundle",
        description=(
            "Send a Parameters or Bundle (application/fhir+json) with a Patient (age from birthDate, sex from "
            "gender), Observations (risk factors with dermtriage's risk-factor codes, LOINC 30525-0 age, symptoms) "
            "and exactly one photo as Media, Binary or DocumentReference with inline data, or by reference (an "
            "absolute URL on a FHIR server configured for SMART Backend Services). The answer is the same "
            "Bundle `POST /v1/triage?format=fhir` gives: RiskAssessment, Observations, DiagnosticReport, Media per "
            "heatmap, Device, Provenance. Errors are OperationOutcome: 400 malformed, 422 unusable, 415, 401, 429."
        ),
        operation_class=FhirTriageOperation,
        security=API_KEY_SECURITY,
        responses={
            200: example_response(
                dict, "the triage Bundle (collection)", "triage Bundle (abridged)", BUNDLE_EXAMPLE, FHIR_JSON
            ),
            400: _outcome_spec("malformed JSON or FHIR, or an undecodable photo"),
            401: _outcome_spec("no or invalid API key"),
            415: _outcome_spec("not FHIR JSON"),
            422: _outcome_spec("valid FHIR that cannot be used (no photo, invalid value)"),
        },
    )
    async def triage(
        self,
        request: Request[Any, Any, Any],
        engine: NamedDependency[TriageEngine],
        runner: NamedDependency[InferenceRunner],
        service: NamedDependency[ServiceState],
    ) -> Response[bytes]:
        media_type, _ = request.content_type
        if media_type not in (FHIR_JSON, "application/json"):
            raise FhirError(
                415,
                f"Content-Type {media_type or 'none'!r} is not accepted; send application/fhir+json.",
                headers={"Accept-Post": FHIR_JSON},
            )
        body = await request.body()  # parsing and FHIR validation run in a worker thread, never on the event loop
        resolve = backend_photo_resolver(smart_state(request.app.state))  # photos by reference
        received = await anyio.to_thread.run_sync(read_fhir_body, body, service.settings.max_fhir_resources, resolve)
        result = await service.triage(received, request_id_of(request), principal_of(request), client_of(request))
        return fhir_response(
            request, result, subject=received.subject, photo=received.photo_ref, inputs=received.inputs
        )
