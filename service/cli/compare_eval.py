"""`dermtriage compare-eval`: how well the lesion comparison tells change from no change, on PAD-UFES-20
pairs (thresholds tuned on a development half of the patients, figures on the held-out half; see
models/fitting/change_eval.py)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli._common import add_data, set_threads, subparser


def add_parser(sub: Any) -> None:
    c = subparser(sub, "compare-eval", "change detection on PAD pairs: false 'changed' rate, AUROC", run)
    add_data(c)
    c.add_argument("--photos", type=int, default=60, help="photos per half that synthetic pairs are made from")
    c.add_argument("--different-lesions", type=int, default=40, help="pairs of two patients' lesions per half")
    c.add_argument("--threads", type=int)


def run(args: argparse.Namespace) -> int:
    from models.fitting.change_eval import evaluate_change

    set_threads(args.threads)
    report = evaluate_change(
        args.data, args.photos, log=lambda s: print(s, file=sys.stderr), different_lesions=args.different_lesions
    )
    print(json.dumps(report, indent=2))
    return 0
