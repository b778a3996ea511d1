"""Issue 15, "Results belong to whoever made them" and "Memory and patient data": one named test per hole.

Server-minted result ids (never the caller's X-Request-ID), owner-only reads (404 to everyone else),
no overwrite, purge on a timer, no-store/nosniff on patient data, `anonymous` owner with auth off,
photos downscaled before queuing (original size reported), heatmap bytes capped in the store, and
16-bit PNGs without float64 copies.
"""

from __future__ import annotations

import asyncio
import io
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from litestar.testing import TestClient
from PIL import Image
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready

from service.app import create_app
from service.auth.api_keys import generate_api_key
from service.engine import TriageEngine
from service.images import ImageLimits, decode_image
from service.results import ResultExists, ResultStore
from service.schemas import TriageOptions, TriageResult
from service.settings import Settings
from service.shared_state import CappedMemoryStore

PROBLEM = "https://dermtriage.dev/problems/"


@pytest.fixture(scope="module")
def two_keys(engine: TriageEngine) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    """Auth on, two tenants: clinic A and clinic B, each with its own API key."""
    key_a, rec_a = generate_api_key("clinic-a", per_minute=6000)
    key_b, rec_b = generate_api_key("clinic-b", per_minute=6000)
    settings = Settings(api_keys=f"{rec_a.line()},{rec_b.line()}", api_rate_burst=100)
    with TestClient(create_app(settings, engine=engine)) as client:
        wait_ready(client)
        yield client, {"X-API-Key": key_a}, {"X-API-Key": key_b}


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(4))


def post(client: TestClient, photo: bytes, headers: dict[str, str], **options: Any) -> httpx.Response:
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in options.items()}
    r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data=data, headers=headers)
    assert r.status_code == 200, r.text
    return r


def not_found(r: httpx.Response) -> dict[str, Any]:
    """The 404 body without its per-request fields: the same for a missing id and someone else's."""
    assert r.status_code == 404, r.text
    body = r.json()
    assert body["type"] == PROBLEM + "result-not-found"
    return {k: v for k, v in body.items() if k not in ("instance", "request_id")}


def test_read_by_another_key_is_404(two_keys: tuple[TestClient, dict[str, str], dict[str, str]], photo: bytes) -> None:
    client, a, b = two_keys
    answer = post(client, photo, a).json()
    rid = answer["id"]
    assert client.get(f"/v1/triage/{rid}", headers=a).json() == answer  # the owner reads it back
    assert client.get(f"/v1/triage/{rid}?format=fhir", headers=a).status_code == 200
    missing = not_found(client.get("/v1/triage/" + "0" * 32, headers=b))
    assert not_found(client.get(f"/v1/triage/{rid}", headers=b)) == missing  # not 403: nothing confirmed
    assert not_found(client.get(f"/v1/triage/{rid}?format=fhir", headers=b)) == missing
    assert not_found(client.get(f"/v1/triage/{rid}", headers={**b, "X-Result-Share": "guess"})) == missing


def test_share_token_reads_that_one_result(
    two_keys: tuple[TestClient, dict[str, str], dict[str, str]], photo: bytes
) -> None:
    """The CDS Hooks card link's capability: any valid API key plus the token reads that answer only."""
    client, a, b = two_keys
    service = client.app.state.service
    first, second = (post(client, photo, a).json()["id"] for _ in range(2))
    share = client.blocking_portal.call(service.results.share_token, first, "api-key:clinic-a")
    assert share and client.blocking_portal.call(service.results.share_token, first, "api-key:clinic-b") is None
    assert client.get(f"/v1/triage/{first}", headers={**b, "X-Result-Share": share}).status_code == 200
    assert client.get(f"/v1/triage/{second}", headers={**b, "X-Result-Share": share}).status_code == 404
    assert client.get(f"/v1/triage/{first}", headers={"X-Result-Share": share}).status_code == 401  # still a key


def test_overwrite_is_refused(engine: TriageEngine, photo: bytes) -> None:
    store = ResultStore.in_memory()
    first = engine.triage(decode_image(photo), TriageOptions(top_k=2), request_id="r1")
    other = engine.triage(decode_image(jpeg_bytes(lesion_photo(5))), TriageOptions(top_k=3), request_id="r2")

    async def run() -> None:
        await store.put(first, "api-key:a")
        with pytest.raises(ResultExists):
            await store.put(other.model_copy(update={"id": first.id}), "api-key:a")
        with pytest.raises(ResultExists):
            await store.put(other.model_copy(update={"id": first.id}), "api-key:b")
        assert await store.get(first.id, "api-key:a") == first  # the first answer stands
        assert await store.get(first.id, "api-key:b") is None

    asyncio.run(run())


def test_caller_request_id_never_becomes_the_key(
    two_keys: tuple[TestClient, dict[str, str], dict[str, str]], photo: bytes
) -> None:
    client, a, b = two_keys
    mine = post(client, photo, {**a, "X-Request-ID": "a"}, top_k=2).json()
    theirs = post(client, jpeg_bytes(lesion_photo(7)), {**b, "X-Request-ID": "a"}, top_k=4).json()
    assert mine["request_id"] == theirs["request_id"] == "a"  # echoed as the correlation id only
    assert len({mine["id"], theirs["id"], "a"}) == 3 and len(mine["id"]) == 32  # 128 random bits, hex
    for headers in (a, b):
        not_found(client.get("/v1/triage/a", headers=headers))
    not_found(client.get(f"/v1/triage/{mine['id']}", headers=b))  # B cannot read A's answer ...
    assert client.get(f"/v1/triage/{mine['id']}", headers=a).json() == mine  # ... nor replace it
    assert client.get(f"/v1/triage/{theirs['id']}", headers=b).json() == theirs


def test_expired_results_are_purged_on_a_timer(engine: TriageEngine, photo: bytes) -> None:
    settings = Settings(auth_disabled=True, result_ttl_s=0.3, result_purge_interval_s=0.05, cds_cache_ttl_s=0.3)
    with TestClient(create_app(settings, engine=engine)) as client:
        wait_ready(client)
        answers = client.app.stores.get("results")  # Litestar's registry: the memory store by default
        assert isinstance(answers, CappedMemoryStore)
        post(client, photo, {})
        post(client, photo, {})
        assert answers.held() == 2
        deadline = time.monotonic() + 10
        while answers.held() and time.monotonic() < deadline:
            time.sleep(0.05)  # nothing reads the answers: only the timer can drop them
        assert answers.held() == 0


def test_patient_data_answers_are_no_store_and_nosniff(
    two_keys: tuple[TestClient, dict[str, str], dict[str, str]], photo: bytes
) -> None:
    client, a, _ = two_keys
    answers = [
        client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, headers=a),  # 200
        client.get("/v1/triage/" + "0" * 32, headers=a),  # 404
        client.get("/v1/triage/x"),  # 401
        client.post("/v1/triage", content=b"{", headers={**a, "Content-Type": "application/json"}),  # 400
        client.post("/fhir/$triage", json={"resourceType": "Parameters"}, headers=a),  # 422 OperationOutcome
        client.post("/fhir/$triage", json={}),  # 401
        client.get("/cds-services"),
        client.post("/cds-services/dermtriage-skin-photo", json={}),  # 401
        client.post("/cds-services/unknown", json={}),
    ]
    for r in answers:
        where = f"{r.request.method} {r.request.url.path} -> {r.status_code}"
        assert r.headers.get("cache-control") == "no-store", where
        assert r.headers.get("x-content-type-options") == "nosniff", where
    assert answers[0].status_code == 200 and answers[1].status_code == 404
    assert client.get("/health/live").headers.get("x-content-type-options") == "nosniff"


def test_anonymous_owner_with_auth_off(engine: TriageEngine, photo: bytes) -> None:
    with TestClient(create_app(Settings(auth_disabled=True), engine=engine)) as client:
        wait_ready(client)
        rid = post(client, photo, {}).json()["id"]
        results = client.app.state.service.results
        assert client.blocking_portal.call(results.get, rid, "anonymous") is not None  # the owner: `anonymous`
        assert client.blocking_portal.call(results.get, rid, "api-key:anyone") is None
        assert client.get(f"/v1/triage/{rid}").status_code == 200


def test_photo_downscaled_to_2048_with_original_size_reported(engine: TriageEngine) -> None:
    decoded = decode_image(jpeg_bytes(lesion_photo(2, size=(3000, 2000))), ImageLimits())
    assert decoded.image.size == (2048, 1365)  # long side 2048, aspect kept
    info = decoded.info
    assert (info.width, info.height, info.original_width, info.original_height) == (3000, 2000, 3000, 2000)
    assert info.quality.min_side == 2000  # measured on the photo as sent
    # heatmaps still line up: the crop box and peak are in the downscaled photo's pixels, same fractions
    result = engine.triage(decoded, TriageOptions(top_k=1, explain=True), request_id="big")
    assert result.image.width == 3000
    (heat,) = result.heatmaps or []
    assert (heat.photo_width, heat.photo_height) == (2048, 1365)
    full = engine.model.preprocessing.geometry(3000, 2000)
    scaled = (heat.covers.left, heat.covers.top, heat.covers.right, heat.covers.bottom)
    for edge, (s, f) in enumerate(zip(scaled, full, strict=True)):
        assert abs(s / (2048, 1365)[edge % 2] - f / (3000, 2000)[edge % 2]) < 0.002, (scaled, full)
    assert heat.width / heat.height == pytest.approx(3000 / 2000, rel=0.01)


def test_heatmaps_are_capped_in_the_store(engine: TriageEngine, photo: bytes) -> None:
    explained = [
        engine.triage(decode_image(photo), TriageOptions(top_k=2, explain=True), request_id=str(i)) for i in range(3)
    ]
    one = sum(len(h.png_base64) + len(h.legend_png_base64) for h in explained[0].heatmaps or [])
    store = ResultStore.in_memory(max_heatmap_bytes=int(one * 2.5))

    async def put_then_get(store: ResultStore, results: list[TriageResult]) -> list[TriageResult | None]:
        for r in results:
            await store.put(r, "o")
        return [await store.get(r.id, "o") for r in results]

    kept = asyncio.run(put_then_get(store, explained))
    assert [k.heatmaps is not None for k in kept if k] == [False, True, True]  # the oldest lost its heatmaps
    assert kept[0] is not None and kept[0].differentials == explained[0].differentials
    assert kept[2] == explained[2]  # heatmaps and all, as made
    (held,) = asyncio.run(put_then_get(ResultStore.in_memory(max_heatmap_bytes=10), explained[:1]))
    assert held is not None and held.heatmaps is None  # over the cap on its own: kept without


def test_16_bit_png_decodes_without_float64_copies() -> None:
    """A 16-bit greyscale PNG is scaled to 8 bits in integers: peak numpy memory stays far below one
    float64 path of the image (about 18 bytes per pixel; the integer path about 8)."""
    side = 1500
    ramp = (np.arange(side * side, dtype=np.uint32) % 65536).astype(np.uint16).reshape(side, side)
    buf = io.BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    assert Image.open(io.BytesIO(buf.getvalue())).mode == "I;16"
    tracemalloc.start()
    try:
        decoded = decode_image(buf.getvalue(), ImageLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert decoded.image.mode == "RGB" and decoded.image.size == (side, side)
    assert peak < 12 * side * side, f"peak {peak / side / side:.1f} bytes per pixel"
