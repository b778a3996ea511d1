"""SMART Backend Services against a real Authlib authorization server (tests/smart_ehr.py): a client
credentials token bought with a private_key_jwt assertion (RS384 and ES384), cached; used for a CDS Hooks
call that grants no fhirAuthorization and for `$triage` photos given by reference."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from ehr_client import BASE, EhrKeys, cds_request, cds_settings, media, patient, searchset
from fhir_schema import r4_errors
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from smart_ehr import Client, SmartEhr, smart_ehr
from test_cds_hooks import call
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.safe_http import OutboundPolicy
from service.settings import Settings
from service.smart.backend import BackendTokens
from service.smart.config import parse_smart_clients
from service.smart.launch import LaunchError

FHIR = "application/fhir+json"
PHOTO = jpeg_bytes(lesion_photo(14))


def pem(key: Any) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


KEYS = {
    "RS384": rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES384": ec.generate_private_key(ec.SECP384R1()),
}


def public_jwk(alg: str) -> dict[str, Any]:
    key = KEYS[alg].public_key()
    to_jwk = ECAlgorithm.to_jwk if alg == "ES384" else RSAAlgorithm.to_jwk
    return json.loads(to_jwk(key)) | {"kid": f"k-{alg}", "alg": alg}


@pytest.fixture(scope="module")
def ehr() -> Iterator[SmartEhr]:
    with smart_ehr() as server:
        for alg in KEYS:
            server.clients[f"backend-{alg}"] = Client(
                f"backend-{alg}",
                auth_method="client_assertion_jwt",
                grant_types=("client_credentials",),
                jwks={"keys": [public_jwk(alg)]},
            )
        by_ref = media(PHOTO, "m1") | {"content": {"contentType": "image/jpeg", "url": "Binary/b1"}}
        server.serve_json("/fhir/Patient/p1", patient())
        server.serve_json("/fhir/Media?", searchset(by_ref))
        server.serve_json("/fhir/Observation?", searchset())
        server.serve_json("/fhir/DocumentReference?", searchset())
        server.serve_bytes("/fhir/Binary/b1", PHOTO, "image/jpeg")
        yield server


def smart_clients(ehr: SmartEhr, alg: str = "RS384", key: Any = None) -> dict[str, Any]:
    backend = {"client_id": f"backend-{alg}", "private_key": pem(key or KEYS[alg]), "kid": f"k-{alg}", "alg": alg}
    return {ehr.fhir: {"client_id": "viewer", "backend": backend}}


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_client_credentials_with_a_signed_assertion(ehr: SmartEhr, alg: str) -> None:
    (client,) = parse_smart_clients(smart_clients(ehr, alg), frozenset({"127.0.0.1"})).values()
    tokens = BackendTokens(OutboundPolicy.allowing(["127.0.0.1"]), 5.0)
    ehr.token_requests.clear()
    token = tokens.token(client)
    assert token in ehr.tokens and tokens.token(client) == token and len(ehr.token_requests) == 1  # cached
    form = ehr.token_requests[0]
    assert form["grant_type"] == "client_credentials"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    header = jwt.get_unverified_header(form["client_assertion"])
    assert header["alg"] == alg and header["kid"] == f"k-{alg}"
    claims = jwt.decode(form["client_assertion"], options={"verify_signature": False})
    assert claims["iss"] == claims["sub"] == f"backend-{alg}" and claims["aud"] == ehr.token_url
    assert claims["jti"] and claims["exp"] - claims["iat"] <= 300


def test_a_key_the_ehr_does_not_know_is_refused(ehr: SmartEhr) -> None:
    (client,) = parse_smart_clients(
        smart_clients(ehr, "ES384", ec.generate_private_key(ec.SECP384R1())), frozenset({"127.0.0.1"})
    ).values()
    with pytest.raises(LaunchError, match="refused the backend token request"):
        BackendTokens(OutboundPolicy.allowing(["127.0.0.1"]), 5.0).token(client)


@pytest.fixture(scope="module")
def keys() -> EhrKeys:
    return EhrKeys()


@pytest.fixture(scope="module")
def client(tiny_clip: Any, keys: EhrKeys, ehr: SmartEhr) -> Iterator[TestClient]:
    settings = Settings(
        **cds_settings(keys, fhir=[ehr.fhir], cds_fetch_allow_hosts="127.0.0.1", smart_clients=smart_clients(ehr)),
        auth_disabled=False,
    )
    with TestClient(create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy())), base_url=BASE) as c:
        wait_ready(c)
        yield c


def test_cds_call_without_fhir_authorization_reads_with_the_backend_token(
    client: TestClient, keys: EhrKeys, ehr: SmartEhr
) -> None:
    ehr.fhir_requests.clear()
    r = call(client, keys, cds_request(None, fhirServer=ehr.fhir))  # no prefetch, no fhirAuthorization
    assert r.status_code == 200, r.text
    assert "Media/m1" in r.json()["cards"][0]["detail"]
    paths = [p.split("?")[0] for p, _ in ehr.fhir_requests]
    assert "/fhir/Patient/p1" in paths and "/fhir/Binary/b1" in paths
    bearers = {b for _, b in ehr.fhir_requests}
    assert len(bearers) == 1 and bearers <= set(ehr.tokens)  # one backend token, issued by the EHR


def parameters_with(reference: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient", "resource": patient()},
            {"name": "image", "valueReference": {"reference": reference}},
        ],
    }


def test_fhir_triage_photo_by_reference(tiny_clip: Any, ehr: SmartEhr) -> None:
    key = "triage-key"
    settings = Settings(
        api_keys=[f"clinic:sha256:{hashlib.sha256(key.encode()).hexdigest()}"],
        smart_clients=smart_clients(ehr, "ES384"),
        cds_fetch_allow_hosts="127.0.0.1",
    )
    headers = {"Content-Type": FHIR, "X-API-Key": key}
    with TestClient(create_app(settings, engine=TriageEngine(tiny_clip, load_taxonomy())), base_url=BASE) as c:
        wait_ready(c)
        ehr.fhir_requests.clear()
        ok = c.post("/fhir/$triage", content=json.dumps(parameters_with(f"{ehr.fhir}/Binary/b1")), headers=headers)
        assert ok.status_code == 200, ok.text
        assert [p for p, _ in ehr.fhir_requests] == ["/fhir/Binary/b1"] and ehr.fhir_requests[0][1] in ehr.tokens
        assert r4_errors(ok.json()) == []
        ehr.fhir_requests.clear()
        for ref in ("Binary/b1", "https://elsewhere.example/fhir/Binary/b1", f"{ehr.origin}/other/Binary/b1"):
            refused = c.post("/fhir/$triage", content=json.dumps(parameters_with(ref)), headers=headers)
            assert refused.status_code == 422 and refused.json()["resourceType"] == "OperationOutcome", ref
            assert "SMART Backend Services" in refused.json()["issue"][0]["diagnostics"]
        missing = c.post(
            "/fhir/$triage", content=json.dumps(parameters_with(f"{ehr.fhir}/Binary/nope")), headers=headers
        )
        assert missing.status_code == 422 and "HTTP 404" in missing.json()["issue"][0]["diagnostics"]
        assert [p for p, _ in ehr.fhir_requests] == ["/fhir/Binary/nope"]  # nothing fetched off the configured base
