"""FHIR errors: an exception carrying an HTTP status and an ``OperationOutcome`` body.

FHIR endpoints answer every error with an OperationOutcome instead of problem+json; the issue's
``diagnostics`` never echo request content.
"""

from __future__ import annotations

import json
from typing import Any

from fhir.resources.R4B.operationoutcome import OperationOutcome
from litestar import Request, Response

from service.problems import Problem, request_id_of

FHIR_JSON = "application/fhir+json"

# HTTP status -> OperationOutcome issue code (http://hl7.org/fhir/issue-type)
_CODE_FOR_STATUS = {
    400: "structure",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    412: "business-rule",
    413: "too-costly",
    415: "not-supported",
    422: "invariant",
    429: "throttled",
    503: "transient",
}


class FhirError(Exception):
    """A client-facing FHIR error: status, issue code (issue-type value set) and diagnostics."""

    def __init__(
        self,
        status: int,
        diagnostics: str,
        *,
        code: str | None = None,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or _CODE_FOR_STATUS.get(status, "processing" if status < 500 else "exception")
        self.expression = expression
        self.headers = headers or {}


def operation_outcome(error: FhirError, request_id: str = "") -> dict[str, Any]:
    issue: dict[str, Any] = {
        "severity": "error" if error.status < 500 else "fatal",
        "code": error.code,
        "diagnostics": error.diagnostics,
    }
    if error.expression:
        issue["expression"] = error.expression
    body: dict[str, Any] = {"resourceType": "OperationOutcome", "issue": [issue]}
    if request_id and len(request_id) <= 64 and request_id.replace("-", "").isalnum():
        body["id"] = request_id
    return OperationOutcome.model_validate(body).model_dump(mode="json")


def outcome_response(request: Request[Any, Any, Any], error: FhirError) -> Response[bytes]:
    request.scope.setdefault("state", {})["problem"] = f"fhir-{error.code}"  # for the access log
    return Response(
        content=json.dumps(operation_outcome(error, request_id_of(request))).encode(),
        status_code=error.status,
        media_type=FHIR_JSON,
        headers=error.headers,
    )


def handle_fhir_error(request: Request[Any, Any, Any], exc: FhirError) -> Response[bytes]:
    return outcome_response(request, exc)


def handle_problem_as_outcome(request: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
    """Service problems (auth, image decoding, not ready, timeouts) raised under /fhir, as OperationOutcome."""
    return outcome_response(request, FhirError(exc.status, exc.detail, headers=exc.headers))
