"""Removing cases: ``DELETE /v1/cases/{id}`` and the retention job (``DERMTRIAGE_RETENTION_DAYS``).

A removed case takes its reviews, outcomes and annotations with it (deleted explicitly, not left to
``ON DELETE CASCADE``, which SQLite applies only with a per-connection pragma), and its kept photo once
no other case references the same file. Its audit events stay: the trail is append-only, and the
removal itself is one more event (actor ``retention`` for the job)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from service.problems import Problem
from service.store.models import Annotation, Case, Outcome, Review
from service.store.writer import DB_ERRORS

if TYPE_CHECKING:
    from service.store.cases import CaseStore

RETENTION_PERIOD_S = 3600.0  # the job runs once at start, then hourly
PURGE_BATCH = 200
RETENTION_ACTOR = "retention"
ORPHAN_GRACE_S = 3600.0
log = logging.getLogger("dermtriage.store")


async def remove_cases(session: AsyncSession, cases: list[Case]) -> list[str]:
    """Delete ``cases`` and their children in the caller's transaction; the photo hashes they held."""
    ids = [c.id for c in cases]
    for child in (Review, Outcome, Annotation):
        await session.execute(delete(child).where(child.case_id.in_(ids)))
    await session.execute(delete(Case).where(Case.id.in_(ids)))
    return sorted({c.stored_photo_sha256 for c in cases if c.stored_photo_sha256})


async def unreferenced(session: AsyncSession, sha256s: list[str]) -> list[str]:
    """The photo hashes no remaining case references (those files may go)."""
    if not sha256s:
        return []
    rows = await session.execute(
        select(Case.stored_photo_sha256).where(Case.stored_photo_sha256.in_(sha256s)).distinct()
    )
    kept = set(rows.scalars())
    return [s for s in sha256s if s not in kept]


async def drop_photos(store: CaseStore, sha256s: list[str]) -> int:
    """After the removal committed: delete the files still unreferenced (checked in a new transaction)."""
    if not sha256s:
        return 0
    free = await store.run(lambda session: unreferenced(session, sha256s))
    return await store.photos.delete(free)


async def purge(store: CaseStore, days: float) -> int:
    """Remove every case older than ``days``, in batches, each with one ``delete`` audit event per case."""
    from service.store.cases import audit_row, now  # cases imports this module lazily

    cutoff = now() - timedelta(days=days)
    total = 0

    async def batch(session: AsyncSession) -> tuple[int, list[str]]:
        rows = await session.execute(
            select(Case).where(Case.created_at < cutoff).order_by(Case.created_at).limit(PURGE_BATCH)
        )
        cases = list(rows.scalars())
        if not cases:
            return 0, []
        photos = await remove_cases(session, cases)
        await store.audit_now(session, [audit_row(RETENTION_ACTOR, "delete", "case", c.id, c.id, None) for c in cases])
        return len(cases), photos

    while True:
        removed, photos = await store.run(batch)
        if not removed:
            return total
        await drop_photos(store, photos)
        total += removed


async def sweep_orphans(store: CaseStore, grace_s: float = ORPHAN_GRACE_S) -> int:
    """Delete kept photo files that no case references and that are older than ``grace_s`` (a case whose
    row was lost or refused after its photo was written; a photo freed while another case sharing it
    still waited on the write queue). Younger files are left: their case may still be queued."""
    old_enough = time.time() - grace_s
    candidates = [sha for sha, mtime in await store.photos.listing() if mtime < old_enough]
    orphans: list[str] = []
    for start in range(0, len(candidates), PURGE_BATCH):
        chunk = candidates[start : start + PURGE_BATCH]
        orphans += await store.run(lambda session, chunk=chunk: unreferenced(session, chunk))
    return await store.photos.delete(orphans)


async def retention_loop(store: CaseStore, days: float, period_s: float = RETENTION_PERIOD_S) -> None:
    """Purge (and sweep orphan photos) at start, then every ``period_s``; a database error waits for the
    next round."""
    while True:
        try:
            purged, swept = await purge(store, days), await sweep_orphans(store)
            if purged or swept:
                log.info("retention purged cases", extra={"cases": purged, "orphan_photos": swept})
        except (Problem, *DB_ERRORS) as exc:
            log.warning("retention purge failed; next round retries", extra={"error": type(exc).__name__})
        await asyncio.sleep(period_s)
