"""``GET /metrics`` in the Prometheus text format."""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example
from prometheus_client import CONTENT_TYPE_LATEST

from service.runtime import ServiceState

_EXAMPLE = (
    "# TYPE dermtriage_http_requests_total counter\n"
    'dermtriage_http_requests_total{method="POST",route="/v1/triage",status="200"} 12.0\n'
)


class MetricsController(Controller):
    path = "/metrics"
    tags = ("metrics",)

    @get(
        "/",
        summary="Prometheus metrics: requests by route and status, latency, queue and inference time",
        media_type=CONTENT_TYPE_LATEST,
        responses={
            200: ResponseSpec(
                str, media_type=CONTENT_TYPE_LATEST, examples=[Example(summary="excerpt", value=_EXAMPLE)]
            )
        },
        sync_to_thread=False,
    )
    def metrics(self, service: NamedDependency[ServiceState]) -> Response[bytes]:
        service.metrics.ready.set(1 if service.ready else 0)
        return Response(content=service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
