"""``GET /v1/monitoring``: agreement, needs-review and urgency rates per ISO week, scoped like the case
routes (the caller's own cases; a reviewer: all). See :mod:`service.store.monitoring`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.di import NamedDependency
from litestar.params import Parameter

from service.auth.guard import API_KEY_SECURITY
from service.openapi import example_response, problem_example, problem_responses
from service.problems import Problem
from service.results import client_of, principal_of
from service.runtime import ServiceState
from service.store.monitoring import DEFAULT_WEEKS, EXAMPLE, MAX_WEEKS, Monitoring, weekly

PROBLEMS = problem_responses(
    (
        400,
        problem_example(
            "bad-request",
            400,
            "Bad request",
            "Validation failed for GET /v1/monitoring",
            errors=[{"loc": "weeks", "message": "Expected `int` <= 104", "type": "invalid"}],
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


class MonitoringController(Controller):
    path = "/v1/monitoring"
    tags = ("cases",)
    security = API_KEY_SECURITY

    @get(
        "/",
        summary="Per ISO week: cases, reviews, agreement, needs-review and urgency rates (drift)",
        responses={
            200: example_response(Monitoring, "the window's weeks, oldest first", "one week", EXAMPLE),
            **PROBLEMS,
        },
    )
    async def monitoring(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        weeks: Annotated[
            int, Parameter(ge=1, le=MAX_WEEKS, description="weeks back, this one included")
        ] = DEFAULT_WEEKS,
    ) -> Monitoring:
        if service.cases is None:
            raise Problem("database-unavailable", 503, "This service runs without a case database.")
        return await weekly(service.cases, principal_of(request), client_of(request), weeks)
