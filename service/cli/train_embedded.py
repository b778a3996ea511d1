"""`dermtriage train-embedded`: reproduce an embedded model: `--dataset pad` (default) the CC BY-only
`embedded-pad-lite0` (patient-grouped CV figures, then weights, card, text cache); `--dataset isic`
the dermoscopic `embedded-isic-lite0` (train split, epoch and threshold on validation, test figures)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from service.cli._common import subparser


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = subparser(sub, "train-embedded", "reproduce the embedded model (CV figures, weights, card)", run)
    p.add_argument("--dataset", choices=["pad", "isic"], default="pad", help="which model to train (default pad)")
    p.add_argument(
        "--data",
        default="",
        help="labelled folder; default $DERMTRIAGE_DATA or ../shared/data/pad-ufes-20 (pad), "
        "../shared/data/isic-2017 (isic: labels.csv with a split column)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--unfrozen-blocks", type=int, default=None, help="image-tower blocks trained on cached activations (default 3)"
    )
    p.add_argument("--train-views", type=int, default=None, help="augmented views cached an image (pad 8, isic 6)")
    p.add_argument(
        "--vignette-augment",
        type=float,
        default=None,
        metavar="P",
        help="share of augmented views given a synthetic dermatoscope vignette (default 0)",
    )
    p.add_argument("--version", default=None, help="the trained model's version on its card (pad 1.1.0, isic 1.0.0)")
    p.add_argument("--spec-dir", metavar="DIR", help="isic: also write the model's spec file there (models/specs)")
    p.add_argument("--cache-dir", default=".cache/embedded")
    p.add_argument(
        "--out",
        metavar="DIR",
        help="folder for weights/, model_card.json, MODEL_CARD.md, validation/ and text_cache/ (default: "
        "./artifacts/embedded-pad-lite0; the shipped model is replaced only with --out models/embedded)",
    )
    p.add_argument("--dry-run", action="store_true", help="report CV figures, write nothing")
    return p


def recipe(args: argparse.Namespace) -> dict[str, float]:
    """The recipe options given on the command line (the rest keep each dataset's defaults)."""
    given = (
        ("unfrozen_blocks", args.unfrozen_blocks),
        ("train_views", args.train_views),
        ("vignette_augment", args.vignette_augment),
    )
    return {k: v for k, v in given if v}


def run(args: argparse.Namespace) -> int:
    if args.dataset == "isic":
        return run_isic(args)
    from models.backends.registry import load_model
    from models.embedded.model import MODEL_NAME
    from models.fitting.datasets import DEFAULT_DATA
    from models.fitting.embedded_card import choose_test_time_views, write_release
    from models.fitting.outputs import TEXT_CACHE_DIR, resolve_output
    from models.fitting.text_cache import build_text_cache
    from models.fitting.train_embedded import TrainConfig, train_embedded
    from models.knowledge.taxonomy import load_taxonomy

    out = resolve_output(args.out, MODEL_NAME)
    cfg = TrainConfig(seed=args.seed, epochs=args.epochs, folds=args.folds, threads=args.threads, **recipe(args))
    taxonomy = load_taxonomy()
    result = train_embedded(
        Path(args.data or DEFAULT_DATA),
        cfg,
        cache_dir=Path(args.cache_dir),
        taxonomy=taxonomy,
        cross_validate=True,
        final_fit=not args.dry_run,  # the CV figures need no final fit
    )
    reports = {k: v for k, v in result.reports.items() if k != "config"}
    for mode, rep in reports.items():
        print(
            f"{mode:7s} balanced accuracy {rep['balanced_accuracy']:.3f}  "
            f"malignant AUROC {rep['malignant_auroc']:.3f}  melanoma sensitivity {rep['melanoma_sensitivity']:.3f}"
        )
    print(f"chosen test-time views: {choose_test_time_views(reports)}; {result.seconds:.0f} s in all")
    if args.dry_run:
        return 0
    spec = write_release(result, args.version or "1.1.0", out)
    print(f"wrote weights, model card and out-of-fold predictions to {out}")
    cache = out / TEXT_CACHE_DIR
    build_text_cache(load_model(spec), taxonomy, cache)
    print(f"wrote condition embeddings for {MODEL_NAME} to {cache}")
    return 0


def run_isic(args: argparse.Namespace) -> int:
    """The dermoscopic model: trained on `train`, chosen on `validation`, reported on `test`."""
    from models.fitting.outputs import resolve_output
    from models.fitting.split_release import ISIC_NAME, release_isic
    from models.fitting.split_report import check_artefacts, print_split_result
    from models.fitting.train_splits import ISIC_DIR, dermoscopic_config, train_on_splits

    cfg = dermoscopic_config(seed=args.seed, epochs=args.epochs, threads=args.threads, **recipe(args))
    result = train_on_splits(Path(args.data or ISIC_DIR), cfg, cache_dir=Path(args.cache_dir))
    artefacts = check_artefacts(result)
    print_split_result(result, artefacts)
    if args.dry_run:
        return 0
    out = resolve_output(args.out, ISIC_NAME)
    release_isic(result, artefacts, out, args.version or "1.0.0", Path(args.spec_dir) if args.spec_dir else None)
    print(f"wrote weights, card, thresholds, predictions and condition embeddings for {ISIC_NAME} to {out}")
    return 0
