"""HL7 CDS Hooks: ``GET /cds-services`` (discovery, open), ``POST /cds-services/{service_id}`` (cards) and
``POST /cds-services/{service_id}/feedback``, both behind the EHR's signed JWT."""

from __future__ import annotations

import logging
import time
from typing import Any, TypeVar

import anyio
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Parameter
from pydantic import BaseModel

from service.auth.guard import CDS_JWT_SECURITY, auth_of, cds_issuer_of
from service.cds_hooks.cards import CS_OVERRIDE, OVERRIDE_CODES, triage_card
from service.cds_hooks.prefetch import gather, photo_session, read_patient_data
from service.cds_hooks.services import SERVICE_ID, CdsRequest, FeedbackRequest, discovery
from service.cds_hooks.state import CdsState, FeedbackRecord, photo_key
from service.intake import load_json
from service.openapi import example_response, problem_example, problem_responses
from service.problems import Problem, request_id_of, validated
from service.results import client_of, principal_of
from service.runtime import InferenceRunner, ServiceState
from service.schemas import TriageOptions
from service.smart.launch import LaunchError
from service.smart.state import smart_state

CDS_OPTIONS = TriageOptions(top_k=5)
log = logging.getLogger("dermtriage.cds")
M = TypeVar("M", bound=BaseModel)
CARDS_EXAMPLE = {
    "cards": [
        {
            "uuid": "b1f5c7c2-3f0e-4a57-9d0e-0c1f6f6f2a11",
            "summary": "Skin photo: urgent — melanoma 55% (AI)",
            "indicator": "critical",
            "detail": "**Urgency: urgent** (score 0.72). Refer on the suspected skin cancer pathway ...\n\n"
            "| # | condition | probability | codes |\n|---|---|---|---|\n"
            "| 1 | melanoma | 55% | SNOMED CT 372244006, ICD-10-CM C43.9 |",
            "source": {
                "label": "dermtriage (embedded-pad-lite0 1.1.0)",
                "url": "https://dermtriage.example.org/v1/models/embedded-pad-lite0",
            },
            "links": [
                {
                    "label": "Open in the dermtriage viewer",
                    "url": "https://dermtriage.example.org/viewer?result=9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b"
                    "&share=Hk3xq0Vb2mN9pL4sT7wY1A",
                    "type": "absolute",
                }
            ],
            "overrideReasons": [
                {
                    "system": "https://dermtriage.dev/fhir/CodeSystem/card-override-reason",
                    "code": "already-referred",
                    "display": "Already referred or under dermatology care",
                }
            ],
            "suggestions": [
                {
                    "label": "Refer to dermatology (urgent)",
                    "uuid": "5b0c9a7e-1d2f-5e3a-8b4c-6d7e8f9a0b1c",
                    "isRecommended": True,
                    "actions": [
                        {
                            "type": "create",
                            "description": "Draft a dermatology referral",
                            "resource": {"resourceType": "ServiceRequest", "status": "draft", "intent": "proposal"},
                        }
                    ],
                }
            ],
            "selectionBehavior": "at-most-one",
        }
    ]
}


def cds_state(request: Request[Any, Any, Any]) -> CdsState:
    return request.app.state.cds  # type: ignore[no-any-return]


_UNKNOWN_SERVICE_DETAIL = "No CDS service with this id; see GET /cds-services."
UNKNOWN_SERVICE = (404, problem_example("unknown-cds-service", 404, "Unknown cds service", _UNKNOWN_SERVICE_DETAIL))


def _known_service(service_id: str) -> None:
    if service_id != SERVICE_ID:
        raise Problem("unknown-cds-service", 404, _UNKNOWN_SERVICE_DETAIL)


def _parse(body: bytes, model: type[M], max_resources: int) -> M:
    """Blocking (a worker thread): the body as JSON within limits, validated as ``model``."""
    return validated(model, load_json(body, max_resources=max_resources))


async def _json(request: Request[Any, Any, Any], model: type[M]) -> M:
    """The body parsed and validated off the event loop (4xx problems for every refusal)."""
    body = await request.body()
    max_resources = request.app.state.service.settings.max_fhir_resources
    return await anyio.to_thread.run_sync(_parse, body, model, max_resources)


_SERVICE_ID = Parameter(description="the CDS service id from discovery", examples=[Example(value=SERVICE_ID)])


async def _backend_token(request: Request[Any, Any, Any], call: CdsRequest) -> str | None:
    """A SMART Backend Services token for the call's fhirServer when the call grants no fhirAuthorization
    and that server is configured with ``backend`` (None otherwise, or when the EHR refuses)."""
    if call.fhirAuthorization is not None:
        return None
    smart = smart_state(request.app.state)
    client = smart.client_for(call.fhirServer)
    if client is None or client.backend is None:
        return None
    try:
        return await anyio.to_thread.run_sync(smart.backend.token, client)
    except LaunchError as exc:
        log.info("backend token refused", extra={"reason": exc.detail})
        return None


def _check_override_reason(reason: dict[str, Any] | None) -> None:
    """A reason in this service's code system must be one the cards offer (others are the EHR's own)."""
    if reason and reason.get("system") == CS_OVERRIDE and reason.get("code") not in OVERRIDE_CODES:
        raise Problem(
            "unknown-override-reason",
            422,
            "overrideReason.reason.code is not one of the card's overrideReasons: "
            + ", ".join(sorted(OVERRIDE_CODES))
            + ".",
            title="Unknown override reason",
        )


class CdsHooksController(Controller):
    path = "/cds-services"
    tags = ("cds-hooks",)

    @get(
        "/",
        summary="CDS Hooks discovery",
        description="The services offered, with their hooks and prefetch templates. Open (no patient data).",
        opt={"auth": "open"},
        responses={200: example_response(dict, "discovery document", "discovery", discovery())},
        sync_to_thread=False,
    )
    def discover(self) -> dict[str, Any]:
        return discovery()

    @post(
        "/{service_id:str}",
        status_code=200,
        summary="CDS Hooks service call (patient-view): cards for the patient's latest skin photo",
        description=(
            "Needs `Authorization: Bearer <JWT>` signed by a configured EHR key (aud = this service's URL). Triages "
            "the newest prefetched photo with the patient's age, sex, risk factors and symptoms, and answers one "
            "card (none when there is no usable photo). A repeat call on the same photo reuses the result. 412 "
            "when required prefetch is missing and cannot be fetched."
        ),
        opt={"auth": "cds_jwt"},
        security=CDS_JWT_SECURITY,
        responses={
            200: example_response(dict, "cards", "one card", CARDS_EXAMPLE),
            **problem_responses(
                (
                    401,
                    problem_example(
                        "unauthorized",
                        401,
                        "Missing or invalid credentials",
                        "The JWT is not accepted: it has expired.",
                    ),
                ),
                UNKNOWN_SERVICE,
                (
                    412,
                    problem_example(
                        "prefetch-missing",
                        412,
                        "Required data missing",
                        "Required prefetch data is missing and could not be fetched: photos or photoDocuments.",
                    ),
                ),
            ),
        },
    )
    async def call(
        self,
        request: Request[Any, Any, Any],
        runner: NamedDependency[InferenceRunner],
        service: NamedDependency[ServiceState],
        service_id: str = _SERVICE_ID,
    ) -> dict[str, Any]:
        _known_service(service_id)
        call = await _json(request, CdsRequest)
        if call.hook != "patient-view":
            raise Problem("unsupported-hook", 400, f"This service answers patient-view, not {call.hook[:40]!r}.")
        state = cds_state(request)
        issuer = cds_issuer_of(request)
        backend = await _backend_token(request, call)
        data = await anyio.to_thread.run_sync(gather, call, state.fhir_fetcher, issuer, backend)
        session = photo_session(call, state.fhir_fetcher, issuer, backend)  # photos by reference
        patient = await anyio.to_thread.run_sync(read_patient_data, data, CDS_OPTIONS, session)
        if patient.image is None:
            return {"cards": []}
        key = photo_key(patient.image, CDS_OPTIONS, patient.clinical)
        rid, owner = request_id_of(request), principal_of(request)
        cached = await state.cache.get(key)
        if cached is not None:  # a repeat call on the same photo: the same answer, kept under a fresh id
            facts = await service.case_facts(patient, client_of(request))
            result = await service.keep(cached.model_copy(update={"request_id": rid}), owner, facts)
        else:
            result = await service.triage(patient, rid, owner, client_of(request))
            await state.cache.put(key, result)
        share = await service.results.share_token(result.id, owner)  # the card link's capability for this answer
        base = auth_of(request).base_url(request)
        card = triage_card(
            result,
            base,
            share=share,
            photo_ref=patient.photo_ref,
            photo_taken=patient.photo_taken,
            smart=smart_state(request.app.state).client_for(call.fhirServer) is not None,
            patient_id=call.context.patientId,
        )
        await state.cards.add(card["uuid"], rid)
        return {"cards": [card]}

    @post(
        "/{service_id:str}/feedback",
        status_code=200,
        summary="CDS Hooks feedback: which cards were accepted or overridden",
        opt={"auth": "cds_jwt"},
        security=CDS_JWT_SECURITY,
        responses={
            200: example_response(dict, "feedback recorded", "recorded", {"recorded": 1}),
            **problem_responses(
                (401, problem_example("unauthorized", 401, "Missing or invalid credentials", "No bearer JWT.")),
                UNKNOWN_SERVICE,
                (422, problem_example("validation-error", 422, "Invalid request fields", "See `errors`.")),
            ),
        },
    )
    async def feedback(self, request: Request[Any, Any, Any], service_id: str = _SERVICE_ID) -> dict[str, Any]:
        _known_service(service_id)
        parsed = await _json(request, FeedbackRequest)
        for item in parsed.feedback:
            _check_override_reason(item.overrideReason.reason if item.overrideReason else None)
        state = cds_state(request)
        for item in parsed.feedback:
            await state.feedback.add(
                FeedbackRecord(
                    service_id=service_id,
                    card=item.card,
                    outcome=item.outcome,
                    outcome_timestamp=item.outcomeTimestamp,
                    request_id=await state.cards.get(item.card),
                    override_reason=item.overrideReason.model_dump(exclude_none=True) if item.overrideReason else None,
                    accepted_suggestions=tuple(str(s.get("id", "")) for s in item.acceptedSuggestions),
                    received_at=time.time(),
                )
            )
        return {"recorded": len(parsed.feedback)}
