"""Issue 15, "turning authentication off is loud and local only": with DERMTRIAGE_AUTH_DISABLED=1 the
server binds only a loopback address unless DERMTRIAGE_ALLOW_UNAUTHENTICATED_NETWORK=1, and warns at
start either way."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service import server
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]


def _serve_with_fake_uvicorn(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """``serve`` up to the point it would start uvicorn (which records its arguments instead)."""
    import uvicorn

    for name in ("DERMTRIAGE_AUTH_DISABLED", "DERMTRIAGE_ALLOW_UNAUTHENTICATED_NETWORK", "DERMTRIAGE_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    monkeypatch.setattr(server.logging.config, "dictConfig", lambda config: None)  # keep pytest's log capture
    called: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: called.update(kwargs))
    return server.serve({}), called


def test_auth_off_on_all_interfaces_is_refused_with_a_clear_message() -> None:
    env = {"DERMTRIAGE_AUTH_DISABLED": "1", "PATH": "/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "0.0.0.0", "--port", "0"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to serve without authentication on '0.0.0.0'" in done.stderr
    assert "DERMTRIAGE_ALLOW_UNAUTHENTICATED_NETWORK=1" in done.stderr and "DERMTRIAGE_API_KEYS" in done.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "dermtriage.example.org", ""])
def test_auth_off_refuses_every_non_loopback_address(host: str) -> None:
    assert server.unauthenticated_bind_refusal(Settings(auth_disabled=True, host=host))
    assert server.unauthenticated_bind_refusal(Settings(auth_disabled=False, host=host)) is None
    allowed = Settings(auth_disabled=True, host=host, allow_unauthenticated_network=True)
    assert server.unauthenticated_bind_refusal(allowed) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_auth_off_on_loopback_starts_and_warns(
    host: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="dermtriage.service"):
        code, called = _serve_with_fake_uvicorn(monkeypatch, {"DERMTRIAGE_AUTH_DISABLED": "1", "DERMTRIAGE_HOST": host})
    assert code == 0 and called["host"] == host
    assert any("authentication is DISABLED" in r.getMessage() for r in caplog.records)


def test_auth_off_with_network_override_starts_and_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    env = {
        "DERMTRIAGE_AUTH_DISABLED": "1",
        "DERMTRIAGE_ALLOW_UNAUTHENTICATED_NETWORK": "1",
        "DERMTRIAGE_HOST": "0.0.0.0",
    }
    with caplog.at_level(logging.WARNING, logger="dermtriage.service"):
        code, called = _serve_with_fake_uvicorn(monkeypatch, env)
    assert code == 0 and called["host"] == "0.0.0.0"
    assert called["limit_concurrency"] == Settings().limit_concurrency  # slow clients: see test_security_parsing
    warnings = [r for r in caplog.records if "authentication is DISABLED" in r.getMessage()]
    assert warnings and warnings[0].levelno == logging.WARNING


def test_auth_on_does_not_warn(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dermtriage.service"):
        code, _ = _serve_with_fake_uvicorn(monkeypatch, {"DERMTRIAGE_HOST": "0.0.0.0"})
    assert code == 0 and not any("DISABLED" in r.getMessage() for r in caplog.records)
