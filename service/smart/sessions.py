"""SMART launches in progress and done: keyed by an opaque id the server mints (the only thing the browser
holds, in an HttpOnly cookie); the access token stays on the server side (this process's memory, or the
shared Redis with several workers), bounded in number and time."""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from service.shared_state import AddingStore, redis_errors, seconds, unavailable
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


class LaunchSessions:
    """Launches in the ``smart-sessions`` store (:mod:`service.shared_state`), so the callback and the
    viewer's reads may reach any worker: each until ``ttl_s`` after it started (in memory also at most
    ``DERMTRIAGE_SMART_SESSIONS_MAX``, the oldest dropped). Kept under a hash of the launch id (the store
    never holds the cookie itself), the client named by its FHIR base, never its secret. A session is a
    copy: ``save`` it after a change. Redis unreachable: a 503 (the launch cannot be checked)."""

    def __init__(self, store: AddingStore, clients: Mapping[str, SmartClient], ttl_s: float = 900.0) -> None:
        self.store, self.clients, self.ttl_s = store, clients, ttl_s

    @staticmethod
    def key(session_id: str) -> str:
        return hashlib.sha256(session_id.encode()).hexdigest()

    async def start(self, client: SmartClient, redirect_uri: str, token_endpoint: str) -> LaunchSession:
        session = LaunchSession(
            id=secrets.token_urlsafe(32),
            client=client,
            state=secrets.token_urlsafe(24),
            code_verifier=secrets.token_urlsafe(48),
            redirect_uri=redirect_uri,
            token_endpoint=token_endpoint,
        )
        await self.save(session)
        return session

    async def save(self, session: LaunchSession) -> None:
        left = self.ttl_s - (time.time() - session.created)
        if left <= 0:
            return
        held = {f.name: getattr(session, f.name) for f in fields(session) if f.name not in ("id", "client")}
        value = json.dumps({**held, "fhir_base": session.client.fhir_base})
        try:
            await self.store.set(self.key(session.id), value, seconds(left))
        except redis_errors():
            raise unavailable("a SMART launch") from None

    async def get(self, session_id: str) -> LaunchSession | None:
        """The launch, or None (unknown, expired, or its EHR no longer configured)."""
        if len(session_id) > 128:
            return None
        try:
            raw = await self.store.get(self.key(session_id))
        except redis_errors():
            raise unavailable("a SMART launch") from None
        if raw is None:
            return None
        held = json.loads(raw)
        client = self.clients.get(held.pop("fhir_base"))
        return LaunchSession(id=session_id, client=client, **held) if client is not None else None
