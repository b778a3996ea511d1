"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from pydantic import BaseModel, Field

from service.openapi import NOT_READY, problem_example, problem_responses
from service.problems import Problem
from service.runtime import ServiceState
from service.schemas import ModelRef

DATABASE_DOWN = (
    503,
    problem_example(
        "database-unavailable",
        503,
        "Database unavailable",
        "The case database is unavailable (OSError: Connect call failed); DERMTRIAGE_DATABASE_REQUIRED is true.",
    ),
)


class Liveness(BaseModel):
    status: str = "alive"


class Readiness(BaseModel):
    status: str = "ready"
    model: ModelRef
    database: dict[str, Any] | None = Field(
        default=None, description="the case database: status, detail, pending, written, failed and lost writes"
    )


class HealthController(Controller):
    path = "/health"
    tags = ("health",)

    @get(
        "/live",
        summary="Liveness: the process answers (even while loading or busy)",
        responses={200: ResponseSpec(Liveness, examples=[Example(summary="alive", value={"status": "alive"})])},
        sync_to_thread=False,
    )
    def live(self) -> Liveness:
        return Liveness()

    @get(
        "/ready",
        summary="Readiness: 200 once the model is loaded and warmed up (and the case database answers), 503 before",
        responses={
            200: ResponseSpec(
                Readiness,
                examples=[
                    Example(
                        summary="ready",
                        value={
                            "status": "ready",
                            "model": {
                                "name": "embedded-pad-lite0",
                                "version": "1.1.0",
                                "card_url": "/v1/models/embedded-pad-lite0",
                            },
                        },
                    )
                ],
            ),
            **problem_responses(NOT_READY, DATABASE_DOWN),
        },
        sync_to_thread=False,
    )
    def ready(self, service: NamedDependency[ServiceState]) -> Readiness:
        model = service.require_engine().model_ref
        database = service.cases.readiness() if service.cases is not None else None
        if database is not None and database["required"] and database["status"] != "ok":
            why = database["detail"] or database["status"]
            raise Problem(
                "database-unavailable",
                503,
                f"The case database is {database['status']} ({why}); DERMTRIAGE_DATABASE_REQUIRED is true. "
                f"Writes pending: {database['pending_writes']}, lost (queue full): {database['lost_writes']}, "
                f"refused: {database['failed_writes']}.",
                title="Database unavailable",
                headers={"Retry-After": "5"},
            )
        return Readiness(model=model, database=database)
