"""DERMTRIAGE_SMART_CLIENTS: each EHR's FHIR base with its client; malformed configuration is refused at
start with the reason, and the secret never shows in a repr."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from service.settings import Settings
from service.smart.config import parse_smart_clients


def test_parsed_and_normalised() -> None:
    clients = Settings(
        smart_clients=json.dumps({"HTTPS://EHR.example.org:443/fhir/": {"client_id": "v", "client_secret": "s3cret"}})
    )
    (client,) = clients.smart_client_configs().values()
    assert client.fhir_base == "https://ehr.example.org/fhir" and client.client_secret == "s3cret"
    assert "s3cret" not in repr(client) and "launch" in client.scope


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ({"not a url": {"client_id": "v"}}, "not a URL"),
        ({"http://ehr.example.org/fhir": {"client_id": "v"}}, "must be https"),
        ({"https://ehr.example.org/fhir": {"client_id": ""}}, "client_id"),
        ({"https://ehr.example.org/fhir": {"client_id": "v", "secret": "x"}}, "keys from"),
        (
            {
                "https://e.example/fhir": {
                    "client_id": "v",
                    "backend": {"client_id": "b", "private_key": "-----BEGIN x", "kid": "k", "alg": "HS256"},
                }
            },
            "alg",
        ),
        (
            {
                "https://e.example/fhir": {
                    "client_id": "v",
                    "backend": {"client_id": "b", "private_key": "/nonexistent.pem", "kid": "k"},
                }
            },
            "cannot read",
        ),
        (["https://ehr.example.org/fhir"], "JSON object|valid dictionary"),
    ],
)
def test_malformed_is_refused(raw: object, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_smart_clients(raw)
    with pytest.raises(ValidationError, match=why):
        Settings(smart_clients=json.dumps(raw))


def test_plain_http_only_for_allowlisted_hosts() -> None:
    assert parse_smart_clients({"http://127.0.0.1:8080/fhir": {"client_id": "v"}}, frozenset({"127.0.0.1"}))
