"""Symptoms, risk factors and heatmaps through POST /v1/triage (both request forms)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator

import pytest
from litestar.testing import TestClient
from PIL import Image
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import PROBLEM, TEXT_CACHE, wait_ready

from service.app import create_app
from service.settings import Settings

SYMPTOMS = "mole bleeding and getting bigger, no pain, for two months"
RISK = {"age": 67, "fitzpatrick": 2, "diameter_mm": 8, "family_history_melanoma": True}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Settings(auth_disabled=True, cache_dir=TEXT_CACHE))) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(3, size=(640, 400)))


def _check_clinical(body: dict) -> None:
    findings = body["findings"]
    assert {"bleeding", "changed_size"} <= set(findings["present"])
    assert "pain" in findings["absent"] and "pain" not in findings["present"]
    assert 50 <= findings["duration_days"] <= 70
    assert body["risk_factors"]["age"] == 67 and body["risk_factors"]["diameter_mm"] == 8


def test_multipart_symptoms_and_risk_factors(client: TestClient, photo: bytes) -> None:
    r = client.post(
        "/v1/triage",
        files={"image": ("p.jpg", photo, "image/jpeg")},
        data={"symptoms": SYMPTOMS, "risk_factors": json.dumps(RISK)},
    )
    assert r.status_code == 200, r.text
    _check_clinical(r.json())


def test_json_symptoms_and_risk_factors(client: TestClient, photo: bytes) -> None:
    payload = {"image": base64.b64encode(photo).decode(), "symptoms": SYMPTOMS, "risk_factors": RISK}
    r = client.post("/v1/triage", json=payload)
    assert r.status_code == 200, r.text
    _check_clinical(r.json())
    plain = client.post("/v1/triage", json={"image": payload["image"]}).json()
    assert plain["findings"] is None and plain["risk_factors"] is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("age", 200),
        ("age", -1),
        ("fitzpatrick", 7),
        ("fitzpatrick", 0),
        ("diameter_mm", -2),
        ("diameter_mm", 5000),
        ("lesion_duration_days", -1),
        ("body_site", "elbow-ish"),
        ("not_a_risk_factor", True),
    ],
)
def test_out_of_range_risk_factors_are_422(client: TestClient, photo: bytes, field: str, value: object) -> None:
    payload = {"image": base64.b64encode(photo).decode(), "risk_factors": {field: value}}
    r = client.post("/v1/triage", json=payload)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == PROBLEM + "validation-error"
    assert any(field in str(e["loc"]) for e in body["errors"])
    multipart = client.post(
        "/v1/triage",
        files={"image": ("p.jpg", photo, "image/jpeg")},
        data={"risk_factors": json.dumps({field: value})},
    )
    assert multipart.status_code == 422


def test_symptoms_too_long_and_bad_risk_json(client: TestClient, photo: bytes) -> None:
    long = {"image": base64.b64encode(photo).decode(), "symptoms": "itch " * 1000}
    assert client.post("/v1/triage", json=long).status_code == 422
    r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data={"risk_factors": "{not json"})
    assert r.status_code == 400 and r.json()["type"] == PROBLEM + "malformed-json"


def test_heatmaps_on_request(client: TestClient, photo: bytes) -> None:
    off = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}).json()
    assert off["heatmaps"] is None
    r = client.post(
        "/v1/triage",
        files={"image": ("p.jpg", photo, "image/jpeg")},
        data={"explain": "true", "heatmap_grid": "true", "top_k": "3"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    maps = body["heatmaps"]
    assert len(maps) == len(body["differentials"]) == 3
    assert body["timings"]["heatmap_ms"] > 0
    for m in maps:
        overlay = Image.open(io.BytesIO(base64.b64decode(m["png_base64"])))
        assert overlay.format == "PNG"
        assert abs(overlay.width / overlay.height - 640 / 400) < 0.02
        assert m["photo_width"] == 640 and m["photo_height"] == 400
        grid = m["grid"]
        assert grid and all(0.0 <= v <= 1.0 for row in grid for v in row)


def test_answer_is_fused_with_urgency_and_shap(client: TestClient, photo: bytes) -> None:
    """The differentials are the fused posterior; urgency and its SHAP values come with every answer."""
    image = base64.b64encode(photo).decode()
    plain = client.post("/v1/triage", json={"image": image, "options": {"top_k": 20}}).json()
    alarm = client.post(
        "/v1/triage", json={"image": image, "symptoms": SYMPTOMS, "risk_factors": RISK, "options": {"top_k": 20}}
    ).json()
    for body in (plain, alarm):
        probs = [d["probability"] for d in body["differentials"]]
        # each number is rounded to 6 decimals: the sum may pass 1 by half a millionth per number
        assert 0.5 < sum(probs) <= 1.0 + 0.5e-6 * len(probs) and probs == sorted(probs, reverse=True)
        assert all(
            set(d["contributions"]) == {"baseline", "image", "symptoms", "risk_factors"} for d in body["differentials"]
        )
        assert body["fusion_model"].startswith("fitted:embedded-pad-lite0")
        shap = body["urgency_shap"]
        assert shap["base_value"] + sum(shap["values"].values()) == pytest.approx(body["urgency"]["score"], abs=1e-6)
        assert body["urgency"]["next_step"]
    # the photo is the same, so the image evidence is too; the words and risk factors moved the posterior
    image_p = {d["condition_id"]: d["image_probability"] for d in plain["differentials"]}
    shared = [d for d in alarm["differentials"] if d["condition_id"] in image_p]
    assert shared and all(image_p[d["condition_id"]] == pytest.approx(d["image_probability"]) for d in shared)
    post = {d["condition_id"]: d["probability"] for d in alarm["differentials"]}
    assert any(abs(post.get(d["condition_id"], 0.0) - d["probability"]) > 1e-3 for d in plain["differentials"])
    # a bleeding, growing 8 mm lesion with a family history of melanoma is never less urgent than the photo alone
    assert alarm["urgency"]["score"] >= plain["urgency"]["score"]
    assert "bleeding" in alarm["urgency"]["red_flags"] and alarm["urgency"]["ng12"]["points"] >= 3
    assert {"image", "symptoms"} <= set(alarm["urgency_shap"]["values"])
