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
    status: str = Field(
        default="ready", description="`ready`, or `degraded` while a dependency the service runs without is down"
    )
    model: ModelRef
    database: dict[str, Any] | None = Field(
        default=None, description="the case database: status, detail, pending, written, failed and lost writes"
    )
    shared_state: dict[str, Any] | None = Field(
        default=None,
        description="where answers by id, rate limits and the JWT replay set live: backend (memory|redis), "
        "where, status (ok|down), detail. Redis down: triage goes on uncached, CDS Hooks calls get 503",
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
        summary="Readiness: 200 once the model is loaded and warmed up (and the case database answers), 503 before; "
        "`status: degraded` names a dependency that is down but not required (Redis)",
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
    )
    async def ready(self, service: NamedDependency[ServiceState]) -> Readiness:
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
        shared = await service.shared.readiness()
        status = "degraded" if shared["status"] != "ok" else "ready"
        return Readiness(status=status, model=model, database=database, shared_state=shared)
