"""Issue 18, the storage core: every answer kept as a case, reviews, outcomes, annotations, CDS Hooks
feedback and an append-only audit trail, on SQLite and on a real PostgreSQL server (tests/case_db.py)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from sqlalchemy import text
from test_service_api import wait_ready

from service.app import create_app
from service.auth.api_keys import generate_api_key
from service.cds_hooks.state import FeedbackRecord
from service.engine import TriageEngine
from service.metrics import Metrics
from service.settings import Settings
from service.store.cases import CaseStore
from service.store.db import alchemy_config, upgrade
from service.store.feedback import DatabaseFeedbackStore

KEY_A, REC_A = generate_api_key("clinic-a", per_minute=60000)
KEY_B, REC_B = generate_api_key("clinic-b", per_minute=60000)
KEY_R, REC_R = generate_api_key("dr-lee", per_minute=60000)
A, B, R = ({"X-API-Key": k} for k in (KEY_A, KEY_B, KEY_R))
KEYS = f"{REC_A.line()},{REC_B.line()},{REC_R.line()}"


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(7))


@contextmanager
def serve(engine: TriageEngine, url: str, **settings: Any) -> Iterator[TestClient]:
    base: dict[str, Any] = {"api_keys": KEYS, "reviewers": "dr-lee", "api_rate_burst": 1000, "database_migrate": True}
    with TestClient(create_app(Settings(database_url=url, **{**base, **settings}), engine=engine)) as client:
        yield client


def triage(client: TestClient, photo: bytes, headers: dict[str, str], **options: Any) -> dict[str, Any]:
    data = {"options": __import__("json").dumps(options)} if options else {}
    r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data=data, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def database(client: TestClient) -> dict[str, Any]:
    return client.app.state.service.cases.readiness()


def written(client: TestClient, rows: int, timeout: float = 30.0) -> None:
    """Wait until the write queue has written at least ``rows`` rows and holds nothing."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db = database(client)
        if db["written"] >= rows and db["pending_writes"] == 0:
            return
        time.sleep(0.05)
    raise AssertionError(f"writes not done: {database(client)}")


def problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"].endswith("/" + slug)
    return body


def test_case_kept_for_every_answer_and_read_back_after_restart(
    engine: TriageEngine, photo: bytes, db_url: str
) -> None:
    with serve(engine, db_url) as client:
        wait_ready(client)
        answer = triage(client, photo, A, patient_ref="pt-0042", lesion_ref="forearm-1", explain=True)
        assert answer["case_storage"] == "queued" and answer["heatmaps"]
        written(client, 2)  # the case and its `create` audit event
        case = client.get(f"/v1/cases/{answer['id']}", headers=A).json()
    assert (
        case["owner"] == "api-key:clinic-a" and case["patient_ref"] == "pt-0042" and case["lesion_ref"] == "forearm-1"
    )
    assert case["photo_sha256"] == hashlib.sha256(photo).hexdigest()
    assert (case["photo_width"], case["photo_height"]) == (answer["image"]["width"], answer["image"]["height"])
    assert case["model"]["name"] == answer["model"]["name"] and case["taxonomy_version"] == answer["taxonomy_version"]
    assert "heatmaps" not in case["answer"] and case["answer"]["differentials"] == answer["differentials"]
    with serve(engine, db_url) as again:  # a new process on the same database: the memory cache is empty
        wait_ready(again)
        back = again.get(f"/v1/triage/{answer['id']}", headers=A)
        assert back.status_code == 200 and back.json()["differentials"] == answer["differentials"]
        assert again.get(f"/v1/triage/{answer['id']}", headers=B).status_code == 404  # still its owner's only


def test_routes_are_scoped_to_owner_or_reviewer(engine: TriageEngine, photo: bytes, db_url: str) -> None:
    with serve(engine, db_url) as client:
        wait_ready(client)
        mine = triage(client, photo, A)["id"]
        theirs = triage(client, photo, B)["id"]
        written(client, 4)
        assert [c["id"] for c in client.get("/v1/cases", headers=A).json()["items"]] == [mine]
        assert {c["id"] for c in client.get("/v1/cases", headers=R).json()["items"]} == {mine, theirs}
        for sub in ("", "/reviews", "/outcomes", "/annotations", "/audit"):
            missing = problem(client.get(f"/v1/cases/{'0' * 32}{sub}", headers=B), 404, "case-not-found")
            other = problem(client.get(f"/v1/cases/{mine}{sub}", headers=B), 404, "case-not-found")
            assert missing["detail"] == other["detail"]  # someone else's case looks missing
            assert client.get(f"/v1/cases/{mine}{sub}", headers=R).status_code == 200
        review = {"agrees": True, "confidence": "high"}
        problem(client.post(f"/v1/cases/{mine}/reviews", json=review, headers=B), 404, "case-not-found")
        r = client.post(f"/v1/cases/{mine}/reviews", json=review, headers=R)
        assert r.status_code == 201 and r.json()["reviewer"] == "api-key:dr-lee"
        assert client.get("/v1/cases?reviewed=true", headers=R).json()["total"] == 1
        assert [c["id"] for c in client.get("/v1/cases?reviewed=false", headers=R).json()["items"]] == [theirs]
        audit = client.get(f"/v1/cases/{mine}/audit", headers=A).json()
    denied = [e for e in audit if e["outcome"] == "denied"]
    assert denied and all(e["actor"] == "api-key:clinic-b" for e in denied)
    assert ("create", "case", "api-key:clinic-a") in {(e["action"], e["resource_type"], e["actor"]) for e in audit}
    assert ("create", "review", "api-key:dr-lee") in {(e["action"], e["resource_type"], e["actor"]) for e in audit}


def test_reviews_outcomes_annotations_and_bad_input(engine: TriageEngine, photo: bytes, db_url: str) -> None:
    with serve(engine, db_url) as client:
        wait_ready(client)
        answer = triage(client, photo, A)
        cid, w, h = answer["id"], answer["image"]["width"], answer["image"]["height"]
        written(client, 2)
        base = f"/v1/cases/{cid}"
        polygon = {"kind": "polygon", "label": "melanoma", "points": [[1, 1], [w - 1, 2], [w / 2, h - 1]]}
        tags = {"kind": "tags", "tags": {"severity": "mild", "body_site": "forearm", "fitzpatrick": "IV"}}
        box = {"kind": "box", "label": "melanoma", "box": [10, 10, 20, 30]}
        for body in (polygon, tags, box):
            assert client.post(f"{base}/annotations", json=body, headers=A).status_code == 201
        kept = client.get(f"{base}/annotations", headers=A).json()
        assert [a["kind"] for a in kept] == ["polygon", "tags", "box"] and kept[0]["points"][1] == [w - 1, 2]
        outcome = {"diagnosis": "melanoma", "date": "2026-03-20", "source": "histopathology"}
        assert client.post(f"{base}/outcomes", json=outcome, headers=A).status_code == 201
        assert client.get(f"{base}/outcomes", headers=A).json()[0]["date"] == "2026-03-20"
        bad = [
            ("annotations", {**polygon, "points": [[1, 1], [2, 2]]}, "points"),
            ("annotations", {**polygon, "points": [[1, 1], [2, 2], [w + 5, 3]]}, "points.2"),
            ("annotations", {**box, "box": [w - 5, 0, 10, 10]}, "box"),
            ("annotations", {**polygon, "label": "not-a-condition"}, "label"),
            ("reviews", {"agrees": False, "confidence": "low", "diagnosis": "nope"}, "diagnosis"),
            ("reviews", {"agrees": False, "confidence": "low", "note": "x" * 4001}, "note"),
            ("reviews", {"agrees": False, "confidence": "low", "urgency_override": "urgent"}, "urgency_reason"),
            ("outcomes", {**outcome, "diagnosis": "nope"}, "diagnosis"),
        ]
        for route, body, field in bad:
            errors = problem(client.post(f"{base}/{route}", json=body, headers=A), 422, "validation-error")["errors"]
            assert [e["loc"] for e in errors] == [field], (route, body, errors)
        problem(client.post(f"/v1/cases/{'f' * 32}/reviews", json={"agrees": True, "confidence": "low"}, headers=A),
                404, "case-not-found")  # fmt: skip


def test_concurrent_reviews_of_one_case_are_all_kept(engine: TriageEngine, photo: bytes, db_url: str) -> None:
    with serve(engine, db_url) as client:
        wait_ready(client)
        cid = triage(client, photo, A)["id"]
        written(client, 2)

        def review(i: int) -> int:
            body = {"agrees": i % 2 == 0, "confidence": "medium", "note": f"review {i}"}
            return client.post(f"/v1/cases/{cid}/reviews", json=body, headers=R if i % 2 else A).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(review, range(8)))
        assert statuses == [201] * 8
        notes = sorted(r["note"] for r in client.get(f"/v1/cases/{cid}/reviews", headers=A).json())
    assert notes == sorted(f"review {i}" for i in range(8))


def test_audit_rows_cannot_be_updated_or_deleted(db_url: str) -> None:
    async def check() -> None:
        config = alchemy_config(db_url)
        eng = config.get_engine()
        await upgrade(eng)
        async with eng.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO audit_events (at, actor, action, resource_type, resource_id, outcome) "
                    "VALUES (CURRENT_TIMESTAMP, 'a', 'read', 'case', 'x', 'success')"
                )
            )
        for statement in ("UPDATE audit_events SET actor = 'b'", "DELETE FROM audit_events"):
            with pytest.raises(Exception, match="append-only"):
                async with eng.begin() as conn:
                    await conn.execute(text(statement))
        async with eng.connect() as conn:
            assert (await conn.execute(text("SELECT actor FROM audit_events"))).scalars().all() == ["a"]
        await eng.dispose()

    asyncio.run(check())


def test_cds_feedback_is_kept_in_the_database(db_url: str) -> None:
    record = FeedbackRecord("dermtriage-triage", "card-1", "overridden", "2026-03-01T10:00:00Z", None, {"x": 1})

    async def check() -> list[FeedbackRecord]:
        first = CaseStore(Settings(database_url=db_url, database_migrate=True), Metrics())
        await upgrade(first.config.get_engine())
        first.mark_up()
        await DatabaseFeedbackStore(first).add(record)
        await first.stop()
        second = CaseStore(Settings(database_url=db_url), Metrics())
        second.mark_up()
        try:
            return await DatabaseFeedbackStore(second).list("dermtriage-triage")
        finally:
            await second.stop()

    kept = asyncio.run(check())
    assert [(r.card, r.outcome, r.override_reason) for r in kept] == [("card-1", "overridden", {"x": 1})]


def test_a_row_the_database_refuses_is_counted_and_the_rest_written(db_url: str) -> None:
    """Two answers under one id (never happens in the service; here forced): the duplicate is counted as
    failed, every other row of the same batch is still written."""
    from service.store.cases import audit_row, now
    from service.store.models import Case
    from service.store.writer import Row

    case = {
        "id": "c" * 32, "owner": "anonymous", "created_at": now(), "model_name": "m", "model_version": "1",
        "weights_sha256": None, "calibration_id": None, "taxonomy_version": "t", "photo_sha256": "0" * 64,
        "photo_width": 64, "photo_height": 64, "patient_ref": None, "lesion_ref": None,
        "share_token_sha256": None, "answer": {},
    }  # fmt: skip

    async def run() -> dict[str, Any]:
        store = CaseStore(Settings(database_url=db_url, database_migrate=True), Metrics())
        task = asyncio.create_task(store.start())
        while store.status == "starting":
            await asyncio.sleep(0.01)
        for _ in range(2):  # queued before the writer runs: one batch of four rows
            store.writes.submit(
                [Row(Case, dict(case)), audit_row("anonymous", "create", "case", case["id"], None, None)]
            )
        while store.writes.pending or store.writes.written + store.writes.failed < 4:
            await asyncio.sleep(0.01)
        task.cancel()
        await store.stop()
        return store.readiness()

    state = asyncio.run(run())
    assert (state["written"], state["failed_writes"], state["lost_writes"]) == (3, 1, 0)
