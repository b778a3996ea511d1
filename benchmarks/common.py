"""What the benchmarks share: the request payload, development photos, a loopback server, percentiles, RSS."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from models.fitting.datasets import DEFAULT_DATA

__all__ = [
    "DEFAULT_DATA",
    "REPO",
    "RISK_FACTORS",
    "SYMPTOMS",
    "percentile",
    "rss_mb",
    "sample_photos",
    "start_server",
]

REPO = Path(__file__).resolve().parents[1]
RISK_FACTORS = json.dumps({"age": 64, "fitzpatrick": 2, "diameter_mm": 7, "changed_size": True})
SYMPTOMS = "mole getting bigger and itchy for 3 months, no bleeding"


def sample_photos(data: Path, n: int) -> list[bytes]:
    """The first ``n`` development photos, or generated lesion-like JPEGs when the data is absent."""
    images = sorted((data / "images").glob("*.jpg"))[:n] if (data / "images").is_dir() else []
    if images:
        return [p.read_bytes() for p in images]
    import numpy as np
    from PIL import Image, ImageDraw

    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        pixels = np.array([198, 150, 122]) + rng.normal(0, 9, (768, 1024, 3))
        im = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
        ImageDraw.Draw(im).ellipse((400, 260, 600, 480), fill=(90, 60, 40))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MiB (Linux /proc); NaN where it cannot be read."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def start_server(env_extra: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """`dermtriage serve` on a free loopback port (auth off), once ready; returns the process and base URL."""
    import socket

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DERMTRIAGE_AUTH_DISABLED": "1", "DERMTRIAGE_LOG_LEVEL": "warning", **env_extra}
    cmd = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health/ready", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("server never got ready")


def case_bench_main(doc: str | None, measure: Callable[[str, int], Awaitable[dict[str, Any]]]) -> None:
    """The case-store benchmarks' command line: `--cases N`, `--url URL` (default a fresh SQLite file), `--json`."""
    import argparse
    import asyncio
    import tempfile

    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=1000)
    parser.add_argument("--url", help="database URL (default: a fresh SQLite file)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = args.url or f"sqlite+aiosqlite:///{Path(tempfile.mkdtemp()) / 'bench.db'}"
    figures = asyncio.run(measure(url, args.cases))
    print(json.dumps(figures) if args.json else "\n".join(f"{k}: {v}" for k, v in figures.items()))
