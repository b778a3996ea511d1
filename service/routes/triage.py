"""``POST /v1/triage``: one photo plus options in, one TriageResult out."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from litestar.params import HeaderParameter, Parameter

from service.auth.guard import API_KEY_SECURITY
from service.engine import TriageEngine
from service.fhir.negotiate import FormatQuery, fhir_response, wants_fhir
from service.intake import read_triage_input
from service.openapi import TRIAGE_PROBLEMS, TRIAGE_RESULT_EXAMPLE, TriageOperation, example_response
from service.outline import outline_in_thread
from service.problems import Problem, request_id_of
from service.results import SHARE_HEADER, client_of, principal_of
from service.runtime import InferenceRunner, ServiceState
from service.schemas import TriageResult

ShareHeader = Annotated[
    str | None,
    HeaderParameter(
        name=SHARE_HEADER,
        required=False,
        max_length=64,
        description="the share token from a CDS Hooks card link (`share` in its URL and appContext)",
    ),
]


class TriageController(Controller):
    path = "/v1/triage"
    tags = ("triage",)
    security = API_KEY_SECURITY  # OpenAPI: every /v1 route needs an API key unless auth is off

    @post(
        "/",
        status_code=200,
        summary="Differentials for one skin photo",
        description=(
            "Send the photo as multipart/form-data (file part `image`, options as a JSON part `options` or as "
            "plain fields) or as application/json (`image` in base64, options under `options`). EXIF, GPS, XMP "
            "and ICC metadata are removed on decode; `image.metadata_stripped` says what was found. "
            "Decision support, not a diagnosis."
        ),
        operation_class=TriageOperation,
        responses={
            200: example_response(
                TriageResult,
                "The differentials, the image's measured properties and timings",
                "taxonomy ranking",
                TRIAGE_RESULT_EXAMPLE,
            ),
            **TRIAGE_PROBLEMS,
        },
    )
    async def triage(
        self,
        request: Request[Any, Any, Any],
        engine: NamedDependency[TriageEngine],
        runner: NamedDependency[InferenceRunner],
        service: NamedDependency[ServiceState],
        output_format: FormatQuery = None,
    ) -> TriageResult | Response[bytes]:
        runner.check_capacity()  # back-pressure before reading a body of up to max_body_bytes
        received = await read_triage_input(request)
        answer = service.triage(received, request_id_of(request), principal_of(request), client_of(request))
        if received.options.segment and received.image is not None:
            # The outline runs beside the triage, on its own copy of the photo; it is part of this
            # answer only (the kept answer and the case do not store it).
            opts = received.options
            result, outline = await asyncio.gather(
                answer, outline_in_thread(received.image, runner.limits, opts.mm_per_pixel)
            )
            result = result.model_copy(update={"segmentation": outline})
        else:
            result = await answer
        return fhir_response(request, result) if wants_fhir(request, output_format) else result

    @get(
        "/{result_id:str}",
        summary="A recent answer by its result id",
        description=(
            "`result_id` is the answer's `id`, minted by the server (never the caller's X-Request-ID). Only the "
            "principal that made the answer may read it (the same API key; `anonymous` when authentication is "
            "off); anyone else gets the same 404 as for a missing id. A CDS Hooks card link carries a share "
            "token for its one answer: send it as `X-Result-Share` to read that answer with any valid API key. "
            "Recent answers are cached in memory for a limited time (`DERMTRIAGE_RESULT_TTL_S`) and number "
            "(`DERMTRIAGE_RESULT_STORE_SIZE`); the heatmaps of older answers may be dropped "
            "(`DERMTRIAGE_RESULT_HEATMAP_BYTES`, then `heatmaps` is null). Past the cache the answer is read "
            "from the case database (without heatmaps), also after a restart."
        ),
        responses={
            200: example_response(TriageResult, "the stored answer", "a stored answer", TRIAGE_RESULT_EXAMPLE),
            404: ResponseSpec(
                data_container=dict,
                description="no answer with this id is held for this caller",
                media_type="application/problem+json",
            ),
        },
    )
    async def get_result(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        result_id: str = Parameter(
            description="the answer's `id`", examples=[Example(value="9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b")]
        ),
        share_token: ShareHeader = None,
        output_format: FormatQuery = None,
    ) -> TriageResult | Response[bytes]:
        principal = principal_of(request)
        result = await service.results.get(result_id, principal, share_token)
        if result is None and service.cases is not None:  # the memory cache misses: ask the case database
            result = await service.cases.answer_for(result_id, principal, share_token)
        if result is not None and service.cases is not None:
            service.cases.audit_later(principal, "read", "case", result.id, result.id, client_of(request))
        if result is None:  # missing, expired, evicted or someone else's: one answer, nothing confirmed
            raise Problem(
                "result-not-found",
                404,
                "No answer with this id is held: it never existed, expired, or was evicted. Triage the photo again.",
                title="Result not found",
            )
        return fhir_response(request, result) if wants_fhir(request, output_format) else result
