"""The bounded queue between a triage answer and the database: the answer never waits for a write.

``submit`` puts rows on a queue of at most ``max_pending`` batches and returns at once; one task
drains it in transactions of up to ``BATCH`` rows. A database that cannot be reached is retried
(backoff up to ``MAX_BACKOFF_S``) with the rows kept in order; a row the database refuses (bad data,
a duplicate id) is counted as failed. A full queue counts the rows as lost. Every count is in the
metrics and in ``/health/ready``; logs carry counts and error types, never patient data.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import asyncpg
from advanced_alchemy.exceptions import AdvancedAlchemyError
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from service.metrics import Metrics
from service.store.repository import REPOSITORIES

BATCH = 64
MAX_BACKOFF_S = 5.0
OP_TIMEOUT_S = 15.0  # one database call (connect, migrate, a transaction) at most
# what a database call may raise: SQLAlchemy's errors, the repositories' wrapped ones, the network's,
# and the drivers' own when raised while connecting (asyncpg's are not wrapped there)
DB_ERRORS = (
    SQLAlchemyError,
    AdvancedAlchemyError,
    OSError,
    TimeoutError,
    ConnectionError,
    sqlite3.Error,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)
log = logging.getLogger("dermtriage.store")


def refused(exc: BaseException) -> bool:
    """The database answered and refused these rows (retrying will not help)."""
    cause = exc.__cause__ if isinstance(exc, AdvancedAlchemyError) and exc.__cause__ is not None else exc
    return isinstance(cause, IntegrityError) or (
        isinstance(cause, DBAPIError) and not cause.connection_invalidated and "DataError" in type(cause.orig).__name__
    )


@dataclass
class Row:
    """One row to insert: its table's model class and its column values."""

    model: type
    values: dict[str, Any]


@dataclass
class WriteQueue:
    sessions: Callable[[], AsyncSession]
    metrics: Metrics
    max_pending: int = 1024
    on_status: Callable[[str | None], None] = lambda error: None  # None: the last write worked
    written: int = 0
    failed: int = 0
    lost: int = 0
    _queue: asyncio.Queue[list[Row]] = field(init=False)
    _inflight: list[Row] = field(default_factory=list)  # taken off the queue, not yet committed

    def __post_init__(self) -> None:
        self._queue = asyncio.Queue(self.max_pending)

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._inflight)

    def submit(self, rows: list[Row]) -> bool:
        """Queue ``rows`` (one unit: a case and its audit event); False (and counted) when full."""
        try:
            self._queue.put_nowait(rows)
        except asyncio.QueueFull:
            self.lost += len(rows)
            self.metrics.case_writes.labels("lost").inc(len(rows))
            log.warning("case write queue full: rows lost", extra={"lost_total": self.lost})
            return False
        self.metrics.case_write_queue.set(self._queue.qsize())
        return True

    async def run(self) -> None:
        """Drain until cancelled."""
        while True:
            batch = await self._queue.get()
            while len(batch) < BATCH and not self._queue.empty():
                batch += self._queue.get_nowait()
            self._inflight = batch  # cancelled mid-write (shutdown): `flush` writes it
            self.metrics.case_write_queue.set(self._queue.qsize())
            await self._write_until_done(batch)
            self._inflight = []

    async def flush(self, timeout_s: float) -> int:
        """Write what is queued, for at most ``timeout_s``; returns the rows left unwritten."""
        try:
            async with asyncio.timeout(timeout_s):
                while self._inflight or not self._queue.empty():
                    batch = self._inflight or self._queue.get_nowait()
                    await self._write_until_done(batch)
                    self._inflight = []
        except TimeoutError:
            pass
        left = self.pending
        if left:
            log.error("case writes not flushed at shutdown", extra={"rows": left})
        return left

    async def _write_until_done(self, batch: list[Row]) -> None:
        delay = 0.1
        while True:
            try:
                await self._insert(batch)
            except DB_ERRORS as exc:
                if refused(exc):
                    await self._one_by_one(batch)
                    return
                self.metrics.case_writes.labels("retried").inc(len(batch))
                self.on_status(f"{type(exc).__name__} while writing cases")
                log.warning("case write failed; retrying", extra={"error": type(exc).__name__, "rows": len(batch)})
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
                continue
            self.written += len(batch)
            self.metrics.case_writes.labels("written").inc(len(batch))
            self.on_status(None)
            return

    async def _one_by_one(self, batch: list[Row]) -> None:
        for row in batch:
            try:
                await self._insert([row])
            except DB_ERRORS as exc:
                if not refused(exc):
                    await self._write_until_done([row])
                    continue
                self.failed += 1
                self.metrics.case_writes.labels("failed").inc()
                log.error("the database refused a case row", extra={"error": type(exc).__name__})
            else:
                self.written += 1
                self.metrics.case_writes.labels("written").inc()

    async def _insert(self, batch: list[Row]) -> None:
        """One transaction; fresh objects each attempt (a failed session's objects are not reused).
        Shielded (bounded by OP_TIMEOUT_S): shutdown waits for the transaction instead of cutting a
        connection mid-statement, which left SQLAlchemy's aiosqlite close waiting forever."""
        with anyio.fail_after(OP_TIMEOUT_S, shield=True):
            async with self.sessions() as session, session.begin():
                by_model: dict[type, list[Any]] = {}
                for row in batch:
                    by_model.setdefault(row.model, []).append(row.model(**row.values))
                for model, objects in by_model.items():
                    await REPOSITORIES[model](session=session).add_many(objects, auto_commit=False)
