"""Prometheus metrics, one registry per app (so several apps in one process do not collide).

With ``workers > 1`` (``PROMETHEUS_MULTIPROC_DIR`` set; ``dermtriage serve`` sets it to a fresh
folder) every worker writes its values to files there and any worker's ``/metrics`` renders the sum
over all of them (prometheus_client's multiprocess mode): counters and histograms add up, the
in-flight and queue gauges are summed over live workers, ``dermtriage_ready`` and
``dermtriage_worker_requests`` are shown per worker (a ``pid`` label). Several replicas are
scraped one by one (Kubernetes: one target per pod).
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Label values are bounded: h11 accepts any token as a method (3,000 characters included), and every
# distinct label value is a new time series kept for the life of the process.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The folder the workers share their values through, or None (one process)."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        if multiprocess_dir() is not None:  # a worker that exits cleanly drops its live gauges
            atexit.register(multiprocess.mark_process_dead, os.getpid())
        r = self.registry
        self.requests = Counter(
            "dermtriage_http_requests",
            "HTTP requests by route template and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "dermtriage_http_request_duration_seconds",
            "HTTP request latency by route template",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "dermtriage_inference_seconds",
            "Model time per photo (its share of the batch plus scoring)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "dermtriage_queue_seconds",
            "Wait for a decode thread and for the image tower (batching included)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "dermtriage_triage_in_flight",
            "Triage requests being decoded or scored",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.queue_depth = Gauge(
            "dermtriage_batch_queue_depth",
            "Photos decoded and waiting for the image tower",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.batch_size = Histogram(
            "dermtriage_batch_size", "Photos per image-tower forward pass", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_inference = Histogram(
            "dermtriage_batch_inference_seconds",
            "Image-tower time per batch (preprocessed pixels to embeddings)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "dermtriage_triage_rejected", "Triage requests answered 503 by back-pressure", ["reason"], registry=r
        )
        self.ready = Gauge(
            "dermtriage_ready", "1 once the model is loaded and warmed up", registry=r, multiprocess_mode="livemin"
        )
        self.worker_requests = Gauge(
            "dermtriage_worker_requests",
            "HTTP requests answered by each worker process (pid label with several workers): shows the spread",
            registry=r,
            multiprocess_mode="liveall",
        )
        self.case_writes = Counter(
            "dermtriage_case_writes",
            "Case and audit rows by what became of them: written, retried (database unreachable), failed "
            "(refused by the database) or lost (write queue full)",
            ["outcome"],
            registry=r,
        )
        self.case_write_queue = Gauge(
            "dermtriage_case_write_queue",
            "Case writes waiting for the database",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.database_up = Gauge(
            "dermtriage_database_up", "1 while the case database answers", registry=r, multiprocess_mode="livemin"
        )

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        method = method_label(method)
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        self.worker_requests.inc()

    def render(self) -> bytes:
        """This process's registry, or with several workers the sum over every worker's files."""
        folder = multiprocess_dir()
        if folder is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=folder)
        return generate_latest(merged)


def method_label(method: str) -> str:
    """The HTTP method as a metric label: a standard method as sent, anything else ``other``."""
    return method if method in HTTP_METHODS else "other"
