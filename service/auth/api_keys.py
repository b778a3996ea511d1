"""API keys: ``dt_`` + 32 random bytes (URL-safe base64), configured only as their SHA-256 digest.

A configuration line is ``NAME:sha256:HEXDIGEST`` with an optional ``:PER_MINUTE`` rate limit, e.g.
``clinic-a:sha256:9f86d0...:120``. SHA-256 without salt or stretching is enough here: unlike
passwords, keys carry 256 bits of randomness, so there is nothing to brute-force from a leaked
digest, and a digest lookup keeps each request's check to one hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "dt_"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    name: str
    digest: str
    per_minute: float | None = None  # None: the service default

    def line(self) -> str:
        rate = f":{self.per_minute:g}" if self.per_minute is not None else ""
        return f"{self.name}:sha256:{self.digest}{rate}"


def parse_key_line(line: str) -> ApiKeyRecord:
    """``NAME:sha256:HEX[:PER_MINUTE]`` -> record; ValueError with the reason otherwise (never the line)."""
    parts = line.strip().split(":")
    if len(parts) not in (3, 4) or parts[1] != "sha256":
        raise ValueError("an API key line is NAME:sha256:HEXDIGEST[:PER_MINUTE]")
    name, _, digest = parts[:3]
    if not _NAME.match(name):
        raise ValueError("an API key name is 1-64 characters of A-Z a-z 0-9 . _ -")
    if not _HEX.match(digest.lower()):
        raise ValueError(f"API key {name!r}: the digest must be 64 hex characters (sha256)")
    per_minute = None
    if len(parts) == 4:
        per_minute = float(parts[3])
        if per_minute <= 0:
            raise ValueError(f"API key {name!r}: the rate limit must be > 0 requests per minute")
    return ApiKeyRecord(name, digest.lower(), per_minute)


def generate_api_key(name: str | None = None, per_minute: float | None = None) -> tuple[str, ApiKeyRecord]:
    """A new key and the record to configure (the key itself is shown once and stored nowhere)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKeyRecord(name or f"key-{secrets.token_hex(4)}", hash_key(key), per_minute)
    parse_key_line(record.line())  # the name must be valid
    return key, record


class ApiKeyRegistry:
    """The configured keys, looked up by digest."""

    def __init__(self, records: list[ApiKeyRecord]) -> None:
        self._by_digest = {r.digest: r for r in records}

    @classmethod
    def from_lines(cls, lines: list[str]) -> ApiKeyRegistry:
        return cls([parse_key_line(line) for line in lines if line.strip()])

    def __len__(self) -> int:
        return len(self._by_digest)

    def verify(self, key: str) -> ApiKeyRecord | None:
        digest = hash_key(key)
        record = self._by_digest.get(digest)
        # the dict lookup is on a digest of the input, so its timing says nothing about stored digests
        return record if record is not None and hmac.compare_digest(record.digest, digest) else None
