"""`dermtriage export-runtime`: build (or check) the cached ONNX export of a model's served image tower
ahead of the first start, e.g. while building a container image (models/embedded/export.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli._common import add_model, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "export-runtime", "export a model's served image tower to ONNX (the runtime cache)", run)
    add_model(p)
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="folder (default: $DERMTRIAGE_CACHE_DIR, else $XDG_CACHE_HOME/dermtriage/runtime or ~/.cache/...)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from models.backends.registry import load_model
    from models.embedded.export import cached_export, ensure_export
    from models.embedded.model import EmbeddedBackend
    from service.settings import Settings

    model = load_model(args.model)
    if not isinstance(model, EmbeddedBackend):
        print(f"{model.card.name} runs on PyTorch only (the optimised runtimes serve the embedded models)")
        return 1
    cache_dir = args.cache_dir or Settings().cache_dir
    reused = cached_export(model, cache_dir) is not None
    path = ensure_export(model, cache_dir)
    print(f"{'up to date' if reused else 'exported'}: {path} for {model.artifacts.fingerprint}")
    return 0
