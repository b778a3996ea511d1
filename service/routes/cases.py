"""``/v1/cases``: the kept triage answers with their reviews, outcomes, annotations and audit trail.

Every route answers its owner (the principal that made the answer) or an API key with the reviewer
role (`DERMTRIAGE_REVIEWERS`); anyone else gets the same 404 as for a missing case. Every read and
write is audited. The database unreachable: 503 problem+json (triage still answers)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Example
from litestar.params import Body, Parameter

from service.auth.guard import API_KEY_SECURITY
from service.fhir.audit import audit_bundle
from service.fhir.negotiate import FormatQuery, wants_fhir
from service.fhir.outcome import FHIR_JSON
from service.openapi import example_response, problem_example, problem_responses
from service.problems import Problem
from service.results import client_of, principal_of
from service.runtime import ServiceState
from service.store import operations as ops
from service.store.cases import CaseStore
from service.store.photos import MEDIA_TYPE
from service.store.schemas import (
    MAX_PAGE_SIZE,
    PAGE_SIZE,
    AnnotationIn,
    AnnotationOut,
    AuditOut,
    CaseOut,
    CasePage,
    OutcomeIn,
    OutcomeOut,
    ReviewIn,
    ReviewOut,
)
from service.store.schemas_examples import (
    ANNOTATION_IN,
    ANNOTATION_OUT,
    AUDIT_OUT,
    CASE_ID,
    CASE_OUT,
    CASE_PAGE,
    OUTCOME_IN,
    OUTCOME_OUT,
    REVIEW_IN,
    REVIEW_OUT,
)

CaseId = Annotated[
    str, Parameter(max_length=64, description="the triage answer's `id`", examples=[Example(value=CASE_ID)])
]
PROBLEMS = problem_responses(
    (404, problem_example("case-not-found", 404, "Case not found", "No case with this id is held for this caller.")),
    (
        422,
        problem_example(
            "validation-error",
            422,
            "Invalid request fields",
            "The request is well-formed but 1 field(s) are invalid: points.3. See `errors`.",
            errors=[{"loc": "points.3", "message": "outside the 1024x768 photo", "type": "outside_photo"}],
        ),
    ),
    (
        503,
        problem_example(
            "database-unavailable",
            503,
            "Database unavailable",
            "The case database is unreachable; triage still answers.",
        ),
    ),
)


def _store(service: ServiceState) -> CaseStore:
    if service.cases is None:
        raise Problem("database-unavailable", 503, "This service runs without a case database.")
    return service.cases


def _caller(request: Request[Any, Any, Any]) -> ops.Caller:
    return ops.Caller(principal_of(request), client_of(request))


def _body(model: type, example: dict[str, Any]) -> Any:
    return Body(title=model.__name__, examples=[Example(summary="example", value=example)])


class CasesController(Controller):
    path = "/v1/cases"
    tags = ("cases",)
    security = API_KEY_SECURITY

    @get(
        "/",
        summary="The caller's cases (a reviewer: all), newest first, with filters",
        responses={200: example_response(CasePage, "one page of cases", "a page", CASE_PAGE), **PROBLEMS},
    )
    async def list_cases(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        since: Annotated[datetime | None, Parameter(description="cases made at or after this time (ISO 8601)")] = None,
        model: Annotated[str | None, Parameter(max_length=200, description="model name")] = None,
        reviewed: Annotated[bool | None, Parameter(description="with (true) or without (false) a review")] = None,
        patient_ref: Annotated[str | None, Parameter(max_length=128, description="your patient reference")] = None,
        limit: Annotated[int, Parameter(ge=1, le=MAX_PAGE_SIZE, description="page size")] = PAGE_SIZE,
        offset: Annotated[int, Parameter(ge=0, le=1_000_000, description="cases to skip")] = 0,
    ) -> CasePage:
        return await ops.list_cases(
            _store(service),
            _caller(request),
            since=since,
            model=model,
            reviewed=reviewed,
            patient_ref=patient_ref,
            limit=limit,
            offset=offset,
        )

    @get(
        "/{case_id:str}",
        summary="One case: the answer as given and what was kept with it",
        responses={200: example_response(CaseOut, "the case", "a case", CASE_OUT), **PROBLEMS},
    )
    async def get_case(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState], case_id: CaseId
    ) -> CaseOut:
        return await ops.get_case(_store(service), _caller(request), case_id)

    @post(
        "/{case_id:str}/reviews",
        status_code=201,
        summary="Add a clinician's review (the reviewer is the caller)",
        responses={201: example_response(ReviewOut, "the review as kept", "a review", REVIEW_OUT), **PROBLEMS},
    )
    async def add_review(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        case_id: CaseId,
        data: Annotated[ReviewIn, _body(ReviewIn, REVIEW_IN)],
    ) -> ReviewOut:
        return await ops.add_child(_store(service), _caller(request), case_id, "reviews", data)  # type: ignore[return-value]

    @get(
        "/{case_id:str}/reviews",
        summary="The case's reviews, oldest first",
        responses={200: example_response(list[ReviewOut], "reviews", "reviews", [REVIEW_OUT]), **PROBLEMS},
    )
    async def list_reviews(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState], case_id: CaseId
    ) -> list[ReviewOut]:
        return await ops.list_children(_store(service), _caller(request), case_id, "reviews")  # type: ignore[return-value]

    @post(
        "/{case_id:str}/outcomes",
        status_code=201,
        summary="Add a histopathology or follow-up outcome",
        responses={201: example_response(OutcomeOut, "the outcome as kept", "an outcome", OUTCOME_OUT), **PROBLEMS},
    )
    async def add_outcome(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        case_id: CaseId,
        data: Annotated[OutcomeIn, _body(OutcomeIn, OUTCOME_IN)],
    ) -> OutcomeOut:
        return await ops.add_child(_store(service), _caller(request), case_id, "outcomes", data)  # type: ignore[return-value]

    @get(
        "/{case_id:str}/outcomes",
        summary="The case's outcomes, oldest first",
        responses={200: example_response(list[OutcomeOut], "outcomes", "outcomes", [OUTCOME_OUT]), **PROBLEMS},
    )
    async def list_outcomes(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState], case_id: CaseId
    ) -> list[OutcomeOut]:
        return await ops.list_children(_store(service), _caller(request), case_id, "outcomes")  # type: ignore[return-value]

    @post(
        "/{case_id:str}/annotations",
        status_code=201,
        summary="Add a box, polygon, keypoints or lesion tags",
        responses={
            201: example_response(AnnotationOut, "the annotation as kept", "a polygon", ANNOTATION_OUT),
            **PROBLEMS,
        },
    )
    async def add_annotation(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        case_id: CaseId,
        data: Annotated[AnnotationIn, _body(AnnotationIn, ANNOTATION_IN)],
    ) -> AnnotationOut:
        return await ops.add_child(_store(service), _caller(request), case_id, "annotations", data)  # type: ignore[return-value]

    @get(
        "/{case_id:str}/annotations",
        summary="The case's annotations, oldest first",
        responses={
            200: example_response(list[AnnotationOut], "annotations", "annotations", [ANNOTATION_OUT]),
            **PROBLEMS,
        },
    )
    async def list_annotations(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState], case_id: CaseId
    ) -> list[AnnotationOut]:
        return await ops.list_children(_store(service), _caller(request), case_id, "annotations")  # type: ignore[return-value]

    @get(
        "/{case_id:str}/audit",
        summary="Who did what to this case, when and from where (append-only); `format=fhir`: a Bundle of AuditEvent",
        responses={
            200: example_response(list[AuditOut], "audit events, oldest first", "events", AUDIT_OUT),
            **PROBLEMS,
        },
    )
    async def audit(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        case_id: CaseId,
        output_format: FormatQuery = None,
    ) -> list[AuditOut] | Response[bytes]:
        rows = await ops.audit_rows(_store(service), _caller(request), case_id)
        if wants_fhir(request, output_format):  # a Bundle of FHIR R4 AuditEvent
            return Response(audit_bundle(rows, case_id).model_dump_json().encode(), media_type=FHIR_JSON)
        return [AuditOut.model_validate(r, from_attributes=True) for r in rows]

    @get(
        "/{case_id:str}/photo",
        summary="The photo kept with the case (consent given and DERMTRIAGE_STORE_PHOTOS on): re-encoded, no EXIF",
        responses={
            200: example_response(bytes, "the kept photo (JPEG bytes)", "JPEG bytes", "<binary JPEG>", MEDIA_TYPE),
            **PROBLEMS,
        },
        media_type=MEDIA_TYPE,
    )
    async def photo(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState], case_id: CaseId
    ) -> Response[bytes]:
        data = await ops.photo_of(_store(service), _caller(request), case_id)
        return Response(data, media_type=MEDIA_TYPE, headers={"Cache-Control": "no-store"})

    @delete(
        "/{case_id:str}",
        status_code=204,
        summary="Delete the case, its reviews, outcomes, annotations and photo (its audit events stay)",
        responses=PROBLEMS,
    )
    async def delete_case(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState], case_id: CaseId
    ) -> None:
        await ops.delete_case(_store(service), _caller(request), case_id)
