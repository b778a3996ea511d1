"""Graceful shutdown of the real server: SIGTERM while photos are in flight loses none of them.

`dermtriage serve` runs as a subprocess on 127.0.0.1 with the embedded model; heatmap requests keep
it busy for a while, SIGTERM arrives while they run, and every one must still come back 200.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from service_photos import jpeg_bytes, lesion_photo
from test_service_server import spawn_server, wait_ready

N_REQUESTS = 6


def _in_flight(base: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    line = next(x for x in text.splitlines() if x.startswith("dermtriage_triage_in_flight "))
    return float(line.split()[1])


def _triage(base: str, photo: bytes, i: int) -> int:
    with httpx.Client(base_url=base, timeout=120) as http:
        r = http.post(
            "/v1/triage",
            files={"image": ("lesion.jpg", photo, "image/jpeg")},
            data={"top_k": "5", "explain": "true"},
            headers={"X-Request-ID": f"shutdown-{i}"},
        )
        return r.status_code


def test_sigterm_finishes_requests_in_flight(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    env = {"DERMTRIAGE_AUTH_DISABLED": "1", "DERMTRIAGE_SHUTDOWN_GRACE_S": "120", "DERMTRIAGE_INFERENCE_THREADS": "1"}
    proc, base = spawn_server(env, log)
    try:
        wait_ready(base, proc, log)
        photos = [jpeg_bytes(lesion_photo(20 + i)) for i in range(N_REQUESTS)]
        with ThreadPoolExecutor(N_REQUESTS) as pool:
            futures = [pool.submit(_triage, base, p, i) for i, p in enumerate(photos)]
            deadline = time.monotonic() + 120
            while _in_flight(base) < N_REQUESTS:
                assert time.monotonic() < deadline, "the requests never were all in flight"
                assert not any(f.done() for f in futures), "a request finished before all were in flight"
                time.sleep(0.02)
            proc.send_signal(signal.SIGTERM)
            # the listener closes at once: a new connection is refused while the old ones finish
            refused = False
            deadline = time.monotonic() + 60
            while not refused and time.monotonic() < deadline:
                try:
                    httpx.get(f"{base}/health/live", timeout=2)
                    time.sleep(0.05)
                except httpx.ConnectError:
                    refused = True
                except httpx.TransportError:
                    time.sleep(0.05)
            statuses = [f.result(300) for f in futures]
        assert refused, "the server kept accepting connections after SIGTERM"
        assert statuses == [200] * N_REQUESTS, statuses
        proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    messages = [entry["msg"] for entry in lines]
    assert "Application shutdown complete." in messages, messages[-20:]
    assert not any("timeout graceful shutdown exceeded" in m for m in messages)
    served = {e.get("request_id") for e in lines if e["logger"] == "dermtriage.access" and e.get("status") == 200}
    assert {f"shutdown-{i}" for i in range(N_REQUESTS)} <= served
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()[-2000:]
