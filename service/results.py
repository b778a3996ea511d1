"""Recent triage answers by request id, so a viewer link or a CDS Hooks card can open one later.

`ResultStore` is the interface; `MemoryResultStore` keeps a bounded number of answers for a bounded
time in this process (answers hold patient data: nothing is written to disk). A shared store
(Redis, a database) can implement the same two methods for several workers.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from service.schemas import TriageResult


class ResultStore(Protocol):
    def put(self, result: TriageResult) -> None: ...

    def get(self, request_id: str) -> TriageResult | None: ...


class MemoryResultStore:
    """At most `max_items` answers, each for at most `ttl_s` seconds; oldest evicted first."""

    def __init__(self, max_items: int = 256, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        self.max_items = max_items
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: OrderedDict[str, tuple[float, TriageResult]] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, result: TriageResult) -> None:
        if self.max_items <= 0:
            return
        with self._lock:
            self._items[result.request_id] = (self._clock(), result)
            self._items.move_to_end(result.request_id)
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, request_id: str) -> TriageResult | None:
        with self._lock:
            item = self._items.get(request_id)
            if item is None:
                return None
            stored, result = item
            if self._clock() - stored > self.ttl_s:
                del self._items[request_id]
                return None
            return result

    def __len__(self) -> int:
        return len(self._items)
