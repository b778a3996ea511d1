"""Issue 20: state shared by worker processes lives in a real Redis server (``redis_url`` fixture).

Two apps built in this process over one Redis stand for two workers (the real two-process server is
``test_multiprocess.py``): an answer made by one is read through the other, a key's rate limit and a
CDS token's ``jti`` hold across both, a card issued by one is known to the other's feedback route. Then
Redis goes away: triage goes on uncached and says so, CDS Hooks calls fail closed, readiness names it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio
from ehr_client import BASE, SERVICE_ID, EhrKeys, cds_request, cds_settings
from litestar.testing import TestClient
from live_server import live_server
from service_photos import jpeg_bytes, lesion_photo
from test_cds_hooks import full_prefetch
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.auth.api_keys import generate_api_key
from service.auth.rate_limit import RedisRateLimiter
from service.cds_hooks.state import MemoryFeedbackStore
from service.engine import TriageEngine
from service.images import decode_image
from service.results import ResultExists, ResultStore
from service.schemas import TriageOptions, TriageResult
from service.settings import Settings
from service.shared_state import DEGRADED_HEADER, CappedMemoryStore, SharedState, seconds
from service.smart.sessions import COOKIE

SERVICE_PATH = f"/cds-services/{SERVICE_ID}"
FEEDBACK_PATH = f"{SERVICE_PATH}/feedback"


@pytest.fixture(scope="module")
def keys() -> EhrKeys:
    return EhrKeys()


@pytest.fixture(scope="module")
def api_key() -> tuple[str, str]:
    key, record = generate_api_key("clinic", 1)  # one request a minute: the burst is all a test gets
    return key, record.line()


NO_DATABASE = "postgresql+asyncpg://nobody@127.0.0.1:1/none"  # nothing listens: only Redis is shared


def settings_for(keys: EhrKeys, line: str, redis_url: str | None) -> Settings:
    return Settings(
        **cds_settings(keys),
        api_keys=[line],
        api_rate_burst=3,
        redis_url=redis_url,
        database_url=NO_DATABASE,
        database_required=False,
    )


@pytest.fixture
def two_workers(
    tiny_clip: Any, keys: EhrKeys, api_key: tuple[str, str], redis_url: str
) -> Iterator[tuple[TestClient, TestClient]]:
    """Two apps (as two workers would build them) over one Redis."""
    apps = [
        create_app(settings_for(keys, api_key[1], redis_url), engine=TriageEngine(tiny_clip, load_taxonomy()))
        for _ in range(2)
    ]
    with TestClient(apps[0], base_url=BASE) as a:
        wait_ready(a)
        with TestClient(apps[1], base_url=BASE) as b:
            wait_ready(b)
            yield a, b


def triage(client: TestClient, key: str, seed: int = 3) -> Any:
    photo = jpeg_bytes(lesion_photo(seed))
    return client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, headers={"X-API-Key": key})


def test_answer_made_on_one_worker_is_read_through_the_other(
    two_workers: tuple[TestClient, TestClient], api_key: tuple[str, str], redis_url: str
) -> None:
    a, b = two_workers
    made = triage(a, api_key[0])
    assert made.status_code == 200, made.text
    assert DEGRADED_HEADER.lower() not in made.headers
    rid = made.json()["id"]
    read = b.get(f"/v1/triage/{rid}", headers={"X-API-Key": api_key[0]})
    assert read.status_code == 200 and read.json() == made.json()
    with redis.Redis.from_url(redis_url) as r:
        ttl = r.ttl(f"dermtriage:results:{rid}")  # Litestar's RedisStore, namespace dermtriage:results
    assert 3500 < ttl <= 3600  # result_ttl_s, kept by Redis


def test_rate_limit_holds_across_workers(two_workers: tuple[TestClient, TestClient], api_key: tuple[str, str]) -> None:
    a, b = two_workers
    codes = [(a if i % 2 else b).get("/v1/conditions", headers={"X-API-Key": api_key[0]}).status_code for i in range(8)]
    assert codes.count(200) == 3 and codes.count(429) == 5, codes  # one burst of 3 for both, not 3 each


def test_replayed_cds_token_refused_by_the_other_worker(
    two_workers: tuple[TestClient, TestClient], keys: EhrKeys
) -> None:
    a, b = two_workers
    photo_call = cds_request(full_prefetch(jpeg_bytes(lesion_photo(25))))
    token = keys.token()
    first = a.post(SERVICE_PATH, json=photo_call, headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200, first.text
    replay = b.post(SERVICE_PATH, json=photo_call, headers={"Authorization": f"Bearer {token}"})
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]
    # the card issued by worker a is known to worker b's feedback route, and b reuses a's photo result
    card = first.json()["cards"][0]["uuid"]
    b.app.state.cds.feedback = MemoryFeedbackStore()  # no case database in these apps
    feedback = {"feedback": [{"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-03-01T10:00:00Z"}]}
    ok = b.post(FEEDBACK_PATH, json=feedback, headers={"Authorization": f"Bearer {keys.token()}"})
    assert ok.status_code == 200
    records = b.blocking_portal.call(b.app.state.cds.feedback.list, SERVICE_ID)
    assert records[-1].request_id == first.headers["x-request-id"]
    again = b.post(SERVICE_PATH, json=photo_call, headers={"Authorization": f"Bearer {keys.token()}"})
    assert again.json()["cards"][0]["summary"] == first.json()["cards"][0]["summary"]


def test_result_ids_never_overwritten_and_owned(redis_url: str, engine: Any) -> None:
    decoded = decode_image(jpeg_bytes(lesion_photo(5)), Settings().image_limits())
    result: TriageResult = engine.triage(decoded, TriageOptions(), request_id="r1")

    async def run() -> None:
        shared = SharedState.from_url(redis_url)
        store = ResultStore.from_settings(Settings(result_ttl_s=60), shared)
        try:
            await store.put(result, "api-key:a")
            with pytest.raises(ResultExists):
                await store.put(result, "api-key:b")
            assert await store.get(result.id, "api-key:a") == result
            assert await store.get(result.id, "api-key:b") is None  # someone else's: like a missing id
            share = await store.share_token(result.id, "api-key:a")
            assert share and await store.share_token(result.id, "api-key:b") is None
            assert await store.get(result.id, "api-key:b", share) == result
            assert await store.get("x" * 5000, "api-key:a") is None
        finally:
            await shared.close()

    asyncio.run(run())


def test_memory_stores_are_capped_and_add_is_atomic() -> None:
    """The memory default stays bounded: at most N values and B bytes (least recently used dropped first),
    expired values purged without a read; ``add`` lets one of twenty concurrent writers in."""

    async def run() -> None:
        store = CappedMemoryStore(3, max_bytes=10)
        for key in "abcd":
            await store.set(key, b"xx")
        assert store.held() == 3 and await store.get("a") is None  # the oldest went
        await store.get("b")  # now the most recently used
        await store.set("e", b"x" * 8)  # 2 + 2 + 2 + 8 bytes > 10: the least recently used (c, then d) go
        assert [await store.get(k) is not None for k in "bcde"] == [True, False, False, True]
        await store.set("big", b"x" * 11)  # over the byte cap alone: not kept
        assert await store.get("big") is None and store.held() == 2
        timed = CappedMemoryStore(3)
        await timed.set("brief", b"x", seconds(0.05))
        await timed.set("long", b"x", seconds(60))
        await asyncio.sleep(0.1)
        await timed.delete_expired()  # the purge timer's call: no read needed
        assert timed.held() == 1
        wins = await asyncio.gather(*(store.add("k", str(i)) for i in range(20)))
        assert wins.count(True) == 1

    asyncio.run(run())


def test_redis_store_add_is_atomic(redis_url: str) -> None:
    """Twenty concurrent ``add`` calls on two clients (two workers): exactly one sets the key (``SET NX``)."""

    async def run() -> list[bool]:
        states = [SharedState.from_url(redis_url) for _ in range(2)]
        try:
            stores = [s.store("results", 10) for s in states]
            return await asyncio.gather(*(stores[i % 2].add("same-id", str(i), seconds(60)) for i in range(20)))
        finally:
            for s in states:
                await s.close()

    assert asyncio.run(run()).count(True) == 1


def test_redis_token_bucket_is_atomic_under_concurrency(redis_url: str) -> None:
    """Forty takes at once from two clients (two workers' connections): exactly the burst is allowed."""

    async def run() -> list[float | None]:
        clients = [redis.asyncio.Redis.from_url(redis_url) for _ in range(2)]
        limiters = [RedisRateLimiter(c, per_minute=1, burst=5) for c in clients]
        try:
            return await asyncio.gather(*(limiters[i % 2].acquire("k") for i in range(40)))
        finally:
            for c in clients:
                await c.aclose()

    waits = asyncio.run(run())
    assert waits.count(None) == 5
    assert all(w is not None and 0 < w <= 60 for w in waits if w is not None)


def test_redis_token_bucket_refills(redis_url: str) -> None:
    async def run() -> tuple[list[float | None], float | None]:
        client = redis.asyncio.Redis.from_url(redis_url)
        limiter = RedisRateLimiter(client, per_minute=600, burst=2)  # ten tokens a second
        try:
            first = [await limiter.acquire("k") for _ in range(3)]
            await asyncio.sleep(0.25)
            return first, await limiter.acquire("k")
        finally:
            await client.aclose()

    first, later = asyncio.run(run())
    assert first[:2] == [None, None] and first[2] is not None and first[2] <= 0.1
    assert later is None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once closed


def test_redis_down_triage_goes_on_cds_fails_closed(tiny_clip: Any, keys: EhrKeys, api_key: tuple[str, str]) -> None:
    down = f"redis://127.0.0.1:{closed_port()}/0"
    app = create_app(settings_for(keys, api_key[1], down), engine=TriageEngine(tiny_clip, load_taxonomy()))
    with TestClient(app, base_url=BASE) as client:
        wait_ready(client)
        ready = client.get("/health/ready").json()
        assert ready["status"] == "degraded"
        assert ready["shared_state"]["backend"] == "redis" and ready["shared_state"]["status"] == "down"
        made = triage(client, api_key[0])
        assert made.status_code == 200 and made.headers[DEGRADED_HEADER] == "unavailable"
        assert client.get(f"/v1/triage/{made.json()['id']}", headers={"X-API-Key": api_key[0]}).status_code == 404
        # rate limits fall back to this process's buckets: the burst of 3 still holds
        codes = [client.get("/v1/conditions", headers={"X-API-Key": api_key[0]}).status_code for _ in range(4)]
        assert codes == [200, 429, 429, 429]  # the triage and the read above took two of the three
        cds = client.post(
            SERVICE_PATH, json=cds_request(full_prefetch(jpeg_bytes(lesion_photo(25)))), headers=bearer(keys)
        )
        assert cds.status_code == 503 and cds.headers["content-type"].startswith("application/problem+json")
        assert cds.json()["type"].endswith("shared-state-unavailable")
        launch = client.get("/viewer/launch/context", headers={"Cookie": f"{COOKIE}=some-launch"})
        assert launch.status_code == 503 and launch.json()["type"].endswith("shared-state-unavailable")


def bearer(keys: EhrKeys) -> dict[str, str]:
    return {"Authorization": f"Bearer {keys.token()}"}


PAUSE_MS = 3000  # longer than any read's way through its timeouts (connect, hello, GET: 0.5 s each)


def test_a_paused_redis_never_holds_the_event_loop(tiny_clip: Any, redis_url: str) -> None:
    """The real server stops answering (``CLIENT PAUSE``: every client's commands wait) under a real uvicorn
    server: eight answer reads wait on Redis at once, and a request on the same event loop that needs
    nothing from Redis is answered while they wait. A blocking Redis call would hold the loop: the reads
    one after another (8 x 0.5 s timeout) and every other request behind them."""
    app = create_app(Settings(auth_disabled=True, redis_url=redis_url), engine=TriageEngine(tiny_clip, load_taxonomy()))
    photo = jpeg_bytes(lesion_photo(9))

    async def run(base: str, rid: str) -> tuple[float, bool, float, list[httpx.Response]]:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await client.get("/health/live")  # a warm connection for the probe below
            started = time.perf_counter()
            reads = [asyncio.create_task(client.get(f"/v1/triage/{rid}")) for _ in range(8)]
            await asyncio.sleep(0.1)  # the reads are in, waiting on Redis
            before = time.perf_counter()
            live = await client.get("/health/live")
            live_s, waiting = time.perf_counter() - before, not any(r.done() for r in reads)
            assert live.status_code == 200
            done = await asyncio.gather(*reads)
            return live_s, waiting, time.perf_counter() - started, done

    with live_server(app) as base:
        made = httpx.post(f"{base}/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, timeout=60)
        assert made.status_code == 200 and DEGRADED_HEADER.lower() not in made.headers, made.text
        with redis.Redis.from_url(redis_url) as r:
            r.client_pause(PAUSE_MS, all=True)
        try:
            live_s, waiting, reads_s, done = asyncio.run(run(base, made.json()["id"]))
        finally:
            with redis.Redis.from_url(redis_url) as r:
                r.ping()  # answered once the pause is over: the next test gets a Redis that answers
    seen = [(r.status_code, r.headers.get(DEGRADED_HEADER)) for r in done]
    assert all(h == "unavailable" for _, h in seen), (seen, reads_s)  # each waited on Redis, then gave up
    assert waiting and live_s < 0.25, f"/health/live took {live_s:.2f} s behind reads waiting on Redis"
    assert reads_s < 1.5, f"eight reads took {reads_s:.2f} s: they waited one after another"


def test_memory_default_is_ready(tiny_clip: Any, keys: EhrKeys, api_key: tuple[str, str]) -> None:
    app = create_app(settings_for(keys, api_key[1], None), engine=TriageEngine(tiny_clip, load_taxonomy()))
    with TestClient(app, base_url=BASE) as client:
        wait_ready(client)
        ready = client.get("/health/ready").json()
        assert ready["status"] == "ready" and ready["shared_state"]["backend"] == "memory"
