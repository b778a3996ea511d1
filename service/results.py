"""Recent triage answers by their server-minted result id, so a viewer link or a CDS Hooks card can open
one later, for the principal that made it.

`ResultStore` keeps a bounded number of answers for a bounded time, in Litestar stores
(:mod:`service.shared_state`): this process's memory by default (answers hold patient data: nothing is
written to disk), Redis for every worker and replica (``DERMTRIAGE_REDIS_URL``). Each answer is kept with
its owner (`api-key:<name>`, the CDS principal, or `anonymous` when authentication is off) and a share
token (a capability for that one answer, put in CDS Hooks card links); a read by anyone else is answered
like a missing id. Nothing overwrites a stored answer.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

from pydantic import BaseModel, TypeAdapter

from service.schemas import Heatmap, TriageResult
from service.settings import Settings
from service.shared_state import AddingStore, CappedMemoryStore, SharedState, mark_degraded, redis_errors, seconds

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


class ResultExists(Exception):
    """A result is already held under this id: stored results are never replaced."""


def heatmap_bytes(result: TriageResult) -> int:
    """Bytes the result's heatmap PNGs (base64) and grids take, about."""
    total = 0
    for h in result.heatmaps or ():
        grid = 8 * h.grid_shape[0] * h.grid_shape[1] if h.grid is not None else 0
        total += len(h.png_base64) + len(h.legend_png_base64) + grid
    return total


class Held(BaseModel):
    """What the store keeps under a result id: the answer without its heatmaps (kept apart), its owner and
    its share token."""

    owner: str
    share: str
    heatmaps: bool  # the answer had heatmaps, kept under the same id in the heatmap store
    result: TriageResult


HEATMAPS = TypeAdapter(list[Heatmap])


class ResultStore:
    """Answers by id in two Litestar stores (:mod:`service.shared_state`): ``answers`` (``Held``, added only
    if the id is free: nothing overwrites a stored answer) and ``heatmaps``, apart, since heatmap PNGs are
    the bulk of an explained answer: the memory default caps their bytes (the least recently used answers
    lose theirs first, ``heatmaps: null``) and an answer whose heatmaps alone pass ``max_heatmap_bytes`` is
    kept without them. Each is kept ``ttl_s`` seconds.

    Redis unreachable: ``put`` keeps nothing and the response says ``X-Result-Cache: unavailable``; reads
    miss (the route then asks the case database)."""

    def __init__(
        self,
        answers: AddingStore,
        heatmaps: AddingStore,
        ttl_s: float = 3600.0,
        *,
        max_heatmap_bytes: int = DEFAULT_HEATMAP_BYTES,
    ) -> None:
        self.answers, self.heatmaps = answers, heatmaps
        self.ttl_s = ttl_s
        self.max_heatmap_bytes = max_heatmap_bytes

    @classmethod
    def from_settings(cls, settings: Settings, shared: SharedState) -> ResultStore:
        size = settings.result_store_size
        return cls(
            shared.store("results", size),
            shared.store("result-heatmaps", size, settings.result_heatmap_bytes),
            settings.result_ttl_s,
            max_heatmap_bytes=settings.result_heatmap_bytes,
        )

    @classmethod
    def in_memory(
        cls, max_items: int = 256, ttl_s: float = 3600.0, *, max_heatmap_bytes: int = DEFAULT_HEATMAP_BYTES
    ) -> ResultStore:
        return cls(
            CappedMemoryStore(max_items),
            CappedMemoryStore(max_items, max_heatmap_bytes),
            ttl_s,
            max_heatmap_bytes=max_heatmap_bytes,
        )

    async def put(self, result: TriageResult, owner: str) -> None:
        """Keep ``result`` under ``result.id`` for ``owner``; raise :class:`ResultExists` if the id is held."""
        heatmaps = result.heatmaps if heatmap_bytes(result) <= self.max_heatmap_bytes else None
        held = Held(
            owner=owner,
            share=secrets.token_urlsafe(16),
            heatmaps=bool(heatmaps),
            result=result.model_copy(update={"heatmaps": None}),
        )
        expires = seconds(self.ttl_s)
        try:
            added = await self.answers.add(result.id, held.model_dump_json(), expires)
            if added and heatmaps:
                await self.heatmaps.set(result.id, HEATMAPS.dump_json(heatmaps), expires)
        except redis_errors():
            mark_degraded("result-cache")
            return
        if not added:
            raise ResultExists(f"a result is already held under id {result.id[:8]}...")

    async def _readable(self, result_id: str, principal: str, share_token: str | None) -> Held | None:
        if len(result_id) > MAX_ID_CHARS:
            return None
        try:
            raw = await self.answers.get(result_id)
        except redis_errors():
            mark_degraded("result-cache")
            return None
        if raw is None:
            return None
        held = Held.model_validate_json(raw)
        if hmac.compare_digest(held.owner.encode(), principal.encode()):
            return held
        if share_token and hmac.compare_digest(held.share.encode(), share_token.encode()):
            return held
        return None

    async def get(self, result_id: str, principal: str, share_token: str | None = None) -> TriageResult | None:
        """The result, to its owner or to a holder of its share token; None to everyone else."""
        held = await self._readable(result_id, principal, share_token)
        if held is None:
            return None
        if not held.heatmaps:
            return held.result
        try:
            raw = await self.heatmaps.get(result_id)
        except redis_errors():
            mark_degraded("result-cache")
            raw = None
        return held.result.model_copy(update={"heatmaps": HEATMAPS.validate_json(raw)}) if raw else held.result

    async def share_token(self, result_id: str, principal: str) -> str | None:
        """The result's share token, to its owner only."""
        held = await self._readable(result_id, principal, None)
        return held.share if held is not None else None
