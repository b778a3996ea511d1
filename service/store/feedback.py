"""CDS Hooks card feedback in the database (the `FeedbackStore` protocol of `service.cds_hooks.state`).
Written in the request: the EHR gets a 503 when it cannot be kept, never a silent loss."""

from __future__ import annotations

from advanced_alchemy.filters import LimitOffset, OrderBy

from service.cds_hooks.state import FeedbackRecord
from service.store.cases import CaseStore
from service.store.models import CdsFeedback
from service.store.repository import FeedbackRepository

MAX_LISTED = 10_000


class DatabaseFeedbackStore:
    def __init__(self, store: CaseStore) -> None:
        self.store = store

    async def add(self, record: FeedbackRecord) -> None:
        row = CdsFeedback(
            service_id=record.service_id,
            card=record.card[:100],
            outcome=record.outcome,
            outcome_timestamp=record.outcome_timestamp[:64],
            request_id=record.request_id,
            override_reason=record.override_reason,
            accepted_suggestions=list(record.accepted_suggestions),
            received_at=record.received_at,
        )
        await self.store.run(lambda session: FeedbackRepository(session=session).add(row, auto_commit=False))

    async def list(self, service_id: str | None = None) -> list[FeedbackRecord]:
        """The last ``MAX_LISTED`` records (of one service), oldest first."""
        clauses = [CdsFeedback.service_id == service_id] if service_id is not None else []
        rows = await self.store.run(
            lambda session: FeedbackRepository(session=session).get_many(
                *clauses, OrderBy("id", "desc"), LimitOffset(MAX_LISTED, 0)
            )
        )
        return [
            FeedbackRecord(
                service_id=r.service_id,
                card=r.card,
                outcome=r.outcome,
                outcome_timestamp=r.outcome_timestamp,
                request_id=r.request_id,
                override_reason=r.override_reason,
                accepted_suggestions=tuple(r.accepted_suggestions),
                received_at=r.received_at,
            )
            for r in reversed(rows)
        ]
