"""Dependency providers: handlers receive the service state, the engine and the runner by injection."""

from __future__ import annotations

from litestar.datastructures import State

from service.engine import TriageEngine
from service.runtime import InferenceRunner, ServiceState


def provide_service(state: State) -> ServiceState:
    return state.service  # type: ignore[no-any-return]


def provide_engine(state: State) -> TriageEngine:
    """The loaded engine, or a 503 ``not-ready`` problem while it loads."""
    return provide_service(state).require_engine()


def provide_runner(state: State) -> InferenceRunner:
    return provide_service(state).runner
