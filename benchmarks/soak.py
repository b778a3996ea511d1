"""Soak test: 16 concurrent clients for 10 minutes against the real server on 127.0.0.1.

Bounded by a deadline and a request budget (whichever comes first). The mix: good photos (with and
without symptoms and risk factors), bad inputs (garbage bytes, truncated JPEG, GIF, empty body, wrong
media type, out-of-range options) and heatmap requests. Passes when there is no 5xx, no dropped
connection, every answer has the expected status class, and the server's resident memory grew by
less than 5 % between the end of the warm-up and the end.

    python -m benchmarks.soak [--clients 16] [--seconds 600] [--requests 100000] [--warmup 60] [--json]
    python -m benchmarks.soak --seconds 30 --warmup 10      # a short version
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.common import (
    DEFAULT_DATA,
    RISK_FACTORS,
    SYMPTOMS,
    percentile,
    rss_mb,
    sample_photos,
    start_server,
)


def _gif() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("P", (96, 96)).save(buf, "GIF")
    return buf.getvalue()


def request_mix(photos: list[bytes], rng: random.Random) -> tuple[str, dict[str, Any], int]:
    """One request: (kind, httpx kwargs, expected status class: 2 or 4)."""
    roll = rng.random()
    photo = rng.choice(photos)
    files = {"image": ("p.jpg", photo, "image/jpeg")}
    if roll < 0.45:
        return "good", {"files": files, "data": {"top_k": "3"}}, 2
    if roll < 0.65:
        data = {"top_k": "5", "symptoms": SYMPTOMS, "risk_factors": RISK_FACTORS}
        return "good_clinical", {"files": files, "data": data}, 2
    if roll < 0.75:
        return "heatmaps", {"files": files, "data": {"top_k": "3", "explain": "true"}}, 2
    bad = rng.randrange(7)
    if bad == 0:
        return "garbage", {"files": {"image": ("x.jpg", rng.randbytes(2048), "image/jpeg")}}, 4
    if bad == 1:
        return "truncated", {"files": {"image": ("t.jpg", photo[: len(photo) // 3], "image/jpeg")}}, 4
    if bad == 2:
        return "gif", {"files": {"image": ("g.gif", _gif(), "image/gif")}}, 4
    if bad == 3:
        return "empty", {"content": b"", "headers": {"content-type": "application/json"}}, 4
    if bad == 4:
        return "text_plain", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 4
    if bad == 5:
        return "bad_option", {"files": files, "data": {"top_k": "0"}}, 4
    return "bad_json", {"content": b'{"image": 12', "headers": {"content-type": "application/json"}}, 4


async def soak(
    base: str, pid: int | None, photos: list[bytes], clients: int, seconds: float, budget: int, warmup: float
) -> dict[str, Any]:
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    sent = 0
    by_kind: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    wrong: Counter[str] = Counter()
    dropped = 0
    latencies: list[float] = []
    rss: list[tuple[float, float]] = []

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal sent, dropped
        rng = random.Random(i)
        while time.perf_counter() < stop_at and sent < budget:
            sent += 1
            kind, kwargs, expect = request_mix(photos, rng)
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/triage", **kwargs)
            except httpx.TransportError as exc:
                dropped += 1
                wrong[f"{kind}:{type(exc).__name__}"] += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)
            by_kind[kind] += 1
            statuses[r.status_code] += 1
            if r.status_code // 100 != expect:
                wrong[f"{kind}:{r.status_code}"] += 1

    async def sample() -> None:
        while time.perf_counter() < stop_at and sent < budget:
            if pid is not None:
                rss.append((time.perf_counter() - started, rss_mb(pid)))
            await asyncio.sleep(1.0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        await asyncio.gather(sample(), *(client(i, http) for i in range(clients)))
    elapsed = time.perf_counter() - started
    after_warmup = [m for t, m in rss if t >= warmup]
    rss_start = after_warmup[0] if after_warmup else float("nan")
    rss_end = rss[-1][1] if rss else float("nan")
    growth = (rss_end - rss_start) / rss_start * 100 if after_warmup else float("nan")
    server_errors = sum(v for k, v in statuses.items() if k >= 500)
    out = {
        "clients": clients,
        "seconds": round(elapsed, 1),
        "requests": sum(statuses.values()),
        "req_per_s": round(sum(statuses.values()) / elapsed, 2),
        "by_kind": dict(by_kind),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors_5xx": server_errors,
        "dropped_connections": dropped,
        "unexpected": dict(wrong),
        "p50_ms": round(percentile(latencies, 50), 1) if latencies else None,
        "p99_ms": round(percentile(latencies, 99), 1) if latencies else None,
        "rss_mb": {
            "after_warmup": round(rss_start, 1),
            "end": round(rss_end, 1),
            "max": round(max((m for _, m in rss), default=float("nan")), 1),
        },
        "rss_growth_pct": round(growth, 2),
        "rss_trend_mb": [round(after_warmup[int(q * (len(after_warmup) - 1))], 1) for q in (0, 0.25, 0.5, 0.75, 1)]
        if after_warmup
        else [],
    }
    out["passed"] = bool(server_errors == 0 and dropped == 0 and not wrong and (pid is None or growth < 5.0))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=600.0, help="deadline")
    ap.add_argument("--requests", type=int, default=100_000, help="request budget")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before the RSS baseline is taken")
    ap.add_argument("--url", help="a running server on loopback (default: start one); RSS needs --pid")
    ap.add_argument("--pid", type=int, help="the server's pid when --url is given")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    photos = sample_photos(args.data, 32)
    proc = None
    with tempfile.TemporaryDirectory() as tmp:
        if args.url:
            if urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
                raise SystemExit("the soak test runs on loopback only")
            base, pid = args.url, args.pid
        else:
            proc, base = start_server({}, Path(tmp) / "server.log")
            pid = proc.pid
        try:
            out = asyncio.run(soak(base, pid, photos, args.clients, args.seconds, args.requests, args.warmup))
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(60)
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key}: {value}")
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
