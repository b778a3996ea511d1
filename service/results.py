"""Recent triage answers by request id, so a viewer link or a CDS Hooks card can open one later.

`ResultStore` is the interface; `MemoryResultStore` keeps a bounded number of answers for a bounded
time in this process (answers hold patient data: nothing is written to disk). A shared store
(Redis, a database) can implement the same two methods for several workers. `TtlCache` is the
bounded, time-limited map under it, also used for the CDS Hooks photo cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from service.schemas import TriageResult

V = TypeVar("V")


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

    def __len__(self) -> int:
        return len(self._items)


class ResultStore(Protocol):
    def put(self, result: TriageResult) -> None: ...

    def get(self, request_id: str) -> TriageResult | None: ...


class MemoryResultStore:
    """At most `max_items` answers, each for at most `ttl_s` seconds; oldest evicted first."""

    def __init__(self, max_items: int = 256, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self._cache: TtlCache[TriageResult] = TtlCache(max_items, ttl_s, clock)

    def put(self, result: TriageResult) -> None:
        self._cache.put(result.request_id, result)

    def get(self, request_id: str) -> TriageResult | None:
        return self._cache.get(request_id)

    def __len__(self) -> int:
        return len(self._cache)
