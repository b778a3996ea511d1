"""`CaseStore`: every triage answer kept as a case, and the reviews, outcomes, annotations and audit
events around it. Triage answers and audit events of reads go through the bounded write queue
(:mod:`service.store.writer`); the case routes read and write in their own transaction, each with
its audit event. Callers see a case when they own it or hold the reviewer role; anyone else gets the
same 404 as for a missing case."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import anyio
from sqlalchemy import exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.metrics import Metrics
from service.problems import Problem
from service.schemas import TriageResult
from service.settings import Settings
from service.store.db import alchemy_config, is_sqlite, ping, redacted, upgrade
from service.store.models import AuditEvent, Case, Review
from service.store.photos import PhotoStore
from service.store.repository import AuditRepository, CaseRepository
from service.store.writer import DB_ERRORS, OP_TIMEOUT_S, Row, WriteQueue

Status = Literal["starting", "ok", "unavailable", "off"]
RETRY_S = 5.0
T = TypeVar("T")
log = logging.getLogger("dermtriage.store")


def now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CaseFacts:
    """What the answer itself does not say: the photo's hash, the weights hash, the caller's refs."""

    photo_sha256: str
    weights_sha256: str | None
    patient_ref: str | None = None
    lesion_ref: str | None = None
    client: str | None = None
    share_token: str | None = None
    stored_photo_sha256: str | None = None  # the kept photo (consent and DERMTRIAGE_STORE_PHOTOS), else None


def audit_row(
    actor: str, action: str, rtype: str, rid: str, case_id: str | None, client: str | None, outcome: str = "success"
) -> Row:
    values = {
        "at": now(),
        "actor": actor[:200],
        "action": action,
        "resource_type": rtype,
        "resource_id": rid[:64],
        "case_id": case_id,
        "client": (client or "")[:64] or None,
        "outcome": outcome,
    }
    return Row(AuditEvent, values)


def not_found() -> Problem:
    return Problem("case-not-found", 404, "No case with this id is held for this caller.", title="Case not found")


class CaseStore:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.url = settings.database_url
        self.config = alchemy_config(self.url)
        self.sessions = self.config.create_session_maker()
        self.required = settings.database_required
        migrate = settings.database_migrate
        self.migrate = is_sqlite(self.url) if migrate is None else migrate
        self.reviewers = frozenset(f"api-key:{name}" for name in settings.reviewers)
        self.metrics = metrics
        self.status: Status = "starting"
        self.error: str | None = None
        self.writes = WriteQueue(self.sessions, metrics, settings.database_queue_size, on_status=self._write_status)
        self.photos = PhotoStore(settings.photo_dir)  # reads and deletes work whether or not new photos are kept
        self.keep_photos = settings.store_photos
        self.retention_days = settings.retention_days
        self._retention: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Future[Any]] = set()

    # -- life cycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect (and migrate, for the embedded default) until it works; then drain the write queue.
        Not required and unreachable at start: persistence is off for this process's life."""
        while True:
            try:
                # Shielded: a connection cancelled mid-statement leaves SQLAlchemy's aiosqlite close waiting
                # forever, which hung the event loop's shutdown; a migration is not cut halfway either.
                with anyio.fail_after(OP_TIMEOUT_S, shield=True):
                    await (upgrade(self.config.get_engine()) if self.migrate else ping(self.config.get_engine()))
                break
            except Exception as exc:  # any failure to reach or migrate the database is reported, not raised
                self.mark_down(exc)
                if not self.required:
                    self.status = "off"
                    log.error("database unreachable at start: persistence off", extra={"error": self.error})
                    return
                await asyncio.sleep(RETRY_S)
        self.mark_up()
        log.info("case database ready", extra={"database": redacted(self.url)})
        if self.retention_days is not None:
            from service.store.removal import retention_loop  # removal imports this module

            self._retention = asyncio.create_task(retention_loop(self, self.retention_days))
        await self.writes.run()

    async def stop(self, timeout_s: float = 5.0) -> None:
        if self._retention is not None:
            self._retention.cancel()
            await asyncio.gather(self._retention, return_exceptions=True)
        if self._in_flight:  # the routes' transactions finish before the engine goes
            await asyncio.wait(list(self._in_flight), timeout=OP_TIMEOUT_S)
        if self.status == "ok":
            await self.writes.flush(timeout_s)
        elif self.writes.pending:
            log.error("case database down at shutdown: writes not kept", extra={"rows": self.writes.pending})
        await self.config.get_engine().dispose()
        self.photos.close()

    def mark_up(self) -> None:
        self.status, self.error = "ok", None
        self.metrics.database_up.set(1)

    def mark_down(self, exc: BaseException) -> None:
        self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}".rstrip(": ")
        if self.status != "off":
            self.status = "unavailable"
        self.metrics.database_up.set(0)

    def _write_status(self, error: str | None) -> None:
        if error is None:
            self.mark_up()
        elif self.status != "off":
            self.status, self.error = "unavailable", error
            self.metrics.database_up.set(0)

    @property
    def storage(self) -> Literal["queued", "off"]:
        """What an answer made now says about itself (`TriageResult.case_storage`)."""
        return "off" if self.status == "off" else "queued"

    def readiness(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "required": self.required,
            "detail": self.error,
            "pending_writes": self.writes.pending,
            "written": self.writes.written,
            "failed_writes": self.writes.failed,
            "lost_writes": self.writes.lost,
            "photos_refused": self.photos.refused,  # more than PhotoStore.max_pending writes waiting
            "photos_failed": self.photos.failed,
        }

    # -- the triage path (never waits) -------------------------------------------------------------
    def record_answer(self, result: TriageResult, owner: str, facts: CaseFacts) -> bool:
        """Queue the case and its `create` audit event; False when persistence is off or the queue is full."""
        if self.status == "off":
            return False
        token_hash = hashlib.sha256(facts.share_token.encode()).hexdigest() if facts.share_token else None
        calibration = result.uncertainty.calibration_id if result.uncertainty else None
        case = {
            "id": result.id,
            "owner": owner[:200],
            "created_at": now(),
            "model_name": result.model.name,
            "model_version": result.model.version,
            "weights_sha256": facts.weights_sha256,
            "calibration_id": calibration,
            "taxonomy_version": result.taxonomy_version,
            "photo_sha256": facts.photo_sha256,
            "photo_width": result.image.width,
            "photo_height": result.image.height,
            "patient_ref": facts.patient_ref,
            "lesion_ref": facts.lesion_ref,
            "share_token_sha256": token_hash,
            "stored_photo_sha256": facts.stored_photo_sha256,
            "answer": result.model_dump(mode="json", exclude={"heatmaps"}),
        }
        rows = [Row(Case, case), audit_row(owner, "create", "case", result.id, result.id, facts.client)]
        return self.writes.submit(rows)

    def audit_later(self, actor: str, action: str, rtype: str, rid: str, case_id: str | None, client: str | None,
                    outcome: str = "success") -> None:  # fmt: skip
        if self.status != "off":
            self.writes.submit([audit_row(actor, action, rtype, rid, case_id, client, outcome)])

    # -- transactions of the case routes -----------------------------------------------------------
    async def run(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        """``work`` in one transaction, in a task of its own that the caller's cancellation does not reach.

        A route cancelled mid-statement (a shutdown past its grace) left SQLAlchemy's aiosqlite close
        waiting forever, as the background calls did (``start``): the statement now finishes, bounded by
        ``OP_TIMEOUT_S``, and ``stop`` waits for it. An unreachable database is a 503 problem (and marks
        the store down)."""
        if self.status in ("off", "starting"):
            why = "persistence is off in this process" if self.status == "off" else "it is still connecting"
            raise Problem(
                "database-unavailable", 503, f"The case database is unavailable: {why}.", headers={"Retry-After": "5"}
            )
        task = asyncio.ensure_future(self._transact(work))
        self._in_flight.add(task)
        task.add_done_callback(self._settled)
        return await asyncio.shield(task)

    def _settled(self, task: asyncio.Future[Any]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a caller that went away never reads it

    async def _transact(self, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
        try:
            async with asyncio.timeout(OP_TIMEOUT_S), self.sessions() as session, session.begin():
                result = await work(session)
        except DB_ERRORS as exc:
            self.mark_down(exc)
            log.warning("case database unreachable", extra={"error": type(exc).__name__})
            raise Problem(
                "database-unavailable",
                503,
                "The case database is unreachable; triage still answers. Retry shortly.",
                headers={"Retry-After": "5"},
            ) from None
        if self.status == "unavailable":
            self.mark_up()
        return result

    def may_read(self, case: Case, principal: str) -> bool:
        return case.owner == principal or principal in self.reviewers

    async def case_for(
        self, session: AsyncSession, case_id: str, principal: str, client: str | None, action: str = "read"
    ) -> Case:
        """The case, to its owner or a reviewer; 404 to everyone else (a denied try on a real case is audited
        as ``action``)."""
        case = await CaseRepository(session=session).get_one_or_none(id=case_id[:64])
        if case is None:
            raise not_found()
        if not self.may_read(case, principal):
            self.audit_later(principal, action, "case", case.id, case.id, client, "denied")
            raise not_found()
        return case

    async def answer_for(self, result_id: str, principal: str, share_token: str | None) -> TriageResult | None:
        """A stored answer (``GET /v1/triage/{id}`` after the memory cache): its owner, a reviewer, or the
        holder of its share token; None otherwise, and when the database cannot be asked."""
        if self.status in ("off", "starting"):
            return None
        try:
            case = await self.run(lambda session: CaseRepository(session=session).get_one_or_none(id=result_id[:64]))
        except Problem:
            return None
        if case is None:
            return None
        token_ok = (
            share_token is not None and case.share_token_sha256 == hashlib.sha256(share_token.encode()).hexdigest()
        )
        if not (self.may_read(case, principal) or token_ok):
            return None
        return TriageResult.model_validate(case.answer)

    async def reviewed(self, session: AsyncSession, case_ids: list[str]) -> set[str]:
        if not case_ids:
            return set()
        rows = await session.execute(select(Review.case_id).where(Review.case_id.in_(case_ids)).distinct())
        return set(rows.scalars())

    @staticmethod
    def reviewed_clause(reviewed: bool) -> Any:
        clause = exists().where(Review.case_id == Case.id)
        return clause if reviewed else ~clause

    @staticmethod
    async def audit_now(session: AsyncSession, rows: list[Row]) -> None:
        await AuditRepository(session=session).add_many([AuditEvent(**r.values) for r in rows], auto_commit=False)
