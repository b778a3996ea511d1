"""`dermtriage models`: list the model specs the registry knows."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli._common import subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    return subparser(sub, "models", "list the model specs the registry knows", run)


def run(args: argparse.Namespace) -> int:
    from models.backends.registry import list_specs

    for spec in list_specs():
        print(f"{spec.name:24s} {spec.backend:10s} {spec.source}")
    return 0
