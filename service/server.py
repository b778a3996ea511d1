"""``dermtriage serve``: validate the configuration, then run uvicorn on ``service.app:create_app``.

CLI flags are exported as ``DERMTRIAGE_*`` variables before uvicorn starts, so every worker process
builds the same :class:`Settings` (flags override the environment, which overrides defaults).

On SIGTERM uvicorn closes the listening socket, lets requests in flight finish for up to
``shutdown_grace_s``, then runs the lifespan shutdown (which stops the batcher after its queue is
empty), so no admitted request is lost.

With ``workers > 1`` the workers share their metrics through files in ``PROMETHEUS_MULTIPROC_DIR``
(a fresh folder made here unless set), so ``/metrics`` on any worker shows them all; answers by id,
rate limits and the JWT replay set need ``DERMTRIAGE_REDIS_URL`` to be shared (a warning says so).

With ``auth_disabled`` the server binds only a loopback address unless
``allow_unauthenticated_network`` is also set, and it logs a warning at start either way.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
import logging.config
import os
import sys
import tempfile
from typing import Any

from pydantic import ValidationError

from service.logs import logging_config
from service.settings import Settings

log = logging.getLogger("dermtriage.service")


M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> None:
    """Cap glibc's malloc arenas (default 8 per core): with decode, batch and scoring threads each
    allocating image-sized buffers, the extra arenas grew resident memory under a steady load
    (the soak test). An existing ``MALLOC_ARENA_MAX`` wins; worker processes inherit the variable."""
    value = int(os.environ.setdefault("MALLOC_ARENA_MAX", str(arenas)))
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, value)


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost, or a wildcard such as "" or "*"
        return False


def unauthenticated_bind_refusal(settings: Settings) -> str | None:
    """Why this configuration must not start (auth off on a network address), or None."""
    if not settings.auth_disabled or is_loopback(settings.host) or settings.allow_unauthenticated_network:
        return None
    return (
        f"refusing to serve without authentication on {settings.host!r}: DERMTRIAGE_AUTH_DISABLED=1 is for "
        "local use and binds only a loopback address (--host 127.0.0.1). Configure API keys "
        "(DERMTRIAGE_API_KEYS) to serve a network, or set DERMTRIAGE_ALLOW_UNAUTHENTICATED_NETWORK=1 to "
        "accept that anyone who can reach this address gets every answer without credentials."
    )


def warn_if_unauthenticated(settings: Settings) -> None:
    if settings.auth_disabled:
        log.warning(
            "authentication is DISABLED: /v1, /fhir and /cds-services answer anyone who can connect",
            extra={"host": settings.host, "network_allowed": settings.allow_unauthenticated_network},
        )


def share_metrics(settings: Settings) -> str | None:
    """With several workers: the folder their metrics go through (``PROMETHEUS_MULTIPROC_DIR``: kept
    when set, else a fresh one), exported before uvicorn starts them; None with one worker."""
    # Set but empty, prometheus_client (when imported) would write its files to the working directory.
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") == "":
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    from service.metrics import MULTIPROC_ENV

    if settings.workers <= 1:
        return None
    folder = os.environ.get(MULTIPROC_ENV) or tempfile.mkdtemp(prefix="dermtriage-metrics-")
    os.environ[MULTIPROC_ENV] = folder
    if not settings.redis_url:
        log.warning(
            "several workers without DERMTRIAGE_REDIS_URL: answers by id, CDS card links, rate limits and the "
            "JWT replay check are per worker",
            extra={"workers": settings.workers},
        )
    return folder


def configure(overrides: dict[str, Any]) -> Settings | None:
    """Validate the flags over the environment and export them as ``DERMTRIAGE_*`` (so every worker or
    replica builds the same Settings); None (the error printed) when the server must not start."""
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        settings = Settings(**given)
    except ValidationError as exc:
        print(f"error: invalid configuration:\n{exc}", file=sys.stderr)
        return None
    from models.backends.registry import get_spec

    try:
        get_spec(settings.model)
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return None
    refusal = unauthenticated_bind_refusal(settings)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return None
    for key, value in given.items():
        os.environ[Settings.env_name(key)] = str(value)
    return settings


def serve(overrides: dict[str, Any]) -> int:
    settings = configure(overrides)
    if settings is None:
        return 2
    import uvicorn

    limit_malloc_arenas()
    config = logging_config(settings.log_level)
    logging.config.dictConfig(config)
    log.info(
        "starting",
        extra={
            "url": f"http://{settings.host}:{settings.port}",
            "model": settings.model,
            "device": settings.device,
            "workers": settings.workers,
        },
    )
    warn_if_unauthenticated(settings)
    share_metrics(settings)
    uvicorn.run(
        "service.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=config,
        log_level=settings.log_level,
        access_log=False,  # the app writes its own access lines (with request ids)
        server_header=False,
        limit_concurrency=settings.limit_concurrency,  # connections from their first byte; more get 503
        timeout_graceful_shutdown=settings.shutdown_grace_s,  # SIGTERM: stop accepting, drain, then exit
    )
    return 0
