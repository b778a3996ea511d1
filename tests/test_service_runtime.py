"""Service behaviour that needs control over timing: readiness, busy inference, timeouts, settings and CLI.

The engines here are real TriageEngines over the tiny test CLIP; the gated ones only add waits.
"""

from __future__ import annotations

import logging.config
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class GatedEngine(TriageEngine):
    """A real engine whose ``triage`` (and optionally ``warm_up``) waits for the test to open a gate."""

    def __init__(self, model: Any, *, gate_warm_up: bool = False) -> None:
        super().__init__(model, load_taxonomy())
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.warm_gate = threading.Event()
        if not gate_warm_up:
            self.warm_gate.set()

    def warm_up(self) -> None:
        self.warm_gate.wait(30)
        super().warm_up()

    def triage(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        self.gate.wait(30)
        return super().triage(*args, **kwargs)


@pytest.fixture
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(5, (200, 160)))


def _wait_status(client: TestClient, path: str, status: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get(path).status_code != status:
        assert time.monotonic() < deadline, f"{path} never answered {status}"
        time.sleep(0.05)


@pytest.fixture
def gated(tiny_clip: Any) -> Iterator[tuple[TestClient, GatedEngine]]:
    engine = GatedEngine(tiny_clip)
    with TestClient(create_app(Settings(auth_disabled=True, request_timeout_s=20), engine=engine)) as client:
        _wait_status(client, "/health/ready", 200)
        yield client, engine
        engine.gate.set()


def test_live_answers_while_inference_is_busy(gated: tuple[TestClient, GatedEngine], photo: bytes) -> None:
    client, engine = gated
    result: dict[str, Any] = {}
    slow = threading.Thread(
        target=lambda: result.setdefault(
            "r", client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")})
        )
    )
    slow.start()
    assert engine.entered.wait(10), "inference never started"
    t0 = time.perf_counter()
    assert client.get("/health/live").status_code == 200
    assert client.get("/v1/conditions").status_code == 200
    assert time.perf_counter() - t0 < 2.0
    assert slow.is_alive()  # the photo is still being scored
    engine.gate.set()
    slow.join(30)
    assert result["r"].status_code == 200
    assert result["r"].json()["timings"]["inference_ms"] >= 0


def test_not_ready_until_warmed_up(tiny_clip: Any, photo: bytes) -> None:
    engine = GatedEngine(tiny_clip, gate_warm_up=True)
    engine.gate.set()
    with TestClient(create_app(Settings(auth_disabled=True), engine=engine)) as client:
        assert client.get("/health/live").status_code == 200
        r = client.get("/health/ready")
        assert r.status_code == 503 and r.json()["type"].endswith("/not-ready") and r.headers["retry-after"]
        r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")})
        assert r.status_code == 503 and r.json()["type"].endswith("/not-ready")
        engine.warm_gate.set()
        _wait_status(client, "/health/ready", 200)
        assert client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}).status_code == 200


def test_model_that_cannot_load_is_reported(photo: bytes) -> None:
    with TestClient(create_app(Settings(auth_disabled=True, model="no-such-model"))) as client:
        deadline = time.monotonic() + 30
        while "failed to load" not in (detail := client.get("/health/ready").json()["detail"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "no-such-model" in detail
        assert client.get("/health/live").status_code == 200


def test_timeout_gives_503(tiny_clip: Any, photo: bytes) -> None:
    engine = GatedEngine(tiny_clip)
    with TestClient(create_app(Settings(auth_disabled=True, request_timeout_s=0.3), engine=engine)) as client:
        _wait_status(client, "/health/ready", 200)
        r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")})
        engine.gate.set()
        assert r.status_code == 503 and r.json()["type"].endswith("/inference-timeout")


def test_small_body_limit_and_cors(tiny_clip: Any) -> None:
    settings = Settings(
        auth_disabled=True, max_body_bytes=4096, cors_origins="https://clinic.example, https://b.example"
    )
    assert settings.cors_origins == ["https://clinic.example", "https://b.example"]
    engine = TriageEngine(tiny_clip, load_taxonomy())
    big = jpeg_bytes(lesion_photo(6, (640, 480)))
    assert len(big) > 4096
    with TestClient(create_app(settings, engine=engine)) as client:
        _wait_status(client, "/health/ready", 200)
        r = client.post("/v1/triage", files={"image": ("p.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and r.json()["type"].endswith("/request-too-large")
        assert "4,096" in r.json()["detail"]
        pre = client.options(
            "/v1/triage",
            headers={"Origin": "https://clinic.example", "Access-Control-Request-Method": "POST"},
        )
        assert pre.headers["access-control-allow-origin"] == "https://clinic.example"


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DERMTRIAGE_PORT", "9123")
    monkeypatch.setenv("DERMTRIAGE_CORS_ORIGINS", '["https://a.example"]')
    monkeypatch.setenv("DERMTRIAGE_LOG_LEVEL", "WARNING")
    s = Settings()
    assert (s.port, s.cors_origins, s.log_level, s.host) == (9123, ["https://a.example"], "warning", "127.0.0.1")
    assert s.image_limits().max_bytes == 10 * 1024 * 1024 and s.max_body_bytes == 12 * 1024 * 1024


def test_serve_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from service.cli import main

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append({"app": app, **kw}))
    monkeypatch.setattr(logging.config, "dictConfig", lambda config: None)  # keep pytest's logging
    # serve() exports flags to os.environ; set every one here so monkeypatch restores them.
    for key, value in {"PORT": "9123", "WORKERS": "3", "HOST": "127.0.0.1", "LOG_LEVEL": "info"}.items():
        monkeypatch.setenv(f"DERMTRIAGE_{key}", value)
    assert main(["serve", "--port", "9200", "--log-level", "warning"]) == 0
    (call,) = calls
    assert call["app"] == "service.app:create_app" and call["factory"] is True
    assert (call["host"], call["port"], call["workers"], call["log_level"]) == ("127.0.0.1", 9200, 3, "warning")
    assert Settings().port == 9200  # exported for the worker processes
    assert main(["serve", "--model", "no-such-model"]) == 2


class BrokenEngine(TriageEngine):
    def triage(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("-".join(["secret", "internals"]))  # built at run time: stack lines show source only


def test_unexpected_error_is_a_bare_500(tiny_clip: Any, photo: bytes, caplog: pytest.LogCaptureFixture) -> None:
    from service.logs import JsonFormatter

    with TestClient(
        create_app(Settings(auth_disabled=True), engine=BrokenEngine(tiny_clip, load_taxonomy()))
    ) as client:
        _wait_status(client, "/health/ready", 200)
        with caplog.at_level(logging.INFO):
            r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")})
    assert r.status_code == 500 and r.json()["type"].endswith("/internal-error")
    assert "secret-internals" not in r.text and "RuntimeError" not in r.text
    logged = "\n".join(JsonFormatter().format(rec) for rec in caplog.records)
    assert "RuntimeError" in logged and "secret-internals" not in logged


def test_shutdown_during_database_start_never_hangs(tmp_path: Any) -> None:
    """Stopping while the case store still migrates its fresh SQLite file must end promptly. Before the
    database calls were shielded, a connection cut mid-statement left SQLAlchemy's aiosqlite close
    waiting forever and the event loop never closed (it hung 1 in 20-35 starts here)."""
    import random

    rng = random.Random(0)
    for i in range(30):
        url = f"sqlite+aiosqlite:///{tmp_path / f'cases{i}.db'}"
        app = create_app(Settings(auth_disabled=True, model="no-such-model", database_url=url))
        pause = rng.uniform(0, 0.6)  # spread the stops over connect, migrate and the drain

        def start_and_stop(app: Any = app, pause: float = pause) -> None:
            with TestClient(app):
                time.sleep(pause)

        t = threading.Thread(target=start_and_stop, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), f"start {i} never shut down"
