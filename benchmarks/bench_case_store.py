"""What keeping every answer as a case costs, on this machine.

    python -m benchmarks.bench_case_store [--cases 1000] [--url URL] [--json]

One real answer of the embedded model on a development photo is kept ``--cases`` times under fresh
ids through the service's own path (`CaseStore.record_answer`: the answer as JSON onto the bounded
write queue). Reported: the event-loop cost per answer (p50, p99; what the triage answer waits
for), the photo's SHA-256, how long the background task took to write them all (rows per second),
and, for SQLite, the size on disk per 1,000 cases. Default database: a fresh SQLite file.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from benchmarks.common import case_bench_main, percentile, sample_photos
from models.fitting.datasets import DEFAULT_DATA
from service.images import ImageLimits, decode_image
from service.metrics import Metrics
from service.runtime import build_engine, sha256_hex
from service.schemas import TriageOptions, new_result_id
from service.settings import Settings
from service.store.cases import CaseFacts, CaseStore


async def measure(url: str, n: int) -> dict[str, float]:
    settings = Settings(database_url=url, database_migrate=True, database_queue_size=n + 1)
    photo = sample_photos(DEFAULT_DATA, 1)[0]
    result = build_engine(settings).triage(
        decode_image(photo, ImageLimits()), TriageOptions(), request_id="bench"
    )  # fmt: skip
    store = CaseStore(settings, Metrics())
    task = asyncio.create_task(store.start())
    while store.status == "starting":
        await asyncio.sleep(0.01)
    t0 = time.perf_counter()
    digest = sha256_hex(photo)
    hash_ms = (time.perf_counter() - t0) * 1000
    facts = CaseFacts(digest, None, "pt-0001", None, "127.0.0.1", "token")
    costs, started = [], time.perf_counter()
    for _ in range(n):
        kept = result.model_copy(update={"id": new_result_id()})
        t0 = time.perf_counter()
        assert store.record_answer(kept, "api-key:bench", facts)
        costs.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0)  # let the writer run as it would between requests
    while store.writes.pending or store.writes.written < 2 * n:
        await asyncio.sleep(0.01)
    total_s = time.perf_counter() - started
    task.cancel()
    await store.stop()
    out = {
        "cases": n,
        "record_ms_p50": round(percentile(costs, 50), 3),
        "record_ms_p99": round(percentile(costs, 99), 3),
        "photo_bytes": len(photo),
        "photo_sha256_ms": round(hash_ms, 3),
        "write_all_s": round(total_s, 2),
        "rows_per_s": round(2 * n / total_s, 1),
    }
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        size = sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))
        out["sqlite_mb_per_1000_cases"] = round(size / 1e6 * 1000 / n, 2)
    return out


def main() -> None:
    case_bench_main(__doc__, measure)


if __name__ == "__main__":
    main()
