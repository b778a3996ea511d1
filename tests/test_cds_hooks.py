"""CDS Hooks: a CDS Client simulation (an EHR signing JWTs with a key the test generates), cards, the
photo cache, 412 for missing prefetch, fetching with fhirAuthorization, and feedback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from ehr_client import (
    BASE,
    SERVICE_ID,
    EhrKeys,
    FhirTestServer,
    cds_request,
    cds_settings,
    fhir_server,
    media,
    patient,
    reply_json,
    risk_observation,
    searchset,
    symptoms_observation,
)
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.cds_hooks.cards import summary
from service.engine import TriageEngine
from service.settings import Settings

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"


@pytest.fixture(scope="module")
def keys() -> EhrKeys:
    return EhrKeys()


@pytest.fixture(scope="module")
def ehr_fhir() -> Iterator[FhirTestServer]:
    """The EHR's FHIR server on 127.0.0.1 (allowlisted for plain http in the client's settings)."""
    with fhir_server() as server:
        yield server


@pytest.fixture(scope="module")
def client(tiny_clip: Any, keys: EhrKeys, ehr_fhir: FhirTestServer) -> Iterator[TestClient]:
    settings = Settings(**cds_settings(keys, fhir=[ehr_fhir.base], cds_fetch_allow_hosts="127.0.0.1"))
    app = create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy()))
    with TestClient(app, base_url=BASE) as c:
        wait_ready(c)
        yield c


def call(
    client: TestClient, keys: EhrKeys, body: dict[str, Any], path: str = SERVICE_PATH, **kw: Any
) -> httpx.Response:
    return client.post(path, json=body, headers={"Authorization": f"Bearer {keys.token(**kw)}"})


def link_context(link: dict[str, Any]) -> dict[str, str]:
    """The result id and share token of a card's link (``absolute``: the URL's query; ``smart``: appContext)."""
    if link["type"] == "smart":
        return json.loads(link["appContext"])  # type: ignore[no-any-return]
    return dict(parse_qsl(urlsplit(link["url"]).query))


def full_prefetch(photo: bytes) -> dict[str, Any]:
    return {
        "patient": patient(),
        "photos": searchset(
            media(photo, "new", "2026-02-01T09:00:00Z"), media(jpeg_bytes(lesion_photo(9)), "old", "2025-01-01")
        ),
        "observations": searchset(
            risk_observation("bleeding", {"valueBoolean": True}, "o1"),
            risk_observation("fitzpatrick", {"valueInteger": 2}, "o2"),
            symptoms_observation("growing mole, itchy"),
        ),
    }


def test_discovery(client: TestClient) -> None:
    r = client.get("/cds-services")
    assert r.status_code == 200
    (service,) = r.json()["services"]
    assert service["hook"] == "patient-view" and service["id"] == SERVICE_ID
    assert set(service["prefetch"]) == {"patient", "photos", "photoDocuments", "observations"}
    assert "{{context.patientId}}" in service["prefetch"]["photos"]


def test_patient_view_card(client: TestClient, keys: EhrKeys) -> None:
    photo = jpeg_bytes(lesion_photo(21))
    r = call(client, keys, cds_request(full_prefetch(photo)))
    assert r.status_code == 200, r.text
    (card,) = r.json()["cards"]
    assert len(card["summary"]) < 140 and card["indicator"] in {"info", "warning", "critical"}
    assert "| 1 |" in card["detail"] and "Photo: Media/new" in card["detail"]
    assert card["source"]["label"].startswith("dermtriage (") and card["source"]["url"].startswith(BASE + "/v1/models/")
    (link,) = card["links"]
    context = link_context(link)
    rid, share = context["result"], context["share"]  # the server-minted result id and its share token
    assert rid != r.headers["x-request-id"] and len(rid) == 32 and len(share) >= 22
    assert link["type"] == "absolute" and link["url"] == f"{BASE}/viewer?result={rid}&share={share}"
    stored = client.get(f"/v1/triage/{rid}", headers={"X-API-Key": "none"})  # /v1 needs a key here
    assert stored.status_code == 401
    result = client.blocking_portal.call(client.app.state.service.results.get, rid, "someone-else", share)
    assert result is not None and result.risk_factors.bleeding is True and result.risk_factors.fitzpatrick == 2
    assert result.risk_factors.age is not None and result.risk_factors.sex.value == "male"
    if result.urgency is not None:
        expected = {"emergency": "critical", "urgent": "critical", "soon": "warning"}.get(result.urgency.category.value)
        assert card["indicator"] == (expected or card["indicator"])


def test_repeat_call_on_same_photo_is_cached_and_fast(client: TestClient, keys: EhrKeys) -> None:
    photo = jpeg_bytes(lesion_photo(22))
    body = cds_request(full_prefetch(photo))
    first = call(client, keys, body)
    assert first.status_code == 200
    cache = client.app.state.cds.cache
    hits = cache.hits
    times = []
    for _ in range(5):
        start = time.perf_counter()
        again = call(client, keys, cds_request(full_prefetch(photo)))
        times.append((time.perf_counter() - start) * 1000)
        assert again.status_code == 200
    assert cache.hits == hits + 5
    assert again.json()["cards"][0]["summary"] == first.json()["cards"][0]["summary"]
    assert again.headers["x-request-id"] != first.headers["x-request-id"]
    links = [link_context(x.json()["cards"][0]["links"][0]) for x in (first, again)]
    assert links[0]["result"] != links[1]["result"]  # each call's answer is kept under its own fresh id
    results = client.app.state.service.results
    assert client.blocking_portal.call(results.get, links[1]["result"], "-", links[1]["share"]) is not None
    assert sorted(times)[2] < 500, times  # the CDS Hooks budget, with a wide margin on a busy machine


def test_photo_document_reference_is_read(client: TestClient, keys: EhrKeys) -> None:
    photo = jpeg_bytes(lesion_photo(23))
    doc = {
        "resourceType": "DocumentReference",
        "id": "d1",
        "status": "current",
        "date": "2026-03-01T00:00:00Z",
        "content": [{"attachment": {"contentType": "image/jpeg", "data": media(photo)["content"]["data"]}}],
    }
    r = call(client, keys, cds_request({"patient": patient(), "photoDocuments": searchset(doc)}))
    assert r.status_code == 200 and "DocumentReference/d1" in r.json()["cards"][0]["detail"]


def test_no_photo_no_card(client: TestClient, keys: EhrKeys) -> None:
    r = call(client, keys, cds_request({"patient": patient(), "photos": searchset()}))
    assert r.status_code == 200 and r.json() == {"cards": []}


@pytest.mark.parametrize(
    "prefetch",
    [None, {}, {"patient": patient()}, {"photos": searchset()}, {"patient": None, "photos": searchset()}],
)
def test_missing_required_prefetch_is_412(client: TestClient, keys: EhrKeys, prefetch: Any) -> None:
    r = call(client, keys, cds_request(prefetch))
    assert r.status_code == 412 and r.json()["type"].endswith("/prefetch-missing")


def test_missing_prefetch_is_fetched_with_fhir_authorization(
    client: TestClient, keys: EhrKeys, ehr_fhir: FhirTestServer
) -> None:
    photo = jpeg_bytes(lesion_photo(24))
    ehr_fhir.routes.clear()
    ehr_fhir.routes["/fhir/Patient/p1"] = reply_json(patient(gender="female"))
    ehr_fhir.routes["/fhir/Media?"] = reply_json(searchset(media(photo, "fetched")))
    ehr_fhir.requests.clear()  # observations, photo documents: 404
    extra = {"fhirServer": ehr_fhir.base + "/", "fhirAuthorization": {"access_token": "t0k", "token_type": "Bearer"}}
    r = call(client, keys, cds_request(None, **extra))
    assert r.status_code == 200, r.text
    assert "Media/fetched" in r.json()["cards"][0]["detail"]
    assert [path.split("?")[0] for path, _ in ehr_fhir.requests] == [
        "/fhir/Patient/p1",
        "/fhir/Observation",
        "/fhir/Media",
        "/fhir/DocumentReference",
    ]
    assert all(headers["Authorization"] == "Bearer t0k" for _, headers in ehr_fhir.requests)
    ehr_fhir.routes.clear()
    r = call(client, keys, cds_request(None, **extra))
    assert r.status_code == 412 and "HTTP 404" in r.json()["detail"]  # could not be fetched
    other = call(client, keys, cds_request(None, **extra | {"fhirServer": "https://elsewhere.example/fhir"}))
    assert other.status_code == 412 and "not a FHIR server configured for this issuer" in other.json()["detail"]


def test_bad_requests(client: TestClient, keys: EhrKeys) -> None:
    assert call(client, keys, {"hook": "patient-view"}).status_code == 422
    assert call(client, keys, cds_request({}) | {"hook": "order-select"}).status_code == 400
    bad_photo = {
        "patient": patient(),
        "photos": {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Media"}}]},
    }
    assert call(client, keys, cds_request(bad_photo)).status_code == 400
    other = f"{BASE}/cds-services/nope"
    assert call(client, keys, cds_request({}), path="/cds-services/nope", aud=other).status_code == 404


def test_jwt_negatives_through_the_service(client: TestClient, keys: EhrKeys) -> None:
    body = cds_request(full_prefetch(jpeg_bytes(lesion_photo(21))))
    for kw in ({"aud": f"{BASE}/cds-services"}, {"lifetime": -100}, {"iss": "https://unknown.example"}):
        r = call(client, keys, body, **kw)
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), kw
    forged = EhrKeys().token()  # same kid names, a key the service does not know
    assert client.post(SERVICE_PATH, json=body, headers={"Authorization": f"Bearer {forged}"}).status_code == 401
    token = keys.token()
    assert client.post(SERVICE_PATH, json=body, headers={"Authorization": f"Bearer {token}"}).status_code == 200
    replay = client.post(SERVICE_PATH, json=body, headers={"Authorization": f"Bearer {token}"})
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]


def test_feedback_is_recorded(client: TestClient, keys: EhrKeys) -> None:
    r = call(client, keys, cds_request(full_prefetch(jpeg_bytes(lesion_photo(25)))))
    card = r.json()["cards"][0]["uuid"]
    feedback = {
        "feedback": [
            {"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-03-01T10:00:00Z"},
            {
                "card": "unknown-card",
                "outcome": "overridden",
                "overrideReason": {"reason": {"code": "not-relevant"}, "userComment": "biopsy booked"},
                "outcomeTimestamp": "2026-03-01T10:01:00Z",
            },
        ]
    }
    ok = call(client, keys, feedback, path=f"{SERVICE_PATH}/feedback")
    assert ok.status_code == 200 and ok.json() == {"recorded": 2}
    records = client.blocking_portal.call(client.app.state.cds.feedback.list, SERVICE_ID)[-2:]
    assert records[0].request_id == r.headers["x-request-id"] and records[0].outcome == "accepted"
    assert records[1].request_id is None and records[1].override_reason["userComment"] == "biopsy booked"
    assert (
        call(
            client,
            keys,
            {"feedback": [{"card": card, "outcome": "maybe", "outcomeTimestamp": "x"}]},
            path=f"{SERVICE_PATH}/feedback",
        ).status_code
        == 422
    )
    assert client.post(f"{SERVICE_PATH}/feedback", json=feedback).status_code == 401


def test_summary_stays_short() -> None:
    from types import SimpleNamespace

    from service.schemas import Differential

    long_name = "x" * 300
    diff = Differential(rank=1, label=long_name, condition_id=None, name=long_name, probability=0.5)
    fake = SimpleNamespace(differentials=[diff], urgency=None, uncertainty=None)
    assert len(summary(fake)) < 140  # type: ignore[arg-type]
