"""CDS Hooks caller authentication: the EHR's signed JWT (``Authorization: Bearer <jwt>``).

Checked, in order: the header's algorithm is an asymmetric one (never ``none`` or HMAC); ``iss`` is
on the allowlist (before any key is fetched); the key comes from the configured JWKS or, when the
header names a ``jku``, from that URL if it is on the allowlist (fetched through an injectable
fetcher, cached); the signature; ``aud`` equals the exact URL of the service called; ``exp`` and
``iat`` are present, ``iat`` is not in the future and ``exp`` at most ``max_lifetime_s`` ahead
(the specification's five minutes); ``jti`` is present and not seen before (kept until its ``exp``).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from jwt import PyJWK, PyJWKSet

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
JwksFetcher = Callable[[str], dict[str, Any]]


class JwtRejected(Exception):
    """The token is not accepted; the message says why (safe to return: it quotes no claim values)."""


def fetch_jwks_url(url: str, timeout_s: float = 3.0) -> dict[str, Any]:
    """Default fetcher: GET the JWKS (only ever called for allowlisted ``jku`` URLs)."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        return json.loads(response.read(1_000_000))  # type: ignore[no-any-return]


class ReplayCache:
    """Seen ``jti`` values until their token expires (bounded by the lifetime limit)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    def check_and_add(self, key: str, expires: float) -> bool:
        """True if new (and now recorded), False if replayed."""
        now = self._clock()
        with self._lock:
            if len(self._seen) > 1024:
                self._seen = {k: e for k, e in self._seen.items() if e > now}
            if key in self._seen and self._seen[key] > now:
                return False
            self._seen[key] = expires
            return True


@dataclass
class _CachedJwks:
    keys: PyJWKSet
    fetched: float


class CdsJwtVerifier:
    def __init__(
        self,
        issuers: list[str],
        jwks: dict[str, Any] | None = None,
        jku_allowlist: list[str] | None = None,
        fetcher: JwksFetcher = fetch_jwks_url,
        *,
        leeway_s: float = 30.0,
        max_lifetime_s: float = 300.0,
        jwks_ttl_s: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.issuers = list(issuers)
        self.static_keys = PyJWKSet.from_dict(jwks) if jwks and jwks.get("keys") else None
        self.jku_allowlist = set(jku_allowlist or [])
        self.fetcher = fetcher
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self.jwks_ttl_s = jwks_ttl_s
        self._clock = clock
        self._jku_cache: dict[str, _CachedJwks] = {}
        self._lock = threading.Lock()
        self.replays = ReplayCache(clock)

    @property
    def configured(self) -> bool:
        return bool(self.issuers) and (self.static_keys is not None or bool(self.jku_allowlist))

    def _jku_keys(self, jku: str, refresh: bool = False) -> PyJWKSet:
        now = self._clock()
        with self._lock:
            cached = self._jku_cache.get(jku)
        if cached is not None and not refresh and now - cached.fetched < self.jwks_ttl_s:
            return cached.keys
        try:
            keys = PyJWKSet.from_dict(self.fetcher(jku))
        except Exception as exc:  # network, JSON, or not a JWKS
            raise JwtRejected(f"the JWKS at the allowlisted jku could not be read ({type(exc).__name__})") from None
        with self._lock:
            self._jku_cache[jku] = _CachedJwks(keys, now)
        return keys

    @staticmethod
    def _pick(keys: PyJWKSet, kid: str | None) -> PyJWK | None:
        if kid is not None:
            return next((k for k in keys.keys if k.key_id == kid), None)
        return keys.keys[0] if len(keys.keys) == 1 else None

    def _key(self, header: dict[str, Any]) -> PyJWK:
        kid = header.get("kid")
        jku = header.get("jku")
        if jku is not None:
            if jku not in self.jku_allowlist:
                raise JwtRejected("the jku is not on the allowlist")
            key = self._pick(self._jku_keys(jku), kid)
            if key is None:  # perhaps rotated: refetch once
                key = self._pick(self._jku_keys(jku, refresh=True), kid)
        else:
            key = self._pick(self.static_keys, kid) if self.static_keys is not None else None
        if key is None:
            raise JwtRejected("no configured key matches the token's kid")
        return key

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The verified claims, or JwtRejected. Blocking when a jku must be fetched: run in a thread."""
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise JwtRejected("the token is not a well-formed JWT") from None
        alg = header.get("alg")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise JwtRejected(f"the token's algorithm must be one of {', '.join(ASYMMETRIC_ALGORITHMS)}")
        if unverified.get("iss") not in self.issuers:
            raise JwtRejected("the issuer is not on the allowlist")
        key = self._key(header)
        try:
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=[alg],
                audience=audience,
                issuer=self.issuers,
                leeway=self.leeway_s,
                options={"require": ["iss", "aud", "exp", "iat", "jti"], "strict_aud": True},
            )
        except jwt.InvalidSignatureError:
            raise JwtRejected("the signature does not verify") from None
        except jwt.ExpiredSignatureError:
            raise JwtRejected("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise JwtRejected("the token is issued in the future (iat)") from None
        except jwt.InvalidAudienceError:
            raise JwtRejected("aud is not this service's URL") from None
        except jwt.MissingRequiredClaimError as exc:
            raise JwtRejected(f"the token lacks the {exc.claim} claim") from None
        except jwt.PyJWTError as exc:
            raise JwtRejected(f"the token is not valid ({type(exc).__name__})") from None
        now = self._clock()
        if float(claims["exp"]) > now + self.max_lifetime_s + self.leeway_s:
            raise JwtRejected(f"exp is more than {self.max_lifetime_s:g} s ahead")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise JwtRejected("jti must be a non-empty string")
        if not self.replays.check_and_add(f"{claims['iss']}\x00{claims['jti']}", float(claims["exp"]) + self.leeway_s):
            raise JwtRejected("the jti was used before (replay)")
        return claims
