"""The app-wide guard: which routes need which credentials, and the check itself.

Policy (``scheme_for``): a handler may name its scheme in ``opt["auth"]`` (``open``, ``api_key`` or
``cds_jwt``); otherwise health, metrics, the OpenAPI document and the viewer's static page are
open and everything else needs an API key. ``DERMTRIAGE_AUTH_DISABLED=1`` turns every check off
(local use only). Failures raise :class:`~service.problems.Problem` (401, 429), which the FHIR
routes turn into an OperationOutcome.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import Components, SecurityScheme

from service.auth.api_keys import ApiKeyRegistry
from service.auth.cds_jwt import CdsJwtVerifier, JwtRejected, RedisReplayCache, jwks_fetcher
from service.auth.rate_limit import Limiter, RateLimiter, RedisRateLimiter, retry_after_header
from service.problems import Problem
from service.safe_http import OutboundPolicy
from service.settings import Settings
from service.shared_state import SharedState

Scheme = Literal["open", "api_key", "cds_jwt"]
# Open without credentials: liveness/readiness (orchestrators), Prometheus metrics (counts and
# latencies only, no patient data; restrict at the network if needed), the OpenAPI document, and the
# viewer's static page (it holds no data; its /v1 calls carry the clinician's API key).
OPEN_PREFIXES = ("/health/", "/metrics", "/schema", "/viewer")
API_KEY_HEADER = "x-api-key"
log = logging.getLogger("dermtriage.auth")

# OpenAPI: the two schemes; routes name theirs with ``security=API_KEY_SECURITY`` / ``CDS_JWT_SECURITY``.
SECURITY_COMPONENTS = Components(
    security_schemes={
        "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header"),
        "cdsJwt": SecurityScheme(
            type="http", scheme="bearer", bearer_format="JWT", description="CDS Hooks: the EHR's signed JWT"
        ),
    }
)
API_KEY_SECURITY: list[dict[str, list[str]]] = [{"apiKey": []}]
CDS_JWT_SECURITY: list[dict[str, list[str]]] = [{"cdsJwt": []}]


@dataclass
class AuthState:
    disabled: bool
    keys: ApiKeyRegistry
    limiter: Limiter
    cds: CdsJwtVerifier
    public_url: str | None = None

    def base_url(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        """The service's external base URL: configured, else the one this request came in on."""
        return (self.public_url or str(connection.base_url)).rstrip("/")


def build_auth(settings: Settings, shared: SharedState | None = None) -> AuthState:
    """Rate-limit buckets and the jti replay set in Redis when ``shared`` has clients, else in memory."""
    rate, burst = settings.api_rate_per_minute, settings.api_rate_burst
    limiter: Limiter = RateLimiter(rate, burst)
    replays = None
    if shared is not None and shared.client is not None:
        limiter, replays = RedisRateLimiter(shared.client, rate, burst), RedisReplayCache(shared.client)
    fetcher = jwks_fetcher(OutboundPolicy.allowing(settings.cds_fetch_allow_hosts))
    return AuthState(
        disabled=settings.auth_disabled,
        keys=ApiKeyRegistry.from_lines(settings.api_keys),
        limiter=limiter,
        cds=CdsJwtVerifier(settings.cds_issuer_configs(), fetcher, replays=replays),
        public_url=settings.public_url,
    )


def auth_of(connection: ASGIConnection[Any, Any, Any, Any]) -> AuthState:
    return connection.app.state.auth  # type: ignore[no-any-return]


def scheme_for(path: str, handler: BaseRouteHandler) -> Scheme:
    explicit = handler.opt.get("auth")
    if explicit:
        return explicit  # type: ignore[no-any-return]
    if path.startswith(OPEN_PREFIXES):
        return "open"
    return "api_key"


def _unauthorized(detail: str, challenge: str) -> Problem:
    return Problem(
        "unauthorized", 401, detail, title="Missing or invalid credentials", headers={"WWW-Authenticate": challenge}
    )


def _bearer(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    value = connection.headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


async def check_api_key(connection: ASGIConnection[Any, Any, Any, Any], auth: AuthState) -> None:
    challenge = 'ApiKey header="X-API-Key"'
    key = connection.headers.get(API_KEY_HEADER) or _bearer(connection)
    if not key:
        raise _unauthorized("This route needs an API key: send it in the X-API-Key header.", challenge)
    record = auth.keys.verify(key.strip())
    if record is None:
        raise _unauthorized(
            "The API key is not valid; ask the operator for one (dermtriage create-api-key).", challenge
        )
    wait = await auth.limiter.acquire(record.name, record.per_minute)
    if wait is not None:
        raise Problem(
            "rate-limited",
            429,
            f"Too many requests for this API key; retry in {retry_after_header(wait)} s.",
            title="Too many requests",
            headers={"Retry-After": retry_after_header(wait)},
        )
    connection.scope.setdefault("state", {})["principal"] = f"api-key:{record.name}"


def cds_service_url(connection: ASGIConnection[Any, Any, Any, Any], auth: AuthState) -> str:
    """The JWT's expected ``aud``: always on the configured public URL, never on the request's Host header."""
    if not auth.public_url:
        raise JwtRejected("DERMTRIAGE_PUBLIC_URL is not configured, so no audience can be checked")
    return f"{auth.public_url.rstrip('/')}/cds-services/{connection.path_params['service_id']}"


def cds_issuer_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    """The verified ``iss`` of this CDS Hooks call (None when authentication is off)."""
    return connection.scope.get("state", {}).get("cds_issuer")  # type: ignore[no-any-return]


async def check_cds_jwt(connection: ASGIConnection[Any, Any, Any, Any], auth: AuthState) -> None:
    challenge = 'Bearer error="invalid_token"'
    token = _bearer(connection)
    if not token:
        raise _unauthorized("CDS Hooks calls need a signed JWT: Authorization: Bearer <jwt>.", 'Bearer realm="cds"')
    if not auth.cds.configured:
        raise _unauthorized(
            "No CDS Hooks issuer is configured (DERMTRIAGE_CDS_ISSUERS).",
            challenge,
        )
    try:
        claims = await auth.cds.accept(token, cds_service_url(connection, auth))
    except JwtRejected as exc:
        log.info("cds jwt rejected", extra={"reason": str(exc)})
        raise _unauthorized(f"The JWT is not accepted: {exc}.", challenge) from None
    state = connection.scope.setdefault("state", {})
    state["principal"] = f"cds:{claims['iss']}"
    state["cds_issuer"] = claims["iss"]


async def require_credentials(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """App-level guard (runs for every matched route)."""
    auth = auth_of(connection)
    if auth.disabled:
        return
    scheme = scheme_for(connection.scope["path"], handler)
    if scheme == "api_key":
        await check_api_key(connection, auth)
    elif scheme == "cds_jwt":
        await check_cds_jwt(connection, auth)
