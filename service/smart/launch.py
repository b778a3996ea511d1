"""SMART App Launch, EHR launch, as the viewer's OAuth client (Authlib, authorization code + PKCE S256).

1. :func:`discover`: ``{iss}/.well-known/smart-configuration`` through :mod:`service.safe_http`, only for
   an ``iss`` configured in ``DERMTRIAGE_SMART_CLIENTS`` (checked by the caller before anything is fetched).
2. :func:`authorize_url`: the redirect to the EHR's authorization endpoint with ``launch``, ``aud`` = iss,
   ``state`` and the PKCE challenge (the verifier stays in the server-side session).
3. :func:`exchange_code`: the code for the token (public client: ``client_id`` only; confidential:
   HTTP Basic with the secret), over a client that follows no redirects and reads no proxy settings,
   to a token endpoint that passes the same outbound rules as every other fetch.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import OAuth2Client

from service.safe_http import Budget, FetchRefused, OutboundPolicy, fetch
from service.smart.config import SmartClient
from service.smart.sessions import LaunchSession

WELL_KNOWN = "/.well-known/smart-configuration"
MAX_CONFIG_BYTES = 256 * 1024


class LaunchError(Exception):
    """The launch cannot go on; ``status`` and ``detail`` become the problem answered (no token quoted)."""

    def __init__(self, status: int, detail: str, kind: str = "smart-launch-failed") -> None:
        super().__init__(detail)
        self.status, self.detail, self.kind = status, detail, kind


@dataclass(frozen=True)
class SmartConfiguration:
    authorization_endpoint: str
    token_endpoint: str


def checked_url(url: Any, policy: OutboundPolicy, what: str) -> str:
    """``url`` if it is a URL the outbound rules allow (scheme, host, addresses), else LaunchError."""
    if not isinstance(url, str):
        raise LaunchError(502, f"The EHR's SMART configuration has no {what}.")
    try:
        policy.address(policy.target(url))
    except FetchRefused as exc:
        raise LaunchError(502, f"The EHR's {what} may not be used: {exc}.") from None
    return url


def read_configuration(client: SmartClient, policy: OutboundPolicy, timeout_s: float) -> dict[str, Any]:
    """Blocking: the EHR's ``.well-known/smart-configuration`` as a JSON object (LaunchError otherwise)."""
    try:
        got = fetch(
            client.fhir_base + WELL_KNOWN, policy, Budget(timeout_s, MAX_CONFIG_BYTES), {"Accept": "application/json"}
        )
        config = json.loads(got.body)
    except FetchRefused as exc:
        raise LaunchError(502, f"The EHR's SMART configuration could not be read: {exc}.") from None
    except (ValueError, RecursionError):
        raise LaunchError(502, "The EHR's SMART configuration is not JSON.") from None
    if not isinstance(config, dict):
        raise LaunchError(502, "The EHR's SMART configuration is not a JSON object.")
    return config


def discover(client: SmartClient, policy: OutboundPolicy, timeout_s: float) -> SmartConfiguration:
    """Blocking: the EHR's SMART configuration (authorization and token endpoints)."""
    config = read_configuration(client, policy, timeout_s)
    methods = config.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise LaunchError(502, "The EHR does not support PKCE S256.")
    return SmartConfiguration(
        checked_url(config.get("authorization_endpoint"), policy, "authorization_endpoint"),
        checked_url(config.get("token_endpoint"), policy, "token_endpoint"),
    )


def _oauth(session: LaunchSession, timeout_s: float) -> OAuth2Client:
    c = session.client
    return OAuth2Client(
        client_id=c.client_id,
        client_secret=c.client_secret,
        token_endpoint_auth_method="client_secret_basic" if c.client_secret else "none",
        scope=c.scope,
        redirect_uri=session.redirect_uri,
        code_challenge_method="S256",
        timeout=timeout_s,
        follow_redirects=False,
        trust_env=False,
    )


def authorize_url(session: LaunchSession, config: SmartConfiguration, launch: str) -> str:
    with _oauth(session, 5.0) as oauth:
        url, _ = oauth.create_authorization_url(
            config.authorization_endpoint,
            state=session.state,
            code_verifier=session.code_verifier,
            launch=launch,
            aud=session.client.fhir_base,
        )
    return str(url)


def exchange_code(session: LaunchSession, code: str, timeout_s: float) -> dict[str, Any]:
    """Blocking: the token response for ``code`` (kept in ``session``); LaunchError when refused."""
    try:
        with _oauth(session, timeout_s) as oauth:
            token = oauth.fetch_token(
                session.token_endpoint, grant_type="authorization_code", code=code, code_verifier=session.code_verifier
            )
    except (AuthlibBaseError, httpx.HTTPError, ValueError) as exc:
        reason = getattr(exc, "error", None) or type(exc).__name__
        raise LaunchError(502, f"The EHR's token endpoint refused the code ({reason}).") from None
    token = dict(token)
    if not isinstance(token.get("access_token"), str):
        raise LaunchError(502, "The EHR's token response has no access_token.")
    session.token = token
    expires_in = token.get("expires_in")
    session.expires_at = time.time() + float(expires_in) if isinstance(expires_in, int | float) else None
    patient = token.get("patient")
    session.patient = patient if isinstance(patient, str) else None
    return token
