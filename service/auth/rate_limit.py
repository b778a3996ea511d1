"""Per-key token buckets: ``per_minute`` tokens refill continuously up to ``burst``; one request takes one.

`RateLimiter` keeps the buckets in this process; `RedisRateLimiter` keeps them in Redis for every
worker and replica, each bucket updated atomically by one Lua script (read, refill, take, write with a
TTL) on the server's clock. Redis unreachable: the Redis limiter falls back to this process's buckets
(limits then hold per process) and logs it, so triage goes on.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from service.shared_state import KEY_PREFIX, redis_errors

if TYPE_CHECKING:
    import redis.asyncio

log = logging.getLogger("dermtriage.auth")

# KEYS[1] the bucket; ARGV: refill per second, capacity. Returns 0 (allowed) or the wait in milliseconds.
# The server's TIME is the clock, so workers on different machines agree.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local held = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(held[1]) or capacity
local updated = tonumber(held[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - updated) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate * 1000)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'updated', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity / rate * 1000) + 1000)
return wait
"""


class Limiter(Protocol):
    async def acquire(self, key: str, per_minute: float | None = None) -> float | None:
        """Take one token for ``key``: None when allowed, else the seconds until one is available."""
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """In memory, per process (each uvicorn worker limits on its own)."""

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, key: str, per_minute: float | None = None) -> float | None:
        """Take one token for ``key``: None when allowed, else the seconds until one is available."""
        rate = (per_minute or self.per_minute) / 60.0
        capacity = max(float(self.burst), 1.0)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = _Bucket(capacity, now)
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return (1.0 - bucket.tokens) / rate

    async def acquire(self, key: str, per_minute: float | None = None) -> float | None:
        return self.take(key, per_minute)


class RedisRateLimiter:
    """The same buckets in Redis (one hash per key, expiring once full again)."""

    def __init__(self, client: redis.asyncio.Redis, per_minute: float, burst: int) -> None:
        self.per_minute = per_minute
        self.burst = burst
        self.script = client.register_script(TOKEN_BUCKET_LUA)
        self.fallback = RateLimiter(per_minute, burst)
        self._down = False

    async def acquire(self, key: str, per_minute: float | None = None) -> float | None:
        rate = (per_minute or self.per_minute) / 60.0
        try:
            wait_ms = int(await self.script(keys=[f"{KEY_PREFIX}rate:{key}"], args=[repr(rate), max(self.burst, 1)]))
        except redis_errors() as exc:
            if not self._down:
                log.warning("rate limits held per process: redis unreachable", extra={"error": type(exc).__name__})
            self._down = True
            return self.fallback.take(key, per_minute)
        self._down = False
        return wait_ms / 1000.0 if wait_ms > 0 else None


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
