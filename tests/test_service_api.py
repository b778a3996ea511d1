"""HTTP tests through Litestar's TestClient over the real embedded model (normal lifespan)."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from service_photos import (
    MIB,
    corrupt_png,
    gif_bytes,
    jpeg_bytes,
    lesion_photo,
    pdf_bytes,
    png_bomb,
    png_bytes,
)

from service.app import create_app
from service.logs import JsonFormatter
from service.settings import Settings

PROBLEM = "https://dermtriage.dev/problems/"
# Condition text embeddings are cached here (gitignored) so only the first run pays for computing them.
TEXT_CACHE = Path(__file__).resolve().parents[1] / ".cache" / "text-embeddings"


def wait_ready(client: TestClient, timeout: float = 600.0) -> None:  # cold start computes embeddings
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/health/ready")
        if r.status_code == 200:
            return
        assert "failed to load" not in r.json()["detail"], r.json()["detail"]
        time.sleep(0.2)
    raise AssertionError("service not ready in time")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    app = create_app(Settings(auth_disabled=True, inference_workers=2, cache_dir=TEXT_CACHE))
    with TestClient(app) as c:
        wait_ready(c)
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(0), with_gps=True)


def post_file(client: TestClient, data: bytes, name: str = "photo.jpg", **fields: Any) -> httpx.Response:
    return client.post("/v1/triage", files={"image": (name, data, "image/jpeg")}, data=fields)


def post_json(client: TestClient, payload: Any) -> httpx.Response:
    return client.post("/v1/triage", json=payload)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_problem(r: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["type"] == PROBLEM + slug, body
    assert body["status"] == status and body["title"] and body["detail"]
    assert body["instance"] == f"urn:dermtriage:request:{r.headers['x-request-id']}"
    return body


def answer(r: httpx.Response) -> list[tuple[str, float]]:
    """What must not depend on timing or concurrency: the ranked labels and probabilities."""
    assert r.status_code == 200, r.text
    return [(d["label"], d["probability"]) for d in r.json()["differentials"]]


# --------------------------------------------------------------------------- happy paths


def test_multipart_triage(client: TestClient, photo: bytes) -> None:
    r = post_file(client, photo, top_k="3")
    body = r.json()
    assert r.status_code == 200, r.text
    assert body["request_id"] == r.headers["x-request-id"]
    assert body["model"]["name"] == "embedded-pad-lite0" and body["model"]["version"]
    assert body["model"]["card_url"]
    assert body["label_source"] == "taxonomy" and body["modality"] == "clinical"
    diffs = body["differentials"]
    assert len(diffs) == 3 and [d["rank"] for d in diffs] == [1, 2, 3]
    assert all(d["condition_id"] and d["codes"] for d in diffs)
    assert diffs[0]["probability"] >= diffs[1]["probability"] >= diffs[2]["probability"]
    assert {"exif", "gps"} <= set(body["image"]["metadata_stripped"])
    assert body["image"]["width"] == 640 and body["image"]["bytes"] == len(photo)
    assert set(body["timings"]) >= {"decode_ms", "queue_ms", "inference_ms", "total_ms"}
    assert body["disclaimer"]


def test_json_form_matches_multipart(client: TestClient, photo: bytes) -> None:
    via_json = post_json(client, {"image": b64(photo), "options": {"top_k": 3}})
    data_url = post_json(client, {"image": "data:image/jpeg;base64," + b64(photo), "options": {"top_k": 3}})
    assert answer(via_json) == answer(data_url) == answer(post_file(client, photo, top_k="3"))


def test_options_as_json_part_and_candidate_labels(client: TestClient, photo: bytes) -> None:
    opts = {"candidate_labels": ["melanoma", "benign mole", "seborrheic keratosis"], "top_k": 3}
    as_part = post_file(client, photo, options=json.dumps(opts))
    as_fields = post_file(client, photo, candidate_labels="melanoma, benign mole, seborrheic keratosis", top_k="3")
    repeated = client.post(
        "/v1/triage",
        files=[
            ("image", ("p.jpg", photo, "image/jpeg")),
            ("candidate_labels", (None, "melanoma")),
            ("candidate_labels", (None, "benign mole")),
            ("candidate_labels", (None, "seborrheic keratosis")),
            ("top_k", (None, "3")),
        ],
    )
    assert answer(as_part) == answer(as_fields) == answer(repeated)
    body = as_part.json()
    assert body["label_source"] == "candidate_labels"
    assert len(body["differentials"]) == 3  # taxonomy names resolve to their condition ids


def test_png_dermoscopic(client: TestClient) -> None:
    r = post_file(client, png_bytes(lesion_photo(2, (300, 300))), name="d.png", modality="dermoscopic", top_k="2")
    assert r.status_code == 200, r.text
    assert r.json()["modality"] == "dermoscopic" and r.json()["image"]["format"] == "png"


def test_concurrent_requests_match_sequential(client: TestClient) -> None:
    photos = [jpeg_bytes(lesion_photo(seed, (320, 240))) for seed in range(4)] * 2
    sequential = [answer(post_file(client, p)) for p in photos]
    with ThreadPoolExecutor(8) as pool:
        concurrent = list(pool.map(lambda p: answer(post_file(client, p)), photos))
    assert concurrent == sequential


# --------------------------------------------------------------------------- other routes


def test_conditions(client: TestClient) -> None:
    body = client.get("/v1/conditions").json()
    assert body["count"] == len(body["conditions"]) > 10 and body["taxonomy_version"]
    mel = next(c for c in body["conditions"] if c["id"] == "melanoma")
    assert mel["malignant"] is True and mel["urgency"] in {"emergency", "urgent"}
    assert any(c["system"].endswith("icd-10-cm") for c in mel["codes"])
    assert isinstance(mel["validated_models"], list) and isinstance(mel["validated_for_loaded_model"], bool)


def test_models_and_cards(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["loaded"]["ref"]["name"] == "embedded-pad-lite0" and body["loaded"]["device"] == "cpu"
    assert body["loaded"]["card"]["license"]
    names = {m["name"] for m in body["available"]}
    assert "embedded-pad-lite0" in names and len(names) >= 2
    # the dermoscopic photo kind routes to the model trained on dermoscopy; both are loaded and named
    assert body["routed"]["dermoscopic"]["ref"]["name"] == "embedded-isic-lite0"
    assert body["routed"]["dermoscopic"]["card"]["modality"] == ["dermoscopic"]
    loaded = sorted(m["name"] for m in body["available"] if m["loaded"])
    assert loaded == ["embedded-isic-lite0", "embedded-pad-lite0"]
    card = client.get("/v1/models/embedded-pad-lite0").json()
    assert card["name"] == "embedded-pad-lite0" and card["version"] == body["loaded"]["ref"]["version"]
    assert_problem(client.get("/v1/models/no-such-model"), 404, "unknown-model")


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/health/live").json() == {"status": "alive"}
    ready = client.get("/health/ready").json()
    assert ready["status"] == "ready" and ready["model"]["name"] == "embedded-pad-lite0"
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'dermtriage_http_requests_total{method="GET",route="/health/ready",status="200"}' in r.text
    assert "dermtriage_ready 1.0" in r.text


def test_openapi_has_examples_for_every_route(client: TestClient) -> None:
    doc = client.get("/schema/openapi.json").json()
    paths = doc["paths"]
    expected = {"/v1/triage", "/v1/conditions", "/v1/models", "/v1/models/{name}", "/health/live", "/health/ready"}
    assert expected <= set(paths)
    for path, item in paths.items():
        for op in item.values():
            status, ok = next((k, v) for k, v in op["responses"].items() if k.startswith("2"))  # 200, 201 or 204
            if status == "204":
                assert "content" not in ok, f"{path}: a 204 has no body"
                continue
            ok = ok["content"]
            assert all(media.get("examples") for media in ok.values()), f"{path}: no response example"
    body = paths["/v1/triage"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert all(media["examples"] for media in body.values())
    assert paths["/v1/triage"]["post"]["responses"]["422"]["content"]["application/problem+json"]["examples"]
    name_param = paths["/v1/models/{name}"]["get"]["parameters"][0]
    assert name_param["examples"]
    # every /v1 route declares the API-key scheme the auth guard enforces
    assert "apiKey" in doc["components"]["securitySchemes"]
    for path, item in paths.items():
        if path.startswith("/v1/"):
            assert all(op.get("security") == [{"apiKey": []}] for op in item.values()), path


def test_unknown_route_is_a_problem(client: TestClient) -> None:
    assert_problem(client.get("/v2/whatever"), 404, "not-found")
    r = client.get("/v1/triage")
    assert_problem(r, 405, "method-not-allowed")
    assert "POST" in r.headers["allow"]


def test_request_id_header(client: TestClient) -> None:
    r = client.get("/health/live", headers={"X-Request-ID": "abc-123.req_1"})
    assert r.headers["x-request-id"] == "abc-123.req_1"
    for insane in ("has spaces", "x" * 200, b"caf\xe9", 'a\\b"c'):
        r = client.get("/health/live", headers={"X-Request-ID": insane})
        assert len(r.headers["x-request-id"]) == 36  # replaced by a uuid4


# --------------------------------------------------------------------------- errors


def _big(n: int) -> bytes:
    return b"\xff\xd8\xff\xe0" + os.urandom(n - 4)


BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    ("empty body", {"content": b""}, 400, "empty-body"),
    ("empty json body", {"content": b"", "headers": {"content-type": "application/json"}}, 400, "empty-body"),
    ("zero-byte file", {"files": {"image": ("a.jpg", b"", "image/jpeg")}}, 400, "empty-image"),
    ("not an image", {"files": {"image": ("a.jpg", b"hello, not a photo " * 20, "image/jpeg")}}, 400, "not-an-image"),
    ("gif", {"files": {"image": ("a.gif", gif_bytes(), "image/gif")}}, 415, "unsupported-image-format"),
    ("pdf", {"files": {"image": ("a.pdf", pdf_bytes(), "application/pdf")}}, 415, "unsupported-image-format"),
    ("bomb", {"files": {"image": ("b.png", png_bomb(), "image/png")}}, 413, "image-dimensions-too-large"),
    (
        "too small",
        {"files": {"image": ("s.png", png_bytes(lesion_photo(3, (32, 32))), "image/png")}},
        400,
        "image-too-small",
    ),
    ("image over byte limit", {"files": {"image": ("big.jpg", _big(11 * MIB), "image/jpeg")}}, 413, "image-too-large"),
    (
        "multipart over body limit",
        {"files": {"image": ("big.jpg", _big(13 * MIB), "image/jpeg")}},
        413,
        "request-too-large",
    ),
    ("json over body limit", {"json": {"image": b64(_big(10 * MIB))}}, 413, "request-too-large"),
    ("missing image part", {"files": {"top_k": (None, "3")}}, 422, "missing-image"),
    ("missing image json", {"json": {"options": {"top_k": 3}}}, 422, "missing-image"),
    ("image as text field", {"files": {"image": (None, "abc")}}, 422, "validation-error"),
    (
        "malformed json",
        {"content": b'{"image": "abc",', "headers": {"content-type": "application/json"}},
        400,
        "malformed-json",
    ),
    ("json not an object", {"json": ["image"]}, 422, "validation-error"),
    ("invalid base64", {"json": {"image": "not*base64!"}}, 400, "invalid-base64"),
    (
        "unknown option json",
        {"json": {"image": "AAAA", "options": {"top_k": 3, "colour": "red"}}},
        422,
        "validation-error",
    ),
    ("unknown top-level key", {"json": {"image": "AAAA", "top_k": 3}}, 422, "validation-error"),
    (
        "unknown form field",
        {"files": {"image": ("a.jpg", b"x", "image/jpeg"), "colour": (None, "red")}},
        422,
        "validation-error",
    ),
    (
        "wrong content type text",
        {"content": b"hello", "headers": {"content-type": "text/plain"}},
        415,
        "unsupported-media-type",
    ),
    (
        "raw jpeg body",
        {"content": b"\xff\xd8\xff\xe0", "headers": {"content-type": "image/jpeg"}},
        415,
        "unsupported-media-type",
    ),
    (
        "too many parts",
        {"files": [("candidate_labels", (None, f"l{i}")) for i in range(70)]},
        413,
        "too-many-parts",
    ),
    (
        "multipart without boundary",
        {"content": b"x", "headers": {"content-type": "multipart/form-data"}},
        400,
        "malformed-multipart",
    ),
]


@pytest.mark.parametrize(("case", "kwargs", "status", "slug"), BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request(client: TestClient, case: str, kwargs: dict[str, Any], status: int, slug: str) -> None:
    assert_problem(client.post("/v1/triage", **kwargs), status, slug)


def test_truncated_jpeg_and_corrupt_png(client: TestClient, photo: bytes) -> None:
    assert_problem(post_file(client, photo[: len(photo) // 2]), 400, "corrupt-image")
    assert_problem(post_file(client, corrupt_png(lesion_photo(4, (200, 200))), name="c.png"), 400, "corrupt-image")


OUT_OF_RANGE = [("top_k", "0"), ("top_k", "1000"), ("modality", "x"), ("top_k", "three")]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_out_of_range_options(client: TestClient, photo: bytes, field: str, value: str) -> None:
    body = assert_problem(post_file(client, photo, **{field: value}), 422, "validation-error")
    assert [e["loc"] for e in body["errors"]] == [field]
    as_json = json.loads(value) if value.isdigit() else value
    body = assert_problem(
        post_json(client, {"image": b64(photo), "options": {field: as_json}}), 422, "validation-error"
    )
    assert [e["loc"] for e in body["errors"]] == [f"options.{field}"]


def test_too_many_candidate_labels(client: TestClient, photo: bytes) -> None:
    labels = [f"label {i}" for i in range(51)]
    body = assert_problem(post_file(client, photo, candidate_labels=",".join(labels)), 422, "validation-error")
    assert body["errors"][0]["loc"] == "candidate_labels"
    body = assert_problem(
        post_json(client, {"image": b64(photo), "options": {"candidate_labels": labels}}), 422, "validation-error"
    )
    assert body["errors"][0]["loc"] == "options.candidate_labels"
    assert "label 7" not in json.dumps(body)  # field errors never echo input


def test_options_part_errors(client: TestClient, photo: bytes) -> None:
    assert_problem(post_file(client, photo, options="{top_k: 3"), 400, "malformed-json")
    body = assert_problem(post_file(client, photo, options='{"top_k": 3, "nope": 1}'), 422, "validation-error")
    assert [e["loc"] for e in body["errors"]] == ["options.nope"]
    assert_problem(post_file(client, photo, options='{"top_k": 3}', top_k="2"), 422, "validation-error")


def test_burst_of_bad_requests_loses_nothing(client: TestClient, photo: bytes) -> None:
    before = answer(post_file(client, photo))
    bad = [kwargs for name, kwargs, _, _ in BAD_REQUESTS if "limit" not in name]  # skip the 10+ MiB ones
    with ThreadPoolExecutor(6) as pool:
        statuses = list(pool.map(lambda kw: client.post("/v1/triage", **kw).status_code, bad * 2))
    assert all(400 <= s < 500 for s in statuses), statuses
    assert answer(post_file(client, photo)) == before
    metrics = client.get("/metrics").text
    assert 'status="500"' not in metrics


def test_logs_are_json_and_private(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    photo = jpeg_bytes(lesion_photo(9, (256, 256)))
    secret = "zebra-striped-marker-lesion"
    encoded = b64(photo)
    with caplog.at_level(logging.DEBUG):
        r = post_json(client, {"image": encoded, "options": {"candidate_labels": [secret, "melanoma"], "top_k": 2}})
        bad = post_json(client, {"image": encoded, "options": {"candidate_labels": [secret] * 60}})
    assert r.status_code == 200 and bad.status_code == 422
    lines = [JsonFormatter().format(rec) for rec in caplog.records]
    text = "\n".join(lines)
    assert secret not in text
    assert encoded[:32] not in text and encoded[-32:] not in text
    assert "\\xff\\xd8" not in text and "JFIF" not in text
    access = [json.loads(line) for line in lines if json.loads(line)["logger"] == "dermtriage.access"]
    mine = [a for a in access if a["request_id"] == r.headers["x-request-id"]]
    assert len(mine) == 1
    assert mine[0]["method"] == "POST" and mine[0]["path"] == "/v1/triage" and mine[0]["status"] == 200
    assert mine[0]["duration_ms"] > 0
    assert any(a["request_id"] == bad.headers["x-request-id"] and a["problem"] == "validation-error" for a in access)


def test_result_by_id_round_trip(client: TestClient, photo: bytes) -> None:
    r = post_file(client, photo)
    assert r.status_code == 200
    rid = r.json()["id"]  # minted by the server; request_id is the caller's correlation id
    again = client.get(f"/v1/triage/{rid}")
    assert again.status_code == 200
    assert again.json() == r.json()
    assert_problem(client.get("/v1/triage/no-such-id"), 404, "result-not-found")
