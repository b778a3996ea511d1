"""`dermtriage evaluate`: score a model on a labelled folder (PAD layout or labels.csv)."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

from service.cli._common import add_data, add_modality, add_model, add_runtime, subparser, use_runtime


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "evaluate", "score a model on a labelled folder (PAD layout or labels.csv)", run)
    add_model(p)
    add_data(p)
    p.add_argument(
        "--labels",
        choices=["dataset", "taxonomy", "validated"],
        default="dataset",
        help="the scope the top-level figures use; `scopes` always holds dataset and the service's default",
    )
    add_modality(p)
    p.add_argument("--split", help="keep the labels.csv rows whose `split` column says so (e.g. test)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true")
    p.add_argument("--coverage", type=float, default=0.9, help="nominal coverage of the conformal sets")
    p.add_argument("--report", metavar="DIR", help="write report.md with PNG plots to DIR")
    p.add_argument("--no-ood", action="store_true", help="skip the out-of-distribution rates (embeds the photos)")
    p.add_argument(
        "--from-store", action="store_true", help="judge the kept cases' answers against their outcome or review"
    )
    p.add_argument("--url", help="with --from-store: database URL (default DERMTRIAGE_DATABASE_URL)")
    add_runtime(p)
    return p


def _from_store(args: argparse.Namespace) -> int:
    """The answers as given against the ground truth (outcome over review), every model's cases together
    (`models` lists them)."""
    from service.cli._from_store import TooFewCases, evaluate_store
    from service.settings import Settings

    try:
        report = evaluate_store(args.url or Settings().database_url)
    except TooFewCases as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{report['n']} kept cases with a ground truth: balanced accuracy {report['balanced_accuracy']:.3f}, "
        f"accuracy {report['accuracy']:.3f}, top-3 {report['top3_accuracy']:.3f}"
    )
    for condition, recall in report["per_class"].items():
        print(f"  {condition}: recall {recall:.3f}")
    return 0


def run(args: argparse.Namespace) -> int:
    from models.backends.registry import load_model
    from models.fitting.datasets import DatasetError, load_labelled_folder
    from models.knowledge.taxonomy import load_taxonomy

    if args.from_store:
        return _from_store(args)
    taxonomy = load_taxonomy()
    try:  # read the folder first: an unknown label or a missing file is one line, not a traceback
        load_labelled_folder(args.data, taxonomy, args.split)
    except (DatasetError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model = load_model(args.model)
    use_runtime(model, args.runtime)  # the forwards (OOD pass, photos without out-of-fold scores) as served
    report = _evaluate(model, taxonomy, args)
    if args.report:
        from models.fitting.report import write_report

        print(f"wrote {write_report(report, Path(args.report))}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        return 0
    print_report(report, args.data, args.labels)
    return 0


def _evaluate(model: Any, taxonomy: Any, args: argparse.Namespace) -> dict:
    from models.fitting.evaluation import one_embedding_per_photo

    with one_embedding_per_photo():  # the photos are embedded once; every pass below reuses them
        return _evaluate_passes(model, taxonomy, args)


def _evaluate_passes(model: Any, taxonomy: Any, args: argparse.Namespace) -> dict:
    from models.fitting.evaluation import evaluate

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(
            model,
            taxonomy,
            args.data,
            label_scope=args.labels,
            modality=args.modality,
            batch_size=args.batch_size,
            split=args.split,
        )
        from models.fitting.scope_eval import scopes_report

        kw = {"modality": args.modality, "batch_size": args.batch_size, "split": args.split}
        report["scopes"] = scopes_report(model, taxonomy, args.data, report, **kw)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.labels == "dataset":
        from models.fitting.calibration_fit import uncertainty_report

        report.update(
            uncertainty_report(
                model,
                taxonomy,
                args.data,
                coverage=args.coverage,
                modality=args.modality,
                ood=not args.no_ood,
                split=args.split,
            )
        )
    return report


def print_report(report: dict, data: str, labels: str) -> None:
    split = f", split={report['split']}" if report.get("split") else ""
    modalities = ", ".join(f"{k} {v}" for k, v in (report.get("modalities") or {}).items())
    print(
        f"{report['model']['name']} {report['model']['version']} on {data} (n={report['n']}, labels={labels}"
        f"{split}; modality: {modalities})"
    )
    for key in ("balanced_accuracy", "accuracy", "top3_accuracy", "malignant_auroc", "melanoma_sensitivity"):
        value = report[key]
        print(f"  {key:22s} {'n/a' if value is None else f'{value:.3f}'}")
    print("  recall per class: " + ", ".join(f"{k} {v:.2f}" for k, v in report["per_class"].items()))
    for t, v in report["per_fitzpatrick"].items():
        bacc = v["balanced_accuracy"]
        print(f"  Fitzpatrick {t}: n={v['n']} balanced accuracy {'n/a (<10)' if bacc is None else f'{bacc:.3f}'}")
    print_fused(report)
    print_scopes(report)
    print_uncertainty(report)


def print_scopes(report: dict) -> None:
    """Both label scopes, image-only and fused: the published protocol and what the service ranks by default."""
    for key, block in (report.get("scopes") or {}).items():
        img, fused = block["image"], block.get("fused") or {}
        line = ", ".join(
            f"{k} {img[k]:.3f}" + (f" (fused {fused[k]:.3f})" if fused.get(k) is not None else "")
            for k in ("balanced_accuracy", "top3_accuracy", "malignant_auroc")
            if img.get(k) is not None
        )
        print(f"  scope {key} ({block['label_scope']}, {len(block['labels'] or [])} labels, n={img['n']}): {line}")


def print_fused(report: dict) -> None:
    """The fused and urgency blocks of an evaluation report (PAD layout), beside the image-only figures."""
    fused, urgency = report.get("fused"), report.get("urgency")
    if not fused:
        return
    print(f"  image probabilities: {report.get('image_probabilities')}; fused = image + symptoms + risk factors")
    for key in ("balanced_accuracy", "top3_accuracy", "malignant_auroc", "melanoma_sensitivity"):
        img, fus = report[key], fused[key]
        print(f"  fused {key:16s} {'n/a' if fus is None else f'{fus:.3f}'} (image only {img:.3f})")
    if urgency:
        print(
            f"  urgency: malignant sensitivity {urgency['malignant_sensitivity']:.3f}, melanoma urgent "
            f"{urgency['melanoma_sensitivity_urgent']:.3f}, specificity {urgency['specificity']:.3f}; "
            + ", ".join(f"{k} {v}" for k, v in urgency["counts"].items())
        )


def print_uncertainty(report: dict) -> None:
    if "ece" not in report:
        return
    print(
        f"  uncertainty ({report['uncertainty_stage']}, {report['calibration_method']}, cross-fitted): ECE "
        f"{report['ece_uncalibrated']:.3f} -> {report['ece']:.3f}; coverage {report['coverage']:.3f} at nominal "
        f"{report['nominal_coverage']:.2f}; mean set size {report['mean_set_size']:.2f}"
    )
    print("  coverage per class: " + ", ".join(f"{k} {v:.2f}" for k, v in report["per_class_coverage"].items()))
    print("  gate rates: " + ", ".join(f"{k} {v:.3f}" for k, v in report["gate_rates"].items()))
    if report.get("ood"):
        print(f"  OOD flag rate: skin {report['ood']['skin']:.3f}, non-skin set {report['ood']['non_skin']:.3f}")
