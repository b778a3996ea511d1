"""Per-EHR SMART client configuration: ``DERMTRIAGE_SMART_CLIENTS``, a JSON object (text or a file path)
keyed by the EHR's FHIR base URL (the ``iss`` of a SMART launch)::

    {"https://ehr.example.org/fhir": {
        "client_id": "dermtriage-viewer",
        "client_secret": "...",                     # confidential client; omit for a public client
        "scope": "launch openid fhirUser patient/Patient.read patient/Observation.read patient/Media.read",
        "backend": {"client_id": "dermtriage-backend", "private_key": "/etc/dermtriage/backend.pem",
                    "kid": "backend-1", "alg": "RS384", "scope": "system/Media.read system/Binary.read"}}}

A launch whose ``iss`` is not a key here is refused before anything is fetched. ``backend`` enables
SMART Backend Services for that FHIR server. Bases must be https unless their host is in
``DERMTRIAGE_CDS_FETCH_ALLOW_HOSTS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from service.auth.cds_config import json_or_file, normalize_base

DEFAULT_SCOPE = "launch openid fhirUser patient/Patient.read patient/Observation.read patient/Media.read"
BACKEND_ALGS = ("RS384", "ES384")
CLIENT_KEYS = frozenset({"client_id", "client_secret", "scope", "backend"})
BACKEND_KEYS = frozenset({"client_id", "private_key", "kid", "alg", "scope"})


@dataclass(frozen=True)
class BackendConfig:
    client_id: str
    private_key: str  # PEM text
    kid: str
    alg: str = "RS384"
    scope: str = "system/Patient.read system/Media.read system/Binary.read system/DocumentReference.read"


@dataclass(frozen=True)
class SmartClient:
    fhir_base: str  # normalised (``normalize_base``)
    client_id: str
    client_secret: str | None = None
    scope: str = DEFAULT_SCOPE
    backend: BackendConfig | None = None

    def __repr__(self) -> str:  # never print the secret or the key
        return f"SmartClient({self.fhir_base!r}, client_id={self.client_id!r})"


def _pem(value: str, what: str) -> str:
    if "-----BEGIN" in value:
        return value
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{what}: cannot read the key file ({type(exc).__name__})") from None


def _text(entry: dict[str, Any], key: str, what: str, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what}.{key} must be a non-empty string")
    return value.strip()


def _backend(entry: Any, what: str) -> BackendConfig | None:
    if entry is None:
        return None
    if not isinstance(entry, dict) or set(entry) - BACKEND_KEYS:
        raise ValueError(f"{what} must be an object with keys from {sorted(BACKEND_KEYS)}")
    alg = entry.get("alg", "RS384")
    if alg not in BACKEND_ALGS:
        raise ValueError(f"{what}.alg must be one of {BACKEND_ALGS}")
    scope = _text(entry, "scope", what, required=False)
    return BackendConfig(
        client_id=str(_text(entry, "client_id", what)),
        private_key=_pem(str(_text(entry, "private_key", what)), f"{what}.private_key"),
        kid=str(_text(entry, "kid", what)),
        alg=alg,
        **({"scope": scope} if scope else {}),
    )


def parse_smart_clients(raw: Any, allow_hosts: frozenset[str] = frozenset()) -> dict[str, SmartClient]:
    """Every configured EHR by normalised FHIR base (ValueError with the reason otherwise)."""
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise ValueError("DERMTRIAGE_SMART_CLIENTS must be a JSON object: FHIR base URL -> client")
    out = {}
    for base, entry in raw.items():
        what = f"DERMTRIAGE_SMART_CLIENTS[{base!r}]"
        try:
            normal = normalize_base(base)
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
        if normal.startswith("http://") and normal.split("/")[2].split(":")[0] not in allow_hosts:
            raise ValueError(f"{what} must be https (http only for DERMTRIAGE_CDS_FETCH_ALLOW_HOSTS)")
        if not isinstance(entry, dict) or set(entry) - CLIENT_KEYS:
            raise ValueError(f"{what} must be an object with keys from {sorted(CLIENT_KEYS)}")
        scope = _text(entry, "scope", what, required=False)
        out[normal] = SmartClient(
            fhir_base=normal,
            client_id=str(_text(entry, "client_id", what)),
            client_secret=_text(entry, "client_secret", what, required=False),
            backend=_backend(entry.get("backend"), f"{what}.backend"),
            **({"scope": scope} if scope else {}),
        )
    return out


def decode_smart_clients_setting(value: Any) -> Any:
    """``DERMTRIAGE_SMART_CLIENTS`` from the environment: JSON text or the path of a JSON file."""
    if not isinstance(value, str):
        return value
    return json_or_file(value, "DERMTRIAGE_SMART_CLIENTS") if value.strip() else {}
