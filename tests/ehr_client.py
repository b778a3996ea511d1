"""An EHR for the tests: signing keys it generates, JWTs as a CDS Client sends them, FHIR photo resources."""

from __future__ import annotations

import base64
import json
import time
import uuid
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
