"""Issue 18, the data side of the second slice: photos kept with consent, case deletion and retention,
on SQLite and on a real PostgreSQL server (tests/case_db.py)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from PIL import Image
from service_photos import jpeg_bytes, lesion_photo
from sqlalchemy import text
from test_cases_store import A, B, R, problem, serve, triage, written
from test_service_api import wait_ready

from service.engine import TriageEngine
from service.store.db import alchemy_config


def _gps_photo() -> bytes:
    return jpeg_bytes(lesion_photo(11), with_gps=True)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _sql(url: str, statement: str, **params: Any) -> list[Any]:
    async def run() -> list[Any]:
        eng = alchemy_config(url).get_engine()
        try:
            async with eng.begin() as conn:
                result = await conn.execute(text(statement), params)
                return list(result.all()) if result.returns_rows else []
        finally:
            await eng.dispose()

    return asyncio.run(run())


def _multipart(client: TestClient, photo: bytes, headers: dict[str, str], **fields: str) -> dict[str, Any]:
    r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data=fields, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_photo_kept_only_with_consent_and_the_setting_without_exif(
    engine: TriageEngine, db_url: str, tmp_path: Path
) -> None:
    upload, folder = _gps_photo(), tmp_path / "photos"
    with serve(engine, db_url, photo_dir=folder) as client:  # the setting off (default): consent is not enough
        wait_ready(client)
        off = triage(client, upload, A, consent_to_store=True)["id"]
        written(client, 2)
        assert client.get(f"/v1/cases/{off}", headers=A).json()["photo_stored"] is False
        problem(client.get(f"/v1/cases/{off}/photo", headers=A), 404, "photo-not-found")
    assert _files(folder) == {}
    with serve(engine, db_url, photo_dir=folder, store_photos=True) as client:
        wait_ready(client)
        no_consent = triage(client, upload, A)["id"]
        consented = triage(client, upload, A, consent_to_store=True)
        by_form = _multipart(client, upload, A, consent_to_store="true", patient_ref="pt-1")["id"]
        written(client, 6)
        bad = client.post("/v1/triage", files={"image": ("p.jpg", upload, "image/jpeg")},
                          data={"consent_to_store": "maybe"}, headers=A)  # fmt: skip
        assert problem(bad, 422, "validation-error")["errors"][0]["loc"].endswith("consent_to_store")
        problem(client.get(f"/v1/cases/{no_consent}/audit?format=xml", headers=A), 422, "validation-error")
        flags = {cid: client.get(f"/v1/cases/{cid}", headers=A).json()["photo_stored"] for cid in (no_consent, by_form)}
        assert flags == {no_consent: False, by_form: True}
        cid = consented["id"]
        problem(client.get(f"/v1/cases/{cid}/photo", headers=B), 404, "case-not-found")
        r = client.get(f"/v1/cases/{cid}/photo", headers=A)
        assert client.get(f"/v1/cases/{cid}/photo", headers=R).content == r.content
        audit = client.get(f"/v1/cases/{cid}/audit", headers=A).json()
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg" and r.content != upload
    kept = Image.open(io.BytesIO(r.content))
    assert kept.size == (consented["image"]["width"], consented["image"]["height"])
    assert len(kept.getexif()) == 0 and "exif" not in kept.info and b"TestPhone" not in r.content
    assert _files(folder) == {hashlib.sha256(r.content).hexdigest(): r.content}  # one file for the same photo
    reads = {(e["action"], e["resource_type"], e["actor"]) for e in audit}
    assert {("read", "photo", "api-key:clinic-a"), ("read", "photo", "api-key:dr-lee")} <= reads


def test_delete_removes_the_case_and_its_rows_keeps_audit_and_shared_photos(
    engine: TriageEngine, db_url: str, tmp_path: Path
) -> None:
    upload, folder = _gps_photo(), tmp_path / "photos"
    with serve(engine, db_url, photo_dir=folder, store_photos=True) as client:
        wait_ready(client)
        first = triage(client, upload, A, consent_to_store=True)
        second = triage(client, upload, B, consent_to_store=True)["id"]
        cid, w, h = first["id"], first["image"]["width"], first["image"]["height"]
        written(client, 4)
        base = f"/v1/cases/{cid}"
        assert client.post(f"{base}/reviews", json={"agrees": True, "confidence": "high"}, headers=R).status_code == 201
        outcome = {"diagnosis": "melanoma", "date": "2026-11-01", "source": "histopathology"}
        assert client.post(f"{base}/outcomes", json=outcome, headers=A).status_code == 201
        box = {"kind": "box", "label": "melanoma", "box": [1, 1, w / 2, h / 2]}
        assert client.post(f"{base}/annotations", json=box, headers=A).status_code == 201
        problem(client.delete(base, headers=B), 404, "case-not-found")  # not the owner
        assert client.delete(base, headers=A).status_code == 204
        problem(client.get(base, headers=A), 404, "case-not-found")
        problem(client.delete(base, headers=A), 404, "case-not-found")
        assert len(_files(folder)) == 1  # the other case still holds the same photo
        assert client.get(f"/v1/cases/{second}/photo", headers=B).status_code == 200
        assert client.delete(f"/v1/cases/{second}", headers=R).status_code == 204  # a reviewer may delete
    assert _files(folder) == {}
    for table in ("reviews", "outcomes", "annotations", "cases"):
        assert _sql(db_url, f"SELECT count(*) FROM {table}")[0][0] == 0
    query = "SELECT action, resource_type, actor, outcome FROM audit_events WHERE case_id = :c"
    events = _sql(db_url, query, c=cid)
    assert ("create", "case", "api-key:clinic-a", "success") in events
    assert ("create", "review", "api-key:dr-lee", "success") in events
    assert ("delete", "case", "api-key:clinic-a", "success") in events
    assert ("delete", "case", "api-key:clinic-b", "denied") in events


def test_retention_purges_old_cases_photos_and_orphan_files_at_start_and_keeps_their_audit(
    engine: TriageEngine, db_url: str, tmp_path: Path
) -> None:
    upload, folder = _gps_photo(), tmp_path / "photos"
    with serve(engine, db_url, photo_dir=folder, store_photos=True) as client:
        wait_ready(client)
        old = triage(client, upload, A, consent_to_store=True)["id"]
        new = triage(client, jpeg_bytes(lesion_photo(12)), A, consent_to_store=True)["id"]
        written(client, 4)
        assert client.post(f"/v1/cases/{old}/reviews", json={"agrees": False, "confidence": "low"}, headers=R)
    assert len(_files(folder)) == 2
    backdated = _sql(db_url, "SELECT created_at FROM cases WHERE id = :c", c=new)[0][0]
    stamp = backdated - timedelta(days=3) if not isinstance(backdated, str) else "2000-01-01 00:00:00.000000"
    _sql(db_url, "UPDATE cases SET created_at = :t WHERE id = :c", t=stamp, c=old)
    # files no case references (a lost case row): an old one is swept, a fresh one kept
    for name, age_s in (("a" * 64, 2 * 3600), ("b" * 64, 0)):
        path = folder / name[:2] / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"orphan")
        os.utime(path, (time.time() - age_s, time.time() - age_s))
    with serve(engine, db_url, photo_dir=folder, store_photos=True, retention_days=2) as client:
        wait_ready(client)
        for _ in range(200):  # the job runs once at start
            if client.get(f"/v1/cases/{old}", headers=A).status_code == 404 and "a" * 64 not in _files(folder):
                break
            time.sleep(0.05)
        problem(client.get(f"/v1/cases/{old}", headers=A), 404, "case-not-found")
        assert client.get(f"/v1/cases/{new}", headers=A).json()["photo_stored"] is True
    assert sorted(_files(folder)) == sorted([_sql(db_url, "SELECT stored_photo_sha256 FROM cases")[0][0], "b" * 64])
    assert _sql(db_url, "SELECT count(*) FROM reviews")[0][0] == 0
    events = _sql(db_url, "SELECT action, actor FROM audit_events WHERE case_id = :c ORDER BY id", c=old)
    assert events[0] == ("create", "api-key:clinic-a") and events.count(("delete", "retention")) == 1


def test_photo_store_is_bounded_and_a_failed_write_keeps_the_case_going(tmp_path: Path) -> None:
    from service.store.photos import PhotoStore

    async def run() -> tuple[Any, ...]:
        full = PhotoStore(tmp_path / "a", max_pending=0)
        refused = await full.put(lambda: b"jpeg")
        blocked = tmp_path / "file"
        blocked.write_bytes(b"")
        broken = PhotoStore(blocked)  # the folder is a file: every write fails
        failed = await broken.put(lambda: b"jpeg")
        ok_store = PhotoStore(tmp_path / "b")
        digest = await ok_store.put(lambda: b"jpeg")
        back = await ok_store.get(digest or "")
        for store in (full, broken, ok_store):
            store.close()
        return refused, full.refused, failed, broken.failed, digest, back

    refused, n_refused, failed, n_failed, digest, back = asyncio.run(run())
    assert (refused, n_refused, failed, n_failed) == (None, 1, None, 1)
    assert digest == hashlib.sha256(b"jpeg").hexdigest() and back == b"jpeg"


def test_migration_0002_upgrades_a_database_made_at_0001(db_url: str) -> None:
    from service.store.db import upgrade

    async def run() -> list[Any]:
        eng = alchemy_config(db_url).get_engine()
        try:
            await upgrade(eng, "0001")
            async with eng.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO cases (id, owner, created_at, model_name, model_version, taxonomy_version, "
                    "photo_sha256, photo_width, photo_height, answer) VALUES ('c1', 'a', CURRENT_TIMESTAMP, 'm', "
                    "'1', 't', :sha, 64, 64, '{}')"
                ), {"sha": "0" * 64})  # fmt: skip
            await upgrade(eng)
            async with eng.connect() as conn:
                return list((await conn.execute(text("SELECT id, stored_photo_sha256 FROM cases"))).all())
        finally:
            await eng.dispose()

    assert asyncio.run(run()) == [("c1", None)]
