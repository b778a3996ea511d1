"""`GET /v1/lesions/{lesion_ref}/timeline`: a lesion's kept visits and the change between them, on SQLite
and on a real PostgreSQL server (tests/case_db.py)."""

from __future__ import annotations

from test_cases_store import A, B, R, problem, serve, triage, written
from test_lesion_compare_api import engine, photos  # noqa: F401 - the fixtures
from test_service_api import wait_ready

from service.engine import TriageEngine


def test_timeline_lists_visits_oldest_first_with_changes(
    engine: TriageEngine,  # noqa: F811
    db_url: str,
    tmp_path,
    photos,  # noqa: F811
) -> None:
    with serve(engine, db_url, store_photos=True, photo_dir=tmp_path / "photos") as client:
        wait_ready(client)
        ids = [
            triage(client, photos[name], A, lesion_ref="mole-7", consent_to_store=True)["id"]
            for name in ("before", "again", "grown")
        ]
        triage(client, photos["before"], A, lesion_ref="mole-8", consent_to_store=True)
        triage(client, photos["before"], B, lesion_ref="mole-7", consent_to_store=True)  # another clinic's
        written(client, 5)
        mine = client.get("/v1/lesions/mole-7/timeline", headers=A).json()
        last_two = client.get("/v1/lesions/mole-7/timeline?limit=2", headers=A).json()
        reviewer = client.get("/v1/lesions/mole-7/timeline", headers=R).json()
        bad = client.get("/v1/lesions/mole-7/timeline?limit=99", headers=A)
    assert [v["case_id"] for v in mine["visits"]] == ids and mine["total"] == 3
    assert all(v["outline"]["found"] for v in mine["visits"])
    steps = mine["changes"]
    assert [(s["earlier_case_id"], s["later_case_id"]) for s in steps] == [(ids[0], ids[1]), (ids[1], ids[2])]
    assert steps[0]["verdict"] == "stable" and steps[1]["area_change_pct"] > 50
    assert [v["case_id"] for v in last_two["visits"]] == ids[1:] and last_two["total"] == 3
    assert reviewer["total"] == 4
    problem(bad, 422, "invalid-limit")
