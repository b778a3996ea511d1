"""`dermtriage create-api-key`: print a new API key once, and the hashed line to configure."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli._common import subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "create-api-key", "print a new API key and the hashed line to configure", run)
    p.add_argument("--name", help="key name (1-64 of A-Z a-z 0-9 . _ -); default key-<random>")
    p.add_argument("--per-minute", type=float, help="this key's rate limit (default DERMTRIAGE_API_RATE_PER_MINUTE)")
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    """The key itself is stored nowhere: only its hashed line is configured."""
    from service.auth.api_keys import generate_api_key

    try:
        key, record = generate_api_key(args.name, args.per_minute)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = record.line()
    if args.json:
        print(json.dumps({"name": record.name, "key": key, "config_line": line}))
        return 0
    print(f"API key (give it to the client; it is shown only now): {key}")
    print(f"Configuration line (add it to DERMTRIAGE_API_KEYS, comma-separated): {line}")
    print(f'e.g. export DERMTRIAGE_API_KEYS="{line}"')
    return 0
