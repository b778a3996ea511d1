"""State that every worker process must see, behind Litestar's store interface (``litestar.stores``): this
process's memory by default (one process, nothing to install), or a Redis server (``DERMTRIAGE_REDIS_URL``)
shared by every worker and replica.

One named store per kind, each in its own namespace (``dermtriage:<name>:`` in Redis), registered in the
app's ``StoreRegistry`` (``Litestar(stores=...)``): recent answers by id and their heatmaps
(:mod:`service.results`), the CDS Hooks photo cache and issued cards (:mod:`service.cds_hooks.state`), SMART
launch sessions (:mod:`service.smart.sessions`). Every call is awaited, so nothing waits for Redis on the
event loop. The memory default is Litestar's ``MemoryStore`` with a cap this module adds
(:class:`CappedMemoryStore`: at most N values and B bytes, least recently used dropped first; Litestar's
own expiry drops the rest, on read and on the purge timer). Redis expires keys itself; its total is bounded
by the server's ``maxmemory``.

The rate-limit buckets and the CDS JWT ``jti`` replay set need atomic updates the store interface has no
words for: they use Redis' own primitives (a Lua script, ``SET NX EX``) on the same ``redis.asyncio``
client the stores use (:mod:`service.auth.rate_limit`, :mod:`service.auth.cds_jwt`), and this process's
memory in the default. Durable data (cases, reviews, audit) goes to the case database, never here.

Redis down: answers are made but not kept (the response says so in ``X-Result-Cache: unavailable``),
rate limits fall back to this process's buckets, the ``jti`` check and SMART launches fail closed (503).
"""

from __future__ import annotations

import contextvars
import logging
import math
from collections import OrderedDict
from collections.abc import MutableSet
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import redis
import redis.asyncio
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.stores.redis import RedisStore
from litestar.stores.registry import StoreRegistry

from service.problems import Problem

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

KEY_PREFIX = "dermtriage:"
DEGRADED_HEADER = "X-Result-Cache"
SOCKET_TIMEOUT_S = 0.5  # a local Redis answers in well under a millisecond; a dead one must not hold requests
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


def seconds(ttl_s: float) -> timedelta:
    """A TTL for ``Store.set``: sub-second precision in memory (Redis rounds it up to whole seconds)."""
    return timedelta(seconds=ttl_s)


class AddingStore(Protocol):
    """A Litestar store that can also set a key only if it holds no live value (atomically)."""

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None: ...

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None: ...

    async def delete(self, key: str) -> None: ...

    async def add(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> bool: ...


class CappedMemoryStore(MemoryStore):
    """Litestar's ``MemoryStore`` holding at most ``max_items`` values and ``max_bytes`` bytes of them (the
    least recently set or read dropped first; a value over ``max_bytes`` alone is not kept). ``MemoryStore``
    alone is bounded only by expiry. ``add`` sets unless a live value is held, atomically (one lock holds
    every write). ``max_items`` of 0 keeps nothing (caching off)."""

    __slots__ = ("_bytes", "_sizes", "_write", "max_bytes", "max_items")

    def __init__(self, max_items: int, max_bytes: int | None = None) -> None:
        super().__init__()
        self.max_items, self.max_bytes = max_items, max_bytes
        self._sizes: OrderedDict[str, int] = OrderedDict()  # key -> bytes held, least recently used first
        self._bytes = 0
        self._write = anyio.Lock()

    def held(self) -> int:
        """Values held now (expired ones included until read or purged)."""
        return len(self._sizes)

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        async with self._write:
            await self._put(key, value, expires_in)

    async def add(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> bool:
        async with self._write:
            if self.max_items <= 0 or await super().get(key) is not None:
                return False
            await self._put(key, value, expires_in)
            return True

    async def get(self, key: str, renew_for: int | timedelta | None = None) -> bytes | None:
        value = await super().get(key, renew_for)
        if value is not None and key in self._sizes:
            self._sizes.move_to_end(key)
        return value

    async def delete(self, key: str) -> None:
        async with self._write:
            await self._drop(key)

    async def delete_all(self) -> None:
        async with self._write:
            await super().delete_all()
            self._sizes.clear()
            self._bytes = 0

    async def delete_expired(self) -> None:
        """Drop expired values now (patient data: not only when read)."""
        async with self._write:
            await super().delete_expired()
            gone = []
            for key in self._sizes:
                if not await super().exists(key):
                    gone.append(key)
            for key in gone:
                self._bytes -= self._sizes.pop(key)

    async def _put(self, key: str, value: str | bytes, expires_in: int | timedelta | None) -> None:
        data = value.encode() if isinstance(value, str) else value
        if self.max_items <= 0 or (self.max_bytes is not None and len(data) > self.max_bytes):
            await self._drop(key)  # not kept, and an older value under this key is not left behind
            return
        await super().set(key, data, expires_in)
        self._bytes += len(data) - self._sizes.pop(key, 0)
        self._sizes[key] = len(data)
        while len(self._sizes) > self.max_items or (self.max_bytes is not None and self._bytes > self.max_bytes):
            await self._drop(next(iter(self._sizes)))

    async def _drop(self, key: str) -> None:
        self._bytes -= self._sizes.pop(key, 0)
        await super().delete(key)


def _whole_seconds(expires_in: int | timedelta | None) -> int | None:
    if isinstance(expires_in, timedelta):
        return max(1, math.ceil(expires_in.total_seconds()))
    return expires_in


class SharedRedisStore(RedisStore):
    """Litestar's ``RedisStore`` plus ``add`` (``SET NX EX``: never overwrites), TTLs rounded up to whole
    seconds (Redis' unit)."""

    __slots__ = ()

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        await super().set(key, value, _whole_seconds(expires_in))

    async def add(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> bool:
        return bool(await self._redis.set(self._make_key(key), value, nx=True, ex=_whole_seconds(expires_in)))


class SharedState:
    """The app's stores (``stores``, a Litestar ``StoreRegistry``) and, with Redis, the one async client
    they, the rate limiter and the replay set share (``client``; None: memory only). ``where`` names the
    server for readiness, without credentials."""

    def __init__(self, client: redis.asyncio.Redis | None = None, where: str = "memory") -> None:
        self.client, self.where = client, where
        self._memory: list[CappedMemoryStore] = []
        self._named: dict[str, Store] = {}
        self.stores = StoreRegistry(default_factory=self._unnamed)

    @classmethod
    def from_url(cls, url: str | None) -> SharedState:
        if not url:
            return cls()
        kw: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S, "socket_connect_timeout": SOCKET_TIMEOUT_S}
        client = redis.asyncio.Redis.from_url(url, **kw)
        c = client.connection_pool.connection_kwargs
        return cls(client, f"redis://{c.get('host', c.get('path', '?'))}:{c.get('port', '')}/{c.get('db', 0)}")

    @property
    def shared(self) -> bool:
        return self.client is not None

    def store(self, name: str, max_items: int, max_bytes: int | None = None) -> AddingStore:
        """The store of one kind (registered under ``name``): in Redis when configured and ``max_items`` > 0
        (0 turns the kind off), else in this process's memory with these caps."""
        if name not in self._named:
            self.stores.register(name, self._make(name, max_items, max_bytes))
        return self._named[name]  # type: ignore[return-value]

    def _make(self, name: str, max_items: int, max_bytes: int | None) -> Store:
        if self.client is not None and max_items > 0:
            store: Store = SharedRedisStore(self.client, namespace=f"{KEY_PREFIX}{name}")
        else:
            memory = CappedMemoryStore(max_items, max_bytes)
            self._memory.append(memory)
            store = memory
        self._named[name] = store
        return store

    def _unnamed(self, name: str) -> Store:
        """A store asked for by name only (``app.stores.get(name)``): the same kind, 1,000 values in memory."""
        return self._make(name, 1000, None)

    async def purge(self) -> None:
        """Drop expired values from the memory stores now (Redis expires its own)."""
        for store in self._memory:
            await store.delete_expired()

    async def readiness(self) -> dict[str, Any]:
        """``{"backend", "where", "status": ok|down, "detail"}`` for ``/health/ready``."""
        if self.client is None:
            return {"backend": "memory", "where": "this process", "status": "ok", "detail": None}
        try:
            await self.client.ping()
            return {"backend": "redis", "where": self.where, "status": "ok", "detail": None}
        except redis_errors() as exc:
            return {"backend": "redis", "where": self.where, "status": "down", "detail": type(exc).__name__}

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()


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
