"""`dermtriage build-text-cache`: precompute the condition embeddings a model ships (both modalities)."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli._common import add_model, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "build-text-cache", "precompute the condition embeddings a model ships", run)
    add_model(p)
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder (default: ./artifacts/<model>/text_cache; the cache shipped in the installed package is "
        "replaced only when --out names it, e.g. --out models/embedded/text_cache)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from models.backends.registry import load_model
    from models.fitting.outputs import TEXT_CACHE_DIR, resolve_output
    from models.fitting.text_cache import build_text_cache
    from models.knowledge.taxonomy import load_taxonomy

    model = load_model(args.model)
    out = resolve_output(args.out, model.card.name, TEXT_CACHE_DIR)
    build_text_cache(model, load_taxonomy(), out)
    print(f"wrote condition embeddings for {model.card.name} to {out}")
    return 0
