"""Time from `dermtriage serve` to ready: a first start (empty runtime cache: the image tower is
exported) and warm restarts (the cached export reused), per image-tower runtime.

    python -m benchmarks.startup [--runtimes openvino,torch] [--restarts 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.common import start_server


def time_to_ready(env: dict[str, str], log: Path) -> float:
    t0 = time.perf_counter()
    proc, _ = start_server(env, log)
    elapsed = time.perf_counter() - t0
    proc.terminate()
    proc.wait(60)
    return round(elapsed, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtimes", default="openvino,torch")
    ap.add_argument("--restarts", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out: dict[str, object] = {"load_average_before": [round(x, 2) for x in os.getloadavg()]}
    for runtime in args.runtimes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            env = {"DERMTRIAGE_RUNTIME": runtime, "DERMTRIAGE_CACHE_DIR": tmp}
            log = Path(tmp) / "server.log"
            first = time_to_ready(env, log)
            warm = [time_to_ready(env, log) for _ in range(args.restarts)]
        out[runtime] = {"first_start_s": first, "warm_restart_s": warm}
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
