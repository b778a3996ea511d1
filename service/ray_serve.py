"""Ray Serve (issue 20): the same Litestar app behind a Serve deployment, for GPU pools and autoscaling
on a Ray cluster. Optional (``pip install -e ".[ray]"``); nothing on the normal serving path imports it.

Each replica builds the app from its own :class:`Settings` (its ``DERMTRIAGE_*`` environment) through
``serve.ingress(build_app)``; Ray's ASGI wrapper runs the app's lifespan (model load, warm-up,
readiness), and the app's own micro-batcher batches the image tower inside each replica, so Serve's
``@serve.batch`` is not used (it would batch whole HTTP requests in front of a batcher that already
batches the tower). ``deploy/ray/serve_config.yaml`` names ``service.ray_serve:app``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import threading
import time
from typing import Any

from litestar import Litestar
from ray import serve

from service.app import create_app
from service.metrics import MULTIPROC_ENV
from service.settings import Settings

READY_TIMEOUT_S = 600.0  # a replica's model load and warm-up (first start: runtime exports)


def build_app() -> Litestar:
    """Evaluated on each replica: the app from the replica's environment (never pickled)."""
    return create_app(Settings())


@serve.deployment(
    name="dermtriage",
    num_replicas=1,
    ray_actor_options={"num_cpus": 2},
    health_check_period_s=10,
    graceful_shutdown_timeout_s=30,
)
@serve.ingress(build_app)
class DermTriage:
    """One replica: the whole app (every route, its batcher, its metrics)."""

    async def check_health(self) -> None:
        """Serve runs this once when the replica starts (after the app's lifespan started loading the
        model): waiting there for warm-up keeps requests off a replica until ``/health/ready`` would say
        200. Later calls fail a replica whose model failed to load, so Serve replaces it."""
        service = self.app.state["service"]  # type: ignore[attr-defined]
        if not getattr(self, "warmed", False):
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not service.ready and not service.load_error and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            self.warmed = True
        if not service.ready:
            raise RuntimeError(f"model not ready: {service.load_error or 'still loading'}")


app = DermTriage.bind()  # the import path of deploy/ray/serve_config.yaml


def replica_env(replicas: int) -> dict[str, str]:
    """The ``DERMTRIAGE_*`` variables replicas get (``runtime_env``), as the CLI set them; on a local Ray
    instance with several replicas also a shared ``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` on any
    replica shows every replica (by pid), as with uvicorn workers. A cluster is scraped per replica."""
    env = {k: v for k, v in os.environ.items() if k.startswith("DERMTRIAGE_")}
    if replicas > 1 and not os.environ.get("RAY_ADDRESS"):
        env[MULTIPROC_ENV] = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="dermtriage-metrics-")
    return env


def run(settings: Settings, replicas: int) -> int:
    """``dermtriage serve --engine ray``: start (or join, ``RAY_ADDRESS``) Ray, serve ``replicas``
    replicas on ``settings.host:port`` until SIGINT or SIGTERM, then shut Serve down. Each replica asks
    for 2 CPUs (one torch thread plus decoding and HTTP), less when the cluster has fewer per replica."""
    import ray

    ray.init(ignore_reinit_error=True, include_dashboard=False)
    cpus = min(2.0, float(ray.cluster_resources().get("CPU", 1.0)) / replicas)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        options: dict[str, Any] = {"num_cpus": cpus, "runtime_env": {"env_vars": replica_env(replicas)}}
        serve.run(DermTriage.options(num_replicas=replicas, ray_actor_options=options).bind(), route_prefix="/")
        stop.wait()
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
