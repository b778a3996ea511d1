"""`dermtriage train-segmentation`, `segment-eval` and `heatmap-localisation`: fit the lesion
segmentation head on the ISIC 2017 masks, score it (and the Otsu baseline) on a split, and measure
whether the heatmaps point at the expert-outlined lesion.

The modules parse and call; the work is in models/fitting/segmentation_fit.py and explain/localisation.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli._common import add_data, set_threads, subparser


def _isic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--isic", type=Path, help="the ISIC 2017 folder (default: the checkout's ../shared/data/isic-2017)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def add_parser(sub: Any) -> None:
    t = subparser(sub, "train-segmentation", "train the lesion segmentation head on ISIC 2017 masks", run_train)
    _isic(t)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--cache-dir", type=Path, help="where the frozen trunk's features are cached")
    t.add_argument("--out", type=Path, default=Path("artifacts/lesion-seg-head.safetensors"))
    e = subparser(sub, "segment-eval", "Jaccard / Dice of the segmenter and Otsu on an ISIC split", run_eval)
    _isic(e)
    e.add_argument("--split", choices=["train", "validation", "test"], default="test")
    e.add_argument("--limit", type=int, help="evenly spaced subset of N images")
    e.add_argument("--contact-sheet", type=Path, help="also write outlines over clinical photos to this PNG")
    e.add_argument("--sheet-photos", type=int, default=24, help="clinical photos on the contact sheet")
    add_data(e, "clinical photos for the contact sheet (PAD layout)")
    h = subparser(sub, "heatmap-localisation", "heatmap energy in the expert mask, pointing game (ISIC)", run_loc)
    _isic(h)
    h.add_argument("--model", default="embedded-isic-lite0", help="registry name of the model explained")
    h.add_argument("--split", choices=["train", "validation", "test"], default="test")
    h.add_argument("--limit", type=int, help="evenly spaced subset of N images")

def run_train(args: argparse.Namespace) -> int:
    from models.fitting.segmentation_fit import ISIC_DIR, fit_segmentation

    set_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    report = fit_segmentation(args.cache_dir, args.out, epochs=args.epochs, root=args.isic or ISIC_DIR, log=log)
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from models.fitting.segmentation_fit import ISIC_DIR, contact_sheet, evaluate_segmentation

    set_threads(args.threads)
    report = evaluate_segmentation(args.split, args.limit, root=args.isic or ISIC_DIR)
    if args.contact_sheet:
        photos = sorted((args.data / "images").iterdir())
        step = max(1, len(photos) // args.sheet_photos)
        report["contact_sheet"] = {
            "path": str(args.contact_sheet),
            **contact_sheet(photos[::step][: args.sheet_photos], args.contact_sheet),
        }
    print(json.dumps(report, indent=2))
    return 0


def run_loc(args: argparse.Namespace) -> int:
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

