"""Recent triage answers by their server-minted result id, so a viewer link or a CDS Hooks card can open
one later, for the principal that made it.

`ResultStore` is the interface; `MemoryResultStore` keeps a bounded number of answers for a bounded
time in this process (answers hold patient data: nothing is written to disk). Each answer is kept
with its owner (`api-key:<name>`, the CDS principal, or `anonymous` when authentication is off) and
a share token (a capability for that one answer, put in CDS Hooks card links); a read by anyone
else is answered like a missing id. Nothing overwrites a stored answer. `RedisResultStore` keeps
the same for every worker and replica (``DERMTRIAGE_REDIS_URL``). `TtlCache` is the bounded,
time-limited map under the memory store, also used for the CDS Hooks photo cache.
"""

from __future__ import annotations

import hmac
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from service.schemas import TriageResult
from service.shared_state import KEY_PREFIX, mark_degraded, redis_errors

if TYPE_CHECKING:
    import redis

V = TypeVar("V")
ANONYMOUS = "anonymous"
SHARE_HEADER = "X-Result-Share"  # a result's share token, from a CDS Hooks card link
DEFAULT_HEATMAP_BYTES = 64 * 1024 * 1024
MAX_ID_CHARS = 64  # server-minted ids are 32 hex digits; a longer one is never looked up


def principal_of(connection: Any) -> str:
    """Who is asking: the principal the auth guard put in ``scope["state"]``, else ``anonymous``
    (authentication off). ``connection``: a Litestar Request or any ASGI connection."""
    principal = connection.scope.get("state", {}).get("principal")
    return str(principal) if principal else ANONYMOUS


def client_of(connection: Any) -> str | None:
    """The client's address as the server saw it (for the audit trail), or None."""
    client = connection.scope.get("client")
    return str(client[0])[:64] if client else None


class TtlCache(Generic[V]):
    """At most `max_items` values, each for at most `ttl_s` seconds; least recently put (or, with
    `refresh_on_get`, used) evicted first. Thread-safe; counts hits and misses."""

    def __init__(
        self,
        max_items: int,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
        *,
        refresh_on_get: bool = False,
    ) -> None:
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.refresh_on_get = refresh_on_get
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None or self._clock() - item[0] > self.ttl_s:
                self._items.pop(key, None)
                self.misses += 1
                return None
            if self.refresh_on_get:
                self._items.move_to_end(key)
            self.hits += 1
            return item[1]

    def put(self, key: str, value: V) -> None:
        if self.max_items <= 0:
            return
        with self._lock:
            self._items[key] = (self._clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def add(self, key: str, value: V) -> bool:
        """Put unless a live value is held under ``key`` (then refuse: False). Never overwrites."""
        if self.max_items <= 0:
            return False
        with self._lock:
            held = self._items.get(key)
            if held is not None and self._clock() - held[0] <= self.ttl_s:
                return False
            self._items[key] = (self._clock(), value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
            return True

    def replace(self, key: str, value: V) -> None:
        """Swap the value held under ``key`` keeping its time and place (no-op when absent)."""
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items[key] = (item[0], value)

    def values(self) -> list[tuple[str, V]]:
        """The live (unexpired) items, oldest put first."""
        with self._lock:
            now = self._clock()
            return [(k, v) for k, (t, v) in self._items.items() if now - t <= self.ttl_s]

    def purge(self) -> int:
        """Drop every expired item now (not only when read); returns how many."""
        with self._lock:
            now = self._clock()
            expired = [k for k, (t, _) in self._items.items() if now - t > self.ttl_s]
            for key in expired:
                del self._items[key]
            return len(expired)

    def __len__(self) -> int:
        return len(self._items)


class ResultExists(Exception):
    """A result is already held under this id: stored results are never replaced."""


@dataclass(frozen=True)
class StoredResult:
    result: TriageResult
    owner: str
    share_token: str
    heatmap_bytes: int = 0


def heatmap_bytes(result: TriageResult) -> int:
    """Bytes the result's heatmap PNGs (base64) and grids take, about."""
    total = 0
    for h in result.heatmaps or ():
        grid = 8 * h.grid_shape[0] * h.grid_shape[1] if h.grid is not None else 0
        total += len(h.png_base64) + len(h.legend_png_base64) + grid
    return total


class ResultStore(Protocol):
    def put(self, result: TriageResult, owner: str) -> None:
        """Keep ``result`` under ``result.id`` for ``owner``; raise :class:`ResultExists` if the id is held."""
        ...

    def get(self, result_id: str, principal: str, share_token: str | None = None) -> TriageResult | None:
        """The result, to its owner or to a holder of its share token; None to everyone else."""
        ...

    def share_token(self, result_id: str, principal: str) -> str | None:
        """The result's share token, to its owner only."""
        ...

    def purge(self) -> int:
        """Drop expired results now; returns how many."""
        ...


class MemoryResultStore:
    """At most ``max_items`` answers, each for at most ``ttl_s`` seconds; oldest evicted first.

    Heatmap PNGs are the bulk of an explained answer: the heatmaps of all held answers together are
    capped at ``max_heatmap_bytes`` (the oldest answers lose theirs first, ``heatmaps: null``; an
    answer whose heatmaps alone exceed the cap is kept without them).
    """

    def __init__(
        self,
        max_items: int = 256,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        max_heatmap_bytes: int = DEFAULT_HEATMAP_BYTES,
    ):
        self._cache: TtlCache[StoredResult] = TtlCache(max_items, ttl_s, clock)
        self.max_heatmap_bytes = max_heatmap_bytes
        self._lock = threading.Lock()

    def put(self, result: TriageResult, owner: str) -> None:
        size = heatmap_bytes(result)
        if size > self.max_heatmap_bytes:
            result, size = result.model_copy(update={"heatmaps": None}), 0
        stored = StoredResult(result, owner, secrets.token_urlsafe(16), size)
        with self._lock:
            if not self._cache.add(result.id, stored):
                raise ResultExists(f"a result is already held under id {result.id[:8]}...")
            self._cap_heatmaps()

    def _cap_heatmaps(self) -> None:
        items = self._cache.values()
        total = sum(s.heatmap_bytes for _, s in items)
        for key, stored in items:
            if total <= self.max_heatmap_bytes:
                return
            if stored.heatmap_bytes:
                bare = stored.result.model_copy(update={"heatmaps": None})
                self._cache.replace(key, replace(stored, result=bare, heatmap_bytes=0))
                total -= stored.heatmap_bytes

    def _readable(self, result_id: str, principal: str, share_token: str | None) -> StoredResult | None:
        stored = self._cache.get(result_id)
        if stored is None:
            return None
        if hmac.compare_digest(stored.owner.encode(), principal.encode()):
            return stored
        if share_token and hmac.compare_digest(stored.share_token.encode(), share_token.encode()):
            return stored
        return None

    def get(self, result_id: str, principal: str, share_token: str | None = None) -> TriageResult | None:
        stored = self._readable(result_id, principal, share_token)
        return stored.result if stored is not None else None

    def share_token(self, result_id: str, principal: str) -> str | None:
        stored = self._readable(result_id, principal, None)
        return stored.share_token if stored is not None else None

    def purge(self) -> int:
        return self._cache.purge()

    def __len__(self) -> int:
        return len(self._cache)


class RedisResultStore:
    """The same contract in Redis, for every worker and replica: ``SET NX EX`` (an id is never
    overwritten; Redis expires it after ``ttl_s``). An answer whose heatmaps pass
    ``max_heatmap_bytes`` is kept without them; the total is bounded by the server's ``maxmemory``.

    Redis unreachable: ``put`` keeps nothing and the response says ``X-Result-Cache: unavailable``;
    reads miss (the route then asks the case database)."""

    def __init__(
        self, client: redis.Redis, ttl_s: float = 3600.0, *, max_heatmap_bytes: int = DEFAULT_HEATMAP_BYTES
    ) -> None:
        self.client = client
        self.ttl_s = max(1, math.ceil(ttl_s))
        self.max_heatmap_bytes = max_heatmap_bytes

    @staticmethod
    def key(result_id: str) -> str:
        return f"{KEY_PREFIX}result:{result_id}"

    def put(self, result: TriageResult, owner: str) -> None:
        if heatmap_bytes(result) > self.max_heatmap_bytes:
            result = result.model_copy(update={"heatmaps": None})
        value = json.dumps(
            {"owner": owner, "share": secrets.token_urlsafe(16), "result": result.model_dump(mode="json")}
        )
        try:
            stored = self.client.set(self.key(result.id), value, nx=True, ex=self.ttl_s)
        except redis_errors():
            mark_degraded("result-cache")
            return
        if not stored:
            raise ResultExists(f"a result is already held under id {result.id[:8]}...")

    def _readable(self, result_id: str, principal: str, share_token: str | None) -> dict[str, Any] | None:
        if len(result_id) > MAX_ID_CHARS:
            return None
        try:
            raw = self.client.get(self.key(result_id))
        except redis_errors():
            mark_degraded("result-cache")
            return None
        if raw is None:
            return None
        held = json.loads(raw)
        if hmac.compare_digest(held["owner"].encode(), principal.encode()):
            return held  # type: ignore[no-any-return]
        if share_token and hmac.compare_digest(held["share"].encode(), share_token.encode()):
            return held  # type: ignore[no-any-return]
        return None

    def get(self, result_id: str, principal: str, share_token: str | None = None) -> TriageResult | None:
        held = self._readable(result_id, principal, share_token)
        return TriageResult.model_validate(held["result"]) if held is not None else None

    def share_token(self, result_id: str, principal: str) -> str | None:
        held = self._readable(result_id, principal, None)
        return str(held["share"]) if held is not None else None

    def purge(self) -> int:
        return 0  # Redis expires keys itself
