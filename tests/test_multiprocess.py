"""Issue 20: the real thing with two worker processes. One `dermtriage serve --workers 2` with a real
Redis (``redis_server`` fixture) and no case database (unreachable, not required), so nothing is shared
but Redis; a SMART EHR (tests/smart_ehr.py: Authlib's authorization server, a FHIR server) for launches.
Every call goes on a fresh connection (``Connection: close``); which worker answered is read from
``/metrics`` (``dermtriage_worker_requests`` per pid), so each test shows both workers answered.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis
from ehr_client import ISSUER, SERVICE_ID, EhrKeys, cds_request, issuers, media, patient, searchset
from service_photos import jpeg_bytes, lesion_photo
from smart_ehr import Client, SmartEhr, smart_ehr
from test_cds_hooks import full_prefetch
from test_service_server import REPO, TEXT_CACHE, free_port, wait_ready

from service.auth.api_keys import generate_api_key
from service.smart.sessions import COOKIE

CLOSE = {"Connection": "close"}
WORKER_LINE = re.compile(r'^dermtriage_worker_requests\{pid="(\d+)"\} ([0-9.e+]+)$', re.M)
Server = tuple[str, dict[str, str], EhrKeys, SmartEhr]


@pytest.fixture(scope="module")
def ehr() -> Iterator[SmartEhr]:
    with smart_ehr() as server:
        photo = jpeg_bytes(lesion_photo(12))
        server.serve_json("/fhir/Patient/p1", patient())
        server.serve_json("/fhir/Media?", searchset(media(photo, "m1")))
        server.serve_json("/fhir/Observation?", searchset())
        server.serve_json("/fhir/DocumentReference?", searchset())
        yield server


@pytest.fixture(scope="module")
def server(redis_server: str, ehr: SmartEhr) -> Iterator[Server]:
    with redis.Redis.from_url(redis_server) as r:
        r.flushdb()
    keys = EhrKeys()
    reader, reader_record = generate_api_key("reader", 6000)
    limited, limited_record = generate_api_key("limited", 1)  # a burst of 3, then one a minute
    folder = Path(tempfile.mkdtemp(prefix="dermtriage-mp-test-"))
    log = folder / "server.log"
    env = {
        "DERMTRIAGE_REDIS_URL": redis_server,
        "DERMTRIAGE_API_KEYS": f"{reader_record.line()},{limited_record.line()}",
        "DERMTRIAGE_API_RATE_BURST": "3",
        "DERMTRIAGE_AUTH_DISABLED": "0",
        "DERMTRIAGE_CDS_ISSUERS": issuers((ISSUER, keys, {})),
        "DERMTRIAGE_DATABASE_URL": "postgresql+asyncpg://nobody@127.0.0.1:1/none",  # nothing listens
        "DERMTRIAGE_DATABASE_REQUIRED": "false",
        "PROMETHEUS_MULTIPROC_DIR": "",  # serve makes a fresh one
        "DERMTRIAGE_SMART_CLIENTS": json.dumps({ehr.fhir: {"client_id": "dt-mp"}}),
        "DERMTRIAGE_CDS_FETCH_ALLOW_HOSTS": "127.0.0.1",  # the test EHR
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ehr.clients["dt-mp"] = Client("dt-mp", (f"{base}/viewer/launch/callback",))
    env = {**os.environ, **env, "DERMTRIAGE_CACHE_DIR": str(TEXT_CACHE), "PYTHONUNBUFFERED": "1"}
    env["DERMTRIAGE_PUBLIC_URL"] = base  # the CDS JWT audience
    cmd = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), "--workers", "2"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(base, proc, log)  # one worker is ready
        both_ready(base, proc)
        yield base, {"reader": reader, "limited": limited}, keys, ehr
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


def both_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    """Until ``dermtriage_ready`` (the minimum over live workers) is 1 and two workers report."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "server exited"
        text = httpx.get(f"{base}/metrics", headers=CLOSE, timeout=10).text
        if re.search(r"^dermtriage_ready 1\.0$", text, re.M) and len(WORKER_LINE.findall(text)) == 2:
            return
        time.sleep(0.5)
    raise AssertionError("the second worker did not get ready")


def per_worker(base: str) -> Counter[str]:
    text = httpx.get(f"{base}/metrics", headers=CLOSE).text
    return Counter({pid: int(float(n)) for pid, n in WORKER_LINE.findall(text)})


def on_both_workers(base: str, call: Callable[[], None], batch: int = 10, batches: int = 8) -> Counter[str]:
    """Repeat ``call`` (each on a fresh connection) until both workers answered at least one: the
    per-pid delta is at least 2, since one of them also answered the first scrape."""
    before = per_worker(base)
    assert len(before) == 2, f"expected two workers in /metrics, got {dict(before)}"
    for _ in range(batches):
        for _ in range(batch):
            call()
        delta = per_worker(base)
        delta.subtract(before)
        if min(delta[pid] for pid in before) >= 2:
            return delta
    raise AssertionError(f"one worker answered everything: {dict(delta)}")


def test_answer_made_on_one_worker_is_read_through_the_other(server: Server) -> None:
    base, keys, _, _ = server
    auth = {"X-API-Key": keys["reader"], **CLOSE}
    photo = jpeg_bytes(lesion_photo(7))
    made = httpx.post(f"{base}/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, headers=auth, timeout=60)
    assert made.status_code == 200, made.text
    assert made.json()["case_storage"] == "off"  # no case database: only Redis can hand it over
    rid = made.json()["id"]

    def read() -> None:
        r = httpx.get(f"{base}/v1/triage/{rid}", headers=auth, timeout=30)
        assert r.status_code == 200 and r.json()["id"] == rid, r.text

    on_both_workers(base, read)


def test_rate_limit_holds_across_both_workers(server: Server) -> None:
    base, keys, _, _ = server
    codes: list[int] = []

    def call() -> None:
        codes.append(httpx.get(f"{base}/v1/conditions", headers={"X-API-Key": keys["limited"], **CLOSE}).status_code)

    on_both_workers(base, call, batch=10, batches=3)
    assert codes.count(200) == 3 and codes.count(429) == len(codes) - 3, codes
    # /metrics on either worker counts every worker's requests
    text = httpx.get(f"{base}/metrics", headers=CLOSE).text
    series = r'dermtriage_http_requests_total\{method="GET",route="/v1/conditions",status="429"\} (\S+)'
    limited = re.search(series, text)
    assert limited and int(float(limited.group(1))) == codes.count(429)


def test_replayed_cds_token_refused_by_the_other_worker(server: Server) -> None:
    base, _, keys, _ = server
    url = f"{base}/cds-services/{SERVICE_ID}"
    token = keys.token(aud=url)
    call = cds_request(full_prefetch(jpeg_bytes(lesion_photo(25))))
    first = httpx.post(url, json=call, headers={"Authorization": f"Bearer {token}", **CLOSE}, timeout=60)
    assert first.status_code == 200, first.text

    def replay() -> None:
        r = httpx.post(url, json=call, headers={"Authorization": f"Bearer {token}", **CLOSE}, timeout=30)
        assert r.status_code == 401 and "replay" in r.json()["detail"], r.text

    on_both_workers(base, replay)


def test_smart_launch_made_on_one_worker_is_used_on_the_other(server: Server) -> None:
    """The launch (one worker mints the session and its PKCE verifier), the EHR's callback and the viewer's
    reads each on a fresh connection: every worker finds the session, its token and its answer."""
    base, _, _, ehr = server
    started = httpx.get(
        f"{base}/viewer/launch", params={"iss": ehr.fhir, "launch": "launch-123"}, headers=CLOSE, timeout=30
    )
    assert started.status_code == 302, started.text
    cookie = {"Cookie": f"{COOKIE}={started.cookies[COOKIE]}", **CLOSE}
    consent = httpx.get(started.headers["location"], timeout=30)  # the browser at the EHR: it answers at once
    assert consent.status_code == 302, consent.text
    back = httpx.get(consent.headers["location"], headers=cookie, timeout=60)  # the callback: any worker
    assert back.status_code == 303 and back.headers["location"] == "/viewer/static/launch.html", back.text
    answers: set[str] = set()

    def read() -> None:
        r = httpx.get(f"{base}/viewer/launch/context", headers=cookie, timeout=30)
        assert r.status_code == 200 and r.json()["patient"] == "p1", r.text
        answers.add(r.json()["result"]["id"])

    on_both_workers(base, read)
    assert len(answers) == 1  # one launch, one answer, whichever worker reads it
    assert httpx.get(f"{base}/viewer/launch/context", headers=CLOSE, timeout=30).status_code == 401  # no cookie


def test_serve_shares_metrics_only_with_several_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.server import share_metrics
    from service.settings import Settings

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # empty: never the working directory
    assert share_metrics(Settings(workers=1)) is None and "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    folder = share_metrics(Settings(workers=2))
    assert folder and Path(folder).is_dir() and os.environ["PROMETHEUS_MULTIPROC_DIR"] == folder
    shutil.rmtree(folder)
