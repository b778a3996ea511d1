"""Content negotiation for ``/v1/triage``: JSON by default, the FHIR Bundle on ``format=fhir`` or when
``Accept`` prefers ``application/fhir+json``."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Request, Response
from litestar.openapi.spec import Example
from litestar.params import QueryParameter

from service.auth.guard import auth_of
from service.fhir.bundle import bundle_json
from service.fhir.outcome import FHIR_JSON
from service.schemas import TriageResult

OutputFormat = Literal["json", "fhir"]
FormatQuery = Annotated[
    OutputFormat | None,
    QueryParameter(
        name="format",
        description="`fhir` answers the FHIR R4 Bundle (as does `Accept: application/fhir+json`); default `json`",
        examples=[Example(value="fhir")],
    ),
]


def wants_fhir(request: Request[Any, Any, Any], output_format: str | None) -> bool:
    if output_format is not None:
        return output_format == "fhir"
    accept = request.headers.get("accept", "")
    return FHIR_JSON in accept and request.accept.best_match([FHIR_JSON, "application/json"]) == FHIR_JSON


def fhir_response(request: Request[Any, Any, Any], result: TriageResult, **bundle_args: Any) -> Response[bytes]:
    """The triage Bundle; ``bundle_args`` (subject, photo, inputs) go to :func:`bundle_json`."""
    return Response(bundle_json(result, auth_of(request).base_url(request), **bundle_args), media_type=FHIR_JSON)
