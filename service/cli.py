"""`dermtriage` command line: serve, predict, evaluate, calibrate, train-embedded, models."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

from models.fitting.datasets import DEFAULT_DATA


def _cmd_predict(args: argparse.Namespace) -> int:
    """Photos through the same engine the HTTP service uses: the full answer, flags included."""
    from uuid import uuid4

    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
    from service.engine import TriageEngine
    from service.images import ImageError, ImageLimits, decode_image
    from service.schemas import ClinicalInput, TriageOptions

    labels = [x.strip() for x in args.labels.split(",") if x.strip()] if args.labels else None
    options = TriageOptions(top_k=args.top_k, modality=args.modality, candidate_labels=labels)
    clinical = ClinicalInput(symptoms=args.symptoms) if args.symptoms else None
    engine = TriageEngine(load_model(args.model), load_taxonomy())
    status = 0
    for photo in args.photo:
        try:
            decoded = decode_image(Path(photo).read_bytes(), ImageLimits())
        except (OSError, ImageError) as exc:
            print(f"error: {photo}: {exc}", file=sys.stderr)
            status = 2
            continue
        result = engine.triage(decoded, options, clinical, request_id=str(uuid4()))
        if args.json:
            print(json.dumps({"photo": photo, **result.model_dump(mode="json", exclude={"heatmaps"})}))
            continue
        _print_result(photo, result, bool(labels))
    return status


def _print_result(photo: str, result, custom_labels: bool) -> None:
    print(f"{photo}: {result.model.name} {result.model.version} — decision support, not a diagnosis")
    for d in result.differentials:
        flag = "" if d.validated_for_model or custom_labels else "  (not validated for this model)"
        print(f"  {d.probability:6.1%}  {d.name}{flag}")
    u = result.uncertainty
    if u is None:
        return
    cal = f"calibrated (T={u.temperature:.3g})" if u.calibrated else "uncalibrated"
    cov = f"{u.coverage:.0%} set" if u.coverage else "set"
    print(
        f"  {cal}; {cov}: {', '.join(u.prediction_set) or 'n/a'}; entropy {u.entropy:.2f}, margin {u.top2_margin:.2f}"
    )
    for f in u.flags:
        print(f"  flag {f.name}: {f.measure} = {f.value} (threshold {f.threshold}) — {f.message}")
    print(f"  needs review: {'yes — ' + '; '.join(u.review_reasons) if u.needs_review else 'no'}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from models.backends.registry import load_model
    from models.fitting.evaluation import evaluate
    from models.knowledge.taxonomy import load_taxonomy

    model = load_model(args.model)
    taxonomy = load_taxonomy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(
            model,
            taxonomy,
            args.data,
            label_scope=args.labels,
            modality=args.modality,
            batch_size=args.batch_size,
        )
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    if args.labels == "dataset":
        from models.fitting.calibration_fit import uncertainty_report

        report.update(uncertainty_report(model, taxonomy, args.data, coverage=args.coverage, ood=not args.no_ood))
    if args.report:
        from models.fitting.report import write_report

        print(f"wrote {write_report(report, Path(args.report))}", file=sys.stderr)
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
    _print_uncertainty(report)
    return 0


def _print_uncertainty(report: dict) -> None:
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


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Fit temperature(s) and conformal scores on a labelled folder; write the file the service loads."""
    from models.backends.registry import load_model
    from models.fitting.calibration_fit import calibrate_folder
    from models.knowledge.taxonomy import load_taxonomy
    from models.uncertainty.calibration import DEFAULT_CALIBRATION_PATH

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = load_model(args.model)
    out = Path(args.out) if args.out else DEFAULT_CALIBRATION_PATH if model.card.name == "embedded-pad-lite0" else None
    if out is None:
        print("error: pass --out PATH for a model other than the embedded one", file=sys.stderr)
        return 2
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
    from models.embedded.model import OOF_PATH, save_weights
    from models.fitting.embedded_card import build_card, write_card
    from models.fitting.train_embedded import TrainConfig, train_embedded, write_oof_csv
    from models.knowledge.taxonomy import load_taxonomy

    cfg = TrainConfig(seed=args.seed, epochs=args.epochs, folds=args.folds, threads=args.threads)
    taxonomy = load_taxonomy()
    result = train_embedded(
        Path(args.data),
        cfg,
        cache_dir=Path(args.cache_dir),
        taxonomy=taxonomy,
        cross_validate=True,
        final_fit=not args.dry_run,  # the CV figures need no final fit
    )
    reports = {k: v for k, v in result.reports.items() if k != "config"}
    # Test-time views chosen by malignant AUROC: urgency reads the malignant mass, and AUROC is
    # threshold-free; six-class balanced accuracy moves by about 0.01 with one rare-class photo.
    chosen = max(reports, key=lambda m: (reports[m]["malignant_auroc"], reports[m]["balanced_accuracy"]))
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
    card = build_card(args.version, reports, chosen, result.image_ids, result.seconds, result.reports["config"], sha)
    card.validated_conditions = result.class_ids
    write_card(card)
    write_oof_csv(result, chosen, OOF_PATH)
    print(f"wrote weights, model card and out-of-fold predictions ({OOF_PATH})")
    return _cmd_build_text_cache(argparse.Namespace(model="embedded-pad-lite0", out=None))


def _cmd_build_text_cache(args: argparse.Namespace) -> int:
    """Precompute the condition embeddings a model ships (both modalities), replacing stale files."""
    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
    from models.scoring.zeroshot import ZeroShotClassifier

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
    from models.backends.registry import list_specs

    for spec in list_specs():
        print(f"{spec.name:24s} {spec.backend:10s} {spec.source}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    """Image-tower floor in-process, then the real service under load (see benchmarks/service_bench.py)."""
    from benchmarks.service_bench import BenchConfig, print_report, run_bench

    def counts(text: str) -> tuple[int, ...]:
        return tuple(int(x) for x in text.split(",") if x.strip())

    cfg = BenchConfig(
        seconds=args.seconds,
        clients=counts(args.clients),
        heatmap_clients=counts(args.heatmap_clients),
        threads=args.threads,
        max_batch_size=args.max_batch_size,
        precision=args.precision,
        data=Path(args.data),
        heatmaps=not args.no_heatmaps,
    )
    out = run_bench(cfg)
    if args.json:
        print(json.dumps(out))
    else:
        print_report(out)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from service.server import serve

    keys = ("host", "port", "model", "workers", "log_level", "device")
    return serve({k: getattr(args, k) for k in keys})


def _cmd_create_api_key(args: argparse.Namespace) -> int:
    """Print a new API key once, and the hashed line to configure (the key itself is stored nowhere)."""
    from service.auth.api_keys import generate_api_key

    try:
        key, record = generate_api_key(args.name, args.per_minute)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    line = record.line()
    if args.json:
        print(json.dumps({"name": record.name, "key": key, "config_line": line}))
        return 0
    print(f"API key (give it to the client; it is shown only now): {key}")
    print(f"Configuration line (add it to DERMTRIAGE_API_KEYS, comma-separated): {line}")
    print(f'e.g. export DERMTRIAGE_API_KEYS="{line}"')
    return 0


def _cmd_faithfulness(args: argparse.Namespace) -> int:
    from explain.faithfulness import FaithfulnessConfig, faithfulness_on_folder, stderr_log
    from models.backends.registry import load_model
    from models.knowledge.taxonomy import load_taxonomy
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
    from models.backends.registry import DEFAULT_MODEL

    p = argparse.ArgumentParser(prog="dermtriage", description="Dermatology triage: decision support, not a diagnosis.")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    pr = sub.add_parser("predict", help="print the triage answer (differentials, set, flags) for each photo")
    pr.add_argument("photo", nargs="+")
    pr.add_argument("--symptoms", help="the patient's own words, as in the HTTP request")
    pr.add_argument("--model", default=DEFAULT_MODEL)
    pr.add_argument("--top-k", type=int, default=5)
    pr.add_argument("--modality", choices=["clinical", "dermoscopic"], default="clinical")
    pr.add_argument("--labels", help="comma-separated candidate labels instead of the taxonomy")
    pr.add_argument("--json", action="store_true", help="one JSON object (the full answer) per line")
    pr.set_defaults(func=_cmd_predict)

    ev = sub.add_parser("evaluate", help="score a model on a labelled folder (PAD layout or labels.csv)")
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--data", default=str(DEFAULT_DATA))
    ev.add_argument("--labels", choices=["dataset", "taxonomy"], default="dataset")
    ev.add_argument("--modality", choices=["clinical", "dermoscopic"], default="clinical")
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--coverage", type=float, default=0.9, help="nominal coverage of the conformal sets")
    ev.add_argument("--report", metavar="DIR", help="write report.md with PNG plots to DIR")
    ev.add_argument("--no-ood", action="store_true", help="skip the out-of-distribution rates (embeds the photos)")
    ev.set_defaults(func=_cmd_evaluate)

    ca = sub.add_parser("calibrate", help="fit temperature and conformal sets on a labelled folder")
    ca.add_argument("--model", default=DEFAULT_MODEL)
    ca.add_argument("--data", default=str(DEFAULT_DATA))
    ca.add_argument("--out", help="calibration file (default: the shipped one for the embedded model)")
    ca.add_argument("--coverage", type=float, default=0.9, help="coverage the printed figures are measured at")
    ca.add_argument("--method", choices=["aps", "raps"], default="aps")
    ca.add_argument("--lam", type=float, default=0.01, help="RAPS penalty")
    ca.add_argument("--k-reg", type=int, default=2, help="RAPS: ranks without penalty")
    ca.add_argument("--marginal", action="store_true", help="one threshold for all classes (not class-conditional)")
    ca.add_argument("--modality", choices=["clinical", "dermoscopic"], default="clinical")
    ca.add_argument("--threads", type=int, help="torch CPU threads")
    ca.add_argument("--json", action="store_true")
    ca.set_defaults(func=_cmd_calibrate)

    tr = sub.add_parser("train-embedded", help="reproduce the embedded model (CV figures, weights, card)")
    tr.add_argument("--data", default=str(DEFAULT_DATA))
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--epochs", type=int, default=25)
    tr.add_argument("--folds", type=int, default=5)
    tr.add_argument("--threads", type=int, default=2)
    tr.add_argument("--version", default="1.1.0")
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

    ak = sub.add_parser("create-api-key", help="print a new API key and the hashed line to configure")
    ak.add_argument("--name", help="key name (1-64 of A-Z a-z 0-9 . _ -); default key-<random>")
    ak.add_argument("--per-minute", type=float, help="this key's rate limit (default DERMTRIAGE_API_RATE_PER_MINUTE)")
    ak.add_argument("--json", action="store_true")
    ak.set_defaults(func=_cmd_create_api_key)

    tc = sub.add_parser("build-text-cache", help="precompute the condition embeddings a model ships")
    tc.add_argument("--model", default=DEFAULT_MODEL)
    tc.add_argument("--out", help="folder (default: the model's own text_cache)")
    tc.set_defaults(func=_cmd_build_text_cache)

    mo = sub.add_parser("models", help="list the model specs the registry knows")
    mo.set_defaults(func=_cmd_models)

    be = sub.add_parser("bench", help="image-tower floor and service throughput/latency at 1, 8, 32 clients")
    be.add_argument("--json", action="store_true")
    be.add_argument("--seconds", type=float, default=10.0, help="per load level (and for the floor sweep)")
    be.add_argument("--clients", default="1,8,32", help="concurrency levels without heatmaps")
    be.add_argument("--heatmap-clients", default="1,8,32", help="concurrency levels with heatmaps")
    be.add_argument("--no-heatmaps", action="store_true")
    be.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    be.add_argument("--max-batch-size", type=int, default=None, help="default: the floor's best batch")
    be.add_argument("--precision", choices=["float32", "bfloat16"], default=None)
    be.add_argument("--data", default=str(DEFAULT_DATA), help="photos to send (generated ones if absent)")
    be.set_defaults(func=_cmd_bench)

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
