"""SMART App Launch (EHR launch) end to end, against a real Authlib authorization server and a FHIR server
that checks the bearer token (tests/smart_ehr.py): launch -> discovery -> authorize with PKCE -> token with
patient context -> FHIR reads with the token -> the triage opens. Also a refused consent, an expired
token, a wrong `iss` (refused, nothing fetched), a forged state; the token never reaches a URL, a cookie,
a response or a log record."""

from __future__ import annotations

import base64
import hashlib
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from ehr_client import BASE, media, patient, searchset
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from smart_ehr import Client, SmartEhr, smart_ehr
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.settings import Settings

CALLBACK = f"{BASE}/viewer/launch/callback"
EHR_SIDE_LOGGERS = ("authlib.oauth2.rfc6749", "authlib.oauth2.rfc7523", "werkzeug")  # the test EHR's own logs


@pytest.fixture(scope="module")
def ehr() -> Iterator[SmartEhr]:
    with smart_ehr() as server:
        server.clients["dt-viewer"] = Client("dt-viewer", (CALLBACK,))
        server.clients["dt-conf"] = Client("dt-conf", (CALLBACK,), "s3cret", "client_secret_basic")
        photo = jpeg_bytes(lesion_photo(12))
        by_ref = media(photo, "m1") | {"content": {"contentType": "image/jpeg", "url": "Binary/b1"}}
        server.serve_json("/fhir/Patient/p1", patient())
        server.serve_json("/fhir/Media?", searchset(by_ref))
        server.serve_json("/fhir/Observation?", searchset())
        server.serve_json("/fhir/DocumentReference?", searchset())
        server.serve_bytes("/fhir/Binary/b1", photo, "image/jpeg")
        yield server


@pytest.fixture(scope="module")
def engine_(tiny_clip: Any) -> TriageEngine:
    return TriageEngine(tiny_clip, load_taxonomy())


def app_for(engine: TriageEngine, ehr: SmartEhr, client_id: str = "dt-viewer", **client: Any) -> Any:
    clients = {ehr.fhir: {"client_id": client_id, **client}}
    return create_app(Settings(smart_clients=clients, cds_fetch_allow_hosts="127.0.0.1"), engine=engine)


@pytest.fixture
def ehr_fresh(ehr: SmartEhr) -> SmartEhr:
    ehr.deny, ehr.token_lifetime, ehr.app_context = False, 300, None
    ehr.fhir_requests.clear()
    ehr.authorize_requests.clear()
    ehr.token_requests.clear()
    ehr.discoveries = 0
    return ehr


def launch(c: TestClient, ehr: SmartEhr) -> httpx.Response:
    """Launch, let the EHR (the browser's side) answer the authorization, and come back to the callback."""
    r = c.get("/viewer/launch", params={"iss": ehr.fhir, "launch": "launch-123"}, follow_redirects=False)
    assert r.status_code == 302, r.text
    answer = httpx.get(r.headers["location"], follow_redirects=False)
    assert answer.status_code == 302, answer.text
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return c.get(f"{back.path}?{back.query}", follow_redirects=False)


@pytest.mark.parametrize("confidential", [False, True])
def test_ehr_launch_end_to_end(
    engine_: TriageEngine, ehr_fresh: SmartEhr, caplog: pytest.LogCaptureFixture, confidential: bool
) -> None:
    ehr = ehr_fresh
    caplog.set_level(logging.DEBUG)
    app = app_for(engine_, ehr, "dt-conf", client_secret="s3cret") if confidential else app_for(engine_, ehr)
    with TestClient(app, base_url=BASE) as c:
        wait_ready(c)
        first = c.get("/viewer/launch", params={"iss": ehr.fhir + "/", "launch": "launch-123"}, follow_redirects=False)
        assert first.status_code == 302 and ehr.discoveries == 1
        cookie = first.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=lax" in cookie and "path=/viewer/launch" in cookie
        query = parse_qs(urlsplit(first.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"] and query["aud"] == [ehr.fhir]
        assert query["launch"] == ["launch-123"] and query["redirect_uri"] == [CALLBACK]
        assert query["response_type"] == ["code"] and "patient/Media.read" in query["scope"][0]

        done = launch(c, ehr)
        assert done.status_code == 303 and done.headers["location"] == "/viewer/static/launch.html", done.text
        (token,) = [t for t in ehr.tokens if any(b == t for _, b in ehr.fhir_requests)]
        # PKCE: the verifier sent to the token endpoint hashes to the challenge sent to the authorize endpoint
        verifier = ehr.token_requests[-1]["code_verifier"]
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        assert challenge == ehr.authorize_requests[-1]["code_challenge"]
        assert ("client_secret" in ehr.token_requests[-1]) is False  # confidential: HTTP Basic, never the form
        paths = [p for p, _ in ehr.fhir_requests]
        assert "/fhir/Patient/p1" in paths and "/fhir/Binary/b1" in paths  # the photo, by reference
        assert all(b == token for _, b in ehr.fhir_requests)

        context = c.get("/viewer/launch/context")
        assert context.status_code == 200, context.text
        assert "no-store" in context.headers["cache-control"]
        body = context.json()
        assert body["patient"] == "p1" and body["result"]["differentials"] and body["share"]
        assert body["viewer_url"] == f"/viewer?result={body['result']['id']}&share={body['share']}"
        assert c.get("/viewer/static/launch.html").status_code == 200
        assert c.get("/viewer/static/launch.js").status_code == 200

        seen = [first, done, context]
        for response in seen:
            assert token not in response.text and token not in str(response.headers)
        assert all(token not in (v or "") for v in c.cookies.values())
    ours = [r for r in caplog.records if not r.name.startswith(EHR_SIDE_LOGGERS)]
    assert ours and not any(token in r.getMessage() or token in str(r.__dict__) for r in ours)


def test_refused_consent(engine_: TriageEngine, ehr_fresh: SmartEhr) -> None:
    ehr_fresh.deny = True
    with TestClient(app_for(engine_, ehr_fresh), base_url=BASE) as c:
        wait_ready(c)
        r = launch(c, ehr_fresh)
        assert r.status_code == 403 and r.json()["type"].endswith("/smart-consent-refused")
        assert "access_denied" in r.json()["detail"]
        assert ehr_fresh.token_requests == [] and ehr_fresh.fhir_requests == []
        assert c.get("/viewer/launch/context").status_code == 401


def test_expired_token(engine_: TriageEngine, ehr_fresh: SmartEhr) -> None:
    ehr_fresh.token_lifetime = 0  # the EHR issues a token that has already expired
    with TestClient(app_for(engine_, ehr_fresh), base_url=BASE) as c:
        wait_ready(c)
        r = launch(c, ehr_fresh)
        assert r.status_code == 401 and r.json()["type"].endswith("/smart-token-expired")
        assert ehr_fresh.fhir_requests == []  # an expired token is not sent
        assert c.get("/viewer/launch/context").status_code == 401


def test_token_the_fhir_server_refuses(engine_: TriageEngine, ehr_fresh: SmartEhr) -> None:
    """Valid by its expiry, but the FHIR server no longer honours it: the read's 401 is passed on."""
    kept = ehr_fresh.tokens
    ehr_fresh.tokens = _Revoking()
    try:
        with TestClient(app_for(engine_, ehr_fresh), base_url=BASE) as c:
            wait_ready(c)
            r = launch(c, ehr_fresh)
    finally:
        ehr_fresh.tokens = kept
    assert r.status_code == 401 and "HTTP 401" in r.json()["detail"] and ehr_fresh.fhir_requests


class _Revoking(dict):  # type: ignore[type-arg]
    """A token store whose tokens are revoked as soon as they are issued (reads always miss)."""

    def get(self, key: Any, default: Any = None) -> Any:
        return default


@pytest.mark.parametrize("iss", ["https://evil.example/fhir", "{fhir}/other", "not a url", ""])
def test_wrong_iss_is_refused_before_any_fetch(engine_: TriageEngine, ehr_fresh: SmartEhr, iss: str) -> None:
    with TestClient(app_for(engine_, ehr_fresh), base_url=BASE) as c:
        wait_ready(c)
        r = c.get("/viewer/launch", params={"iss": iss.format(fhir=ehr_fresh.fhir), "launch": "x"})
        assert r.status_code == 400 and r.headers["content-type"].startswith("application/problem+json")
        assert "set-cookie" not in r.headers
    assert ehr_fresh.discoveries == 0 and ehr_fresh.authorize_requests == []


def test_forged_state_and_missing_launch(engine_: TriageEngine, ehr_fresh: SmartEhr) -> None:
    with TestClient(app_for(engine_, ehr_fresh), base_url=BASE) as c:
        wait_ready(c)
        assert c.get("/viewer/launch/callback", params={"code": "x", "state": "y"}).status_code == 401  # no cookie
        r = c.get("/viewer/launch", params={"iss": ehr_fresh.fhir, "launch": "launch-123"}, follow_redirects=False)
        assert r.status_code == 302
        forged = c.get("/viewer/launch/callback", params={"code": "x", "state": "forged"})
        assert forged.status_code == 400 and ehr_fresh.token_requests == []
