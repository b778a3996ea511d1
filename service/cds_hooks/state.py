"""What the CDS Hooks service keeps between calls: photo results (for repeat calls on the same photo),
issued cards, and card feedback behind an interface the case database implements (`service.store.feedback`).

The photo results and issued cards live in this process's memory, or in Redis for every worker and
replica when ``DERMTRIAGE_REDIS_URL`` is set (`service.shared_state`); Redis unreachable: a miss."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from service.cds_hooks.prefetch import FhirFetcher
from service.results import TtlCache
from service.schemas import ClinicalInput, TriageOptions, TriageResult
from service.settings import Settings
from service.shared_state import KEY_PREFIX, SharedState, mark_degraded, redis_errors

if TYPE_CHECKING:
    import redis

CARD_TTL_S = 7 * 24 * 3600  # feedback on a card may come days later


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


class RedisPhotoCache:
    """``PhotoResultCache`` in Redis: the answer's JSON under the photo key, expired by Redis after
    ``ttl_s`` (the total is bounded by the server's ``maxmemory``)."""

    def __init__(self, client: redis.Redis, ttl_s: float = 900.0) -> None:
        self.client = client
        self.ttl_s = max(1, math.ceil(ttl_s))

    def get(self, key: str) -> TriageResult | None:
        try:
            raw = self.client.get(f"{KEY_PREFIX}photo:{key}")
        except redis_errors():
            mark_degraded("photo-cache")
            return None
        return TriageResult.model_validate_json(raw) if raw is not None else None

    def put(self, key: str, value: TriageResult) -> None:
        try:
            self.client.set(f"{KEY_PREFIX}photo:{key}", value.model_dump_json(), ex=self.ttl_s)
        except redis_errors():
            mark_degraded("photo-cache")

    def purge(self) -> int:
        return 0  # Redis expires keys itself


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


class RedisIssuedCards:
    """``IssuedCards`` in Redis, each for ``CARD_TTL_S``: feedback may reach another worker."""

    def __init__(self, client: redis.Redis, ttl_s: int = CARD_TTL_S) -> None:
        self.client = client
        self.ttl_s = ttl_s

    def add(self, card: str, request_id: str) -> None:
        try:
            self.client.set(f"{KEY_PREFIX}card:{card}", request_id, ex=self.ttl_s)
        except redis_errors():
            mark_degraded("card-links")

    def get(self, card: str) -> str | None:
        if len(card) > 128:
            return None
        try:
            raw = self.client.get(f"{KEY_PREFIX}card:{card}")
        except redis_errors():
            mark_degraded("card-links")
            return None
        return raw.decode() if isinstance(raw, bytes) else raw


@dataclass
class CdsState:
    cache: PhotoResultCache | RedisPhotoCache
    feedback: FeedbackStore
    cards: IssuedCards | RedisIssuedCards = field(default_factory=IssuedCards)
    fhir_fetcher: FhirFetcher = field(default_factory=lambda: FhirFetcher({}))  # default: fetches nothing

    @classmethod
    def from_settings(cls, settings: Settings, shared: SharedState | None = None) -> CdsState:
        """The cache sizes and the per-issuer FHIR fetching rules of ``settings``; the photo cache and
        the issued cards in Redis when ``shared`` has a client."""
        fetcher = FhirFetcher.from_settings(settings)
        if shared is not None and shared.client is not None:
            cache: PhotoResultCache | RedisPhotoCache = (
                RedisPhotoCache(shared.client, settings.cds_cache_ttl_s)
                if settings.cds_cache_size > 0
                else PhotoResultCache(0, settings.cds_cache_ttl_s)  # caching off
            )
            return cls(cache, MemoryFeedbackStore(), RedisIssuedCards(shared.client), fhir_fetcher=fetcher)
        return cls(
            PhotoResultCache(settings.cds_cache_size, settings.cds_cache_ttl_s),
            MemoryFeedbackStore(),
            fhir_fetcher=fetcher,
        )
