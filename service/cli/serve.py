"""`dermtriage serve`: run the HTTP service (flags override DERMTRIAGE_* variables)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from models.backends.registry import DEFAULT_MODEL
from service.cli._common import subparser

KEYS = ("host", "port", "model", "workers", "log_level", "device")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "serve", "run the HTTP service (flags override DERMTRIAGE_* variables)", run)
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--model", help=f"registry name, spec file or ad-hoc model (default {DEFAULT_MODEL})")
    p.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--engine", choices=["uvicorn", "ray"], default="uvicorn", help="uvicorn (default) or Ray Serve")
    p.add_argument("--replicas", type=int, default=1, help="Ray Serve replicas (--engine ray; each loads the model)")
    return p


RAY_MISSING = "error: --engine ray needs Ray Serve: pip install -e '.[ray]'"


def run(args: argparse.Namespace) -> int:
    from service.server import configure, serve

    overrides = {k: getattr(args, k) for k in KEYS}
    if args.engine == "uvicorn":
        return serve(overrides)
    if args.replicas < 1:
        print("error: --replicas must be at least 1", file=sys.stderr)
        return 2
    if importlib.util.find_spec("ray") is None:
        print(RAY_MISSING, file=sys.stderr)
        return 2
    settings = configure(overrides)
    if settings is None:
        return 2
    from service.ray_serve import run as run_on_ray

    return run_on_ray(settings, args.replicas)
