"""Issue 20, Ray Serve: the same app behind a Serve deployment on a local Ray instance with two replicas,
called over HTTP through Serve's proxy. Which replica answered is read from ``/metrics``
(``dermtriage_worker_requests`` per pid: the replicas share a ``PROMETHEUS_MULTIPROC_DIR``, as workers
do). The Ray tests are skipped without the optional extra (``pip install -e ".[ray]"``); the config
files are checked either way.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from litestar.testing import TestClient
from service_photos import jpeg_bytes, lesion_photo
from test_service_api import wait_ready
from test_service_server import REPO, TEXT_CACHE, free_port

from service.app import create_app
from service.settings import Settings

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason="Ray Serve is an optional extra: pip install -e '.[ray]'")
RAY_DIR = REPO / "deploy" / "ray"
WORKER_LINE = re.compile(r'^dermtriage_worker_requests\{pid="(\d+)"\} ([0-9.e+]+)$', re.M)
REQUESTS = 20
CLOSE = {"Connection": "close"}


def test_rayservice_embeds_the_serve_config() -> None:
    """deploy/ray/rayservice.yaml runs the same Serve application as deploy/ray/serve_config.yaml."""
    config = yaml.safe_load((RAY_DIR / "serve_config.yaml").read_text())
    service = yaml.safe_load((RAY_DIR / "rayservice.yaml").read_text())
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == config
    (application,) = config["applications"]
    assert application["import_path"] == "service.ray_serve:app"
    cluster = service["spec"]["rayClusterConfig"]
    groups = {g["groupName"]: g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]}
    assert "nvidia.com/gpu" in groups["gpu"]["resources"]["limits"]
    assert all("nvidia.com/gpu" not in c["resources"]["limits"] for name, c in groups.items() if name != "gpu")


@pytest.mark.skipif(HAS_RAY, reason="checks the message shown when the ray extra is missing")
def test_engine_ray_without_ray_says_how_to_install() -> None:
    cmd = [sys.executable, "-m", "service.cli", "serve", "--engine", "ray", "--replicas", "2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "pip install -e '.[ray]'" in out.stderr


def answer_of(body: dict[str, Any]) -> tuple[Any, ...]:
    """What must not depend on the engine: the differentials with their probabilities, the urgency."""
    diffs = [(d["label"], d["probability"], d["image_probability"]) for d in body["differentials"]]
    return diffs, body["urgency"]


@pytest.fixture(scope="module")
def photo() -> bytes:
    return jpeg_bytes(lesion_photo(3))


@pytest.fixture(scope="module")
def single_process_answer(photo: bytes) -> dict[str, Any]:
    """The single-process service's answer (in-process, Litestar's TestClient), before Ray starts."""
    with TestClient(create_app(Settings(auth_disabled=True, cache_dir=TEXT_CACHE))) as client:
        wait_ready(client)
        r = client.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["differentials"] and body["urgency"] is not None
        return body


def worker_counts(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", headers=CLOSE, timeout=30).text
    return {pid: float(n) for pid, n in WORKER_LINE.findall(text)}


@pytest.fixture(scope="module")
def ray_serve(tmp_path_factory: pytest.TempPathFactory, single_process_answer: dict[str, Any]) -> Iterator[str]:
    import ray
    from ray import serve

    from service.ray_serve import DermTriage

    env = {
        "DERMTRIAGE_AUTH_DISABLED": "1",  # Serve's proxy listens on loopback only
        "DERMTRIAGE_CACHE_DIR": str(TEXT_CACHE),
        "DERMTRIAGE_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('ray-db') / 'cases.db'}",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path_factory.mktemp("ray-metrics")),
    }
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024 * 1024, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        options = {"num_cpus": 0.5, "runtime_env": {"env_vars": env}}
        started = time.perf_counter()
        serve.run(DermTriage.options(num_replicas=2, ray_actor_options=options).bind(), route_prefix="/")
        print(f"\nray serve: 2 replicas ready in {time.perf_counter() - started:.1f} s")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


@needs_ray
def test_two_replicas_answer_like_the_single_process(
    ray_serve: str, photo: bytes, single_process_answer: dict[str, Any]
) -> None:
    base = ray_serve
    assert httpx.get(f"{base}/health/ready", headers=CLOSE, timeout=30).status_code == 200
    before = worker_counts(base)
    started = time.perf_counter()
    for _ in range(REQUESTS):
        r = httpx.post(f"{base}/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, headers=CLOSE, timeout=120)
        assert r.status_code == 200, r.text
        assert answer_of(r.json()) == answer_of(single_process_answer)
    elapsed = time.perf_counter() - started
    after = worker_counts(base)
    served = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    print(f"ray serve: {REQUESTS} photos in {elapsed:.1f} s, requests per replica (pid): {served}")
    assert len(served) == 2, f"expected two replicas in /metrics, got {served}"
    # Each replica answered at least one photo: at most one of its requests is the first /metrics read.
    assert all(n >= 2 for n in served.values()), served
    assert sum(served.values()) >= REQUESTS
    assert os.getpid() not in {int(pid) for pid in served}  # the replicas, not this process
