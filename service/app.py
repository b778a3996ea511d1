"""``create_app``: the Litestar application over one TriageEngine.

The lifespan starts loading the model and taxonomy in a worker thread and returns at once, so the
server listens (``/health/live`` answers) while the model loads; ``/health/ready`` turns 200 once the
engine is warmed up. An injected engine skips loading (it is still warmed up).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import anyio
from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import ResponseHeader, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from service.auth.guard import SECURITY_COMPONENTS, build_auth, require_credentials
from service.cds_hooks.state import CdsState
from service.engine import TriageEngine
from service.metrics import Metrics
from service.middleware import RequestContextMiddleware
from service.openapi import finish_openapi
from service.problems import EXCEPTION_HANDLERS
from service.results import ResultStore
from service.routes import CONTROLLERS
from service.routes.deps import provide_engine, provide_runner, provide_service
from service.runtime import InferenceRunner, ServiceState, build_engine, registry_catalog
from service.settings import Settings
from service.shared_state import DegradedHeader, SharedState
from service.store.cases import CaseStore
from service.store.feedback import DatabaseFeedbackStore

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

API_VERSION = "1.0.0"
# Routes whose answers (and errors) may carry patient data: never cached by browsers or proxies.
PATIENT_DATA_PREFIXES = ("/v1/triage", "/v1/cases", "/v1/lesions", "/fhir", "/cds-services")
MAX_FORM_PARTS = 64  # image + options + up to 50 repeated candidate_labels, with room
log = logging.getLogger("dermtriage.service")


class SecurityHeaders:
    """Outermost ASGI wrapper: ``X-Content-Type-Options: nosniff`` on every response, and
    ``Cache-Control: no-store`` on every response of a route that carries patient data
    (``PATIENT_DATA_PREFIXES``), errors and 404s included, whatever the handler set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        patient_data = scope["path"].startswith(PATIENT_DATA_PREFIXES)
        drop = (b"x-content-type-options", b"cache-control") if patient_data else (b"x-content-type-options",)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() not in drop]
                headers.append((b"x-content-type-options", b"nosniff"))
                if patient_data:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _load(service: ServiceState) -> TriageEngine:
    """Blocking: build (unless injected) and warm up the engine(s), read the registry. A dermoscopic
    model (`DERMTRIAGE_DERMOSCOPIC_MODEL`) gets an engine of its own when the default was built here."""
    settings = service.settings
    injected = service.engine is not None
    engine = service.engine if service.engine is not None else build_engine(settings)
    routed = {}
    if not injected and settings.dermoscopic_model and settings.dermoscopic_model != settings.model:
        routed["dermoscopic"] = build_engine(settings, settings.dermoscopic_model)
    for e in (engine, *routed.values()):
        e.warm_up()
        service.runner.warm_up(e)  # the micro-batch path too, in the serving precision
    service.modality_engines = routed
    service.specs, service.cards = registry_catalog()
    for e in (engine, *routed.values()):
        service.cards[e.model.card.name] = e.model.card
    return engine


async def _start(service: ServiceState) -> None:
    started = time.perf_counter()
    log.info("loading model", extra={"model": service.settings.model, "device": service.settings.device})
    try:
        engine = await anyio.to_thread.run_sync(_load, service, abandon_on_cancel=True)
    except Exception as exc:  # reported by /health/ready; the process stays up for inspection
        service.load_error = f"{type(exc).__name__}: {exc}"
        log.error("model failed to load", extra={"model": service.settings.model, "error": service.load_error})
        return
    service.engine, service.ready = engine, True
    service.metrics.ready.set(1)
    ref = engine.model_ref
    log.info(
        "ready", extra={"model": ref.name, "version": ref.version, "load_s": round(time.perf_counter() - started, 2)}
    )


async def purge_expired(shared: SharedState, interval_s: float) -> None:
    """Every ``interval_s``: drop expired answers (patient data) from memory, read or not. Runs until
    cancelled (the lifespan cancels it at shutdown)."""
    while True:
        await anyio.sleep(interval_s)
        try:
            await shared.purge()
        except Exception:  # a broken store must not end the timer
            log.exception("result purge failed")


def _lifespan(service: ServiceState):  # type: ignore[no-untyped-def]
    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_start, service)
            tg.start_soon(purge_expired, service.shared, service.settings.result_purge_interval_s)
            if service.cases is not None:
                tg.start_soon(service.cases.start)  # connect, migrate, then drain the case write queue
            try:
                yield
            finally:
                tg.cancel_scope.cancel()
                service.ready = False
                service.runner.close()
        if service.cases is not None:  # after the drain task stopped: write what is queued, then close
            with anyio.CancelScope(shield=True):
                await service.cases.stop()
        await service.shared.close()

    return lifespan


def create_app(settings: Settings | None = None, engine: TriageEngine | None = None) -> Litestar:
    """Build the app. ``settings`` default to the environment; ``engine`` skips model loading (tests)."""
    settings = settings or Settings()
    metrics = Metrics()
    runner = InferenceRunner.from_settings(settings, metrics)
    cases = CaseStore(settings, metrics)
    shared = SharedState.from_url(settings.redis_url)
    service = ServiceState(
        settings=settings,
        metrics=metrics,
        runner=runner,
        engine=engine,
        results=ResultStore.from_settings(settings, shared),
        cases=cases,
        shared=shared,
    )
    cds = CdsState.from_settings(settings, shared)
    cds.feedback = DatabaseFeedbackStore(cases)
    cors = (
        CORSConfig(allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], expose_headers=["X-Request-ID"])
        if settings.cors_origins
        else None
    )
    app = Litestar(
        route_handlers=CONTROLLERS,
        lifespan=[_lifespan(service)],
        stores=shared.stores,  # Litestar's store registry: memory, or Redis for several workers
        state=State({"service": service, "auth": build_auth(settings, shared), "cds": cds}),
        guards=[require_credentials],
        dependencies={
            "service": Provide(provide_service, sync_to_thread=False),
            "engine": Provide(provide_engine, sync_to_thread=False),
            "runner": Provide(provide_runner, sync_to_thread=False),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.max_body_bytes,
        multipart_form_part_limit=MAX_FORM_PARTS,
        cors_config=cors,
        response_headers=[
            ResponseHeader(
                name="X-Request-ID", description="the request id (also in problem bodies)", documentation_only=True
            )
        ],
        openapi_config=OpenAPIConfig(
            title="dermtriage",
            version=API_VERSION,
            description="Dermatology triage: decision support for clinicians, not a diagnosis.",
            components=SECURITY_COMPONENTS,
        ),
        logging_config=None,
        plugins=[SQLAlchemyPlugin(config=cases.config)],  # advanced-alchemy: engine life cycle, db_session
    )
    # Outermost, so 404s and errors raised before routing get a request id, a log line and metrics too.
    context = RequestContextMiddleware(app.asgi_handler, metrics, settings.body_read_timeout_s)
    app.asgi_handler = SecurityHeaders(DegradedHeader(context))
    finish_openapi(app.openapi_schema)  # corrections found by fuzzing (service/openapi.py)
    return app
