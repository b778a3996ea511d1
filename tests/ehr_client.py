"""An EHR for the tests: signing keys it generates, JWTs as a CDS Client sends them, FHIR photo resources,
the issuer configuration (``DERMTRIAGE_CDS_ISSUERS``) and a FHIR server on 127.0.0.1 to fetch from."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

ISSUER = "https://ehr.example.org"
JKU = "https://ehr.example.org/.well-known/jwks.json"
BASE = "http://testserver.local"  # Litestar's TestClient base URL
SERVICE_ID = "dermtriage-skin-photo"
SERVICE_URL = f"{BASE}/cds-services/{SERVICE_ID}"


class EhrKeys:
    """An EC P-384 key (ES384) and an RSA key (RS384), as the CDS Hooks specification requires support for."""

    def __init__(self, kid_prefix: str = "ehr") -> None:
        self.ec = ec.generate_private_key(ec.SECP384R1())
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_kid, self.rsa_kid = f"{kid_prefix}-ec", f"{kid_prefix}-rsa"

    def jwks(self) -> dict[str, Any]:
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk |= {"kid": self.ec_kid, "alg": "ES384", "use": "sig"}
        rsa_jwk |= {"kid": self.rsa_kid, "alg": "RS384", "use": "sig"}
        return {"keys": [ec_jwk, rsa_jwk]}

    def token(
        self,
        *,
        aud: str = SERVICE_URL,
        iss: str = ISSUER,
        alg: str = "ES384",
        lifetime: float = 300,
        iat_offset: float = 0,
        jti: str | None = None,
        jku: str | None = None,
        drop: tuple[str, ...] = (),
        kid: str | None = None,
    ) -> str:
        now = time.time() + iat_offset
        claims: dict[str, Any] = {
            "iss": iss,
            "sub": "client-app",
            "aud": aud,
            "exp": int(now + lifetime),
            "iat": int(now),
            "jti": jti or str(uuid.uuid4()),
        }
        for name in drop:
            claims.pop(name, None)
        key = self.ec if alg.startswith("ES") else self.rsa
        headers: dict[str, Any] = {"kid": kid or (self.ec_kid if alg.startswith("ES") else self.rsa_kid), "typ": "JWT"}
        if jku:
            headers["jku"] = jku
        return jwt.encode(claims, key, algorithm=alg, headers=headers)


def issuers(*entries: tuple[str, EhrKeys | None, dict[str, Any]]) -> str:
    """``DERMTRIAGE_CDS_ISSUERS`` as JSON: (issuer, its keys or None, extra fields such as ``fhir``/``jku``)."""
    config = {iss: ({"jwks": k.jwks()} if k is not None else {}) | extra for iss, k, extra in entries}
    return json.dumps(config)


def cds_settings(keys: EhrKeys, **extra: Any) -> dict[str, Any]:
    """Settings keywords for one issuer (``ISSUER`` with ``keys``) and the test client's public URL."""
    fhir = extra.pop("fhir", [])
    return {"cds_issuers": issuers((ISSUER, keys, {"fhir": fhir})), "public_url": BASE, **extra}


def raw_jwt(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """A JWT with any header at all (e.g. a list where a string belongs); the signature is junk."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part(header)}.{part(claims)}.{part({'sig': 'junk'})}"


Reply = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class FhirTestServer:
    """An HTTP server on 127.0.0.1 in a thread: ``routes`` maps a path prefix to a reply function; every
    connection and request is counted, so a test can show that nothing was sent to it."""

    routes: dict[str, Reply] = field(default_factory=dict)
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    connections: int = 0
    port: int = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"


def reply_json(value: dict[str, Any], *, trickle_s: float = 0.0) -> Reply:
    """200 with ``value``; with ``trickle_s``, the body is sent a few bytes at a time over that long."""

    def reply(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps(value).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/fhir+json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        if not trickle_s:
            handler.wfile.write(body)
            return
        step = max(1, len(body) // 40)
        for i in range(0, len(body), step):
            handler.wfile.write(body[i : i + step])
            handler.wfile.flush()
            time.sleep(trickle_s / 40)

    return reply


def reply_redirect(location: str) -> Reply:
    def reply(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(302)
        handler.send_header("Location", location)
        handler.send_header("Content-Length", "0")
        handler.end_headers()

    return reply


@contextmanager
def fhir_server(routes: dict[str, Reply] | None = None) -> Iterator[FhirTestServer]:
    """A :class:`FhirTestServer` answering ``routes`` (path prefix -> reply, first match wins), else 404."""
    state = FhirTestServer(dict(routes or {}))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests.append((self.path, dict(self.headers)))
            for prefix, reply in state.routes.items():
                if self.path.startswith(prefix):
                    reply(self)
                    return
            self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def verify_request(self, request: Any, client_address: Any) -> bool:
            state.connections += 1
            return True

    server = Server(("127.0.0.1", 0), Handler)
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def media(photo: bytes, media_id: str = "photo-1", created: str = "2026-01-10T10:00:00Z") -> dict[str, Any]:
    return {
        "resourceType": "Media",
        "id": media_id,
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "createdDateTime": created,
        "content": {"contentType": "image/jpeg", "data": b64(photo)},
    }


def patient(birth: str = "1958-04-02", gender: str = "male") -> dict[str, Any]:
    return {"resourceType": "Patient", "id": "p1", "birthDate": birth, "gender": gender}


def risk_observation(field: str, value: dict[str, Any], obs_id: str | None = None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "https://dermtriage.dev/fhir/CodeSystem/risk-factor", "code": field}]},
        "subject": {"reference": "Patient/p1"},
        **value,
    }
    if obs_id:
        obs["id"] = obs_id
    return obs


def symptoms_observation(text: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "sym-1",
        "status": "final",
        "code": {"coding": [{"system": "https://dermtriage.dev/fhir/CodeSystem/triage", "code": "symptoms"}]},
        "valueString": text,
    }


def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in resources]}


def cds_request(prefetch: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/dr1", "patientId": "p1"},
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body
