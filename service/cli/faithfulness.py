"""`dermtriage faithfulness`: how faithful the heatmaps are (explain/README.md).

Layouts: `photos` (deletion / insertion AUC on the photos as they are, against random and centre
maps) and `offcentre` (composites with the lesion pasted at a random place: pointing game, energy
in the box, deletion / insertion). `--sanity`: the model-randomisation check instead.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli._common import add_data, add_model, set_threads, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from explain.gradcam import DEFAULT_METHOD, METHODS

    p = subparser(sub, "faithfulness", "how faithful the heatmaps are: deletion / insertion, pointing game", run)
    add_data(p)
    add_model(p)
    p.add_argument("--method", choices=sorted(METHODS), default=DEFAULT_METHOD)
    p.add_argument("--layout", choices=["photos", "offcentre"], default="photos", help="photos, or composites")
    p.add_argument("--limit", type=int, help="evenly spaced subset of N photos (default: all)")
    p.add_argument("--half", choices=["all", "a", "b"], default="all", help="interleaved half (a: 0,2,..)")
    p.add_argument("--steps", type=int, default=16, help="perturbation steps per curve (one batch)")
    p.add_argument(
        "--baseline",
        choices=["blur", "mean", "background"],
        help="what removed pixels become (photos: blur; offcentre: background, the composite without its lesion)",
    )
    p.add_argument("--target", choices=["predicted", "label"], default="predicted", help="condition tracked (photos)")
    p.add_argument("--compare", action="append", choices=sorted(METHODS), help="more methods (table only)")
    p.add_argument("--no-curves", action="store_true", help="offcentre: pointing game and energy only (fast)")
    p.add_argument("--sanity", action="store_true", help="model-randomisation check (Spearman) instead")
    p.add_argument("--sanity-mode", choices=["cascading", "independent"], default="cascading")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy machine)")
    p.add_argument("--json", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from explain.faithfulness import FaithfulnessConfig, faithfulness_on_folder, stderr_log
    from explain.offcentre import offcentre_on_folder
    from explain.sanity import sanity_on_folder
    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
    from service.images import ImageLimits, decode_image

    if (args.limit is not None and args.limit < 1) or args.steps < 2:
        print("error: --limit must be >= 1 and --steps >= 2", file=sys.stderr)
        return 2
    if args.layout == "photos" and args.half != "all" and not args.sanity:
        print("error: --half applies to --layout offcentre and --sanity", file=sys.stderr)
        return 2
    if args.layout == "photos" and args.baseline == "background":
        print("error: --baseline background exists only for --layout offcentre (composites)", file=sys.stderr)
        return 2
    baseline = args.baseline or ("background" if args.layout == "offcentre" else "blur")
    set_threads(args.threads)
    model = load_model(args.model)
    common = {"limit": args.limit, "loader": lambda path: decode_image(path.read_bytes(), ImageLimits()).image}
    taxonomy = load_taxonomy()
    if args.sanity:
        report: Any = sanity_on_folder(
            model, args.data, taxonomy, method=args.method, layout=args.layout, half=args.half,
            mode=args.sanity_mode, seed=args.seed, log=stderr_log, **common,
        )  # fmt: skip
        print(report.model_dump_json() if args.json else report.table())
        return 0
    config = FaithfulnessConfig(steps=args.steps, baseline=baseline, target=args.target, seed=args.seed)
    if args.layout == "offcentre":
        report = offcentre_on_folder(
            model, args.data, taxonomy, method=args.method, compare=args.compare or (), half=args.half,
            config=config, curves=not args.no_curves, log=stderr_log, **common,
        )  # fmt: skip
    else:
        report = faithfulness_on_folder(
            model, args.data, taxonomy, method=args.method, compare=args.compare or (), config=config,
            log=stderr_log, **common,
        )  # fmt: skip
    if args.json:
        print(json.dumps(report.summary()))
        return 0
    s = report.settings
    print(f"{s['model']} on {args.data} ({args.layout}): {s['photos']} photos, labels {s['labels']}")
    print(f"removed pixels -> {s['baseline']}, {s['steps']} steps, {s['seconds']} s")
    print(report.table())
    return 0
