"""FHIR R4 faces: every resource emitted parses and validates with fhir.resources R4B; the Bundle holds
together (references resolve); `/v1/triage?format=fhir`, `Accept: application/fhir+json` and
`POST /fhir/$triage` answer it; malformed FHIR gets an OperationOutcome with a 4xx."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ehr_client import b64, media, patient, risk_observation, symptoms_observation
from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready

from models.knowledge.risk_factors import RiskFactors
from models.uncertainty.contract import Flag, Uncertainty
from service.app import create_app
from service.engine import TriageEngine
from service.fhir.bundle import AI_ASSERTED, triage_bundle
from service.images import ImageLimits, decode_image
from service.schemas import ClinicalInput, TriageOptions, TriageResult
from service.settings import Settings

FHIR = "application/fhir+json"


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(3))


@pytest.fixture(scope="module")
def full_result(engine: TriageEngine, photo: bytes) -> TriageResult:
    """Every optional part present: heatmaps, findings, risk factors, urgency and its SHAP, uncertainty."""
    clinical = ClinicalInput(
        symptoms="mole bleeding and getting bigger for 3 weeks, no pain",
        risk_factors=RiskFactors(age=67, sex="male", fitzpatrick=2, body_site="back", diameter_mm=8, bleeding=True),
    )
    result = engine.triage(
        decode_image(photo, ImageLimits()), TriageOptions(top_k=3, explain=True), clinical, request_id="fhir-full-1"
    )
    uncertainty = Uncertainty(
        calibrated=True,
        calibration_id="tiny",
        temperature=1.3,
        prediction_set=[d.condition_id or d.label for d in result.differentials[:2]],
        coverage=0.9,
        entropy=0.8,
        top2_margin=0.05,
        flags=[
            Flag(
                name="low_confidence",
                measure="top_probability",
                value=0.31,
                threshold=0.4,
                requires_review=True,
                message="The top differential is below 40 %.",
            ),
            Flag(
                name="underrepresented_skin_type",
                measure="fitzpatrick",
                value="V",
                threshold="I-IV",
                requires_review=False,
                message="Few validation photos of this skin type.",
            ),
            Flag(
                name="uncalibrated",
                measure="calibration",
                value=None,
                threshold=None,
                requires_review=False,
                message="No calibration.",
            ),
        ],
        needs_review=True,
        review_reasons=["low confidence"],
    )
    return result.model_copy(update={"uncertainty": uncertainty})


def entries(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def round_trip(bundle_json: str | bytes) -> dict[str, Any]:
    """Parse the Bundle and every resource in it again with fhir.resources R4B; check references resolve."""
    Bundle.model_validate_json(bundle_json)
    bundle = json.loads(bundle_json)
    urls = {e["fullUrl"] for e in bundle["entry"]}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)
        assert entry["fullUrl"] == f"urn:uuid:{resource['id']}"
    refs = _references(bundle)
    assert all(r in urls for r in refs if r.startswith("urn:uuid:")), "dangling reference"
    return bundle


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["reference"]] if isinstance(node.get("reference"), str) else []
        return found + [r for v in node.values() for r in _references(v)]
    if isinstance(node, list):
        return [r for v in node for r in _references(v)]
    return []


# --------------------------------------------------------------------------- the adapter


def test_full_result_round_trips(full_result: TriageResult) -> None:
    bundle = round_trip(triage_bundle(full_result, "https://dt.example").model_dump_json())
    assert bundle["type"] == "collection" and bundle["identifier"]["value"] == full_result.id
    (report,) = entries(bundle, "DiagnosticReport")
    assert [i["value"] for i in report["identifier"]] == [full_result.id, "fhir-full-1"]  # result id, then caller's
    kinds = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert {"Patient", "Device", "DocumentReference", "Media", "Observation", "RiskAssessment"} <= set(kinds)
    assert kinds.count("DiagnosticReport") == kinds.count("Provenance") == 1

    (risk,) = entries(bundle, "RiskAssessment")
    assert len(risk["prediction"]) == len(full_result.differentials)
    for prediction, d in zip(risk["prediction"], full_result.differentials, strict=True):
        assert prediction["probabilityDecimal"] == pytest.approx(d.probability)
        systems = {c["system"] for c in prediction["outcome"]["coding"]}
        assert {c.system for c in d.codes} <= systems
        assert prediction["qualitativeRisk"]["coding"][1]["code"] == full_result.urgency.category.value
    assert risk["basis"] and any("Next step" in n["text"] for n in risk["note"])

    heatmaps = [m for m in entries(bundle, "Media") if m["content"]["contentType"] == "image/png"]
    assert len(heatmaps) == len(full_result.heatmaps or []) == 3
    for media_res, d in zip(heatmaps, full_result.differentials, strict=True):
        assert media_res["reasonCode"][0]["text"] == d.name and media_res["content"]["data"]
    (report,) = entries(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary" and full_result.differentials[0].name in report["conclusion"]
    assert len(report["media"]) == 3 and "Needs human review" in report["conclusion"]

    observations = entries(bundle, "Observation")
    codes = {c["code"] for o in observations for c in o["code"]["coding"]}
    assert {"urgency-score", "uncertainty", "low_confidence", "bleeding", "age", "body_site"} <= codes
    urgency = next(o for o in observations if o["code"]["coding"][0]["code"] == "urgency-score")
    assert urgency["valueQuantity"]["value"] == pytest.approx(full_result.urgency.score, abs=1e-6)
    flag = next(o for o in observations if o["code"]["coding"][0]["code"] == "low_confidence")
    assert flag["valueQuantity"]["value"] == 0.31 and flag["referenceRange"][0]["text"] == "threshold 0.4"

    (device,) = entries(bundle, "Device")
    assert device["version"][0]["value"] == full_result.model.version
    assert device["url"] == "https://dt.example" + full_result.model.card_url
    (provenance,) = entries(bundle, "Provenance")
    assert provenance["reason"][0]["coding"][0]["code"] == "AIAST"
    targets = {t["reference"] for t in provenance["target"]}
    assert {e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "RiskAssessment"} <= targets
    for resource in (risk, report, *heatmaps, urgency):
        assert AI_ASSERTED in resource["meta"]["security"]


def test_minimal_result_round_trips(engine: TriageEngine, photo: bytes) -> None:
    result = engine.triage(decode_image(photo, ImageLimits()), TriageOptions(top_k=2), request_id="min")
    bare = result.model_copy(
        update={
            "urgency": None,
            "urgency_shap": None,
            "findings": None,
            "risk_factors": None,
            "heatmaps": None,
            "uncertainty": None,
            "fusion_model": None,
        }
    )
    bundle = round_trip(triage_bundle(bare).model_dump_json())
    assert len(entries(bundle, "RiskAssessment")[0]["prediction"]) == 2
    assert "qualitativeRisk" not in entries(bundle, "RiskAssessment")[0]["prediction"][0]
    assert not entries(bundle, "Observation") and "result" not in entries(bundle, "DiagnosticReport")[0]


def test_candidate_labels_without_codes_round_trip(engine: TriageEngine, photo: bytes) -> None:
    options = TriageOptions(candidate_labels=["a pink bump", "a brown spot"], top_k=2)
    result = engine.triage(decode_image(photo, ImageLimits()), options, request_id="labels")
    bundle = round_trip(triage_bundle(result).model_dump_json())
    outcomes = [p["outcome"] for p in entries(bundle, "RiskAssessment")[0]["prediction"]]
    assert {o["text"] for o in outcomes} == {"a pink bump", "a brown spot"}


def test_same_answer_same_ids(full_result: TriageResult) -> None:
    one = triage_bundle(full_result, timestamp="2026-01-01T00:00:00Z").model_dump_json()
    two = triage_bundle(full_result, timestamp="2026-01-01T00:00:00Z").model_dump_json()
    assert one == two


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture(scope="module")
def client(engine: TriageEngine) -> Iterator[TestClient]:
    with TestClient(create_app(Settings(auth_disabled=True), engine=engine)) as c:
        wait_ready(c)
        yield c


def assert_outcome(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(FHIR)
    body = r.json()
    get_fhir_model_class("OperationOutcome").model_validate(body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["diagnostics"]
    if code:
        assert body["issue"][0]["code"] == code, body
    return body


def test_v1_triage_as_fhir(client: TestClient, photo: bytes) -> None:
    files = {"image": ("p.jpg", photo, "image/jpeg")}
    data = {"top_k": "2", "explain": "true", "symptoms": "itchy", "risk_factors": '{"age": 40}'}
    r = client.post("/v1/triage?format=fhir", files=files, data=data)
    assert r.status_code == 200 and r.headers["content-type"].startswith(FHIR)
    bundle = round_trip(r.content)
    result_id = bundle["identifier"]["value"]  # the server-minted result id, never the caller's X-Request-ID
    assert bundle["identifier"]["system"].endswith("/result-id") and result_id != r.headers["x-request-id"]
    assert len(entries(bundle, "Media")) == 3  # the photo's description + 2 heatmaps
    via_accept = client.post("/v1/triage", files=files, data={"top_k": "2"}, headers={"Accept": FHIR})
    assert via_accept.headers["content-type"].startswith(FHIR) and round_trip(via_accept.content)
    plain = client.post("/v1/triage", files=files, data={"top_k": "2"})
    assert plain.headers["content-type"].startswith("application/json") and "differentials" in plain.json()
    stored = client.get(f"/v1/triage/{result_id}", headers={"Accept": FHIR})
    assert stored.status_code == 200 and round_trip(stored.content)["identifier"] == bundle["identifier"]
    assert client.post("/v1/triage?format=xml", files=files).status_code == 422


def parameters(photo: bytes, *extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "resource": patient()},
            {"name": "observation", "resource": risk_observation("bleeding", {"valueBoolean": True}, "obs-bleed")},
            {
                "name": "observation",
                "resource": risk_observation(
                    "diameter_mm",
                    {"valueQuantity": {"value": 8, "unit": "mm", "system": "http://unitsofmeasure.org", "code": "mm"}},
                ),
            },
            {"name": "observation", "resource": symptoms_observation("getting bigger, no pain")},
            {"name": "topK", "valueInteger": 3},
            {"name": "image", "resource": media(photo, "m1")},
            *extra,
        ],
    }


def test_fhir_triage_with_parameters(client: TestClient, photo: bytes) -> None:
    r = client.post("/fhir/$triage", content=json.dumps(parameters(photo)), headers={"Content-Type": FHIR})
    assert r.status_code == 200, r.text
    bundle = round_trip(r.content)
    (risk,) = entries(bundle, "RiskAssessment")
    assert risk["subject"]["reference"] == "Patient/p1" and len(risk["prediction"]) == 3
    basis = {b["reference"] for b in risk["basis"]}
    assert {"Media/m1", "Observation/obs-bleed", "Observation/sym-1"} <= basis
    assert not entries(bundle, "Patient")  # the caller's Patient is referenced, not copied
    codes = {c["code"] for o in entries(bundle, "Observation") for c in o["code"]["coding"]}
    assert {"age", "sex", "diameter_mm", "bleeding", "changed_size", "urgency-score"} <= codes  # age from birthDate
    stored = client.get(f"/v1/triage/{bundle['identifier']['value']}").json()  # the result id, in the Bundle
    assert stored["risk_factors"]["bleeding"] is True and stored["risk_factors"]["sex"] == "male"
    assert "changed_size" in stored["findings"]["present"]


def test_fhir_triage_with_bundle_and_binary(client: TestClient, photo: bytes) -> None:
    binary = {"resourceType": "Binary", "id": "b1", "contentType": "image/jpeg", "data": b64(photo)}
    body = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": patient()}, {"resource": binary}]}
    r = client.post("/fhir/$triage", json=body)
    assert r.status_code == 200, r.text
    risk = entries(round_trip(r.content), "RiskAssessment")[0]
    assert {"Binary/b1"} <= {b["reference"] for b in risk["basis"]} and len(risk["prediction"]) == 5


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "required"),
        (b"{not json", 400, "structure"),
        (b"[1, 2]", 400, "structure"),
        (json.dumps({"resourceType": "Patient"}).encode(), 400, "structure"),
        (
            json.dumps({"resourceType": "Parameters", "parameter": [{"name": "x", "valueFoo": 1}]}).encode(),
            400,
            "structure",
        ),
        (json.dumps({"resourceType": "Bundle", "type": "nonsense-type", "entry": "x"}).encode(), 400, "structure"),
        (
            json.dumps(
                {"resourceType": "Parameters", "parameter": [{"name": "patient", "resource": patient()}]}
            ).encode(),
            422,
            "required",
        ),
    ],
)
def test_malformed_fhir_gets_operation_outcome(client: TestClient, body: bytes, status: int, code: str) -> None:
    assert_outcome(client.post("/fhir/$triage", content=body, headers={"Content-Type": FHIR}), status, code)


def test_unusable_fhir_gets_operation_outcome(client: TestClient, photo: bytes) -> None:
    def post(payload: dict[str, Any]) -> httpx.Response:
        return client.post("/fhir/$triage", content=json.dumps(payload), headers={"Content-Type": FHIR})

    bad_date = parameters(photo)
    bad_date["parameter"][0]["resource"]["birthDate"] = "04/02/1958"
    body = assert_outcome(post(bad_date), 400, "structure")
    assert any("birthDate" in x for x in body["issue"][0]["expression"])
    assert_outcome(post(parameters(photo, {"name": "image", "resource": media(photo, "m2")})), 422)  # two photos
    assert_outcome(post(parameters(photo, {"name": "colour", "valueString": "x"})), 422, "not-supported")
    assert_outcome(
        post(parameters(photo, {"name": "observation", "resource": risk_observation("age", {"valueInteger": 300})})),
        422,
        "value",
    )
    assert_outcome(post(parameters(photo, {"name": "explain", "valueString": "maybe"})), 422, "value")
    url_only = parameters(photo)
    url_only["parameter"][5]["resource"]["content"] = {"contentType": "image/jpeg", "url": "https://ehr.example/p.jpg"}
    refused = assert_outcome(post(url_only), 422, "not-supported")  # no FHIR server configured to fetch from
    assert "SMART Backend Services" in refused["issue"][0]["diagnostics"]
    corrupt = parameters(photo)
    corrupt["parameter"][5]["resource"]["content"]["data"] = b64(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert_outcome(post(corrupt), 400)
    assert_outcome(client.post("/fhir/$triage", content=b"<xml/>", headers={"Content-Type": "application/xml"}), 415)
