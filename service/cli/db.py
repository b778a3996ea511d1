"""`dermtriage db upgrade`: run the case database's migrations (shipped in the package) to the newest."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from service.cli._common import subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "db", "manage the case database (DERMTRIAGE_DATABASE_URL)", run)
    p.add_argument("action", choices=["upgrade"], help="upgrade: apply the shipped migrations")
    p.add_argument("--url", help="database URL (default DERMTRIAGE_DATABASE_URL, else ./dermtriage.db)")
    p.add_argument("--revision", default="head", help="target revision (default: the newest)")
    return p


async def _upgrade(url: str, revision: str) -> None:
    from service.store.db import alchemy_config, upgrade

    engine = alchemy_config(url).get_engine()
    try:
        await upgrade(engine, revision)
    finally:
        await engine.dispose()


def run(args: argparse.Namespace) -> int:
    from service.settings import Settings
    from service.store.db import redacted

    url = args.url or Settings().database_url
    try:
        asyncio.run(_upgrade(url, args.revision))
    except Exception as exc:  # a CLI reports and exits non-zero
        print(f"error: could not upgrade {redacted(url)}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"database {redacted(url)} is at revision {args.revision}")
    return 0
