"""The real app under uvicorn in a thread, for the browser tests: one helper instead of a copy per file."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def live_server(app: Any, port: int | None = None, ready_within_s: float = 600) -> Iterator[str]:
    """Serve `app` on 127.0.0.1; yield its base URL once `/health/ready` says 200; stop it afterwards."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="live-test-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + ready_within_s
    try:
        while True:
            assert thread.is_alive(), "the server thread exited"
            try:
                r = httpx.get(f"{base}/health/ready", timeout=2)
                if r.status_code == 200:
                    break
                assert "failed to load" not in r.json().get("detail", ""), r.text
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"service not ready in {ready_within_s:.0f} s"
            time.sleep(0.25)
        yield base
    finally:
        server.should_exit = True
        thread.join(30)


@contextmanager
def browser_page(browser: Any, tolerate: Callable[[str], bool] = lambda _: False) -> Iterator[Any]:
    """A fresh 1280x900 page. Afterwards every JavaScript error it logged (uncaught, or console.error)
    that `tolerate` does not excuse fails the test."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        yield page
    finally:
        context.close()
    unexpected = [e for e in errors if not tolerate(e)]
    assert not unexpected, f"JavaScript errors in the page: {unexpected}"
