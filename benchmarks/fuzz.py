"""Fuzz the service against its own OpenAPI document with schemathesis: no 5xx, no schema violations.

Every operation in ``/schema/openapi.json`` gets ``--examples`` generated requests (hypothesis, from
the documented schemas: valid and invalid bodies, parameters and media types). Each response must not
be a 5xx and must match the documented status codes, content type, headers and response schema.

    DERMTRIAGE_AUTH_DISABLED=1 python -m benchmarks.fuzz [--examples 100] [--url http://127.0.0.1:PORT]

Without ``--url`` it starts the real server (embedded model) on a free loopback port. The short
version runs in the test suite (``tests/test_fuzz.py``, in-process over a tiny model).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hypothesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from benchmarks.common import start_server

REPO = Path(__file__).resolve().parents[1]

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@dataclass
class FuzzReport:
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "per_operation": self.per_operation,
            "failures": self.failures,
        }


def fuzz(schema: Any, max_examples: int, *, base_url: str | None = None, seed: int = 0) -> FuzzReport:
    """Run ``max_examples`` generated requests per operation; collect the first failure of each."""
    report = FuzzReport()
    for result in schema.get_all_operations():
        operation = result.ok()
        label = operation.label
        count = 0

        @given(case=operation.as_strategy())
        @hsettings(
            max_examples=max_examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        )
        def run(case: Any) -> None:
            nonlocal count
            response = case.call(base_url=base_url) if base_url else case.call()
            count += 1
            report.statuses[response.status_code] += 1
            case.validate_response(response, checks=CHECKS)

        try:
            hypothesis.seed(seed)(run)()
        except Exception as exc:  # one failing operation does not hide the others
            report.failures.append(f"{label}: {type(exc).__name__}: {str(exc)[:2000]}")
        report.per_operation[label] = count
        report.requests += count
    return report


def main() -> int:
    import schemathesis

    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=100, help="generated requests per operation")
    ap.add_argument("--url", help="a running server (default: start one on a free loopback port)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    proc = None
    base = args.url
    log_dir = tempfile.TemporaryDirectory()
    if base is None:
        proc, base = start_server({}, Path(log_dir.name) / "server.log")
    try:
        started = time.perf_counter()
        schema = schemathesis.openapi.from_url(f"{base}/schema/openapi.json")
        report = fuzz(schema, args.examples, base_url=base, seed=args.seed)
        out = report.as_dict() | {"seconds": round(time.perf_counter() - started, 1), "examples": args.examples}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        log_dir.cleanup()
    print(json.dumps(out, indent=2))
    return 1 if report.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
