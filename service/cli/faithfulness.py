"""`dermtriage faithfulness`: deletion / insertion AUC of heatmaps against random and centre maps."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli._common import add_data, add_model, set_threads, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from explain.gradcam import DEFAULT_METHOD, METHODS

    p = subparser(sub, "faithfulness", "deletion / insertion AUC of heatmaps vs random and centre maps", run)
    add_data(p)
    add_model(p)
    p.add_argument("--method", choices=sorted(METHODS), default=DEFAULT_METHOD)
    p.add_argument("--limit", type=int, help="evenly spaced subset of N photos (default: all)")
    p.add_argument("--steps", type=int, default=16, help="perturbation steps per curve (one batch)")
    p.add_argument("--baseline", choices=["blur", "mean"], default="blur", help="what removed pixels become")
    p.add_argument("--target", choices=["predicted", "label"], default="predicted", help="condition tracked")
    p.add_argument("--compare", action="append", choices=sorted(METHODS), help="more methods (table only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from explain.faithfulness import FaithfulnessConfig, faithfulness_on_folder, stderr_log
    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
    from service.images import ImageLimits, decode_image

    if (args.limit is not None and args.limit < 1) or args.steps < 2:
        print("error: --limit must be >= 1 and --steps >= 2", file=sys.stderr)
        return 2
    set_threads(args.threads)
    model = load_model(args.model)
    config = FaithfulnessConfig(steps=args.steps, baseline=args.baseline, target=args.target, seed=args.seed)
    report = faithfulness_on_folder(
        model,
        args.data,
        load_taxonomy(),
        method=args.method,
        compare=args.compare or (),
        limit=args.limit,
        config=config,
        loader=lambda path: decode_image(path.read_bytes(), ImageLimits()).image,
        log=stderr_log,
    )
    if args.json:
        print(json.dumps(report.summary()))
        return 0
    s = report.settings
    print(f"{s['model']} on {args.data}: {s['photos']} photos, labels {s['labels']}")
    print(f"target = {s['target']} class, removed pixels -> {s['baseline']}, {s['steps']} steps, {s['seconds']} s")
    print(report.table())
    return 0
