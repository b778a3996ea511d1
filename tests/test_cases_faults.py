"""Issue 18, faults: the case database down at start (required or not), lost mid-run (a real
PostgreSQL server refusing connections), and a full write queue: triage always answers, case routes
say 503, and no accepted write disappears without being counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from case_db import database_url
from service_photos import jpeg_bytes, lesion_photo
from sqlalchemy.engine import make_url
from test_cases_store import A, problem, serve, triage, written
from test_service_api import wait_ready

from service.engine import TriageEngine

UNREACHABLE = "postgresql+asyncpg://nobody@127.0.0.1:1/none"  # nothing listens on port 1


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(8))


def ready_problem(client: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The readiness problem once the model is up (so the database is what keeps it 503)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/health/ready")
        if r.status_code == 503 and r.json()["type"].endswith("/database-unavailable"):
            return r.json()
        time.sleep(0.1)
    raise AssertionError(f"readiness never blamed the database: {r.status_code} {r.text}")


def test_database_down_at_start_and_required(engine: TriageEngine, photo: bytes) -> None:
    with serve(engine, UNREACHABLE, database_queue_size=1) as client:
        body = ready_problem(client)
        assert "unavailable" in body["detail"] and "DERMTRIAGE_DATABASE_REQUIRED" in body["detail"]
        answers = [triage(client, photo, A) for _ in range(3)]  # triage answers on
        assert all(a["case_storage"] == "queued" for a in answers)
        problem(client.get("/v1/cases", headers=A), 503, "database-unavailable")
        problem(client.get(f"/v1/cases/{answers[0]['id']}", headers=A), 503, "database-unavailable")
        # the queue holds one answer; the other two (case + audit rows each) are counted, not silently gone
        assert "lost (queue full): 4" in ready_problem(client)["detail"]
        metrics = client.get("/metrics").text
    assert 'dermtriage_case_writes_total{outcome="lost"} 4.0' in metrics
    assert "dermtriage_database_up 0.0" in metrics


def test_database_down_at_start_not_required(engine: TriageEngine, photo: bytes) -> None:
    with serve(engine, UNREACHABLE, database_required=False) as client:
        wait_ready(client)
        deadline = time.monotonic() + 30
        while client.get("/health/ready").json()["database"]["status"] != "off" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert client.get("/health/ready").json()["database"]["status"] == "off"
        answer = triage(client, photo, A)
        assert answer["case_storage"] == "off"  # the answer says nothing is kept
        assert client.get(f"/v1/triage/{answer['id']}", headers=A).status_code == 200  # the memory cache still works
        problem(client.get("/v1/cases", headers=A), 503, "database-unavailable")


async def _allow_connections(url: str, allow: bool) -> None:
    import asyncpg

    u = make_url(url)
    conn = await asyncpg.connect(host=u.host, port=u.port or 5432, user=u.username, password=u.password,
                                 database="postgres")  # fmt: skip
    try:
        await conn.execute(f'ALTER DATABASE "{u.database}" WITH ALLOW_CONNECTIONS {str(allow).lower()}')
        if not allow:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", u.database)
    finally:
        await conn.close()


def test_database_lost_mid_run(engine: TriageEngine, photo: bytes, tmp_path: Path) -> None:
    """PostgreSQL stops accepting connections during a run and comes back: the answers made meanwhile
    are kept once it is back."""
    url = database_url("postgresql", tmp_path)
    with serve(engine, url) as client:
        wait_ready(client)
        before = triage(client, photo, A)["id"]
        written(client, 2)
        asyncio.run(_allow_connections(url, False))
        try:
            during = triage(client, photo, A)  # triage goes on
            assert during["case_storage"] == "queued"
            problem(client.get(f"/v1/cases/{before}", headers=A), 503, "database-unavailable")
            assert "Writes pending: 2" in ready_problem(client)["detail"]
        finally:
            asyncio.run(_allow_connections(url, True))
        written(client, 4, timeout=60)
        assert client.get(f"/v1/cases/{during['id']}", headers=A).status_code == 200
        assert client.get("/health/ready").status_code == 200
        assert client.app.state.service.cases.readiness()["lost_writes"] == 0
