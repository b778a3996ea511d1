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
import time
from typing import Any

from litestar import Litestar
from ray import serve

from service.app import create_app
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


def replica_env() -> dict[str, str]:
    """The ``DERMTRIAGE_*`` variables replicas get (``runtime_env``), as the CLI set them."""
    return {k: v for k, v in os.environ.items() if k.startswith("DERMTRIAGE_")}


def run(settings: Settings, replicas: int, num_cpus: float = 2.0) -> int:
    """``dermtriage serve --engine ray``: start (or join, ``RAY_ADDRESS``) Ray, serve ``replicas``
    replicas on ``settings.host:port`` until interrupted, then shut Serve down."""
    import ray

    ray.init(ignore_reinit_error=True, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    options: dict[str, Any] = {"num_cpus": num_cpus, "runtime_env": {"env_vars": replica_env()}}
    serve.run(DermTriage.options(num_replicas=replicas, ray_actor_options=options).bind(), route_prefix="/")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
