"""CDS Hooks issuers: who may call, with which signing keys, and which FHIR servers may be read for them.

``DERMTRIAGE_CDS_ISSUERS`` is a JSON object (as text, or the path of a JSON file)::

    {"https://ehr.example.org": {
        "jwks": {"keys": [...]}  or "<JWKS JSON text>"  or "/etc/dermtriage/ehr-jwks.json",
        "jku": ["https://ehr.example.org/.well-known/jwks.json"],
        "fhir": ["https://ehr.example.org/fhir"]}}

Each issuer needs ``jwks`` or ``jku`` (or both); its keys verify its own tokens only. ``fhir`` lists the
FHIR base URLs a call from that issuer may name as ``fhirServer`` (empty: prefetch only, nothing is
fetched). ``jku`` and ``fhir`` URLs must be ``https`` unless their host is in
``DERMTRIAGE_CDS_FETCH_ALLOW_HOSTS``.

The older form still works for one issuer: ``DERMTRIAGE_CDS_ISSUERS`` as that one issuer (a string or a
one-element list) with ``DERMTRIAGE_CDS_JWKS`` and/or ``DERMTRIAGE_CDS_JKU_ALLOWLIST``; it has no FHIR
servers, so missing prefetch is never fetched. Several issuers need the JSON object.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ENTRY_KEYS = frozenset({"jwks", "jku", "fhir"})


@dataclass(frozen=True)
class IssuerConfig:
    issuer: str
    jwks: dict[str, Any] | None = None
    jku: tuple[str, ...] = ()
    fhir: tuple[str, ...] = ()  # normalised FHIR base URLs (``normalize_base``)


def json_or_file(text: str, what: str) -> Any:
    """A setting given as JSON text or as the path of a JSON file (`what` names it in errors)."""
    text = text.strip()
    if not text.startswith(("{", "[")):
        try:
            text = Path(text).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{what}: cannot read the file {text!r} ({type(exc).__name__})") from None
    try:
        return json.loads(text)
    except ValueError:
        raise ValueError(f"{what} is not valid JSON") from None


def load_jwks(value: Any, what: str = "DERMTRIAGE_CDS_JWKS") -> dict[str, Any] | None:
    """A JWKS given as an object, as JSON text or as a path to a JSON file."""
    if value is None or value == "":
        return None
    jwks = json_or_file(value, what) if isinstance(value, str) else value
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError(f"{what} must be a JWKS: a JSON object with a 'keys' list")
    return jwks


def decode_issuers_setting(value: Any) -> Any:
    """``DERMTRIAGE_CDS_ISSUERS`` as read from the environment: a JSON object or list, a file, or issuers
    separated by commas (the older form)."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return []
    if text.startswith(("{", "[")) or "://" not in text:
        return json_or_file(text, "DERMTRIAGE_CDS_ISSUERS")
    return [part.strip() for part in text.split(",") if part.strip()]


def normalize_base(url: str) -> str:
    """``scheme://host[:port]/path`` without a trailing slash; scheme and host lower-case, default port dropped.
    ValueError for anything but an absolute http(s) URL without user info, query or fragment."""
    if not isinstance(url, str) or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError("not a URL")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname or "@" in parts.netloc or parts.query or parts.fragment:
        raise ValueError("not an absolute http(s) URL without user info, query or fragment")
    port = parts.port  # ValueError when not a number
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, 443 if scheme == "https" else 80) else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path.rstrip('/')}"


def _urls(value: Any, what: str, allow_hosts: frozenset[str], *, base: bool) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise ValueError(f"{what} must be a list of URLs")
    out = []
    for url in value:
        try:
            normal = normalize_base(url)
        except ValueError as exc:
            raise ValueError(f"{what}: {url!r} is {exc}") from None
        parts = urlsplit(normal)
        if parts.scheme == "http" and (parts.hostname or "") not in allow_hosts:
            raise ValueError(f"{what}: {url!r} must be https (http only for DERMTRIAGE_CDS_FETCH_ALLOW_HOSTS)")
        out.append(normal if base else url.strip())
    return tuple(dict.fromkeys(out))


def _entry(issuer: Any, entry: Any, allow_hosts: frozenset[str]) -> IssuerConfig:
    if not isinstance(issuer, str) or not issuer.strip():
        raise ValueError("DERMTRIAGE_CDS_ISSUERS: each issuer must be a non-empty string")
    what = f"DERMTRIAGE_CDS_ISSUERS[{issuer!r}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{what} must be an object with 'jwks', 'jku' and/or 'fhir'")
    unknown = set(entry) - ENTRY_KEYS
    if unknown:
        raise ValueError(f"{what} has unknown keys {sorted(unknown)}; allowed: {sorted(ENTRY_KEYS)}")
    config = IssuerConfig(
        issuer=issuer,
        jwks=load_jwks(entry.get("jwks"), f"{what}.jwks"),
        jku=_urls(entry.get("jku"), f"{what}.jku", allow_hosts, base=False),
        fhir=_urls(entry.get("fhir"), f"{what}.fhir", allow_hosts, base=True),
    )
    if config.jwks is None and not config.jku:
        raise ValueError(f"{what} needs signing keys: 'jwks' and/or 'jku'")
    return config


def parse_issuers(
    raw: Any, jwks: Any = None, jku_allowlist: Iterable[str] = (), allow_hosts: Iterable[str] = ()
) -> dict[str, IssuerConfig]:
    """Every configured issuer with its keys and FHIR bases (ValueError with the reason otherwise)."""
    hosts = frozenset(h.strip().strip("[]").lower() for h in allow_hosts if h.strip())
    jku_allowlist = list(jku_allowlist)
    if isinstance(raw, dict):
        if jwks or jku_allowlist:
            raise ValueError(
                "DERMTRIAGE_CDS_JWKS / DERMTRIAGE_CDS_JKU_ALLOWLIST belong to the older form; with the JSON "
                "object in DERMTRIAGE_CDS_ISSUERS give each issuer its own 'jwks' / 'jku'"
            )
        return {issuer: _entry(issuer, entry, hosts) for issuer, entry in raw.items()}
    issuers = [raw] if isinstance(raw, str) else list(raw or [])
    if not issuers:
        return {}
    if len(issuers) > 1:
        raise ValueError(
            "several CDS issuers need the JSON form of DERMTRIAGE_CDS_ISSUERS, so that each issuer's keys "
            'verify only its own tokens: {"https://ehr.example.org": {"jwks": "...", "fhir": ["..."]}}'
        )
    entry = {"jwks": load_jwks(jwks)} if jwks else {}
    if jku_allowlist:
        entry["jku"] = jku_allowlist
    return {issuers[0]: _entry(issuers[0], entry, hosts)}
