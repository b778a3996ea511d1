"""FHIR conformance: `GET /fhir/metadata` (R4 CapabilityStatement) and `GET /fhir/OperationDefinition/triage`
are open and consistent; the DiagnosticReport is coded (LOINC + v2-0074 category); every resource the
service emits (triage Bundle, CapabilityStatement, OperationDefinition, OperationOutcome, AuditEvent Bundle)
validates against the official R4 4.0.1 JSON schema (jsonschema, not fhir.resources) as well as R4B."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir_schema import r4_errors
from litestar.testing import TestClient
from test_fhir import full_result, parameters, photo  # noqa: F401 (fixtures)
from test_service_api import wait_ready

from service.app import create_app
from service.engine import TriageEngine
from service.fhir.audit import audit_bundle
from service.fhir.bundle import triage_bundle
from service.schemas import TriageResult
from service.settings import Settings

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def client(engine: TriageEngine) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(), engine=engine)) as c:  # no API keys: only open routes answer
        wait_ready(c)
        yield c


def both_validators(resource: dict[str, Any]) -> None:
    assert r4_errors(resource) == []
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_the_schema_validator_catches_what_r4_forbids() -> None:
    """The schema check is real: an unknown element, a wrong type and a wrong code are each caught."""
    good = {"resourceType": "Patient", "id": "p1", "gender": "male"}
    assert r4_errors(good) == []
    assert r4_errors({**good, "nickname": "x"})  # additionalProperties: false
    assert r4_errors({**good, "gender": "m"})  # enum
    assert r4_errors({**good, "active": "yes"})  # boolean


def test_metadata_is_an_open_r4_capability_statement(client: TestClient) -> None:
    r = client.get("/fhir/metadata")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    cap = r.json()
    both_validators(cap)
    assert cap["resourceType"] == "CapabilityStatement" and cap["fhirVersion"] == "4.0.1"
    assert cap["kind"] == "instance" and "application/fhir+json" in cap["format"]
    (rest,) = cap["rest"]
    (operation,) = rest["operation"]
    assert operation["name"] == "triage" and operation["definition"].endswith("/fhir/OperationDefinition/triage")
    assert "Bearer" in rest["security"]["description"] and "/viewer/launch" not in rest["security"]["description"]
    assert client.post("/fhir/$triage", content=b"{}", headers={"Content-Type": FHIR}).status_code == 401


def test_metadata_names_the_smart_launch_when_an_ehr_is_configured(engine: TriageEngine) -> None:
    clients = {"https://ehr.example.org/fhir": {"client_id": "dt"}}
    with TestClient(create_app(Settings(smart_clients=clients), engine=engine)) as c:
        cap = c.get("/fhir/metadata").json()
    assert "/viewer/launch" in cap["rest"][0]["security"]["description"]
    both_validators(cap)


def test_operation_definition_matches_what_triage_reads(client: TestClient) -> None:
    r = client.get("/fhir/OperationDefinition/triage")
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    op = r.json()
    both_validators(op)
    cap = client.get("/fhir/metadata").json()
    assert op["url"] == cap["rest"][0]["operation"][0]["definition"]
    assert op["code"] == "triage" and op["system"] is True and op["instance"] is False
    ins = {p["name"] for p in op["parameter"] if p["use"] == "in"}
    assert ins == {"patient", "observation", "image", "symptoms", "topK", "explain", "modality"}
    (out,) = [p for p in op["parameter"] if p["use"] == "out"]
    assert out["name"] == "return" and out["type"] == "Bundle"


def test_every_triage_bundle_resource_is_r4(full_result: TriageResult) -> None:  # noqa: F811
    bundle = json.loads(triage_bundle(full_result, "https://dt.example").model_dump_json())
    assert r4_errors(bundle) == []
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"DiagnosticReport", "RiskAssessment", "Observation", "Media", "Device", "Provenance"} <= kinds
    assert not any("profile" in e["resource"].get("meta", {}) for e in bundle["entry"])  # no profile claimed
    (report,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "DiagnosticReport"]
    loinc = [c for c in report["code"]["coding"] if c["system"] == "http://loinc.org"]
    assert loinc == [{"system": "http://loinc.org", "code": "18748-4", "display": "Diagnostic imaging study"}]
    (category,) = report["category"]
    assert category["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/v2-0074"


def test_fhir_triage_answer_and_outcome_are_r4(engine: TriageEngine, photo: bytes) -> None:  # noqa: F811
    with TestClient(create_app(Settings(auth_disabled=True), engine=engine)) as c:
        wait_ready(c)
        ok = c.post("/fhir/$triage", content=json.dumps(parameters(photo)), headers={"Content-Type": FHIR})
        bad = c.post("/fhir/$triage", content=b'{"resourceType": "Parameters"}', headers={"Content-Type": FHIR})
    assert ok.status_code == 200 and r4_errors(ok.json()) == []
    assert bad.status_code == 422 and bad.json()["resourceType"] == "OperationOutcome"
    both_validators(bad.json())


@dataclass
class Row:
    id: int
    at: datetime
    actor: str
    action: str
    resource_type: str
    resource_id: str
    case_id: str | None
    client: str | None
    outcome: str


def test_audit_bundle_is_r4() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        Row(1, now, "clinic-a", "create", "case", "c1", "c1", "10.0.0.1", "success"),
        Row(2, now, "reviewer", "read", "case", "c1", None, None, "denied"),
    ]
    assert r4_errors(json.loads(audit_bundle(rows, "c1").model_dump_json())) == []
