"""The SMART side's state in the app: the configured EHR clients, the launches in progress (server-side
tokens, in the app's shared stores) and cached Backend Services tokens (per process). Created on first use
from the app's settings, so that the app factory needs no change to carry it."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from service.auth.cds_config import normalize_base
from service.fhir.client import FhirFetcher
from service.safe_http import OutboundPolicy
from service.settings import Settings
from service.smart.backend import BackendTokens
from service.smart.config import SmartClient
from service.smart.sessions import LaunchSessions

_LOCK = threading.Lock()
STATE_KEY = "smart"


@dataclass
class SmartState:
    clients: dict[str, SmartClient]
    settings: Settings
    fetcher: FhirFetcher  # FHIR reads on a configured base (the outbound rules and limits of CDS fetches)
    sessions: LaunchSessions
    backend: BackendTokens

    @property
    def policy(self) -> OutboundPolicy:
        return self.fetcher.policy

    def client_for(self, fhir_base: str | None) -> SmartClient | None:
        """The SMART client configured for this FHIR base URL, or None (also for a malformed URL)."""
        if not fhir_base:
            return None
        try:
            return self.clients.get(normalize_base(fhir_base))
        except ValueError:
            return None


def smart_state(app_state: Any) -> SmartState:
    """The app's :class:`SmartState` (``app.state``), created once from ``app.state.service.settings``."""
    with _LOCK:
        state = app_state.get(STATE_KEY) if hasattr(app_state, "get") else None
        if state is None:
            settings = app_state.service.settings
            fetcher = FhirFetcher(
                {},
                OutboundPolicy.allowing(settings.cds_fetch_allow_hosts),
                timeout_s=settings.cds_fetch_timeout_s,
                max_bytes=settings.cds_fetch_max_bytes,
                max_image_bytes=settings.max_image_bytes,
            )
            clients = settings.smart_client_configs()
            store = app_state.service.shared.store("smart-sessions", settings.smart_sessions_max)
            sessions = LaunchSessions(store, clients, settings.smart_session_ttl_s)
            backend = BackendTokens(fetcher.policy, settings.cds_fetch_timeout_s)
            state = SmartState(clients, settings, fetcher, sessions, backend)
            app_state[STATE_KEY] = state
        return state  # type: ignore[no-any-return]
