"""Authentication: API keys (hashed, per-key token buckets), the CDS Hooks JWT checks, and the route policy.

The JWT tests never touch the network: keys come from a JWKS the test generates, and the allowlisted
``jku`` is served by a fetcher function the test injects.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from ehr_client import BASE, ISSUER, JKU, SERVICE_URL, EhrKeys, issuers
from litestar.testing import TestClient
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.auth.api_keys import ApiKeyRegistry, generate_api_key, hash_key, parse_key_line
from service.auth.cds_config import IssuerConfig, parse_issuers
from service.auth.cds_jwt import CdsJwtVerifier, JwtRejected
from service.auth.rate_limit import RateLimiter
from service.cli import main as cli_main
from service.engine import TriageEngine
from service.settings import Settings

PROBLEM = "https://dermtriage.dev/problems/"


@pytest.fixture(scope="module")
def keys() -> EhrKeys:
    return EhrKeys()


# --------------------------------------------------------------------------- API keys and rate limits


def test_api_key_is_stored_hashed_and_verified() -> None:
    key, record = generate_api_key("clinic-a", 30)
    assert key.startswith("dt_") and len(key) > 40
    line = record.line()
    assert key not in line and line == f"clinic-a:sha256:{hashlib.sha256(key.encode()).hexdigest()}:30"
    registry = ApiKeyRegistry.from_lines([line])
    assert registry.verify(key) == parse_key_line(line)
    assert registry.verify(key + "x") is None and registry.verify("") is None
    assert parse_key_line(f"b:sha256:{hash_key('k')}").per_minute is None
    for bad in ("nope", "a:md5:" + "0" * 64, "a:sha256:xyz", "bad name:sha256:" + "0" * 64, f"a:sha256:{'0' * 64}:-1"):
        with pytest.raises(ValueError):
            parse_key_line(bad)


def test_create_api_key_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["create-api-key", "--name", "ehr-1", "--per-minute", "90", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    record = parse_key_line(out["config_line"])
    assert record.name == "ehr-1" and record.per_minute == 90 and record.digest == hash_key(out["key"])
    assert cli_main(["create-api-key", "--name", "has space"]) == 2


def test_token_bucket() -> None:
    now = [0.0]
    limiter = RateLimiter(per_minute=60, burst=3, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)] == [None, None, None]
    wait = limiter.take("a")
    assert wait is not None and 0.9 < wait <= 1.0
    assert limiter.take("b") is None  # per key
    now[0] += 1.0
    assert limiter.take("a") is None and limiter.take("a") is not None
    assert limiter.take("c", per_minute=6000) is None  # a key's own rate


# --------------------------------------------------------------------------- the CDS Hooks JWT


def verifier(keys: EhrKeys, **kw: Any) -> CdsJwtVerifier:
    return CdsJwtVerifier([IssuerConfig(ISSUER, keys.jwks())], **kw)


def test_jwt_accepted_es384_and_rs384(keys: EhrKeys) -> None:
    v = verifier(keys)
    assert v.verify(keys.token(), SERVICE_URL)["iss"] == ISSUER
    assert v.verify(keys.token(alg="RS384"), SERVICE_URL)["sub"] == "client-app"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda k: k.token(aud=SERVICE_URL + "/"), "aud"),
        (lambda k: k.token(aud="https://other.example/cds-services/dermtriage-skin-photo"), "aud"),
        (lambda k: k.token(lifetime=-120), "expired"),
        (lambda k: k.token(iat_offset=600), "future"),
        (lambda k: k.token(lifetime=3600), "ahead"),
        (lambda k: k.token(iss="https://evil.example"), "issuer"),
        (lambda k: k.token(drop=("jti",)), "jti"),
        (lambda k: k.token(drop=("exp",)), "exp"),
        (lambda k: k.token(drop=("iat",)), "iat"),
        (lambda k: k.token(kid="unknown"), "kid"),
        (lambda k: EhrKeys("ehr").token(), "signature"),  # same kid, another key
        (lambda k: k.token()[:-4] + "AAAA", "signature"),
        (lambda k: "not.a.jwt", "well-formed"),
        (lambda k: jwt.encode({"iss": ISSUER, "aud": SERVICE_URL}, "secret", algorithm="HS256"), "algorithm"),
        (lambda k: k.token(jku="https://evil.example/jwks.json"), "allowlist"),
    ],
)
def test_jwt_rejected(keys: EhrKeys, make: Any, reason: str) -> None:
    with pytest.raises(JwtRejected, match=reason):
        verifier(keys).verify(make(keys), SERVICE_URL)


def test_jwt_replayed_jti_rejected(keys: EhrKeys) -> None:
    v = verifier(keys)
    token = keys.token(jti="once")
    asyncio.run(v.accept(token, SERVICE_URL))
    with pytest.raises(JwtRejected, match="replay"):
        asyncio.run(v.accept(token, SERVICE_URL))
    with pytest.raises(JwtRejected, match="replay"):
        asyncio.run(v.accept(keys.token(jti="once"), SERVICE_URL))  # a new token with a used jti


def test_jwt_keys_from_allowlisted_jku(keys: EhrKeys) -> None:
    calls: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        calls.append(url)
        return keys.jwks()

    v = CdsJwtVerifier([IssuerConfig(ISSUER, jku=(JKU,))], fetch)
    assert v.configured
    v.verify(keys.token(jku=JKU), SERVICE_URL)
    v.verify(keys.token(jku=JKU, alg="RS384"), SERVICE_URL)
    assert calls == [JKU]  # fetched once, then cached
    with pytest.raises(JwtRejected, match="allowlist"):
        v.verify(keys.token(jku="https://ehr.example.org/other.json"), SERVICE_URL)
    with pytest.raises(JwtRejected, match="kid"):
        v.verify(keys.token(), SERVICE_URL)  # no jku and no static JWKS

    def broken(url: str) -> dict[str, Any]:
        raise OSError("unreachable")

    with pytest.raises(JwtRejected, match="could not be read"):
        CdsJwtVerifier([IssuerConfig(ISSUER, jku=(JKU,))], broken).verify(keys.token(jku=JKU), SERVICE_URL)


def test_cds_issuer_configuration(keys: EhrKeys, tmp_path: Any) -> None:
    """The JSON object per issuer (text or file), the older one-issuer form, and the refusals at start-up."""
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(keys.jwks()))
    text = json.dumps({ISSUER: {"jwks": str(jwks_file), "jku": [JKU], "fhir": ["HTTPS://EHR.example.org:443/fhir/"]}})
    (config,) = Settings(cds_issuers=text, public_url=BASE).cds_issuer_configs().values()
    assert config.jwks == keys.jwks() and config.jku == (JKU,) and config.fhir == ("https://ehr.example.org/fhir",)
    config_file = tmp_path / "issuers.json"
    config_file.write_text(text)
    assert Settings(cds_issuers=str(config_file), public_url=BASE).cds_issuer_configs()[ISSUER] == config
    older = Settings(cds_issuers=ISSUER, cds_jwks=json.dumps(keys.jwks()), cds_jku_allowlist=JKU, public_url=BASE)
    assert older.cds_issuer_configs()[ISSUER] == IssuerConfig(ISSUER, keys.jwks(), (JKU,), ())
    bad = [
        ({"https://a.example,https://b.example": None}, "object"),  # not an entry
        ({ISSUER: {"fhir": ["https://ehr.example.org/fhir"]}}, "signing keys"),
        ({ISSUER: {"jwks": keys.jwks(), "keys": []}}, "unknown keys"),
        ({ISSUER: {"jwks": keys.jwks(), "fhir": ["http://ehr.example.org/fhir"]}}, "https"),
        ({ISSUER: {"jwks": keys.jwks(), "fhir": ["file:///etc"]}}, "http"),
        ({ISSUER: {"jwks": keys.jwks(), "fhir": ["https://u:p@ehr.example.org/fhir"]}}, "user info"),
        ({ISSUER: {"jku": ["http://ehr.example.org/jwks.json"]}}, "https"),
        ({ISSUER: {"jwks": {"no": "keys"}}}, "JWKS"),
        (["https://a.example", "https://b.example"], "JSON form"),  # several issuers, one key set: refused
    ]
    for raw, reason in bad:
        with pytest.raises(ValueError, match=reason):
            parse_issuers(raw, keys.jwks() if isinstance(raw, list) else None)
    assert parse_issuers(
        {ISSUER: {"jwks": keys.jwks(), "fhir": ["http://127.0.0.1:8080/fhir"]}}, allow_hosts=["127.0.0.1"]
    )[ISSUER].fhir == ("http://127.0.0.1:8080/fhir",)
    with pytest.raises(ValueError, match="older form"):
        Settings(cds_issuers=issuers((ISSUER, keys, {})), cds_jwks=json.dumps(keys.jwks()), public_url=BASE)


# --------------------------------------------------------------------------- enforcement through the app


@pytest.fixture(scope="module")
def secured(tiny_clip: Any, keys: EhrKeys) -> Iterator[tuple[TestClient, str, str]]:
    key, record = generate_api_key("tests", per_minute=600)
    slow_key, slow = generate_api_key("slow", per_minute=1)
    settings = Settings(
        api_keys=f"{record.line()},{slow.line()}",
        api_rate_burst=4,
        cds_issuers=ISSUER,  # the older one-issuer form still works
        cds_jwks=json.dumps(keys.jwks()),
        public_url=BASE,
    )
    assert not settings.auth_disabled
    with TestClient(create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy())), base_url=BASE) as client:
        wait_ready(client)
        yield client, key, slow_key


def test_open_routes_need_no_credentials(secured: tuple[TestClient, str, str]) -> None:
    client, _, _ = secured
    for path in ("/health/live", "/metrics", "/schema/openapi.json", "/cds-services", "/viewer/"):
        assert client.get(path).status_code == 200, path


def test_v1_needs_an_api_key(secured: tuple[TestClient, str, str]) -> None:
    client, key, _ = secured
    for headers in ({}, {"X-API-Key": "dt_wrong"}, {"Authorization": "Bearer dt_wrong"}):
        r = client.get("/v1/conditions", headers=headers)
        assert r.status_code == 401 and r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"] == PROBLEM + "unauthorized" and "www-authenticate" in r.headers
    assert client.get("/v1/conditions", headers={"X-API-Key": key}).status_code == 200
    assert client.get("/v1/conditions", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert client.get("/v1/triage/unknown-id", headers={"X-API-Key": key}).status_code == 404


def test_rate_limit_is_per_key_429_with_retry_after(secured: tuple[TestClient, str, str]) -> None:
    client, key, slow_key = secured
    statuses = [client.get("/v1/triage/x", headers={"X-API-Key": slow_key}).status_code for _ in range(5)]
    assert statuses == [404, 404, 404, 404, 429]  # a burst of 4, then 1 per minute
    r = client.get("/v1/triage/x", headers={"X-API-Key": slow_key})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert r.json()["type"] == PROBLEM + "rate-limited"
    assert client.get("/v1/triage/x", headers={"X-API-Key": key}).status_code == 404  # other keys unaffected


def test_fhir_needs_an_api_key_and_answers_operation_outcome(secured: tuple[TestClient, str, str]) -> None:
    client, _, _ = secured
    r = client.post("/fhir/$triage", json={"resourceType": "Parameters"})
    assert r.status_code == 401 and r.headers["content-type"].startswith("application/fhir+json")
    assert r.json()["resourceType"] == "OperationOutcome" and r.json()["issue"][0]["code"] == "login"


def test_cds_service_needs_the_jwt(secured: tuple[TestClient, str, str], keys: EhrKeys) -> None:
    client, key, _ = secured
    body = {"hook": "patient-view", "hookInstance": "h1", "context": {"patientId": "p1"}, "prefetch": {}}
    assert client.post("/cds-services/dermtriage-skin-photo", json=body).status_code == 401
    api_key = client.post("/cds-services/dermtriage-skin-photo", json=body, headers={"Authorization": f"Bearer {key}"})
    assert api_key.status_code == 401  # an API key is not a JWT
    wrong_aud = keys.token(aud="http://testserver.local/cds-services/other")
    r = client.post("/cds-services/dermtriage-skin-photo", json=body, headers={"Authorization": f"Bearer {wrong_aud}"})
    assert r.status_code == 401 and "aud" in r.json()["detail"]
    ok = client.post(
        "/cds-services/dermtriage-skin-photo", json=body, headers={"Authorization": f"Bearer {keys.token()}"}
    )
    assert ok.status_code == 412  # authenticated; the empty prefetch is the next problem


def test_auth_disabled_opens_everything(tiny_clip: Any) -> None:
    app = create_app(Settings(auth_disabled=True), engine=TriageEngine(tiny_clip, load_taxonomy()))
    with TestClient(app) as client:
        wait_ready(client)  # leaving while the engine still warms up in a thread aborts the interpreter at exit
        assert client.get("/v1/triage/nothing").status_code == 404
