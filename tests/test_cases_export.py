"""Issue 18: `dermtriage export` (COCO, CSV, FHIR) and the audit trail as FHIR AuditEvent, on SQLite and
on a real PostgreSQL server (tests/case_db.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from service_photos import jpeg_bytes, lesion_photo
from test_cases_data import _sql
from test_cases_store import A, R, serve, triage, written
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.cli import main
from service.engine import TriageEngine

TAXONOMY = load_taxonomy()
T1, T2 = TAXONOMY.conditions[0].id, TAXONOMY.conditions[1].id


def _cases(engine: TriageEngine, url: str, folder: Path) -> dict[str, Any]:
    """Three cases: one with a kept photo, an outcome, a review and every kind of annotation; one with a
    review only; one with nothing."""
    with serve(engine, url, photo_dir=folder, store_photos=True) as client:
        wait_ready(client)
        first = triage(client, jpeg_bytes(lesion_photo(3), with_gps=True), A, consent_to_store=True)
        second = triage(client, jpeg_bytes(lesion_photo(4)), A)["id"]
        third = triage(client, jpeg_bytes(lesion_photo(5)), A)["id"]
        written(client, 6)
        c1, w, h = first["id"], first["image"]["width"], first["image"]["height"]
        posts = [
            (c1, "reviews", {"agrees": False, "diagnosis": T2, "confidence": "medium"}),
            (c1, "outcomes", {"diagnosis": T1, "date": "2026-11-02", "source": "histopathology"}),
            (c1, "annotations", {"kind": "box", "label": T1, "box": [10, 20, 30, 40]}),
            (c1, "annotations", {"kind": "polygon", "label": T1, "points": [[0, 0], [w / 2, 0], [w / 2, h / 2]]}),
            (c1, "annotations", {"kind": "keypoints", "label": T1, "points": [[5, 6], [7, 8]]}),
            (c1, "annotations", {"kind": "tags", "tags": {"fitzpatrick": "IV", "body_site": "forearm"}}),
            (second, "reviews", {"agrees": False, "diagnosis": T2, "confidence": "high"}),
        ]
        for cid, kind, body in posts:
            assert client.post(f"/v1/cases/{cid}/{kind}", json=body, headers=R).status_code == 201
        photo = client.get(f"/v1/cases/{c1}/photo", headers=A).content
    return {"ids": (c1, second, third), "size": (w, h), "photo": photo}


def _export(url: str, fmt: str, out: Path, folder: Path, *extra: str) -> None:
    assert main(["export", "--format", fmt, "--out", str(out), "--url", url, "--photo-dir", str(folder), *extra]) == 0


def test_export_coco_and_csv_with_ground_truth_photos_and_audit(
    engine: TriageEngine, db_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "photos"
    made = _cases(engine, db_url, folder)
    c1, c2, c3 = made["ids"]
    w, h = made["size"]
    _export(db_url, "coco", tmp_path / "coco", folder)
    data = json.loads((tmp_path / "coco" / "annotations.json").read_text())
    assert [c["name"] for c in data["categories"]] == [c.id for c in TAXONOMY.conditions]
    images = {i["case_id"]: i for i in data["images"]}
    assert set(images) == {c1, c2, c3}
    truths = {cid: (i["ground_truth"], i["ground_truth_source"]) for cid, i in images.items()}
    assert truths == {c1: (T1, "outcome"), c2: (T2, "review"), c3: (None, None)}  # outcome over review
    assert (tmp_path / "coco" / images[c1]["file_name"]).read_bytes() == made["photo"]
    assert images[c2]["file_name"] is None and images[c1]["fitzpatrick"] == "IV"
    shapes = {a["bbox"][2] * a["bbox"][3]: a for a in data["annotations"] if not a.get("keypoints")}
    assert shapes[30 * 40]["area"] == 30 * 40
    assert shapes[w / 2 * h / 2]["area"] == pytest.approx(w / 2 * h / 2 / 2)  # the polygon: half its box
    keypoints = [a["keypoints"] for a in data["annotations"] if a.get("keypoints")]
    assert keypoints == [[5, 6, 2, 7, 8, 2]]
    assert all(a["image_id"] == images[c1]["id"] for a in data["annotations"])

    _export(db_url, "csv", tmp_path / "csv", folder, "--reviewed-only")
    with (tmp_path / "csv" / "cases.csv").open() as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert set(rows) == {c1, c2}
    assert (rows[c1]["ground_truth"], rows[c1]["outcome"], rows[c1]["reviewer_diagnosis"]) == (T1, T1, T2)
    assert (rows[c1]["fitzpatrick"], rows[c1]["body_site"], rows[c2]["ground_truth_source"]) == (
        "IV",
        "forearm",
        "review",
    )
    _export(db_url, "csv", tmp_path / "none", folder, "--since", "2999-01-01")
    assert len((tmp_path / "none" / "cases.csv").read_text().splitlines()) == 1  # the header only
    exported = _sql(db_url, "SELECT case_id FROM audit_events WHERE action = 'export' AND actor = 'cli:export'")
    assert sorted(r[0] for r in exported) == sorted([c1, c2, c3, c1, c2])


def test_export_fhir_and_audit_as_fhir_auditevents(engine: TriageEngine, db_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    c1, c2, c3 = _cases(engine, db_url, folder)["ids"]
    _export(db_url, "fhir", tmp_path / "fhir", folder)
    bundles = [
        Bundle.model_validate_json(line) for line in (tmp_path / "fhir" / "Bundle.ndjson").read_text().splitlines()
    ]
    assert [b.identifier.value for b in bundles] == [c1, c2, c3]
    events = [
        AuditEvent.model_validate_json(x) for x in (tmp_path / "fhir" / "AuditEvent.ndjson").read_text().splitlines()
    ]
    assert sum(e.action == "C" for e in events) == 3 + 7  # the cases and their reviews, outcome, annotations
    with serve(engine, db_url, photo_dir=folder) as client:
        wait_ready(client)
        plain = client.get(f"/v1/cases/{c1}/audit", headers=A).json()
        r = client.get(f"/v1/cases/{c1}/audit?format=fhir", headers=A)
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/fhir+json")
    bundle = Bundle.model_validate_json(r.content)
    got = [(e.resource.action, e.resource.agent[0].who.identifier.value) for e in bundle.entry]
    actions = {"create": "C", "read": "R", "export": "E", "delete": "D", "update": "U"}
    assert got[: len(plain)] == [(actions[e["action"]], e["actor"]) for e in plain]
    assert ("E", "cli:export") in got
