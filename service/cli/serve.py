"""`dermtriage serve`: run the HTTP service (flags override DERMTRIAGE_* variables)."""

from __future__ import annotations

import argparse
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
    return p


def run(args: argparse.Namespace) -> int:
    from service.server import serve

    return serve({k: getattr(args, k) for k in KEYS})
