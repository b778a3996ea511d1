"""`dermtriage train-segmentation`: fit the lesion segmentation head on the ISIC 2017 masks
(models/fitting/segmentation_fit.py)."""

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
    t = subparser(sub, "train-segmentation", "train the lesion segmentation head on ISIC 2017 masks", run)
    _isic(t)
    t.add_argument("--epochs", type=int, default=12)
    t.add_argument("--augmented-copies", type=int, default=2, help="randomly scaled/rotated/jittered copies of train")
    t.add_argument("--cache-dir", type=Path, help="where the frozen trunk's features are cached")
    t.add_argument("--out", type=Path, default=Path("artifacts/lesion-seg-head.safetensors"))


def run(args: argparse.Namespace) -> int:
    from models.fitting.segmentation_fit import ISIC_DIR, fit_segmentation

    set_threads(args.threads)
    log = lambda s: print(s, file=sys.stderr)  # noqa: E731
    report = fit_segmentation(
        args.cache_dir,
        args.out,
        epochs=args.epochs,
        augmented_copies=args.augmented_copies,
        root=args.isic or ISIC_DIR,
        log=log,
    )
    print(json.dumps({k: v for k, v in report.items() if k != "history"}, indent=2))
    return 0
