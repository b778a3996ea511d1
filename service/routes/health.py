"""Liveness and readiness for orchestrators."""

from __future__ import annotations

from litestar import Controller, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from pydantic import BaseModel

from service.openapi import NOT_READY, problem_responses
from service.runtime import ServiceState
from service.schemas import ModelRef


class Liveness(BaseModel):
    status: str = "alive"


class Readiness(BaseModel):
    status: str = "ready"
    model: ModelRef


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
        summary="Readiness: 200 once the model is loaded and warmed up, 503 before",
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
            **problem_responses(NOT_READY),
        },
        sync_to_thread=False,
    )
    def ready(self, service: NamedDependency[ServiceState]) -> Readiness:
        return Readiness(model=service.require_engine().model_ref)
