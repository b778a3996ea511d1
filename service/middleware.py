"""Request context for every HTTP request, matched or not: a request id (a sane incoming
``X-Request-ID`` or a fresh uuid4) in ``scope["state"]`` and the response header, one access-log
line and the request metrics.

It wraps the app's whole ASGI handler rather than being a Litestar route middleware, because those
do not run for unmatched routes (404) or errors raised before a handler is chosen.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

    from service.metrics import Metrics

REQUEST_ID_HEADER = b"x-request-id"
_SANE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_QUIET_PREFIXES = ("/health/", "/metrics")

access_log = logging.getLogger("dermtriage.access")


def incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name.lower() == REQUEST_ID_HEADER:
            text = value.decode("latin-1").strip()
            return text if _SANE_ID.match(text) else None
    return None


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = incoming_request_id(scope) or str(uuid.uuid4())
        state = scope.setdefault("state", {})  # type: ignore[typeddict-item]
        state["request_id"] = rid
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [h for h in message.get("headers", []) if h[0].lower() != REQUEST_ID_HEADER]
                message = {**message, "headers": [*headers, (REQUEST_ID_HEADER, rid.encode())]}  # type: ignore[typeddict-item]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - start
            route = scope.get("path_template") or "unmatched"
            self.metrics.observe_request(scope["method"], route, status, seconds)
            path = scope["path"]
            level = logging.DEBUG if path.startswith(_QUIET_PREFIXES) and status < 400 else logging.INFO
            access_log.log(
                level,
                "request",
                extra={
                    "request_id": rid,
                    "method": scope["method"],
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "problem": state.get("problem"),
                },
            )
