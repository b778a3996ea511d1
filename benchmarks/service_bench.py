"""``dermtriage bench``: the image tower's floor in-process, then the real service under 1, 8 and 32 clients.

(a) Floor: photos/s of the serving image tower (its test-time views and precision included) at
batch 1 and at each batch size up to 16, plus decode+preprocess and post-processing (labels, fusion,
urgency, SHAP) time per photo. (b) Service: ``dermtriage serve`` as a subprocess on 127.0.0.1
(auth off, max batch = the floor's best batch unless given), httpx async clients sending PAD photos
(plain; with heatmaps; with symptoms and risk factors at the top level): photos/s, p50/p95/p99
latency and the server's peak RSS per level. (c) Ratios service / floor.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    DEFAULT_DATA,
    RISK_FACTORS,
    SYMPTOMS,
    percentile,
    rss_mb,
    sample_photos,
    start_server,
)


@dataclass
class BenchConfig:
    seconds: float = 10.0
    clients: tuple[int, ...] = (1, 8, 32)
    heatmap_clients: tuple[int, ...] = (1, 8, 32)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    threads: int | None = None
    max_batch_size: int | None = None
    precision: str | None = None
    runtime: str | None = None
    data: Path = DEFAULT_DATA
    photos: int = 32
    heatmaps: bool = True


def floor(cfg: BenchConfig, photos: list[bytes]) -> dict[str, Any]:
    """In-process: the image tower alone (photos/s by batch size), decode and post-processing per photo."""
    import torch

    from service.batching import MicroBatcher, serving_autocast
    from service.images import ImageLimits, decode_image
    from service.metrics import Metrics
    from service.runtime import build_engine
    from service.settings import Settings

    chosen = (("inference_threads", cfg.threads), ("precision", cfg.precision), ("runtime", cfg.runtime))
    settings = Settings(**{k: v for k, v in chosen if v})
    engine = build_engine(settings)  # the served engine: threads, device, calibration as configured
    threads = torch.get_num_threads()
    engine.warm_up()
    autocast = serving_autocast(settings.precision, engine.model.device)
    batcher = MicroBatcher(
        engine.embed,
        max_batch_size=1,
        max_wait_ms=0,
        queue_size=1,
        metrics=Metrics(),
        autocast=autocast,
        device_type=engine.model.device.type,
    )
    decode_ms, pixels, decoded = [], [], []
    for data in photos:
        t0 = time.perf_counter()
        d = decode_image(data, ImageLimits())
        pixels.append(engine.preprocess(d))
        decode_ms.append((time.perf_counter() - t0) * 1000)
        decoded.append(d)
    by_batch: dict[str, float] = {}
    forward_ms_1 = float("nan")
    per_size = cfg.seconds / max(len(cfg.batch_sizes), 1) * 2
    for b in cfg.batch_sizes:
        x = torch.stack([pixels[i % len(pixels)] for i in range(b)])
        batcher.forward(x)  # warm-up at this shape
        n, times, t0 = 0, [], time.perf_counter()
        while time.perf_counter() - t0 < per_size or n < 2 * b:
            t1 = time.perf_counter()
            batcher.forward(x)
            times.append(time.perf_counter() - t1)
            n += b
        by_batch[str(b)] = round(n / (time.perf_counter() - t0), 2)
        if b == 1:
            forward_ms_1 = statistics.median(times) * 1000
    versus_torch = runtime_vs_torch(engine, batcher, torch.stack(pixels[:1]), cfg.seconds)
    batcher.close()
    best = max(by_batch, key=lambda k: by_batch[k])
    post = post_processing_ms(engine, decoded[0])
    torch_precision = "bfloat16" if autocast is not None else "float32"
    return {
        "threads": threads,
        "runtime": getattr(engine.model, "runtime_name", "torch"),
        "precision": getattr(getattr(engine.model, "compiled", None), "precision", torch_precision),
        "torch_precision": torch_precision,
        "versus_torch": versus_torch,
        "tta_views": 4 if getattr(engine.model, "tta_flips", False) else 1,
        "img_per_s_by_batch": by_batch,
        "1": by_batch.get("1"),
        "best": by_batch[best],
        "best_batch": int(best),
        "forward_ms_batch1": round(forward_ms_1, 2),
        "decode_ms_median": round(statistics.median(decode_ms), 2),
        "post_ms_median": post,
    }


def post_processing_ms(engine: Any, decoded: Any) -> dict[str, float]:
    """Median ms per photo of the scoring stage (labels, fusion, urgency, SHAP, heatmaps) after the forward."""
    from models.knowledge.risk_factors import RiskFactors
    from service.schemas import ClinicalInput, TriageOptions

    features = engine.embed([decoded])
    clinical = ClinicalInput(symptoms=SYMPTOMS, risk_factors=RiskFactors.model_validate_json(RISK_FACTORS))
    post: dict[str, float] = {}
    for name, clin, explain in (
        ("plain", None, False),
        ("symptoms_risk", clinical, False),
        ("symptoms_risk_heatmaps", clinical, True),
    ):
        times = []
        for _ in range(3 if explain else 10):
            t0 = time.perf_counter()
            engine.triage(
                decoded, TriageOptions(top_k=5, explain=explain), clin, request_id="b", image_features=features
            )
            times.append((time.perf_counter() - t0) * 1000)
        post[name] = round(statistics.median(times), 2)
    return post


def runtime_vs_torch(engine: Any, batcher: Any, x: Any, seconds: float, rounds: int = 5) -> dict[str, Any]:
    """Batch-1 photos/s of the chosen runtime and of PyTorch (the serving precision) on the same engine,
    alternated round by round (the machine's load hits both alike); medians and their ratio."""
    model = engine.model
    compiled = getattr(model, "compiled", None)
    modes = {"runtime": compiled, "torch": None} if compiled is not None else {"torch": None}
    rates: dict[str, list[float]] = {k: [] for k in modes}
    per_round = max(seconds / (2 * rounds), 0.3)
    try:
        for _ in range(rounds):
            for name, runner in modes.items():
                model.compiled = runner
                batcher.forward(x)
                n, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < per_round or n < 3:
                    batcher.forward(x)
                    n += 1
                rates[name].append(n / (time.perf_counter() - t0))
    finally:
        model.compiled = compiled
    med = {k: round(statistics.median(v), 2) for k, v in rates.items()}
    runtime_rate = med.get("runtime", med["torch"])
    return {"runtime": runtime_rate, "torch": med["torch"], "ratio": round(runtime_rate / med["torch"], 2)}


async def load_level(
    base: str, photos: list[bytes], clients: int, seconds: float, *, explain: bool, pid: int, clinical: bool = False
) -> dict[str, Any]:
    """``clients`` concurrent clients, each sending one photo after another for ``seconds``."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    rss_peak = rss_mb(pid)
    stop_at = time.perf_counter() + seconds
    data = {"top_k": "5"}
    if clinical:  # symptoms and risk factors: fusion, urgency and their SHAP values run too
        data |= {"symptoms": SYMPTOMS, "risk_factors": RISK_FACTORS}
    if explain:
        data["explain"] = "true"

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        k = i
        while time.perf_counter() < stop_at:
            photo = photos[k % len(photos)]
            k += clients
            t0 = time.perf_counter()
            try:
                r = await http.post("/v1/triage", files={"image": ("p.jpg", photo, "image/jpeg")}, data=data)
            except httpx.TransportError:
                errors += 1
                continue
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1000)

    async def sample_rss() -> None:
        nonlocal rss_peak
        while time.perf_counter() < stop_at:
            rss_peak = max(rss_peak, rss_mb(pid))
            await asyncio.sleep(0.2)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(sample_rss(), *(client(i, http) for i in range(clients)))
        elapsed = time.perf_counter() - t0
    return {
        "img_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "requests": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "transport_errors": errors,
        "rss_peak_mb": round(rss_peak, 1),
    }


def service(cfg: BenchConfig, photos: list[bytes], best_batch: int) -> dict[str, Any]:
    env = {"DERMTRIAGE_MAX_BATCH_SIZE": str(cfg.max_batch_size or best_batch)}
    if cfg.threads:
        env["DERMTRIAGE_INFERENCE_THREADS"] = str(cfg.threads)
    if cfg.precision:
        env["DERMTRIAGE_PRECISION"] = cfg.precision
    if cfg.runtime:
        env["DERMTRIAGE_RUNTIME"] = cfg.runtime
    with tempfile.TemporaryDirectory() as tmp:
        proc, base = start_server(env, Path(tmp) / "server.log")
        try:
            idle_rss = rss_mb(proc.pid)
            asyncio.run(load_level(base, photos, 2, 2.0, explain=False, pid=proc.pid))  # warm-up
            plain = {
                str(c): asyncio.run(load_level(base, photos, c, cfg.seconds, explain=False, pid=proc.pid))
                for c in cfg.clients
            }
            heat = (
                {
                    str(c): asyncio.run(load_level(base, photos, c, cfg.seconds, explain=True, pid=proc.pid))
                    for c in cfg.heatmap_clients
                }
                if cfg.heatmaps
                else {}
            )
            top = max(cfg.clients)
            clinical = {
                str(top): asyncio.run(
                    load_level(base, photos, top, cfg.seconds, explain=False, pid=proc.pid, clinical=True)
                )
            }
        finally:
            proc.terminate()
            proc.wait(60)
    return {"max_batch_size": int(env["DERMTRIAGE_MAX_BATCH_SIZE"]), "rss_idle_mb": round(idle_rss, 1)} | {
        "plain": plain,
        "heatmaps": heat,
        "clinical": clinical,
    }


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    photos = sample_photos(cfg.data, cfg.photos)
    load_before = os.getloadavg()
    fl = floor(cfg, photos)
    sv = service(cfg, photos, fl["best_batch"])
    plain = sv["plain"]
    single = plain.get("1", {}).get("p50_ms")
    target_single = 1.3 * (fl["forward_ms_batch1"] + fl["decode_ms_median"])
    heat_1 = sv["heatmaps"].get("1", {}).get("p50_ms")
    vt = fl["versus_torch"]
    out: dict[str, Any] = {
        "runtime": fl["runtime"],
        "floor_img_per_s": {"1": fl["1"], "best": fl["best"], "best_batch": fl["best_batch"]}
        | {fl["runtime"]: vt["runtime"], "torch": vt["torch"], "runtime_vs_torch": vt["ratio"]},
        "runtime_vs_torch_ok": vt["ratio"] >= 2.5,
        "heatmap_ratio": round(heat_1 / single, 2) if heat_1 and single else None,
        "service": {c: {k: v[k] for k in ("img_per_s", "p50_ms", "p95_ms", "p99_ms")} for c, v in plain.items()},
        "ratio_32": round(plain["32"]["img_per_s"] / fl["best"], 3) if "32" in plain else None,
        "ratios": {c: round(v["img_per_s"] / fl["best"], 3) for c, v in plain.items()},
        "service_heatmaps": {
            c: {k: v[k] for k in ("img_per_s", "p50_ms", "p95_ms", "p99_ms")} for c, v in sv["heatmaps"].items()
        },
        "service_clinical": {
            c: {k: v[k] for k in ("img_per_s", "p50_ms", "p95_ms", "p99_ms")} for c, v in sv["clinical"].items()
        },
        "single_p50_target_ms": round(target_single, 1),
        "single_p50_ok": single is not None and single <= target_single,
        "ratio_32_ok": "32" in plain and plain["32"]["img_per_s"] >= 0.85 * fl["best"],
        "floor": fl,
        "service_detail": sv,
        "load_average": {"before": [round(x, 2) for x in load_before], "after": [round(x, 2) for x in os.getloadavg()]},
        "cpus": len(os.sched_getaffinity(0)),
        "photos": "PAD-UFES-20" if (cfg.data / "images").is_dir() else "generated",
    }
    return out


def print_report(out: dict[str, Any]) -> None:
    fl = out["floor"]
    print(
        f"floor (in-process image tower, {fl['runtime']}, {fl['threads']} thread(s), {fl['precision']}, "
        f"{fl['tta_views']} views/photo):"
    )
    for b, v in fl["img_per_s_by_batch"].items():
        print(f"  batch {b:>3}: {v:7.2f} photos/s")
    print(f"  batch-1 forward {fl['forward_ms_batch1']} ms, decode+preprocess {fl['decode_ms_median']} ms")
    print(f"  post-processing per photo (ms, median): {fl['post_ms_median']}")
    vt = fl["versus_torch"]
    print(
        f"  batch 1, alternated rounds: {fl['runtime']} {vt['runtime']} photos/s, torch ({fl['torch_precision']}) "
        f"{vt['torch']} photos/s: x{vt['ratio']} (target >= 2.5: {out['runtime_vs_torch_ok']})"
    )
    sd = out["service_detail"]
    print(f"service (max batch {sd['max_batch_size']}, idle RSS {sd['rss_idle_mb']} MiB):")
    for kind in ("plain", "heatmaps", "clinical"):
        for c, r in sd[kind].items():
            print(
                f"  {kind:8s} {c:>3} clients: {r['img_per_s']:6.2f} photos/s  p50 {r['p50_ms']:7.1f}  "
                f"p95 {r['p95_ms']:7.1f}  p99 {r['p99_ms']:7.1f} ms  peak RSS {r['rss_peak_mb']} MiB  "
                f"statuses {r['statuses']} errors {r['transport_errors']}"
            )
    print(
        f"ratio service/floor at 32 clients: {out['ratio_32']} (target >= 0.85: {out['ratio_32_ok']}); "
        f"single p50 {out['service'].get('1', {}).get('p50_ms')} ms vs target {out['single_p50_target_ms']} ms "
        f"({out['single_p50_ok']})"
    )
    print(f"heatmap request p50 / plain request p50 (1 client): {out['heatmap_ratio']}")
    print(f"load average before/after: {out['load_average']}, {out['cpus']} CPUs, photos: {out['photos']}")
