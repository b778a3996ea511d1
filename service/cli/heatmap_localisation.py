"""`dermtriage heatmap-localisation`: heatmap energy inside the expert lesion mask and the pointing
game on ISIC 2017 images, beside random and centre maps (explain/localisation.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli._common import set_threads, subparser


def _isic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--isic", type=Path, help="the ISIC 2017 folder (default: the checkout's ../shared/data/isic-2017)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def add_parser(sub: Any) -> None:
    h = subparser(sub, "heatmap-localisation", "heatmap energy in the expert mask, pointing game (ISIC)", run)
    _isic(h)
    h.add_argument("--model", default="embedded-isic-lite0", help="registry name of the model explained")
    h.add_argument("--split", choices=["train", "validation", "test"], default="test")
    h.add_argument("--limit", type=int, help="evenly spaced subset of N images")


def run(args: argparse.Namespace) -> int:
    from explain.faithfulness import dataset_labels
    from explain.localisation import evaluate_localisation
    from models.backends.registry import load_model
    from models.fitting.segmentation_fit import ISIC_DIR, isic_items
    from models.knowledge.taxonomy import load_taxonomy

    set_threads(args.threads)
    items = isic_items(args.isic or ISIC_DIR, split=args.split)
    if args.limit:
        items = items[:: max(1, len(items) // args.limit)][: args.limit]
    model = load_model(args.model)
    ids = ["melanocytic_nevus", "melanoma", "seborrheic_keratosis"]
    labels = dataset_labels(model, load_taxonomy(), ids, "dermoscopic")
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    report = evaluate_localisation(model, [(i.image, i.mask) for i in items], labels, log=log)
    print(json.dumps({"split": args.split, "model": args.model, **report}, indent=2))
    return 0
