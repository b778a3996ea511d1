"""SMART launches in progress and done: keyed by an opaque id the server mints (the only thing the browser
holds, in an HttpOnly cookie); the access token stays here, in memory, bounded in number and time."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from service.results import TtlCache
from service.smart.config import SmartClient

COOKIE = "dermtriage_smart"


@dataclass
class LaunchSession:
    id: str
    client: SmartClient
    state: str
    code_verifier: str
    redirect_uri: str
    token_endpoint: str
    token: dict[str, Any] | None = None  # the token response: never logged, never sent to the browser
    expires_at: float | None = None
    patient: str | None = None
    result_id: str | None = None
    share: str | None = None
    created: float = field(default_factory=time.time)

    @property
    def owner(self) -> str:
        """The principal owning the answers this launch makes (the launch itself, not an API key)."""
        return "smart:" + hashlib.sha256(self.id.encode()).hexdigest()[:24]

    def access_token(self) -> str | None:
        """The access token while it is valid, else None."""
        if self.token is None or (self.expires_at is not None and time.time() >= self.expires_at):
            return None
        value = self.token.get("access_token")
        return value if isinstance(value, str) else None

    def __repr__(self) -> str:  # never print the token, the verifier or the state
        return f"LaunchSession(client={self.client!r}, patient={self.patient!r})"


class LaunchSessions(TtlCache[LaunchSession]):
    """At most ``max_items`` launches, each for ``ttl_s`` seconds after it started."""

    def __init__(self, max_items: int = 1000, ttl_s: float = 900.0) -> None:
        super().__init__(max_items, ttl_s, time.monotonic, refresh_on_get=False)

    def start(self, client: SmartClient, redirect_uri: str, token_endpoint: str) -> LaunchSession:
        session = LaunchSession(
            id=secrets.token_urlsafe(32),
            client=client,
            state=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
            redirect_uri=redirect_uri,
            token_endpoint=token_endpoint,
        )
        self.put(session.id, session)
        return session
