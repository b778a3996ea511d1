"""What the CDS Hooks service keeps between calls: photo results (for repeat calls on the same photo),
issued cards, and card feedback behind an interface the case database implements (`service.store.feedback`)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.cds_hooks.prefetch import FhirFetcher
from service.results import TtlCache
from service.schemas import ClinicalInput, TriageOptions, TriageResult
from service.settings import Settings


def photo_key(image: bytes, options: TriageOptions, clinical: ClinicalInput) -> str:
    """Same photo, same options, same clinical input -> same answer."""
    h = hashlib.sha256(image)
    h.update(json.dumps(options.model_dump(mode="json"), sort_keys=True).encode())
    h.update(json.dumps(clinical.model_dump(mode="json", exclude_none=True), sort_keys=True).encode())
    return h.hexdigest()


class PhotoResultCache(TtlCache[TriageResult]):
    """Answers by photo key (`photo_key`): an LRU with a time limit; holds patient data in memory only."""

    def __init__(self, max_items: int = 256, ttl_s: float = 900.0, clock: Callable[[], float] = time.monotonic):
        super().__init__(max_items, ttl_s, clock, refresh_on_get=True)


@dataclass(frozen=True)
class FeedbackRecord:
    service_id: str
    card: str
    outcome: str  # accepted | overridden
    outcome_timestamp: str
    request_id: str | None  # the triage answer the card showed, when this process issued the card
    override_reason: dict[str, Any] | None = None
    accepted_suggestions: tuple[str, ...] = ()
    received_at: float = field(default_factory=time.time)


class FeedbackStore(Protocol):
    """Async: the database store (`service.store.feedback`) writes in the request."""

    async def add(self, record: FeedbackRecord) -> None: ...

    async def list(self, service_id: str | None = None) -> list[FeedbackRecord]: ...


class MemoryFeedbackStore:
    """The last ``max_items`` feedback records, in memory (persistence off; tests)."""

    def __init__(self, max_items: int = 10_000) -> None:
        self.max_items = max_items
        self._items: list[FeedbackRecord] = []
        self._lock = threading.Lock()

    async def add(self, record: FeedbackRecord) -> None:
        with self._lock:
            self._items.append(record)
            del self._items[: max(0, len(self._items) - self.max_items)]

    async def list(self, service_id: str | None = None) -> list[FeedbackRecord]:
        with self._lock:
            return [r for r in self._items if service_id is None or r.service_id == service_id]


class IssuedCards:
    """card uuid -> request id, for the cards this process issued (bounded)."""

    def __init__(self, max_items: int = 10_000) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, card: str, request_id: str) -> None:
        with self._lock:
            self._items[card] = request_id
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def get(self, card: str) -> str | None:
        with self._lock:
            return self._items.get(card)


@dataclass
class CdsState:
    cache: PhotoResultCache
    feedback: FeedbackStore
    cards: IssuedCards = field(default_factory=IssuedCards)
    fhir_fetcher: FhirFetcher = field(default_factory=lambda: FhirFetcher({}))  # default: fetches nothing

    @classmethod
    def from_settings(cls, settings: Settings) -> CdsState:
        """The cache sizes and the per-issuer FHIR fetching rules of ``settings``."""
        return cls(
            PhotoResultCache(settings.cds_cache_size, settings.cds_cache_ttl_s),
            MemoryFeedbackStore(),
            fhir_fetcher=FhirFetcher.from_settings(settings),
        )
