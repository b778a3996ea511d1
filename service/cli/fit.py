"""`dermtriage fit fusion|ood|calibration`: the offline fits, written under ./artifacts/<model>/ unless `--out`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from service.cli import calibrate
from service.cli._common import add_data, add_model, add_out, set_threads, subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "fit", "fit what the service loads: fusion, OOD statistics, calibration", run)
    fits = p.add_subparsers(dest="fit_command", required=True)

    fu = fits.add_parser(
        "fusion",
        help="stack image, symptoms and risk factors on the embedded model's out-of-fold "
        "probabilities (PAD layout); prints the cross-fitted figures",
    )
    add_data(fu, "PAD-UFES-20 folder")
    fu.add_argument("--oof", help="out-of-fold image probabilities (default: the embedded model's validation CSV)")
    add_out(fu, "fusion file", "embedded-pad-lite0/fusion.json")
    fu.add_argument("--l2", type=float, default=None, help="L2 penalty on the risk weights (default 3.0)")

    od = fits.add_parser("ood", help="fit and judge the out-of-distribution gate; prints the held-out figures")
    add_model(od)
    add_data(od, "skin photos to fit on")
    add_out(od, "OOD statistics", "<model>/ood_stats.npz")
    od.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    od.add_argument("--dry-run", action="store_true", help="print the figures, write nothing")
    od.add_argument("--no-prompts", action="store_true", help="turn the skin-prompt rule off (embedded model)")

    ca = fits.add_parser("calibration", help=f"{calibrate.HELP} (same as `dermtriage calibrate`)")
    calibrate.add_arguments(ca)
    return p


def run(args: argparse.Namespace) -> int:
    return {"fusion": run_fusion, "ood": run_ood, "calibration": calibrate.run}[args.fit_command](args)


def run_fusion(args: argparse.Namespace) -> int:
    from models.embedded.model import MODEL_NAME
    from models.fitting.fusion_fit import DEFAULT_L2, fit_pad_fusion, save_fusion
    from models.fitting.outputs import FUSION_FILE, resolve_output

    out = resolve_output(args.out, MODEL_NAME, FUSION_FILE)
    fused = fit_pad_fusion(args.data, Path(args.oof) if args.oof else None, DEFAULT_L2 if args.l2 is None else args.l2)
    save_fusion(fused, out)
    print(json.dumps(fused.fit["cross_fitted"], indent=1))
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run_ood(args: argparse.Namespace) -> int:
    from models.backends.registry import load_model
    from models.fitting.ood_fit import fit_ood_on_folder
    from models.fitting.outputs import OOD_FILE, resolve_output

    set_threads(args.threads)
    model = load_model(args.model)
    out = resolve_output(args.out, model.card.name, OOD_FILE)
    stats, figures = fit_ood_on_folder(model, args.data, prompts=not args.no_prompts)
    print(json.dumps(figures, indent=1))
    if not args.dry_run:
        stats.save(out)
        print(f"wrote {out}")
    return 0
