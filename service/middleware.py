"""Request context for every HTTP request, matched or not: a request id (a sane incoming
``X-Request-ID`` or a fresh uuid4) in ``scope["state"]`` and the response header, one access-log
line and the request metrics, and a deadline for receiving the request body.

The body deadline (``body_read_timeout_s``) runs from the moment the request reaches the app (its
headers are in): a body still incomplete then is answered 408 with ``Connection: close`` (or the
connection is closed), so a slow upload cannot hold a buffer and a slot for long. The slot itself is
uvicorn's ``limit_concurrency``, which counts connections from their first byte.

It wraps the app's whole ASGI handler rather than being a Litestar route middleware, because those
do not run for unmatched routes (404) or errors raised before a handler is chosen.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import TYPE_CHECKING

import anyio
from litestar.exceptions import ClientException

from service.metrics import method_label

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

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


class BodyReadTimeout(ClientException):
    """The request body did not arrive within ``body_read_timeout_s`` (a 408 problem)."""

    status_code = 408


def receive_within(receive: Receive, seconds: float) -> Receive:
    """``receive`` with one deadline for the whole request body, counted from now; after the body's
    last chunk (or a disconnect) it passes messages through untouched."""
    deadline = time.monotonic() + seconds
    body_done = False

    async def receive_in_time() -> ReceiveMessage:
        nonlocal body_done
        if body_done:
            return await receive()
        with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message
        raise BodyReadTimeout(
            detail=f"The request body did not arrive within {seconds:g} s; send it faster or smaller.",
            headers={"Connection": "close"},
        )

    return receive_in_time


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, body_read_timeout_s: float = 30.0) -> None:
        self.app = app
        self.metrics = metrics
        self.body_read_timeout_s = body_read_timeout_s

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
            await self.app(scope, receive_within(receive, self.body_read_timeout_s), send_with_id)
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
                    "method": method_label(scope["method"]),
                    "path": path,
                    "route": route,
                    "status": status,
                    "duration_ms": round(seconds * 1000, 2),
                    "problem": state.get("problem"),
                },
            )
