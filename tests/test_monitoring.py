"""Issue 18: `GET /v1/monitoring`, per ISO week: cases, reviews, agreement with the top differential and
with the outcome, needs-review and urgency rates; owner-scoped, bounded, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from service_photos import jpeg_bytes, lesion_photo
from sqlalchemy import select, update
from test_cases_store import A, B, R, problem, serve, triage, written
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.engine import TriageEngine
from service.store.db import alchemy_config
from service.store.models import AuditEvent, Case


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(7))


def _move(url: str, case_id: str, days: int) -> None:
    """Age a case by ``days`` (cases are not append-only; this stands in for time passing)."""

    async def go() -> None:
        eng = alchemy_config(url).get_engine()
        async with eng.begin() as conn:
            at = datetime.now(UTC) - timedelta(days=days)
            await conn.execute(update(Case).where(Case.id == case_id).values(created_at=at))
        await eng.dispose()

    asyncio.run(go())


def _audited(url: str) -> list[tuple[str, str]]:
    async def go() -> list[tuple[str, str]]:
        eng = alchemy_config(url).get_engine()
        async with eng.connect() as conn:
            q = select(AuditEvent.actor, AuditEvent.resource_id).where(AuditEvent.resource_type == "monitoring")
            rows = [(a, r) for a, r in (await conn.execute(q.order_by(AuditEvent.id))).all()]
        await eng.dispose()
        return rows[:2]

    return asyncio.run(go())


def _iso(at: datetime) -> str:
    y, w, _ = at.isocalendar()
    return f"{y}-W{w:02d}"


def _expect(answers: list[dict[str, Any]]) -> tuple[int, dict[str, int]]:
    needs = sum(1 for a in answers if (a.get("uncertainty") or {}).get("needs_review"))
    urgency: dict[str, int] = {}
    for a in answers:
        cat = (a.get("urgency") or {}).get("category", "none")
        urgency[cat] = urgency.get(cat, 0) + 1
    return needs, urgency


def test_weekly_agreement_flags_and_urgency(engine: TriageEngine, photo: bytes, db_url: str) -> None:
    with serve(engine, db_url) as client:
        wait_ready(client)
        mine = [triage(client, photo, A) for _ in range(3)]
        theirs = triage(client, photo, B)
        written(client, 8)
        c1, c2, c3 = (a["id"] for a in mine)
        top = mine[0]["differentials"][0]["condition_id"]
        other = next(c.id for c in load_taxonomy().conditions if c.id != mine[2]["differentials"][0]["condition_id"])
        review = {"confidence": "high"}
        for cid, agrees in ((c1, True), (c1, False), (c2, True)):
            r = client.post(f"/v1/cases/{cid}/reviews", json={**review, "agrees": agrees}, headers=A)
            assert r.status_code == 201, r.text
        for cid, dx in ((c1, top), (c3, other)):
            r = client.post(
                f"/v1/cases/{cid}/outcomes",
                json={"diagnosis": dx, "date": "2026-03-01", "source": "histopathology"},
                headers=A,
            )
            assert r.status_code == 201, r.text
        # the latest outcome counts: c2 first recorded as `other`, then as its top differential
        c2_top = mine[1]["differentials"][0]["condition_id"]
        for dx in (other if other != c2_top else top, c2_top):
            body = {"diagnosis": dx, "date": "2026-03-02", "source": "follow-up"}
            assert client.post(f"/v1/cases/{c2}/outcomes", json=body, headers=A).status_code == 201
        _move(db_url, c3, 14)  # two weeks back

        got = client.get("/v1/monitoring", headers=A)
        assert got.status_code == 200, got.text
        body = got.json()
        weeks = body["weeks"]
        assert body["scope"] == "own" and len(weeks) == 12
        now = datetime.now(UTC)
        assert weeks[-1]["week"] == _iso(now) and weeks[-3]["week"] == _iso(now - timedelta(days=14))
        assert [w["start"] for w in weeks] == sorted(w["start"] for w in weeks)
        this, back = weeks[-1], weeks[-3]
        assert (this["cases"], this["reviewed_cases"], this["reviews"], this["agreeing_reviews"]) == (2, 2, 3, 2)
        assert this["review_agreement"] == round(2 / 3, 4)
        assert (this["cases_with_outcome"], this["top1_outcome_agreement"]) == (2, 1.0)
        needs, urgency = _expect(mine[:2])
        assert this["needs_review"] == needs and this["needs_review_rate"] == round(needs / 2, 4)
        assert {k: v for k, v in this["urgency"].items() if v} == urgency
        assert sum(this["urgency_rates"][k] for k in urgency) == 1.0
        assert back["cases"] == 1 and back["reviews"] == 0 and back["review_agreement"] is None
        assert (back["cases_with_outcome"], back["top1_outcome_agreement"]) == (1, 0.0)
        quiet = [w for i, w in enumerate(weeks) if i not in (9, 11)]
        assert all(w["cases"] == 0 and w["needs_review_rate"] is None for w in quiet)

        # owner scope: B sees its one case; the reviewer sees all four
        b = client.get("/v1/monitoring", headers=B).json()
        assert sum(w["cases"] for w in b["weeks"]) == 1 and b["weeks"][-1]["reviews"] == 0
        r = client.get("/v1/monitoring", headers=R).json()
        assert r["scope"] == "all" and r["weeks"][-1]["cases"] == 3 and r["weeks"][-3]["cases"] == 1
        assert theirs["id"] not in (c1, c2, c3)

        # bounded: a 2-week window leaves the older case out; out-of-range weeks are problems, not 500s
        two = client.get("/v1/monitoring", params={"weeks": 2}, headers=A).json()["weeks"]
        assert len(two) == 2 and sum(w["cases"] for w in two) == 2
        assert len(client.get("/v1/monitoring", params={"weeks": 104}, headers=A).json()["weeks"]) == 104
        for bad in ("0", "105", "x", "-3"):
            r = client.get("/v1/monitoring", params={"weeks": bad}, headers=A)
            assert 400 <= r.status_code < 500 and r.headers["content-type"].startswith("application/problem+json")
        assert client.get("/v1/monitoring").status_code == 401
        # each read is audited (a monitoring read has no case: resource `monitoring`)
        assert _audited(db_url) == [("api-key:clinic-a", "weeks=12"), ("api-key:clinic-b", "weeks=12")]


def test_monitoring_without_a_database_is_503(engine: TriageEngine, tmp_path: Any) -> None:
    bad = f"sqlite+aiosqlite:///{tmp_path}/missing/dir/cases.db"
    with serve(engine, bad, database_required=False) as client:
        wait_ready(client)
        for _ in range(100):
            if client.app.state.service.cases.status == "off":
                break
            __import__("time").sleep(0.05)
        problem(client.get("/v1/monitoring", headers=A), 503, "database-unavailable")
