"""The real thing: `dermtriage serve` in a subprocess on 127.0.0.1, called with httpx."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from live_server import free_port
from service_photos import jpeg_bytes, lesion_photo

from service.auth.api_keys import generate_api_key

REPO = Path(__file__).resolve().parents[1]
TEXT_CACHE = REPO / ".cache" / "text-embeddings"  # shared with test_service_api


def wait_ready(base: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"server exited early:\n{log.read_text()[-3000:]}"
        try:
            r = httpx.get(f"{base}/health/ready", timeout=2)
            if r.status_code == 200:
                return
            assert "failed to load" not in r.json()["detail"], r.text
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"not ready in {timeout} s:\n{log.read_text()[-3000:]}")


def spawn_server(env_extra: dict[str, str], log: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`dermtriage serve` on a free loopback port with the shared text cache; logs (info) go to `log`."""
    port = free_port()
    env = {**os.environ, "DERMTRIAGE_CACHE_DIR": str(TEXT_CACHE), "PYTHONUNBUFFERED": "1", **env_extra}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def test_real_server_process(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    key, record = generate_api_key("server-test")  # auth stays on: the key is configured hashed, as in production
    proc, base = spawn_server({"DERMTRIAGE_API_KEYS": record.line(), "DERMTRIAGE_AUTH_DISABLED": "0"}, log)
    try:
        wait_ready(base, proc, log)
        photo = jpeg_bytes(lesion_photo(11), with_gps=True)
        with httpx.Client(base_url=base, timeout=60, headers={"X-API-Key": key}) as http:
            assert http.get("/health/live").status_code == 200
            assert httpx.get(f"{base}/v1/conditions").status_code == 401  # no key
            first = http.post(
                "/v1/triage",
                files={"image": ("lesion.jpg", photo, "image/jpeg")},
                data={"top_k": "3"},
                headers={"X-Request-ID": "server-test-1"},
            )
            assert first.status_code == 200, first.text
            body = first.json()
            assert body["request_id"] == first.headers["x-request-id"] == "server-test-1"
            assert len(body["differentials"]) == 3 and body["model"]["name"] == "embedded-pad-lite0"
            assert "gps" in body["image"]["metadata_stripped"]
            start = time.perf_counter()
            second = http.post("/v1/triage", files={"image": ("lesion.jpg", photo, "image/jpeg")}, data={"top_k": "3"})
            latency_ms = (time.perf_counter() - start) * 1000
            assert [d["label"] for d in second.json()["differentials"]] == [d["label"] for d in body["differentials"]]
            print(f"single-request latency via the real server: {latency_ms:.0f} ms")
            bad = http.post("/v1/triage", content=b"hello", headers={"content-type": "text/plain"})
            assert bad.status_code == 415 and bad.headers["content-type"].startswith("application/problem+json")
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    messages = [entry["msg"] for entry in lines]
    assert "ready" in messages and any("Uvicorn running" in m for m in messages), messages
    access = [e for e in lines if e["logger"] == "dermtriage.access" and e.get("request_id") == "server-test-1"]
    assert access and access[0]["status"] == 200 and access[0]["path"] == "/v1/triage"
    assert "Application shutdown complete." in messages  # graceful; uvicorn then re-raises SIGTERM
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
