"""State that every worker process must see: this process's memory (the default: one process, nothing
to install) or a Redis server (``DERMTRIAGE_REDIS_URL``) shared by every worker and replica.

What goes there: recent answers by id (:mod:`service.results`), the CDS Hooks photo cache and issued
card ids (:mod:`service.cds_hooks.state`), rate-limit buckets (:mod:`service.auth.rate_limit`) and
the CDS JWT ``jti`` replay set (:mod:`service.auth.cds_jwt`). Durable data (cases, reviews, audit) goes
to the case database, never here.

The result and card stores are called synchronously by the routes, so they use redis-py's blocking
client (one local round trip, bounded by ``socket_timeout``); the rate limiter runs in the async auth
guard and uses the asyncio client. Litestar's own ``litestar.stores`` are async-only, and their
get/set cannot express "set if absent" or an atomic bucket, so they are not used here.

Redis down: answers are made but not kept (the response says so in ``X-Result-Cache: unavailable``),
rate limits fall back to this process's buckets, and the ``jti`` check fails closed (503).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import MutableSet
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import redis.asyncio

from service.problems import Problem

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

KEY_PREFIX = "dermtriage:"
DEGRADED_HEADER = "X-Result-Cache"
SOCKET_TIMEOUT_S = 0.5  # a local Redis answers in well under a millisecond; a dead one must not hang requests
log = logging.getLogger("dermtriage.shared_state")

_degraded: contextvars.ContextVar[MutableSet[str] | None] = contextvars.ContextVar("dermtriage_degraded", default=None)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a Redis call raises when the server is unreachable or broken (connection, timeout, protocol)."""
    return (redis.RedisError, OSError)


def mark_degraded(what: str) -> None:
    """Note, for this request's response header, that ``what`` (e.g. ``result-cache``) was skipped."""
    notes = _degraded.get()
    if notes is not None:
        notes.add(what)


def unavailable(what: str) -> Problem:
    """The 503 of a path that must not go on without the shared store (it fails closed)."""
    return Problem(
        "shared-state-unavailable",
        503,
        f"The shared state server (Redis) is unreachable, and {what} cannot be checked without it; retry shortly.",
        title="Shared state unavailable",
        headers={"Retry-After": "5"},
    )


@dataclass
class SharedState:
    """The Redis clients (both None: memory only). ``url`` is kept for readiness, without credentials."""

    client: redis.Redis | None = None
    aclient: redis.asyncio.Redis | None = None
    where: str = "memory"

    @classmethod
    def from_url(cls, url: str | None) -> SharedState:
        if not url:
            return cls()
        kw: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": SOCKET_TIMEOUT_S}
        client = redis.Redis.from_url(url, **kw)
        aclient = redis.asyncio.Redis.from_url(url, **kw)
        c = client.connection_pool.connection_kwargs
        where = f"redis://{c.get('host', c.get('path', '?'))}:{c.get('port', '')}/{c.get('db', 0)}"
        return cls(client, aclient, where)

    @property
    def shared(self) -> bool:
        return self.client is not None

    async def readiness(self) -> dict[str, Any]:
        """``{"backend", "where", "status": ok|down, "detail"}`` for ``/health/ready``."""
        if self.aclient is None:
            return {"backend": "memory", "where": "this process", "status": "ok", "detail": None}
        try:
            await self.aclient.ping()
            return {"backend": "redis", "where": self.where, "status": "ok", "detail": None}
        except redis_errors() as exc:
            return {"backend": "redis", "where": self.where, "status": "down", "detail": type(exc).__name__}

    async def close(self) -> None:
        if self.aclient is not None:
            await self.aclient.aclose()
        if self.client is not None:
            self.client.close()


class DegradedHeader:
    """ASGI wrapper: a response whose request skipped a shared store (Redis down) says which, in
    ``X-Result-Cache: unavailable`` (the answer was made but cannot be fetched by id later)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        notes: set[str] = set()
        token = _degraded.set(notes)

        async def send_noted(message: Message) -> None:
            if message["type"] == "http.response.start" and notes:
                headers = [*message.get("headers", []), (DEGRADED_HEADER.lower().encode(), b"unavailable")]
                message = {**message, "headers": headers}  # type: ignore[typeddict-item]
            await send(message)

        try:
            await self.app(scope, receive, send_noted)
        finally:
            _degraded.reset(token)
