"""Short fuzz run: schemathesis against the app's own OpenAPI document, in-process over the tiny model.

The long run is ``python -m benchmarks.fuzz`` (real server, embedded model, 100 examples per route).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from models.knowledge.taxonomy import load_taxonomy
from service.app import create_app
from service.engine import TriageEngine
from service.settings import Settings

schemathesis = pytest.importorskip("schemathesis")
from benchmarks.fuzz import fuzz  # noqa: E402

EXAMPLES_PER_OPERATION = 8


def test_fuzz_openapi_no_5xx_no_schema_violations(tiny_clip: Any) -> None:
    from schemathesis.python import asgi

    engine = TriageEngine(tiny_clip, load_taxonomy())
    app = create_app(Settings(auth_disabled=True, request_timeout_s=60), engine=engine)
    try:
        # schemathesis drives the app (and its lifespan) through its own ASGI client
        with asgi.get_client(app) as client:
            deadline = time.monotonic() + 120
            while client.get("/health/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
        started = time.perf_counter()
        report = fuzz(schema, EXAMPLES_PER_OPERATION)
    finally:
        asgi.shutdown_lifespans()
    print(report.as_dict(), f"{time.perf_counter() - started:.1f} s")
    assert not report.failures, "\n\n".join(report.failures)
    assert report.requests >= EXAMPLES_PER_OPERATION
    assert not any(status >= 500 for status in report.statuses)
