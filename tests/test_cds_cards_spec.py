"""CDS Hooks 2.0 cards: overrideReasons (the feedback records the one chosen, in the case store), a draft
dermatology referral ServiceRequest as a suggestion for urgent/soon answers (valid R4 by the official
schema), selectionBehavior, deterministic uuids, and a `smart` link only for an EHR configured for SMART."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from ehr_client import BASE, SERVICE_ID, EhrKeys, cds_request, cds_settings
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir_schema import r4_errors
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_cds_hooks import call, full_prefetch
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from models.scoring.urgency import UrgencyTier
from service.app import create_app
from service.cds_hooks.cards import CS_OVERRIDE, OVERRIDE_CODES, triage_card
from service.engine import TriageEngine
from service.images import ImageLimits, decode_image
from service.schemas import TriageOptions, TriageResult
from service.settings import Settings

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
EHR_FHIR = "https://ehr.example.org/fhir"


@pytest.fixture(scope="module")
def engine_(tiny_clip: Any) -> TriageEngine:
    return TriageEngine(tiny_clip, load_taxonomy())


@pytest.fixture(scope="module")
def answer(engine_: TriageEngine) -> TriageResult:
    image = decode_image(jpeg_bytes(lesion_photo(4)), ImageLimits())
    result = engine_.triage(image, TriageOptions(top_k=3), request_id="cards-1")
    assert result.urgency is not None
    return result


def with_urgency(result: TriageResult, tier: str) -> TriageResult:
    assert result.urgency is not None
    return result.model_copy(update={"urgency": result.urgency.model_copy(update={"category": UrgencyTier(tier)})})


@pytest.mark.parametrize(("tier", "priority"), [("urgent", "urgent"), ("soon", "routine")])
def test_urgent_and_soon_suggest_a_valid_referral(answer: TriageResult, tier: str, priority: str) -> None:
    card = triage_card(with_urgency(answer, tier), "https://dt.example", patient_id="p1")
    (suggestion,) = card["suggestions"]
    assert card["selectionBehavior"] == "at-most-one" and suggestion["isRecommended"] is True
    (action,) = suggestion["actions"]
    request = action["resource"]
    assert action["type"] == "create" and request["resourceType"] == "ServiceRequest"
    assert r4_errors(request) == [] and ServiceRequest.model_validate(request)
    assert request["status"] == "draft" and request["intent"] == "proposal" and request["priority"] == priority
    assert request["code"]["coding"][0]["code"] == "306206005" and request["subject"]["reference"] == "Patient/p1"
    assert request["reasonCode"][0]["text"] == answer.differentials[0].name


@pytest.mark.parametrize("tier", ["emergency", "routine", "self_care"])
def test_other_urgencies_suggest_nothing(answer: TriageResult, tier: str) -> None:
    card = triage_card(with_urgency(answer, tier), "https://dt.example")
    assert "suggestions" not in card and "selectionBehavior" not in card


def test_override_reasons_and_stable_uuids(answer: TriageResult) -> None:
    card = triage_card(with_urgency(answer, "urgent"), "https://dt.example")
    assert {r["code"] for r in card["overrideReasons"]} == OVERRIDE_CODES
    assert all(r["system"] == CS_OVERRIDE and r["display"] for r in card["overrideReasons"])
    again = triage_card(with_urgency(answer, "urgent"), "https://dt.example")
    assert again["uuid"] == card["uuid"] and again["suggestions"][0]["uuid"] == card["suggestions"][0]["uuid"]
    other = triage_card(answer.model_copy(update={"id": "f" * 32}), "https://dt.example")
    assert other["uuid"] != card["uuid"] and card["uuid"] != card["suggestions"][0]["uuid"]


def test_link_type_follows_the_smart_configuration(answer: TriageResult) -> None:
    plain = triage_card(answer, "https://dt.example", share="s3cr3t")["links"][0]
    assert plain["type"] == "absolute" and "appContext" not in plain
    assert plain["url"] == f"https://dt.example/viewer?result={answer.id}&share=s3cr3t"
    smart = triage_card(answer, "https://dt.example", share="s3cr3t", smart=True)["links"][0]
    assert smart["type"] == "smart" and smart["url"] == "https://dt.example/viewer/launch"
    assert json.loads(smart["appContext"]) == {"result": answer.id, "share": "s3cr3t"}


@pytest.fixture(scope="module")
def keys() -> EhrKeys:
    return EhrKeys()


@pytest.fixture(scope="module")
def client(engine_: TriageEngine, keys: EhrKeys) -> Iterator[TestClient]:
    settings = Settings(**cds_settings(keys, smart_clients={EHR_FHIR: {"client_id": "dermtriage-viewer"}}))
    with TestClient(create_app(settings, engine=engine_), base_url=BASE) as c:
        wait_ready(c)
        yield c


def test_card_link_is_smart_only_for_the_smart_ehr(client: TestClient, keys: EhrKeys) -> None:
    prefetch = full_prefetch(jpeg_bytes(lesion_photo(21)))
    smart = call(client, keys, cds_request(prefetch, fhirServer=EHR_FHIR + "/"))
    assert smart.status_code == 200, smart.text
    assert smart.json()["cards"][0]["links"][0]["type"] == "smart"
    other = call(client, keys, cds_request(prefetch, fhirServer="https://other.example.org/fhir"))
    assert other.json()["cards"][0]["links"][0]["type"] == "absolute"
    none = call(client, keys, cds_request(prefetch))
    assert none.json()["cards"][0]["links"][0]["type"] == "absolute"


def test_feedback_records_the_chosen_override_reason_in_the_case_store(client: TestClient, keys: EhrKeys) -> None:
    r = call(client, keys, cds_request(full_prefetch(jpeg_bytes(lesion_photo(25)))))
    card = r.json()["cards"][0]
    chosen = card["overrideReasons"][1]
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": chosen, "userComment": "seen in clinic"},
                "outcomeTimestamp": "2026-03-01T10:01:00Z",
            }
        ]
    }
    ok = call(client, keys, feedback, path=f"{SERVICE_PATH}/feedback")
    assert ok.status_code == 200 and ok.json() == {"recorded": 1}
    store = client.app.state.cds.feedback
    assert type(store).__name__ == "DatabaseFeedbackStore"  # the case store, not memory
    (record,) = [x for x in client.blocking_portal.call(store.list, SERVICE_ID) if x.card == card["uuid"]]
    assert record.override_reason["reason"] == chosen and record.request_id == r.headers["x-request-id"]
    unknown = {**feedback["feedback"][0], "overrideReason": {"reason": {"system": CS_OVERRIDE, "code": "bored"}}}
    bad = call(client, keys, {"feedback": [unknown]}, path=f"{SERVICE_PATH}/feedback")
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
