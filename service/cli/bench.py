"""`dermtriage bench`: image-tower floor in-process, then the real service under load (benchmarks/service_bench.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.cli._common import add_data, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "bench", "image-tower floor and service throughput/latency at 1, 8, 32 clients", run)
    p.add_argument("--json", action="store_true")
    p.add_argument("--seconds", type=float, default=10.0, help="per load level (and for the floor sweep)")
    p.add_argument("--clients", default="1,8,32", help="concurrency levels without heatmaps")
    p.add_argument("--heatmap-clients", default="1,8,32", help="concurrency levels with heatmaps")
    p.add_argument("--no-heatmaps", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    p.add_argument("--max-batch-size", type=int, default=None, help="default: the floor's best batch")
    p.add_argument("--precision", choices=["float32", "bfloat16"], default=None)
    p.add_argument(
        "--runtime", choices=["torch", "onnxruntime", "openvino", "auto"], default=None, help="image-tower runtime"
    )
    add_data(p, "photos to send (generated ones if absent)")
    return p


def _counts(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def run(args: argparse.Namespace) -> int:
    from benchmarks.service_bench import BenchConfig, print_report, run_bench

    cfg = BenchConfig(
        seconds=args.seconds,
        clients=_counts(args.clients),
        heatmap_clients=_counts(args.heatmap_clients),
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        precision=args.precision,
        runtime=args.runtime,
        data=Path(args.data),
        heatmaps=not args.no_heatmaps,
    )
    out = run_bench(cfg)
    if args.json:
        print(json.dumps(out))
    else:
        print_report(out)
    return 0
