"""What the CDS Hooks service keeps between calls: photo results (for repeat calls on the same photo),
issued cards, and card feedback behind an interface the case database implements (`service.store.feedback`).

The photo results and issued cards live in Litestar stores (`service.shared_state`): this process's
memory, or Redis for every worker and replica when ``DERMTRIAGE_REDIS_URL`` is set; Redis unreachable: a miss."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.cds_hooks.prefetch import FhirFetcher
from service.schemas import ClinicalInput, TriageOptions, TriageResult
from service.settings import Settings
from service.shared_state import AddingStore, SharedState, mark_degraded, redis_errors, seconds

CARD_TTL_S = 7 * 24 * 3600  # feedback on a card may come days later
MAX_CARDS = 10_000  # issued cards held in memory (the memory default)


def photo_key(image: bytes, options: TriageOptions, clinical: ClinicalInput) -> str:
    """Same photo, same options, same clinical input -> same answer."""
    h = hashlib.sha256(image)
    h.update(json.dumps(options.model_dump(mode="json"), sort_keys=True).encode())
    h.update(json.dumps(clinical.model_dump(mode="json", exclude_none=True), sort_keys=True).encode())
    return h.hexdigest()


class PhotoCache:
    """Answers by photo key (`photo_key`), each for ``ttl_s``, in the ``cds-photos`` store (least recently
    used dropped first in memory); counts this process's hits and misses. Redis unreachable: a miss."""

    def __init__(self, store: AddingStore, ttl_s: float = 900.0) -> None:
        self.store, self.ttl_s = store, ttl_s
        self.hits = self.misses = 0

    async def get(self, key: str) -> TriageResult | None:
        try:
            raw = await self.store.get(key)
        except redis_errors():
            mark_degraded("photo-cache")
            raw = None
        if raw is None:
            self.misses += 1
            return None
        self.hits += 1
        return TriageResult.model_validate_json(raw)

    async def put(self, key: str, value: TriageResult) -> None:
        try:
            await self.store.set(key, value.model_dump_json(), seconds(self.ttl_s))
        except redis_errors():
            mark_degraded("photo-cache")


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
    """card uuid -> request id, each for ``CARD_TTL_S``, in the ``cds-cards`` store: feedback may reach
    another worker. Redis unreachable: not kept, a miss."""

    def __init__(self, store: AddingStore, ttl_s: float = CARD_TTL_S) -> None:
        self.store, self.ttl_s = store, ttl_s

    async def add(self, card: str, request_id: str) -> None:
        try:
            await self.store.set(card, request_id, seconds(self.ttl_s))
        except redis_errors():
            mark_degraded("card-links")

    async def get(self, card: str) -> str | None:
        if len(card) > 128:
            return None
        try:
            raw = await self.store.get(card)
        except redis_errors():
            mark_degraded("card-links")
            return None
        return raw.decode() if raw is not None else None


@dataclass
class CdsState:
    cache: PhotoCache
    feedback: FeedbackStore
    cards: IssuedCards
    fhir_fetcher: FhirFetcher = field(default_factory=lambda: FhirFetcher({}))  # default: fetches nothing

    @classmethod
    def from_settings(cls, settings: Settings, shared: SharedState | None = None) -> CdsState:
        """The cache sizes and the per-issuer FHIR fetching rules of ``settings``; the photo cache and the
        issued cards in ``shared``'s stores (this process's memory when None)."""
        shared = shared or SharedState()
        return cls(
            PhotoCache(shared.store("cds-photos", settings.cds_cache_size), settings.cds_cache_ttl_s),
            MemoryFeedbackStore(),
            IssuedCards(shared.store("cds-cards", MAX_CARDS)),
            fhir_fetcher=FhirFetcher.from_settings(settings),
        )
