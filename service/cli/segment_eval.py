"""`dermtriage segment-eval`: Jaccard and Dice of the served segmenter and the Otsu baseline on an ISIC
2017 split, and optionally a contact sheet of outlines over clinical photos."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.cli._common import add_data, set_threads, subparser


def _isic(p: argparse.ArgumentParser) -> None:
    p.add_argument("--isic", type=Path, help="the ISIC 2017 folder (default: the checkout's ../shared/data/isic-2017)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def add_parser(sub: Any) -> None:
    e = subparser(sub, "segment-eval", "Jaccard / Dice of the segmenter and Otsu on an ISIC split", run)
    _isic(e)
    e.add_argument("--split", choices=["train", "validation", "test"], default="test")
    e.add_argument("--limit", type=int, help="evenly spaced subset of N images")
    e.add_argument("--contact-sheet", type=Path, help="also write outlines over clinical photos to this PNG")
    e.add_argument("--sheet-photos", type=int, default=24, help="clinical photos on the contact sheet")
    add_data(e, "clinical photos for the contact sheet (PAD layout)")


def run(args: argparse.Namespace) -> int:
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
