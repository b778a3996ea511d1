"""Photos by reference in CDS Hooks prefetch: Media/DocumentReference ``Attachment.url`` (relative or
absolute under the EHR's FHIR base) to a raw image, a FHIR Binary, or one more hop; fetched with the
call's fhirAuthorization bearer from a real HTTP server, only from the issuer's configured FHIR base, and
within the upload limits. Every refusal is a problem+json 412 that says why."""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from ehr_client import BASE, EhrKeys, FhirTestServer, cds_request, cds_settings, fhir_server, patient, reply_json
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_cds_hooks import call
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.settings import Settings

MAX_IMAGE = 400_000
PHOTO = jpeg_bytes(lesion_photo(30))


def reply_bytes(body: bytes, content_type: str) -> Callable[[BaseHTTPRequestHandler], None]:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    return reply


def media_ref(url: str, media_id: str = "m-ref") -> dict[str, Any]:
    return {
        "resourceType": "Media",
        "id": media_id,
        "status": "completed",
        "createdDateTime": "2026-02-01T09:00:00Z",
        "content": {"contentType": "image/jpeg", "url": url},
    }


def doc_ref(url: str) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "id": "d-ref",
        "status": "current",
        "date": "2026-02-02T09:00:00Z",
        "content": [{"attachment": {"contentType": "image/jpeg", "url": url}}],
    }


def binary(data: bytes, content_type: str = "image/jpeg") -> dict[str, Any]:
    return {"resourceType": "Binary", "id": "b1", "contentType": content_type, "data": base64.b64encode(data).decode()}


@pytest.fixture(scope="module")
def keys() -> EhrKeys:
    return EhrKeys()


@pytest.fixture(scope="module")
def ehr() -> Iterator[FhirTestServer]:
    with fhir_server() as server:
        yield server


@pytest.fixture(scope="module")
def client(tiny_clip: Any, keys: EhrKeys, ehr: FhirTestServer) -> Iterator[TestClient]:
    settings = Settings(
        **cds_settings(keys, fhir=[ehr.base], cds_fetch_allow_hosts="127.0.0.1", max_image_bytes=MAX_IMAGE)
    )
    with TestClient(create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy())), base_url=BASE) as c:
        wait_ready(c)
        yield c


def grant(ehr: FhirTestServer, token: str = "photo-t0k") -> dict[str, Any]:
    return {"fhirServer": ehr.base, "fhirAuthorization": {"access_token": token, "token_type": "Bearer"}}


def photo_call(client: TestClient, keys: EhrKeys, ehr: FhirTestServer, photo: dict[str, Any], **extra: Any) -> Any:
    key = "photoDocuments" if photo["resourceType"] == "DocumentReference" else "photos"
    return call(client, keys, cds_request({"patient": patient(), key: photo}, **(grant(ehr) | extra)))


@pytest.mark.parametrize(
    ("route", "reply", "ref"),
    [
        ("/fhir/Binary/raw", reply_bytes(PHOTO, "image/jpeg"), "Binary/raw"),  # relative, raw image
        ("/fhir/Binary/json", reply_json(binary(PHOTO)), "Binary/json"),  # a FHIR Binary
        ("/fhir/Binary/abs", reply_bytes(PHOTO, "image/jpeg"), "{base}/Binary/abs"),  # absolute under the base
        ("/fhir/Media/hop", reply_json(media_ref("Binary/raw2")), "Media/hop"),  # one more hop
    ],
)
def test_media_by_reference_is_fetched_with_the_bearer(
    client: TestClient, keys: EhrKeys, ehr: FhirTestServer, route: str, reply: Any, ref: str
) -> None:
    ehr.routes.clear()
    ehr.routes[route] = reply
    ehr.routes["/fhir/Binary/raw2"] = reply_bytes(PHOTO, "image/jpeg")
    ehr.requests.clear()
    r = photo_call(client, keys, ehr, media_ref(ref.format(base=ehr.base)))
    assert r.status_code == 200, r.text
    assert "Media/m-ref" in r.json()["cards"][0]["detail"]
    assert ehr.requests and all(h["Authorization"] == "Bearer photo-t0k" for _, h in ehr.requests)
    assert route in [path for path, _ in ehr.requests]


def test_document_reference_to_binary(client: TestClient, keys: EhrKeys, ehr: FhirTestServer) -> None:
    ehr.routes.clear()
    ehr.routes["/fhir/Binary/doc"] = reply_json(binary(PHOTO))
    r = photo_call(client, keys, ehr, doc_ref("Binary/doc"))
    assert r.status_code == 200 and "DocumentReference/d-ref" in r.json()["cards"][0]["detail"]


def refused(r: Any, why: str) -> None:
    assert r.status_code == 412, r.text
    assert r.headers["content-type"].startswith("application/problem+json") and why in r.json()["detail"]


def test_refusals(client: TestClient, keys: EhrKeys, ehr: FhirTestServer) -> None:
    ehr.routes.clear()
    ehr.routes["/fhir/Binary/big"] = reply_bytes(b"\xff\xd8" + b"0" * MAX_IMAGE, "image/jpeg")
    ehr.routes["/fhir/Binary/bigjson"] = reply_json(binary(b"\xff\xd8" + b"0" * MAX_IMAGE))
    ehr.routes["/fhir/Binary/pdf"] = reply_bytes(b"%PDF-1.4", "application/pdf")
    ehr.routes["/fhir/Binary/notimage"] = reply_json(binary(b"%PDF", "application/pdf"))
    refused(photo_call(client, keys, ehr, media_ref("Binary/big")), "larger than the image limit")
    refused(photo_call(client, keys, ehr, media_ref("Binary/bigjson")), "larger than the image limit")
    refused(photo_call(client, keys, ehr, media_ref("Binary/pdf")), "not an image")
    refused(photo_call(client, keys, ehr, media_ref("Binary/notimage")), "not an image")
    refused(photo_call(client, keys, ehr, media_ref("Binary/missing")), "HTTP 404")
    no_grant = call(client, keys, cds_request({"patient": patient(), "photos": media_ref("Binary/big")}))
    refused(no_grant, "grants no fhirAuthorization")


def test_references_off_the_configured_base_are_not_fetched(
    client: TestClient, keys: EhrKeys, ehr: FhirTestServer
) -> None:
    with fhir_server({"/": reply_bytes(PHOTO, "image/jpeg")}) as other:
        for url in (f"{other.base}/Binary/x", f"http://127.0.0.1:{other.port}/fhir2/Binary/x", "file:///etc/passwd"):
            refused(photo_call(client, keys, ehr, media_ref(url)), "photo reference")
        assert other.connections == 0
    # and the call's fhirServer itself must be configured for the issuer
    r = photo_call(client, keys, ehr, media_ref("Binary/raw"), fhirServer="https://elsewhere.example/fhir")
    refused(r, "grants no fhirAuthorization")
