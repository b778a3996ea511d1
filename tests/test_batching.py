"""Micro-batching: batched answers equal unbatched ones, back-pressure and timeouts answer 503 at once.

Gated embeds (the batch path waits for the test to open a gate) make every case deterministic;
nothing here asserts a duration.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.batching import MicroBatcher, QueueFull
from service.engine import TriageEngine
from service.images import ImageLimits, decode_image
from service.metrics import Metrics
from service.schemas import TriageOptions
from service.settings import Settings

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")


class GatedBatchEngine(TriageEngine):
    """A real engine whose batched forward (a tensor in) waits at a gate once ``armed``."""

    def __init__(self, model: Any) -> None:
        super().__init__(model, load_taxonomy())
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.batches: list[int] = []

    def embed(self, images: Any) -> torch.Tensor:
        if isinstance(images, torch.Tensor) and self.armed:
            self.entered.set()
            self.gate.wait(30)
            self.batches.append(images.shape[0])
        return super().embed(images)


def _settings(**kw: Any) -> Settings:
    return Settings(auth_disabled=True, **kw)


def _post(client: TestClient, photo: bytes, **data: str) -> Any:
    return client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data=data)


@pytest.fixture
def photos() -> list[bytes]:
    return [jpeg_bytes(lesion_photo(seed, (220 + 10 * seed, 180))) for seed in range(6)]


def test_embed_batch_equals_one_by_one(tiny_clip: Any, photos: list[bytes]) -> None:
    engine = TriageEngine(tiny_clip, load_taxonomy())
    decoded = [decode_image(p, ImageLimits()) for p in photos]
    together = engine.embed(decoded).embedding
    alone = np.concatenate([engine.embed([d]).embedding for d in decoded])
    stacked = engine.embed(torch.stack([engine.preprocess(d) for d in decoded])).embedding
    assert together.shape == (len(photos), alone.shape[1])
    np.testing.assert_allclose(together, alone, atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(stacked, alone, atol=1e-5, rtol=1e-4)
    # triage with the batched row gives the same answer as triage running the tower itself
    options = TriageOptions(top_k=5)
    direct = engine.triage(decoded[0], options, request_id="a")
    given = engine.triage(decoded[0], options, request_id="a", image_features=engine.embed(decoded)[:1])
    assert [(d.label, round(d.probability, 4)) for d in direct.differentials] == [
        (d.label, round(d.probability, 4)) for d in given.differentials
    ]


@pytest.fixture
def gated(tiny_clip: Any) -> Iterator[tuple[TestClient, GatedBatchEngine]]:
    engine = GatedBatchEngine(tiny_clip)
    settings = _settings(max_batch_size=8, max_batch_wait_ms=50, request_timeout_s=60, precision="float32")
    with TestClient(create_app(settings, engine=engine)) as client:
        wait_ready(client)
        engine.armed = True
        yield client, engine
        engine.gate.set()


def test_concurrent_requests_are_batched_and_equal_unbatched(
    gated: tuple[TestClient, GatedBatchEngine], tiny_clip: Any, photos: list[bytes]
) -> None:
    client, engine = gated
    with ThreadPoolExecutor(len(photos)) as pool:
        first = pool.submit(_post, client, photos[0], top_k="5")
        assert engine.entered.wait(30), "the first batch never started"
        rest = [pool.submit(_post, client, p, top_k="5") for p in photos[1:]]
        deadline = time.monotonic() + 30
        while "dermtriage_batch_queue_depth 5.0" not in client.get("/metrics").text:
            assert time.monotonic() < deadline, "the other photos never queued"
            time.sleep(0.02)
        engine.gate.set()
        answers = [f.result(60) for f in [first, *rest]]
    assert [r.status_code for r in answers] == [200] * len(photos)
    assert engine.batches == [1, len(photos) - 1]  # the queued photos went through in one forward pass
    plain = TriageEngine(tiny_clip, load_taxonomy())
    for photo, answer in zip(photos, answers, strict=True):
        alone = plain.triage(decode_image(photo, ImageLimits()), TriageOptions(top_k=5), request_id="x")
        got = [(d["label"], d["probability"]) for d in answer.json()["differentials"]]
        want = [(d.label, d.probability) for d in alone.differentials]
        assert [g[0] for g in got] == [w[0] for w in want]
        assert all(abs(g[1] - w[1]) < 1e-4 for g, w in zip(got, want, strict=True))
        assert answer.json()["timings"]["inference_ms"] > 0
    metrics = client.get("/metrics").text
    assert 'dermtriage_batch_size_bucket{le="1.0"} ' in metrics
    assert "dermtriage_batch_inference_seconds_count" in metrics
    assert 'dermtriage_http_requests_total{method="POST",route="/v1/triage",status="200"} 6.0' in metrics


class PreparingEngine(GatedBatchEngine):
    """The gated engine that also records when a heatmap forward was prepared."""

    def __init__(self, model: Any) -> None:
        super().__init__(model)
        self.prepared = threading.Event()

    def prepare_heatmaps(self, image: Any, options: Any) -> Any:
        cam_pass = super().prepare_heatmaps(image, options)
        self.prepared.set()
        return cam_pass


def test_heatmap_forward_runs_beside_the_batched_forward(tiny_clip: Any, photos: list[bytes]) -> None:
    """Issue 19: a heatmap request's PyTorch forward runs while the served forward is still held at
    the gate, and its heatmaps are exactly those the engine makes in one go."""
    engine = PreparingEngine(tiny_clip)
    with TestClient(create_app(_settings(request_timeout_s=60), engine=engine)) as client:
        wait_ready(client)
        engine.armed = True
        with ThreadPoolExecutor(1) as pool:
            held = pool.submit(_post, client, photos[0], top_k="3", explain="true", heatmap_grid="true")
            assert engine.entered.wait(30), "the batched forward never started"
            assert engine.prepared.wait(30), "the heatmap forward waited for the batched forward"
            assert not held.done()
            engine.gate.set()
            answer = held.result(60)
        assert answer.status_code == 200, answer.text
        body = answer.json()
    alone = TriageEngine(tiny_clip, load_taxonomy()).triage(
        decode_image(photos[0], ImageLimits()), TriageOptions(top_k=3, explain=True, heatmap_grid=True), request_id="x"
    )
    assert [d["label"] for d in body["differentials"]] == [d.label for d in alone.differentials]
    # the candidates' maps came from one backward for all of them: equal to a few 1e-7 (another batch size)
    assert len(body["heatmaps"]) == len(alone.heatmaps or []) == 3
    for got, want in zip(body["heatmaps"], alone.heatmaps or [], strict=True):
        np.testing.assert_allclose(got["grid"], want.grid, atol=2e-4)
        assert abs(got["score"] - want.score) <= 2e-6
    assert body["timings"]["heatmap_ms"] > 0


def test_full_queue_answers_503_at_once(tiny_clip: Any, photos: list[bytes]) -> None:
    engine = GatedBatchEngine(tiny_clip)
    with TestClient(create_app(_settings(max_queue_size=2, request_timeout_s=60), engine=engine)) as client:
        wait_ready(client)
        engine.armed = True
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(_post, client, photos[0])]
            assert engine.entered.wait(30)
            held.append(pool.submit(_post, client, photos[1]))
            deadline = time.monotonic() + 30
            while "dermtriage_triage_in_flight 2.0" not in client.get("/metrics").text:
                assert time.monotonic() < deadline, "the second request never got in"
                time.sleep(0.02)
            # the gate is shut: this answer cannot have waited for the model
            r = _post(client, photos[2])
            assert r.status_code == 503, r.text
            assert r.headers["content-type"].startswith("application/problem+json")
            assert r.json()["type"].endswith("/overloaded") and int(r.headers["retry-after"]) >= 1
            assert not held[0].done() and not held[1].done()
            engine.gate.set()
            assert [f.result(60).status_code for f in held] == [200, 200]
        assert 'dermtriage_triage_rejected_total{reason="queue_full"} 1.0' in client.get("/metrics").text
        assert _post(client, photos[3]).status_code == 200  # capacity is back


def test_wait_past_the_limit_is_503_with_retry_after(tiny_clip: Any, photos: list[bytes]) -> None:
    engine = GatedBatchEngine(tiny_clip)
    with TestClient(create_app(_settings(request_timeout_s=0.5), engine=engine)) as client:
        wait_ready(client)
        engine.armed = True
        r = _post(client, photos[0])
        assert r.status_code == 503 and r.json()["type"].endswith("/inference-timeout")
        assert r.headers["content-type"].startswith("application/problem+json") and r.headers["retry-after"]
        engine.armed = False
        engine.gate.set()
        assert _post(client, photos[1]).status_code == 200  # the batcher carries on
        metrics = client.get("/metrics").text
        assert "dermtriage_triage_in_flight 0.0" in metrics
        assert 'dermtriage_triage_rejected_total{reason="timeout"} 1.0' in metrics


def test_batching_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.runtime import InferenceRunner

    for key, value in {
        "MAX_BATCH_SIZE": "6",
        "MAX_BATCH_WAIT_MS": "2.5",
        "MAX_QUEUE_SIZE": "9",
        "PRECISION": "float32",
        "SHUTDOWN_GRACE_S": "12",
    }.items():
        monkeypatch.setenv(f"DERMTRIAGE_{key}", value)
    settings = Settings()
    runner = InferenceRunner.from_settings(settings, Metrics())
    try:
        assert (runner.max_batch_size, runner.max_batch_wait_ms, runner.max_queue_size) == (6, 2.5, 9)
        assert runner.precision == "float32" and settings.shutdown_grace_s == 12
    finally:
        runner.close()


def test_batcher_skips_cancelled_and_bounds_its_queue() -> None:
    gate, entered = threading.Event(), threading.Event()
    seen: list[int] = []

    def embed(pixels: torch.Tensor) -> torch.Tensor:
        entered.set()
        gate.wait(30)
        seen.append(pixels.shape[0])
        return pixels.flatten(1)[:, :4]

    batcher = MicroBatcher(embed, max_batch_size=8, max_wait_ms=0, queue_size=2, metrics=Metrics())
    try:
        running = batcher.submit(torch.ones(3, 2, 2))
        assert entered.wait(10)
        cancelled = batcher.submit(torch.full((3, 2, 2), 2.0))
        kept = batcher.submit(torch.full((3, 2, 2), 3.0))
        with pytest.raises(QueueFull):
            batcher.submit(torch.zeros(3, 2, 2))
        assert cancelled.cancel()
        gate.set()
        features, info = kept.result(10)
        assert features.tolist() == [[3.0] * 4] and info.size == 1
        assert running.result(10)[1].size == 1
        assert seen == [1, 1]  # the cancelled photo never reached the model
    finally:
        gate.set()
        batcher.close()


def test_bfloat16_batch_path_stays_close(tiny_clip: Any, photos: list[bytes]) -> None:
    from service.batching import bf16_supported

    engine = TriageEngine(tiny_clip, load_taxonomy())
    pixels = torch.stack([engine.preprocess(decode_image(p, ImageLimits())) for p in photos])
    plain = MicroBatcher(engine.embed, max_batch_size=8, max_wait_ms=0, queue_size=8, metrics=Metrics())
    bf16 = MicroBatcher(
        engine.embed, max_batch_size=8, max_wait_ms=0, queue_size=8, metrics=Metrics(), autocast=torch.bfloat16
    )
    try:
        a, b = plain.forward(pixels), bf16.forward(pixels)
    finally:
        plain.close()
        bf16.close()
    assert b.embedding.dtype == np.float32
    if bf16_supported(torch.device("cpu")):
        x, y = a.embedding, b.embedding
        cos = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
        assert float(cos.min()) > 0.98
