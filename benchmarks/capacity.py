"""Capacity on paper: how many replicas a deployment needs for a photo rate at p99 <= 2 s.

Model: each replica is one server of rate ``mu`` photos/s (its saturated throughput, measured with
`dermtriage bench` or ``--measure`` below); photos arrive as a Poisson stream of ``lam`` photos/s and
wait in one queue for the first free replica (M/M/c; a load balancer with least-outstanding-requests
comes close, round robin does worse). The response time is the wait (Erlang C) plus the service
time, exponential of mean ``1/mu``; p99 is where its survival function crosses 1 %.

``--measure`` checks the model on this machine: `dermtriage serve` with 1 and then 2 worker
processes, Poisson arrivals at fractions of the 1-process capacity (open loop, so queueing is real),
the measured p50/p99 beside the model's: M/M/c with c = workers servers of an equal share of the
measured saturated rate, and an M/G/c simulation whose service times are the latencies measured at
the lightest level (they vary far less than an exponential).

    python -m benchmarks.capacity --mu 12.8 --rate 40            # replicas for 40 photos/s
    nice -n 10 python -m benchmarks.capacity --measure --json     # the check (minutes)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

P99_TARGET_S = 2.0


def erlang_c(c: int, offered: float) -> float:
    """Probability that an arrival waits (all ``c`` servers busy) at offered load ``offered`` = lam/mu < c."""
    term, total = 1.0, 1.0  # the k = 0 term of sum_{k<c} a^k / k!, built incrementally
    for k in range(1, c):
        term *= offered / k
        total += term
    last = term * offered / c * c / (c - offered)  # a^c / c! * c / (c - a)
    return last / (total + last)


def response_survival(t: float, lam: float, mu: float, c: int) -> float:
    """P(response > t) in M/M/c: wait W (P(W > x) = C e^{-(c mu - lam) x}) plus service S ~ Exp(mu)."""
    pw = erlang_c(c, lam / mu)
    theta = c * mu - lam
    if abs(theta - mu) < 1e-9:  # the two rates coincide: the convolution's limit
        return math.exp(-mu * t) * (1 + pw * mu * t)
    # P(S > t) + integral_0^t mu e^{-mu s} C e^{-theta (t - s)} ds
    return math.exp(-mu * t) + pw * mu / (mu - theta) * (math.exp(-theta * t) - math.exp(-mu * t))


def percentile_s(q: float, lam: float, mu: float, c: int) -> float:
    """The response time's q-quantile (seconds), by bisection on the survival function."""
    if lam >= c * mu:
        return math.inf
    lo, hi = 0.0, 1.0
    while response_survival(hi, lam, mu, c) > 1 - q:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if response_survival(mid, lam, mu, c) > 1 - q else (lo, mid)
    return hi


def replicas_needed(lam: float, mu: float, p99_s: float = P99_TARGET_S, max_c: int = 10_000) -> int:
    """The fewest replicas of rate ``mu`` whose p99 at ``lam`` photos/s is at most ``p99_s``."""
    if 1 / mu * math.log(100) > p99_s:
        raise ValueError(f"one photo alone takes too long: p99 of the service time is {math.log(100) / mu:.2f} s")
    c = max(1, math.ceil(lam / mu))
    while percentile_s(0.99, lam, mu, c) > p99_s:
        c += 1
        if c > max_c:
            raise ValueError("no replica count up to max_c meets the target")
    return c


def simulate_p99(lam: float, service_s: list[float], c: int, n: int = 100_000, seed: int = 0) -> float:
    """M/G/c by simulation: Poisson arrivals at ``lam``, FIFO to the first free of ``c`` servers, service
    times drawn from ``service_s`` (e.g. light-load latencies measured here). The p99 response (s).
    Exponential service (M/M/c above) is the pessimistic bound; measured service times vary far less."""
    import heapq

    rng = random.Random(seed)
    free = [0.0] * c  # when each server is next free
    t, responses = 0.0, []
    for _ in range(n):
        t += rng.expovariate(lam)
        start = max(t, heapq.heappop(free))
        done = start + rng.choice(service_s)
        heapq.heappush(free, done)
        responses.append(done - t)
    responses.sort()
    return responses[int(0.99 * (n - 1))]


def table(mu: float, rates: list[float]) -> list[dict[str, Any]]:
    rows = []
    for lam in rates:
        c = replicas_needed(lam, mu)
        rows.append(
            {
                "photos_per_s": lam,
                "replicas": c,
                "utilisation": round(lam / (c * mu), 2),
                "p99_s": round(percentile_s(0.99, lam, mu, c), 2),
                "photos_per_day_8h": round(lam * 8 * 3600),
            }
        )
    return rows


# ---------------------------------------------------------------------------------------------- measuring


async def open_loop(base: str, photos: list[bytes], lam: float, seconds: float, seed: int = 0) -> dict[str, Any]:
    """Poisson arrivals at ``lam`` photos/s for ``seconds``, each on its own request, whatever the backlog."""
    import httpx

    from benchmarks.common import percentile

    rng = random.Random(seed)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def one(http: httpx.AsyncClient, photo: bytes) -> None:
        t0 = time.perf_counter()
        r = await http.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data={"top_k": "5"})
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code == 200:
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        tasks, k = [], 0
        start = time.perf_counter()
        next_at = start
        while next_at - start < seconds:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            tasks.append(asyncio.create_task(one(http, photos[k % len(photos)])))
            k += 1
            next_at += rng.expovariate(lam)
        await asyncio.gather(*tasks)
    return {
        "offered_per_s": lam,
        "sent": k,
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "p50_s": round(percentile(latencies, 50), 3),
        "p99_s": round(percentile(latencies, 99), 3),
        "_latencies": latencies,
    }


async def closed_loop_rate(base: str, photos: list[bytes], clients: int, seconds: float) -> float:
    """Saturated photos/s: ``clients`` clients each sending the next photo once answered."""
    from benchmarks.service_bench import load_level

    out = await load_level(base, photos, clients, seconds, explain=False, pid=os.getpid())
    return float(out["img_per_s"])


def wait_all_ready(base: str, timeout: float = 600.0) -> None:
    """With several workers: until ``dermtriage_ready`` (the minimum over workers) is 1."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        if re.search(r"^dermtriage_ready 1\.0$", text, re.M):
            return
        time.sleep(0.5)
    raise RuntimeError("not every worker got ready")


def measure(seconds: float, fractions: tuple[float, ...], saturate_clients: int) -> dict[str, Any]:
    from benchmarks.common import DEFAULT_DATA, sample_photos, start_server

    photos = sample_photos(DEFAULT_DATA, 32)
    out: dict[str, Any] = {"load_average_start": os.getloadavg()[0]}
    mu1 = None
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"DERMTRIAGE_WORKERS": str(workers), "DERMTRIAGE_MAX_BATCH_SIZE": "1", "PROMETHEUS_MULTIPROC_DIR": ""}
            proc, base = start_server(env, Path(tmp) / "server.log")
            try:
                wait_all_ready(base)
                asyncio.run(closed_loop_rate(base, photos, 2, 3.0))  # warm-up
                mu = asyncio.run(closed_loop_rate(base, photos, saturate_clients, seconds))
                mu1 = mu1 or mu
                levels: list[dict[str, Any]] = []
                for f in fractions:
                    lam = round(f * mu1, 2)
                    got = asyncio.run(open_loop(base, photos, lam, seconds))
                    c, rate = workers, mu / workers  # each worker a server of an equal share
                    got["model_p50_s"] = round(percentile_s(0.5, lam, rate, c), 3)
                    got["model_p99_s"] = round(percentile_s(0.99, lam, rate, c), 3)
                    got["latencies_s"] = got.pop("_latencies")
                    if levels:  # M/G/c with the lightest level's latencies as the service times
                        got["simulated_p99_s"] = round(simulate_p99(lam, levels[0]["latencies_s"], c), 3)
                    levels.append(got)
                for level in levels:
                    level.pop("latencies_s")
            finally:
                proc.terminate()
                proc.wait(60)
        out[f"workers_{workers}"] = {"saturated_photos_per_s": mu, "open_loop": levels}
    out["load_average_end"] = os.getloadavg()[0]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mu", type=float, default=12.8, help="one replica's saturated photos/s (dermtriage bench)")
    p.add_argument("--rate", type=float, action="append", help="photo rates to size for (repeatable)")
    p.add_argument("--measure", action="store_true", help="check the model against 1 and 2 worker processes")
    p.add_argument("--seconds", type=float, default=20.0, help="per measured level")
    p.add_argument("--fractions", default="0.3,0.6,0.9", help="open-loop rates as fractions of the 1-process capacity")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    rates = args.rate or [1, 5, 10, 20, 40, 80, 160]
    out: dict[str, Any] = {"mu": args.mu, "p99_target_s": P99_TARGET_S, "sizing": table(args.mu, rates)}
    if args.measure:
        fractions = tuple(float(f) for f in args.fractions.split(","))
        out["measured"] = measure(args.seconds, fractions, saturate_clients=16)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"one replica: {args.mu} photos/s; target p99 <= {P99_TARGET_S} s")
    for row in out["sizing"]:
        print(
            f"  {row['photos_per_s']:>7g} photos/s: {row['replicas']:>4} replicas "
            f"(utilisation {row['utilisation']:.2f}, model p99 {row['p99_s']:.2f} s)"
        )
    if "measured" in out:
        print(json.dumps(out["measured"], indent=2))


if __name__ == "__main__":
    main()
