"""RFC 9457 problem details: one exception type for the service's own errors and the handlers that map
every error (intake, Litestar, unexpected) to ``application/problem+json``.

Problem bodies never echo request content (no image bytes, labels or option values) and a 500 never
carries internals. ``type`` URIs are stable: ``https://dermtriage.dev/problems/<slug>``.
"""

from __future__ import annotations

import json
import logging
import traceback
from http import HTTPStatus
from typing import Any, TypeVar

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from pydantic import BaseModel, ValidationError

from service.images import ImageError

PROBLEM_BASE = "https://dermtriage.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"
ACCEPTED_MEDIA_TYPES = ("multipart/form-data", "application/json")

log = logging.getLogger("dermtriage.errors")
M = TypeVar("M", bound=BaseModel)


class Problem(Exception):
    """A client-facing error: stable slug, HTTP status, a title and an actionable detail."""

    def __init__(
        self,
        slug: str,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.slug = slug
        self.status = status
        self.detail = detail
        self.title = title or slug.replace("-", " ").capitalize()
        self.errors = errors
        self.headers = headers or {}


def field_errors(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic errors as ``{"loc", "message", "type"}`` without the offending input (privacy)."""
    out = []
    for err in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = ".".join(str(p) for p in (*prefix, *err["loc"])) or "body"
        out.append({"loc": loc, "message": err["msg"], "type": err["type"]})
    return out


def validation_problem(exc: ValidationError, prefix: tuple[str | int, ...] = ()) -> Problem:
    return invalid_fields_problem(field_errors(exc, prefix))


def invalid_fields_problem(errors: list[dict[str, str]]) -> Problem:
    """The one 422 for invalid fields: `errors` items carry `loc`, `message` and `type`."""
    where = ", ".join(e["loc"] for e in errors[:5])
    return Problem(
        "validation-error",
        422,
        f"The request is well-formed but {len(errors)} field(s) are invalid: {where}. See `errors`.",
        title="Invalid request fields",
        errors=errors,
    )


def validated(model: type[M], payload: Any, prefix: tuple[str | int, ...] = ()) -> M:
    """``model.model_validate(payload)``, a 422 :func:`validation_problem` when it is invalid."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise validation_problem(exc, prefix) from None


def request_id_of(request: Request[Any, Any, Any]) -> str:
    return str(request.scope.get("state", {}).get("request_id", ""))


def problem_response(request: Request[Any, Any, Any], problem: Problem) -> Response[bytes]:
    rid = request_id_of(request)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + problem.slug,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail,
        "instance": f"urn:dermtriage:request:{rid}",
        "request_id": rid,
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    request.scope.setdefault("state", {})["problem"] = problem.slug  # for the access log (slug only)
    return Response(
        content=json.dumps(body).encode(),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


def _slug_for_status(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")
    except ValueError:
        return f"http-{status}"


_HTTP_DETAILS: dict[int, tuple[str, str]] = {
    404: ("not-found", "No route matches this path; see the OpenAPI document at /schema/openapi.json."),
    405: ("method-not-allowed", "This path does not accept this HTTP method; see the Allow header."),
    413: ("request-too-large", "The request body is over the limit of {limit:,} bytes; send a smaller photo."),
}


def handle_problem(request: Request[Any, Any, Any], exc: Problem) -> Response[bytes]:
    return problem_response(request, exc)


def handle_image_error(request: Request[Any, Any, Any], exc: ImageError) -> Response[bytes]:
    return problem_response(request, Problem(exc.code, exc.status, exc.message))


def handle_http_exception(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """Litestar's own errors (routing, body limit, parameter validation) as problems."""
    status = exc.status_code
    if isinstance(exc, ValidationException):
        errors = [
            {"loc": str(e.get("key", "")), "message": str(e.get("message", "")), "type": "invalid"}
            for e in (exc.extra if isinstance(exc.extra, list) else [])
            if isinstance(e, dict)
        ]
        return problem_response(request, Problem("validation-error", 422, "Invalid request parameters.", errors=errors))
    if status >= 500:
        return handle_unexpected(request, exc)
    slug, detail = _HTTP_DETAILS.get(status, (_slug_for_status(status), str(exc.detail)))
    if status == 413:
        limit = request.route_handler.resolve_request_max_body_size() if "route_handler" in request.scope else None
        detail = detail.format(limit=limit or 0)
    return problem_response(request, Problem(slug, status, detail, headers=dict(exc.headers or {})))


def handle_unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """500 without internals. The log gets the exception type and stack frames, not its message,
    since messages may quote request content."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    log.error(
        "unhandled error",
        extra={"request_id": request_id_of(request), "error_type": type(exc).__name__, "stack": stack},
    )
    return problem_response(
        request,
        Problem(
            "internal-error",
            500,
            "The service failed unexpectedly; retry later and report the request id if it persists.",
            title="Internal error",
        ),
    )


EXCEPTION_HANDLERS: dict[type[Exception], Any] = {
    Problem: handle_problem,
    ImageError: handle_image_error,
    HTTPException: handle_http_exception,
    Exception: handle_unexpected,
}
