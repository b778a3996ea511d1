"""`dermtriage calibrate` (also `dermtriage fit calibration`): temperature(s) and conformal scores on a labelled
folder, written where `--out` says or under ./artifacts/<model>/ (never into the installed package by default)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.cli._common import (
    add_data,
    add_modality,
    add_model,
    add_out,
    add_runtime,
    set_threads,
    subparser,
    use_runtime,
)

HELP = "fit temperature and conformal sets on a labelled folder"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model(p)
    add_data(p)
    add_out(p, "calibration file", "<model>/calibration.json")
    p.add_argument("--coverage", type=float, default=0.9, help="coverage the printed figures are measured at")
    p.add_argument("--method", choices=["aps", "raps"], default="aps")
    p.add_argument("--lam", type=float, default=0.01, help="RAPS penalty")
    p.add_argument("--k-reg", type=int, default=2, help="RAPS: ranks without penalty")
    p.add_argument("--marginal", action="store_true", help="one threshold for all classes (not class-conditional)")
    add_modality(p)
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--from-store",
        action="store_true",
        help="refit the image stage on the kept cases with an outcome or a review (not a folder)",
    )
    p.add_argument("--url", help="with --from-store: database URL (default DERMTRIAGE_DATABASE_URL)")
    add_runtime(p)


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "calibrate", HELP, run)
    add_arguments(p)
    return p


def run(args: argparse.Namespace) -> int:
    from models.backends.registry import load_model
    from models.fitting.calibration_fit import calibrate_folder, calibration_output
    from models.knowledge.taxonomy import load_taxonomy

    set_threads(args.threads)
    if args.from_store:
        return _from_store(args)
    model = load_model(args.model)
    use_runtime(model, args.runtime)  # a folder without out-of-fold scores is embedded as served
    out = calibration_output(model.card.name, args.out)
    try:
        cal, figures = calibrate_folder(
            model,
            load_taxonomy(),
            args.data,
            coverage=args.coverage,
            method=args.method,
            lam=args.lam,
            k_reg=args.k_reg,
            class_conditional=not args.marginal,
            modality=args.modality,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cal.write(out)
    summary = {
        name: {k: f[k] for k in ("n", "ece_uncalibrated", "ece", "coverage", "mean_set_size", "fold_temperatures")}
        | {"temperature": cal.stages[name].temperature}
        for name, f in figures.items()
    }
    if args.json:
        print(json.dumps({"file": str(out), "id": cal.id, "stages": summary}))
        return 0
    print(f"wrote {out} ({cal.id})")
    for name, f in summary.items():
        print(
            f"  {name}: T={f['temperature']:.3f}; cross-fitted ECE {f['ece_uncalibrated']:.3f} -> {f['ece']:.3f}, "
            f"coverage {f['coverage']:.3f} at {args.coverage:.2f}, mean set size {f['mean_set_size']:.2f} (n={f['n']})"
        )
    return 0


def _from_store(args: argparse.Namespace) -> int:
    """The image stage refitted on the kept cases; the model's other stages (fused) carried over as shipped."""
    from models.backends.registry import load_model
    from models.fitting.calibration_fit import calibration_output
    from models.fitting.calibration_stats import provenance
    from models.knowledge.taxonomy import load_taxonomy
    from models.uncertainty.calibration import CalibrationFile, load_calibration
    from service.cli._from_store import TooFewCases, calibration_stage_from_store
    from service.settings import Settings

    url = args.url or Settings().database_url
    try:
        stage, figures = calibration_stage_from_store(
            url, args.model, args.coverage, args.method, args.lam, args.k_reg, not args.marginal
        )
    except TooFewCases as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model, taxonomy = load_model(args.model), load_taxonomy()
    shipped = model.artifacts.calibration
    stages = dict(load_calibration(shipped).stages) if shipped and shipped.is_file() else {}
    cal = CalibrationFile(
        model={"name": model.card.name, "version": model.card.version, "fingerprint": model.artifacts.fingerprint},
        taxonomy={"version": taxonomy.version, "fingerprint": taxonomy.fingerprint},
        stages={**stages, "image": stage},
        fit=provenance(
            "case store",
            "image stage: temperature (NLL) then split-conformal on the kept cases' uncalibrated image "
            "probabilities, ground truth outcome over review; other stages as shipped",
            n=figures["n"],
            classes=stage.classes,
        ),
    )
    out = calibration_output(model.card.name, args.out)
    cal.write(out)
    keys = ("n", "ece_uncalibrated", "ece", "coverage", "mean_set_size", "left_out")
    summary = {k: figures[k] for k in keys} | {"temperature": stage.temperature}
    print(json.dumps({"file": str(out), "id": cal.id, "stages": {"image": summary}}) if args.json else
          f"wrote {out} ({cal.id}): image T={stage.temperature:.3f}; cross-fitted ECE "
          f"{figures['ece_uncalibrated']:.3f} -> {figures['ece']:.3f}, coverage {figures['coverage']:.3f} "
          f"(n={figures['n']}, left out {figures['left_out']})")  # fmt: skip
    return 0
