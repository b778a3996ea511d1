"""`dermtriage` command line: serve, predict, evaluate, train-embedded, models."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("DERMTRIAGE_DATA", Path(__file__).resolve().parents[2] / "shared/data/pad-ufes-20"))


def _cmd_predict(args: argparse.Namespace) -> int:
    """One photo through the same engine the HTTP service uses."""
    from uuid import uuid4

    from models.registry import load_model
    from models.taxonomy import load_taxonomy
    from service.engine import TriageEngine
    from service.images import ImageError, ImageLimits, decode_image
    from service.schemas import TriageOptions

    try:
        decoded = decode_image(Path(args.photo).read_bytes(), ImageLimits())
    except (OSError, ImageError) as exc:
        print(f"error: {args.photo}: {exc}", file=sys.stderr)
        return 2
    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    options = TriageOptions(top_k=args.top_k, modality=args.modality, candidate_labels=labels)
    engine = TriageEngine(load_model(args.model), load_taxonomy())
    result = engine.triage(decoded, options, request_id=str(uuid4()))
    rows = [
        {
            "id": d.label if labels else d.condition_id,
            "name": d.name,
            "probability": round(d.probability, 4),
            "validated": d.validated_for_model,
        }
        for d in result.differentials
    ]
    out = {"model": {"name": result.model.name, "version": result.model.version}, "differentials": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{result.model.name} {result.model.version} — decision support, not a diagnosis")
    for r in rows:
        flag = "" if r["validated"] or labels else "  (not validated for this model)"
        print(f"  {r['probability']:6.1%}  {r['name']}{flag}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.evaluation import evaluate
    from models.registry import load_model
    from models.taxonomy import load_taxonomy

    model = load_model(args.model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(
            model,
            load_taxonomy(),
            args.data,
            label_scope=args.labels,
            modality=args.modality,
            batch_size=args.batch_size,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.json:
        print(json.dumps(report))
        return 0
    print(
        f"{report['model']['name']} {report['model']['version']} on {args.data} (n={report['n']}, labels={args.labels})"
    )
    for key in ("balanced_accuracy", "accuracy", "top3_accuracy", "malignant_auroc", "melanoma_sensitivity"):
        value = report[key]
        print(f"  {key:22s} {'n/a' if value is None else f'{value:.3f}'}")
    print("  recall per class: " + ", ".join(f"{k} {v:.2f}" for k, v in report["per_class"].items()))
    for t, v in report["per_fitzpatrick"].items():
        bacc = v["balanced_accuracy"]
        print(f"  Fitzpatrick {t}: n={v['n']} balanced accuracy {'n/a (<10)' if bacc is None else f'{bacc:.3f}'}")
    _print_fused(report)
    return 0


def _print_fused(report: dict) -> None:
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


def _cmd_train_embedded(args: argparse.Namespace) -> int:
    from models.embedded.card import build_card, write_card
    from models.embedded.model import OOF_PATH, save_weights
    from models.embedded.train import TrainConfig, train_embedded, write_oof_csv
    from models.taxonomy import load_taxonomy

    cfg = TrainConfig(seed=args.seed, epochs=args.epochs, folds=args.folds, threads=args.threads)
    taxonomy = load_taxonomy()
    result = train_embedded(
        Path(args.data), cfg, cache_dir=Path(args.cache_dir), taxonomy=taxonomy, cross_validate=True
    )
    reports = {k: v for k, v in result.reports.items() if k != "config"}
    chosen = max(reports, key=lambda m: (reports[m]["balanced_accuracy"], -len(m)))
    for mode, rep in reports.items():
        print(
            f"{mode:7s} balanced accuracy {rep['balanced_accuracy']:.3f}  "
            f"malignant AUROC {rep['malignant_auroc']:.3f}  melanoma sensitivity {rep['melanoma_sensitivity']:.3f}"
        )
    print(f"chosen test-time views: {chosen}; {result.seconds:.0f} s in all")
    if args.dry_run:
        return 0
    assert result.state_dict is not None
    sha = save_weights(result.state_dict)
    from models.datasets import load_labelled_folder

    ids = [i.stem for i in load_labelled_folder(args.data, taxonomy)]
    card = build_card(args.version, reports, chosen, ids, result.seconds, result.reports["config"], sha)
    card.validated_conditions = result.class_ids
    write_card(card)
    write_oof_csv(result, chosen, OOF_PATH)
    print(f"wrote weights, model card and out-of-fold predictions ({OOF_PATH})")
    return _cmd_build_text_cache(argparse.Namespace(model="embedded-pad-lite0", out=None))


def _cmd_build_text_cache(args: argparse.Namespace) -> int:
    """Precompute the condition embeddings a model ships (both modalities), replacing stale files."""
    from models.registry import load_model
    from models.taxonomy import load_taxonomy
    from models.zeroshot import ZeroShotClassifier

    model = load_model(args.model)
    out = Path(args.out) if args.out else getattr(model, "text_cache_dir", None)
    if out is None:
        print("error: this model ships no text cache; pass --out DIR", file=sys.stderr)
        return 2
    for stale in Path(out).glob("text-*.pt"):
        stale.unlink()
    clf = ZeroShotClassifier(model, load_taxonomy(), cache_dir=Path(out))
    for modality in ("clinical", "dermoscopic"):
        clf.condition_set(modality)
    print(f"wrote condition embeddings for {model.card.name} to {out}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from models.registry import list_specs

    for spec in list_specs():
        print(f"{spec.name:24s} {spec.backend:10s} {spec.source}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.server import serve

    keys = ("host", "port", "model", "workers", "log_level", "device")
    return serve({k: getattr(args, k) for k in keys})


def _cmd_faithfulness(args: argparse.Namespace) -> int:
    from explain.faithfulness import FaithfulnessConfig, faithfulness_on_folder, stderr_log
    from models.registry import load_model
    from models.taxonomy import load_taxonomy
    from service.images import ImageLimits, decode_image

    if (args.limit is not None and args.limit < 1) or args.steps < 2:
        print("error: --limit must be >= 1 and --steps >= 2", file=sys.stderr)
        return 2
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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


def build_parser() -> argparse.ArgumentParser:
    from models.registry import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="dermtriage", description="Dermatology triage: decision support, not a diagnosis.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="print the differentials for one photo")
    pr.add_argument("photo")
    pr.add_argument("--model", default=DEFAULT_MODEL)
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--modality", choices=["clinical", "dermoscopic"], default="clinical")
    pr.add_argument("--labels", help="comma-separated candidate labels instead of the taxonomy")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=_cmd_predict)

    ev = sub.add_parser("evaluate", help="score a model on a labelled folder (PAD layout or labels.csv)")
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--data", default=str(DEFAULT_DATA))
    ev.add_argument("--labels", choices=["dataset", "taxonomy"], default="dataset")
    ev.add_argument("--modality", choices=["clinical", "dermoscopic"], default="clinical")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(func=_cmd_evaluate)

    tr = sub.add_parser("train-embedded", help="reproduce the embedded model (CV figures, weights, card)")
    tr.add_argument("--data", default=str(DEFAULT_DATA))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--epochs", type=int, default=25)
    tr.add_argument("--folds", type=int, default=5)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--version", default="1.0.0")
    tr.add_argument("--cache-dir", default=".cache/embedded")
    tr.add_argument("--dry-run", action="store_true", help="report CV figures, write nothing")
    tr.set_defaults(func=_cmd_train_embedded)

    sv = sub.add_parser("serve", help="run the HTTP service (flags override DERMTRIAGE_* variables)")
    sv.add_argument("--host", help="bind address (default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="port (default 8000)")
    sv.add_argument("--model", help=f"registry name, spec file or ad-hoc model (default {DEFAULT_MODEL})")
    sv.add_argument("--workers", type=int, help="uvicorn worker processes (default 1)")
    sv.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    sv.add_argument("--device", choices=["cpu", "cuda"])
    sv.set_defaults(func=_cmd_serve)

    tc = sub.add_parser("build-text-cache", help="precompute the condition embeddings a model ships")
    tc.add_argument("--model", default=DEFAULT_MODEL)
    tc.add_argument("--out", help="folder (default: the model's own text_cache)")
    tc.set_defaults(func=_cmd_build_text_cache)

    mo = sub.add_parser("models", help="list the model specs the registry knows")
    mo.set_defaults(func=_cmd_models)

    from explain.gradcam import DEFAULT_METHOD, METHODS

    fa = sub.add_parser("faithfulness", help="deletion / insertion AUC of heatmaps vs random and centre maps")
    fa.add_argument("--data", default=str(DEFAULT_DATA))
    fa.add_argument("--model", default=DEFAULT_MODEL)
    fa.add_argument("--method", choices=sorted(METHODS), default=DEFAULT_METHOD)
    fa.add_argument("--limit", type=int, help="evenly spaced subset of N photos (default: all)")
    fa.add_argument("--steps", type=int, default=16, help="perturbation steps per curve (one batch)")
    fa.add_argument("--baseline", choices=["blur", "mean"], default="blur", help="what removed pixels become")
    fa.add_argument("--target", choices=["predicted", "label"], default="predicted", help="condition tracked")
    fa.add_argument("--compare", action="append", choices=sorted(METHODS), help="more methods (table only)")
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("--threads", type=int, help="torch CPU threads (1 is faster on a busy machine)")
    fa.add_argument("--json", action="store_true")
    fa.set_defaults(func=_cmd_faithfulness)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
