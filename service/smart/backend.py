"""SMART Backend Services: an access token for server-side FHIR reads (client credentials grant with a
``private_key_jwt`` client assertion signed RS384 or ES384, Authlib), for a FHIR server configured with
``backend`` in ``DERMTRIAGE_SMART_CLIENTS``. Used when a CDS Hooks call grants no ``fhirAuthorization``
and for ``$triage`` photos given by reference. Tokens are cached in memory until shortly before they
expire; they are never logged or returned."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, RSAKey

from service.safe_http import OutboundPolicy
from service.smart.config import BackendConfig, SmartClient
from service.smart.launch import LaunchError, checked_url, read_configuration

ASSERTION_LIFETIME_S = 300  # SMART Backend Services: the assertion's exp at most five minutes ahead
EARLY_S = 30.0  # renew a cached token this long before it expires


def token_endpoint(client: SmartClient, policy: OutboundPolicy, timeout_s: float) -> str:
    """Blocking: the token endpoint from the EHR's SMART configuration."""
    return checked_url(read_configuration(client, policy, timeout_s).get("token_endpoint"), policy, "token_endpoint")


def _key(backend: BackendConfig) -> Any:
    kind = ECKey if backend.alg.startswith("ES") else RSAKey
    return kind.import_key(backend.private_key, {"kid": backend.kid})


def request_token(backend: BackendConfig, endpoint: str, timeout_s: float) -> dict[str, Any]:
    """Blocking: a client-credentials token response (LaunchError when refused)."""
    auth = PrivateKeyJWT(
        endpoint,
        claims={"exp": int(time.time()) + ASSERTION_LIFETIME_S},
        headers={"kid": backend.kid, "typ": "JWT"},
        alg=backend.alg,
    )
    try:
        with OAuth2Client(
            client_id=backend.client_id,
            client_secret=_key(backend),
            token_endpoint_auth_method=auth,
            scope=backend.scope,
            timeout=timeout_s,
            follow_redirects=False,
            trust_env=False,
        ) as oauth:
            token = dict(oauth.fetch_token(endpoint, grant_type="client_credentials"))
    except (AuthlibBaseError, httpx.HTTPError, ValueError) as exc:
        reason = getattr(exc, "error", None) or type(exc).__name__
        raise LaunchError(
            502, f"The EHR refused the backend token request ({reason}).", "smart-backend-refused"
        ) from None
    if not isinstance(token.get("access_token"), str):
        raise LaunchError(502, "The EHR's token response has no access_token.", "smart-backend-refused")
    return token


class BackendTokens:
    """One cached token per FHIR base; blocking (run in a worker thread)."""

    def __init__(self, policy: OutboundPolicy, timeout_s: float) -> None:
        self.policy, self.timeout_s = policy, timeout_s
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def token(self, client: SmartClient) -> str:
        """A valid access token for ``client``'s FHIR server (LaunchError if it has no backend or is refused)."""
        if client.backend is None:
            raise LaunchError(400, "This FHIR server is not configured for SMART Backend Services.", "smart-no-backend")
        with self._lock:
            held = self._tokens.get(client.fhir_base)
            if held is not None and held[1] > time.time():
                return held[0]
        endpoint = token_endpoint(client, self.policy, self.timeout_s)
        response = request_token(client.backend, endpoint, self.timeout_s)
        expires_in = response.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 300.0
        token = str(response["access_token"])
        with self._lock:
            self._tokens[client.fhir_base] = (token, time.time() + max(0.0, lifetime - EARLY_S))
        return token
