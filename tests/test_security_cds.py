"""Issue 15, CDS Hooks: ``fhirServer`` is not a fetch-anything proxy, and the JWT holes.

One named test per hole. The fetch refusals run against a FHIR server the test starts on 127.0.0.1
(``ehr_client.fhir_server``), which counts every connection, so each test shows that nothing was sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from ehr_client import (
    BASE,
    ISSUER,
    SERVICE_ID,
    EhrKeys,
    FhirTestServer,
    cds_request,
    fhir_server,
    issuers,
    media,
    patient,
    raw_jwt,
    reply_json,
    reply_redirect,
    searchset,
)
from litestar.testing import TestClient
from pydantic import ValidationError
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.auth.cds_config import IssuerConfig
from service.auth.cds_jwt import CdsJwtVerifier, JwtRejected
from service.cds_hooks.prefetch import FhirFetcher, gather
from service.cds_hooks.services import CdsRequest
from service.engine import TriageEngine
from service.problems import Problem
from service.safe_http import FetchRefused, OutboundPolicy, public_address, resolve
from service.settings import Settings

ISSUER_B = "https://ehr-b.example.net"
PUBLIC = "https://dermtriage.example.org"  # the configured public URL; the test client's Host is BASE
SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
AUD = f"{PUBLIC}{SERVICE_PATH}"
AUTH = {"access_token": "t0k", "token_type": "Bearer"}


@pytest.fixture(scope="module")
def keys_a() -> EhrKeys:
    return EhrKeys("ehr-a")


@pytest.fixture(scope="module")
def keys_b() -> EhrKeys:
    return EhrKeys("ehr-b")


@pytest.fixture(scope="module")
def servers(keys_a: EhrKeys) -> Iterator[tuple[FhirTestServer, FhirTestServer]]:
    """EHR A's FHIR server (also serving A's JWKS at /jwks.json) and EHR B's, both on 127.0.0.1."""
    with fhir_server({"/jwks.json": reply_json(keys_a.jwks())}) as a, fhir_server() as b:
        yield a, b


@pytest.fixture(scope="module")
def client(
    tiny_clip: Any, keys_a: EhrKeys, keys_b: EhrKeys, servers: tuple[FhirTestServer, FhirTestServer]
) -> Iterator[TestClient]:
    a, b = servers
    jku = f"http://127.0.0.1:{a.port}/jwks.json"
    settings = Settings(
        cds_issuers=issuers((ISSUER, keys_a, {"jku": [jku], "fhir": [a.base]}), (ISSUER_B, keys_b, {"fhir": [b.base]})),
        cds_fetch_allow_hosts="127.0.0.1",
        public_url=PUBLIC,
    )
    with TestClient(create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy())), base_url=BASE) as c:
        wait_ready(c)
        yield c


def post(client: TestClient, token: str, body: dict[str, Any] | None = None, **headers: str) -> Any:
    body = body if body is not None else cds_request({})
    return client.post(SERVICE_PATH, json=body, headers={"Authorization": f"Bearer {token}", **headers})


def refused_fetch(fetcher: FhirFetcher, fhir_server_url: str, issuer: str | None = ISSUER) -> str:
    """Run the hook call's fetching (no prefetch at all) and return the 412's detail."""
    request = CdsRequest.model_validate(cds_request(None, fhirServer=fhir_server_url, fhirAuthorization=AUTH))
    with pytest.raises(Problem) as info:
        gather(request, fetcher, issuer)
    assert info.value.status == 412 and info.value.slug == "prefetch-missing"
    return info.value.detail


def fetcher_for(base: str, allow: tuple[str, ...] = (), resolver: Any = resolve, **kw: Any) -> FhirFetcher:
    """A fetcher allowing ``base`` for ``ISSUER``, with ``allow`` as DERMTRIAGE_CDS_FETCH_ALLOW_HOSTS."""
    return FhirFetcher({ISSUER: [base]}, OutboundPolicy.allowing(allow, resolver), **kw)


# --------------------------------------------------------------------------- fhirServer: SSRF refusals


def test_ssrf_file_scheme_refused(client: TestClient, keys_a: EhrKeys, tmp_path: Any) -> None:
    (tmp_path / "Patient").mkdir()
    (tmp_path / "Patient" / "p1").write_text(json.dumps(patient()))
    (tmp_path / "Media").write_text(json.dumps(searchset(media(jpeg_bytes(lesion_photo(3))))))
    body = cds_request(None, fhirServer=tmp_path.as_uri(), fhirAuthorization=AUTH)
    r = post(client, keys_a.token(aud=AUD), body)
    assert r.status_code == 412, r.text  # today: the local files are read and triaged (200)
    with pytest.raises(FetchRefused, match="only https"):
        OutboundPolicy.allowing(["127.0.0.1", "localhost"]).target(f"{tmp_path.as_uri()}/Patient/p1")
    with pytest.raises(ValueError):
        FhirFetcher({ISSUER: [tmp_path.as_uri()]})
    with pytest.raises(ValidationError, match="https"):
        Settings(cds_issuers=issuers((ISSUER, keys_a, {"fhir": [tmp_path.as_uri()]})), public_url=PUBLIC)


def test_ssrf_plain_http_without_allowlist_refused(servers: tuple[FhirTestServer, FhirTestServer]) -> None:
    a, _ = servers
    a.routes["/fhir/Patient"] = reply_json(patient())
    before = a.connections
    assert "plain http" in refused_fetch(fetcher_for(a.base), a.base)
    assert a.connections == before
    with pytest.raises(ValidationError, match="https"):
        Settings(cds_issuers=issuers((ISSUER, EhrKeys(), {"fhir": [a.base]})), public_url=PUBLIC)


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "127.1.2.3", "[::1]", "[::ffff:127.0.0.1]", "0.0.0.0"],
)
def test_ssrf_loopback_literal_refused(servers: tuple[FhirTestServer, FhirTestServer], host: str) -> None:
    a, _ = servers
    a.routes["/fhir/Patient"] = reply_json(patient())
    before = a.connections
    base = f"https://{host}:{a.port}/fhir"
    assert "non-public address" in refused_fetch(fetcher_for(base), base)
    assert a.connections == before


@pytest.mark.parametrize(
    "host", ["10.0.0.5", "172.16.3.4", "192.168.1.10", "100.64.0.1", "[fd00::1]", "[2002:a00:1::]"]
)
def test_ssrf_private_literal_refused(host: str) -> None:
    base = f"https://{host}/fhir"
    assert "non-public address" in refused_fetch(fetcher_for(base), base)


@pytest.mark.parametrize("host", ["169.254.169.254", "[fe80::1]", "[::ffff:169.254.169.254]", "[64:ff9b::a9fe:a9fe]"])
def test_ssrf_link_local_literal_refused(host: str) -> None:
    base = f"https://{host}/latest/meta-data"  # the cloud metadata service
    assert "non-public address" in refused_fetch(fetcher_for(base), base)
    assert public_address("93.184.216.34") and not public_address("224.0.0.1")


def test_ssrf_hostname_resolving_to_loopback_refused(servers: tuple[FhirTestServer, FhirTestServer]) -> None:
    a, _ = servers
    a.routes["/fhir/Patient"] = reply_json(patient())
    before = a.connections
    base = f"https://localhost:{a.port}/fhir"
    assert "non-public address" in refused_fetch(fetcher_for(base), base)  # the system resolver
    rebinding = {"ehr.example.org": ["93.184.216.34", "127.0.0.1"]}  # one bad address among good ones
    fetcher = fetcher_for("https://ehr.example.org/fhir", resolver=lambda host, port: rebinding[host])
    assert "non-public address" in refused_fetch(fetcher, "https://ehr.example.org/fhir")
    assert a.connections == before


def test_ssrf_redirect_not_followed(servers: tuple[FhirTestServer, FhirTestServer]) -> None:
    a, _ = servers
    a.routes["/fhir/"] = reply_redirect("/stolen")
    a.requests.clear()
    detail = refused_fetch(fetcher_for(a.base, ("127.0.0.1",)), a.base)
    assert "redirect" in detail
    assert a.requests and not any(path.startswith("/stolen") for path, _ in a.requests)  # never followed
    del a.routes["/fhir/"]


def test_ssrf_byte_cap_is_per_hook_call(servers: tuple[FhirTestServer, FhirTestServer]) -> None:
    a, _ = servers
    padding = {"text": {"status": "generated", "div": "x" * 60_000}}
    a.routes["/fhir/Patient"] = reply_json(patient())
    a.routes["/fhir/Observation"] = reply_json(searchset() | padding)  # 60 kB: fits alone
    a.routes["/fhir/Media"] = reply_json(searchset(media(jpeg_bytes(lesion_photo(4)))) | padding)  # so does this
    fetcher = fetcher_for(a.base, ("127.0.0.1",), max_bytes=100_000)
    assert "byte cap" in refused_fetch(fetcher, a.base)  # together they pass the one cap of the call
    a.routes.pop("/fhir/Observation")
    request = CdsRequest.model_validate(cds_request(None, fhirServer=a.base, fhirAuthorization=AUTH))
    assert "photos" in gather(request, fetcher, ISSUER)  # without the observations, the same call fits
    a.routes["/fhir/Media"] = reply_json(searchset() | {"text": {"status": "generated", "div": "x" * 200_000}})
    assert "byte cap" in refused_fetch(fetcher, a.base)  # one over-size body is refused by its length
    for path in ("/fhir/Patient", "/fhir/Media"):
        a.routes.pop(path)


def test_ssrf_deadline_is_per_hook_call(servers: tuple[FhirTestServer, FhirTestServer]) -> None:
    a, _ = servers
    a.routes["/fhir/Patient"] = reply_json(patient(), trickle_s=3.0)  # every read is quick; the whole is slow
    fetcher = fetcher_for(a.base, ("127.0.0.1",), timeout_s=0.8)
    start = time.monotonic()
    detail = refused_fetch(fetcher, a.base)
    elapsed = time.monotonic() - start
    assert "deadline" in detail and elapsed < 2.0, (detail, elapsed)  # today: 3 s and more (a per-read timeout)
    a.routes.pop("/fhir/Patient")


def test_ssrf_fhir_server_not_configured_for_issuer(
    client: TestClient, keys_a: EhrKeys, keys_b: EhrKeys, servers: tuple[FhirTestServer, FhirTestServer]
) -> None:
    a, b = servers
    a.routes["/fhir/Patient"] = reply_json(patient())
    a.routes["/fhir/Media"] = reply_json(searchset(media(jpeg_bytes(lesion_photo(5)), "from-a")))
    before = len(a.requests)
    body = cds_request(None, fhirServer=a.base, fhirAuthorization=AUTH)
    r = post(client, keys_b.token(iss=ISSUER_B, aud=AUD), body)  # B names A's FHIR server
    assert r.status_code == 412 and "not a FHIR server configured for this issuer" in r.json()["detail"]
    assert len(a.requests) == before and not b.requests  # A's server never saw B's token
    ok = post(client, keys_a.token(aud=AUD), body)  # A's own call fetches from A's server
    assert ok.status_code == 200 and "Media/from-a" in ok.json()["cards"][0]["detail"]
    assert "not a FHIR server configured" in refused_fetch(FhirFetcher({ISSUER_B: [b.base]}), a.base, None)
    for path in ("/fhir/Patient", "/fhir/Media"):
        a.routes.pop(path)


# --------------------------------------------------------------------------- the JWT holes


def test_wrong_issuer_key_rejected(client: TestClient, keys_a: EhrKeys, keys_b: EhrKeys) -> None:
    forged = keys_a.token(iss=ISSUER_B, aud=AUD)  # A's key, a token that says it is from B
    r = post(client, forged)
    assert r.status_code == 401 and "kid" in r.json()["detail"]
    configs = [IssuerConfig(ISSUER, keys_a.jwks()), IssuerConfig(ISSUER_B, keys_b.jwks())]
    with pytest.raises(JwtRejected):
        CdsJwtVerifier(configs).verify(keys_a.token(iss=ISSUER_B, aud=AUD), AUD)
    with pytest.raises(JwtRejected):  # the same kid names do not help: B's set has no "ehr-a-*" key
        CdsJwtVerifier(configs).verify(keys_b.token(iss=ISSUER, aud=AUD, kid=keys_a.ec_kid), AUD)
    assert post(client, keys_b.token(iss=ISSUER_B, aud=AUD)).status_code == 412  # B's own key: accepted


def test_aud_requires_public_url(client: TestClient, keys_a: EhrKeys) -> None:
    with pytest.raises(ValidationError, match="DERMTRIAGE_PUBLIC_URL"):
        Settings(cds_issuers=issuers((ISSUER, keys_a, {})))
    host_aud = keys_a.token(aud=f"{BASE}{SERVICE_PATH}")  # built on the request's Host: refused
    r = post(client, host_aud)
    assert r.status_code == 401 and "aud" in r.json()["detail"]
    spoofed = keys_a.token(aud=f"http://evil.example{SERVICE_PATH}")
    assert post(client, spoofed, Host="evil.example").status_code == 401
    assert post(client, keys_a.token(aud=AUD)).status_code == 412  # the public URL's aud: accepted


def test_jwks_refetch_rate_limited(
    client: TestClient, keys_a: EhrKeys, servers: tuple[FhirTestServer, FhirTestServer]
) -> None:
    a, _ = servers
    jku = f"http://127.0.0.1:{a.port}/jwks.json"
    fetched = len([p for p, _ in a.requests if p == "/jwks.json"])
    for _ in range(6):  # allowlisted iss and jku, a random kid: today each one refetches the JWKS
        assert post(client, keys_a.token(aud=AUD, jku=jku, kid=str(uuid.uuid4()))).status_code == 401
    assert post(client, keys_a.token(aud=AUD, jku=jku)).status_code == 412  # a known kid still verifies
    assert len([p for p, _ in a.requests if p == "/jwks.json"]) - fetched <= 1
    now, calls = [1000.0], []

    def fetch(url: str) -> dict[str, Any]:
        calls.append(url)
        return keys_a.jwks()

    v = CdsJwtVerifier([IssuerConfig(ISSUER, jku=(jku,))], fetch, clock=lambda: now[0])
    for step in (0, 1, 30, 59):
        now[0] = 1000.0 + step
        with pytest.raises(JwtRejected, match="kid"):
            v.verify(keys_a.token(aud=AUD, jku=jku, kid=f"random-{step}"), AUD)
    assert len(calls) == 1  # fetched once; no forced refresh within 60 s
    now[0] = 1061.0
    with pytest.raises(JwtRejected, match="kid"):
        v.verify(keys_a.token(aud=AUD, jku=jku, kid="random-late"), AUD)
    assert len(calls) == 2  # one forced refresh per minute per key set


def test_jwks_fetch_failure_cached(keys_a: EhrKeys) -> None:
    now, calls = [0.0], []

    def broken(url: str) -> dict[str, Any]:
        calls.append(url)
        raise OSError("unreachable")

    v = CdsJwtVerifier([IssuerConfig(ISSUER, jku=("https://ehr.example.org/jwks",))], broken, clock=lambda: now[0])
    token = keys_a.token(aud=AUD, jku="https://ehr.example.org/jwks")
    for t in (0.0, 1.0, 9.0):
        now[0] = t
        with pytest.raises(JwtRejected, match="could not be read"):
            v.verify(token, AUD)
    assert len(calls) == 1
    now[0] = 11.0
    with pytest.raises(JwtRejected, match="could not be read"):
        v.verify(token, AUD)
    assert len(calls) == 2


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "ES384", "kid": "ehr-a-ec", "jku": ["https://ehr.example.org/.well-known/jwks.json"]},
        {"alg": "ES384", "kid": "ehr-a-ec", "jku": {"url": "x"}},
        {"alg": "ES384", "kid": 7},
        {"alg": ["ES384"], "kid": "ehr-a-ec"},
        {"alg": "ES384", "kid": "ehr-a-ec", "typ": {"JWT": 1}},
        {"alg": "ES384", "kid": "ehr-a-ec", "crit": ["exp"]},
    ],
)
def test_jku_list_and_other_non_string_headers_are_401(client: TestClient, header: dict[str, Any]) -> None:
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUD, "iat": now, "exp": now + 60, "jti": str(uuid.uuid4())}
    r = post(client, raw_jwt(header, claims))
    assert r.status_code == 401, r.text  # today: a jku list is a 500
    assert r.json()["type"].endswith("/unauthorized")
    r = post(client, raw_jwt({"alg": "ES384", "kid": "ehr-a-ec"}, claims | {"iss": [ISSUER]}))
    assert r.status_code == 401
