"""CDS Hooks caller authentication: the EHR's signed JWT (``Authorization: Bearer <jwt>``).

Checked, in order: the header's fields are strings and its algorithm an asymmetric one (never ``none``
or HMAC); ``iss`` is a configured issuer (before any key is fetched); the key comes from *that
issuer's* key set (its JWKS or, when the header names a ``jku``, that URL if the issuer allowlists it;
fetched through an injectable fetcher and cached), so a key of EHR A never verifies a token that says
it is from EHR B; the signature; ``aud`` equals the exact URL of the service called (built on the
configured public URL); ``exp`` and ``iat`` are present, ``iat`` is not in the future and ``exp`` at
most ``max_lifetime_s`` ahead (the specification's five minutes); ``jti`` is present and not seen
before (kept until its ``exp``).

A token naming an unknown ``kid`` may force a refetch of its ``jku`` (keys rotate), but at most one per
``min_refresh_s`` per key set; a failed fetch is remembered for ``failure_ttl_s``, so tokens cannot make
the service fetch on every request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import jwt
from jwt import PyJWK, PyJWKSet

from service.auth.cds_config import IssuerConfig
from service.safe_http import Budget, FetchRefused, OutboundPolicy, get
from service.shared_state import KEY_PREFIX, redis_errors, unavailable

if TYPE_CHECKING:
    import redis.asyncio

ASYMMETRIC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
STRING_HEADERS = ("alg", "kid", "jku", "typ", "cty")
JwksFetcher = Callable[[str], dict[str, Any]]
log = logging.getLogger("dermtriage.auth")


class JwtRejected(Exception):
    """The token is not accepted; the message says why (safe to return: it quotes no claim values)."""


def jwks_fetcher(policy: OutboundPolicy, timeout_s: float = 3.0, max_bytes: int = 1_000_000) -> JwksFetcher:
    """Default fetcher: GET the JWKS under the outbound rules (only ever called for allowlisted ``jku`` URLs)."""

    def fetch(url: str) -> dict[str, Any]:
        body = get(url, policy, Budget(timeout_s, max_bytes), {"Accept": "application/json"})
        return json.loads(body)  # type: ignore[no-any-return]

    return fetch


class Replays(Protocol):
    async def check_and_add(self, key: str, expires: float) -> bool:
        """True if new (and now recorded), False if replayed."""
        ...


class ReplayCache:
    """Seen ``jti`` values until their token expires (bounded by the lifetime limit), in this process (no
    await between the check and the record: atomic on the event loop)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._seen: dict[str, float] = {}
        self._clock = clock
        self._lock = threading.Lock()

    async def check_and_add(self, key: str, expires: float) -> bool:
        """True if new (and now recorded), False if replayed."""
        now = self._clock()
        with self._lock:
            if len(self._seen) > 1024:
                self._seen = {k: e for k, e in self._seen.items() if e > now}
            if key in self._seen and self._seen[key] > now:
                return False
            self._seen[key] = expires
            return True


class RedisReplayCache:
    """The seen ``jti`` set in Redis, for every worker and replica: ``SET NX`` with the token's remaining
    lifetime as TTL (the key is a hash of issuer and jti), on the shared async client. Redis unreachable:
    fails closed (503), since a replay could not be refused."""

    def __init__(self, client: redis.asyncio.Redis, clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self._clock = clock

    async def check_and_add(self, key: str, expires: float) -> bool:
        digest = hashlib.sha256(key.encode()).hexdigest()
        ttl = max(1, math.ceil(expires - self._clock()))
        try:
            return bool(await self.client.set(f"{KEY_PREFIX}jti:{digest}", b"1", nx=True, ex=ttl))
        except redis_errors():
            log.warning("jti replay check impossible: redis unreachable")
            raise unavailable("a CDS Hooks token's replay (jti)") from None


@dataclass(frozen=True)
class _JkuEntry:
    keys: PyJWKSet | None
    fetched: float  # when ``keys`` were fetched
    attempted: float  # the last fetch attempt
    failed: bool  # the last attempt failed


def _pick(keys: PyJWKSet | None, kid: str | None) -> PyJWK | None:
    if keys is None:
        return None
    if kid is not None:
        return next((k for k in keys.keys if k.key_id == kid), None)
    return keys.keys[0] if len(keys.keys) == 1 else None


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header (string fields type-checked) and the claims, before any key is looked at."""
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
        raise JwtRejected("the token is not a well-formed JWT") from None
    for name in STRING_HEADERS:
        if name in header and not isinstance(header[name], str):
            raise JwtRejected(f"the token's {name} header must be a string")
    if "crit" in header:
        raise JwtRejected("the token names critical header extensions (crit), which are not supported")
    if header.get("alg") not in ASYMMETRIC_ALGORITHMS:
        raise JwtRejected(f"the token's algorithm must be one of {', '.join(ASYMMETRIC_ALGORITHMS)}")
    if not isinstance(unverified, dict):
        raise JwtRejected("the token is not a well-formed JWT")
    return header, unverified


class CdsJwtVerifier:
    def __init__(
        self,
        issuers: Mapping[str, IssuerConfig] | Iterable[IssuerConfig],
        fetcher: JwksFetcher | None = None,
        *,
        leeway_s: float = 30.0,
        max_lifetime_s: float = 300.0,
        jwks_ttl_s: float = 300.0,
        min_refresh_s: float = 60.0,
        failure_ttl_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        replays: Replays | None = None,
    ) -> None:
        configs = issuers.values() if isinstance(issuers, Mapping) else issuers
        self.issuers = {c.issuer: c for c in configs}
        self.static_keys = {i: PyJWKSet.from_dict(c.jwks) for i, c in self.issuers.items() if c.jwks and c.jwks["keys"]}
        self.fetcher = fetcher or jwks_fetcher(OutboundPolicy())
        self.leeway_s = leeway_s
        self.max_lifetime_s = max_lifetime_s
        self.jwks_ttl_s = jwks_ttl_s
        self.min_refresh_s = min_refresh_s
        self.failure_ttl_s = failure_ttl_s
        self._clock = clock
        self._jku_cache: dict[str, _JkuEntry] = {}
        self._locks = {url: threading.Lock() for c in self.issuers.values() for url in c.jku}
        self.replays: Replays = replays or ReplayCache(clock)

    @property
    def configured(self) -> bool:
        return bool(self.issuers)

    def _should_fetch(self, entry: _JkuEntry | None, kid: str | None, now: float) -> bool:
        if entry is None:
            return True
        if now - entry.attempted < (self.failure_ttl_s if entry.failed else self.min_refresh_s):
            return False  # a cached failure, or a refresh too soon after the last one
        if entry.keys is None or now - entry.fetched >= self.jwks_ttl_s:
            return True  # expired
        return _pick(entry.keys, kid) is None  # an unknown kid: perhaps the keys rotated

    def _fetch(self, jku: str, entry: _JkuEntry | None, now: float) -> _JkuEntry:
        try:
            return _JkuEntry(PyJWKSet.from_dict(self.fetcher(jku)), now, now, False)
        except Exception as exc:  # network, refused by the outbound rules, JSON, or not a JWKS
            reason = str(exc) if isinstance(exc, FetchRefused) else type(exc).__name__
            log.warning("jwks fetch failed", extra={"jku": jku, "reason": reason})
            return _JkuEntry(entry.keys if entry else None, entry.fetched if entry else float("-inf"), now, True)

    def _jku_keys(self, jku: str, kid: str | None) -> PyJWKSet:
        with self._locks[jku]:  # one fetch per key set at a time; the others then read its result
            now = self._clock()
            entry = self._jku_cache.get(jku)
            if self._should_fetch(entry, kid, now):
                entry = self._jku_cache[jku] = self._fetch(jku, entry, now)
        assert entry is not None
        if entry.keys is None or now - entry.fetched >= self.jwks_ttl_s:
            raise JwtRejected("the JWKS at the allowlisted jku could not be read (retried later)")
        return entry.keys

    def _key(self, config: IssuerConfig, header: dict[str, Any]) -> PyJWK:
        kid, jku = header.get("kid"), header.get("jku")
        if jku is not None:
            if jku not in config.jku:
                raise JwtRejected("the jku is not on the allowlist for this issuer")
            key = _pick(self._jku_keys(jku, kid), kid)
        else:
            key = _pick(self.static_keys.get(config.issuer), kid)
        if key is None:
            raise JwtRejected("no key configured for this issuer matches the token's kid")
        return key

    async def accept(self, token: str, audience: str) -> dict[str, Any]:
        """The whole check: :meth:`verify` (in a worker thread), then the ``jti`` is recorded, refused if seen."""
        claims = await anyio.to_thread.run_sync(self.verify, token, audience)
        key, until = f"{claims['iss']}\x00{claims['jti']}", float(claims["exp"]) + self.leeway_s
        if not await self.replays.check_and_add(key, until):
            raise JwtRejected("the jti was used before (replay)")
        return claims

    def verify(self, token: str, audience: str) -> dict[str, Any]:
        """The verified claims (signature, issuer, audience, times, a ``jti`` present), or JwtRejected; not
        the replay check, which is :meth:`accept`'s. Blocking when a jku must be fetched."""
        header, unverified = _unverified(token)
        issuer = unverified.get("iss")
        if not isinstance(issuer, str) or issuer not in self.issuers:
            raise JwtRejected("the issuer is not on the allowlist")
        key = self._key(self.issuers[issuer], header)
        claims = self._decode(token, key, header["alg"], audience, issuer)
        now = self._clock()
        if float(claims["exp"]) > now + self.max_lifetime_s + self.leeway_s:
            raise JwtRejected(f"exp is more than {self.max_lifetime_s:g} s ahead")
        if not isinstance(claims["jti"], str) or not claims["jti"]:
            raise JwtRejected("jti must be a non-empty string")
        return claims

    def _decode(self, token: str, key: PyJWK, alg: str, audience: str, issuer: str) -> dict[str, Any]:
        try:
            return jwt.decode(  # type: ignore[no-any-return]
                token,
                key=key.key,
                algorithms=[alg],
                audience=audience,
                issuer=issuer,
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
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise JwtRejected(f"the token is not valid ({type(exc).__name__})") from None
