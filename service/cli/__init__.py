"""`dermtriage` command line: one module per subcommand, each `add_parser(subparsers)` + `run(args) -> int`.

The modules parse and call; modelling choices live in the model layer. No command writes inside
the installed package unless `--out` names a place there (see `models/fitting/outputs.py`).
"""

from __future__ import annotations

import argparse
import logging
from importlib.metadata import PackageNotFoundError, version

from service.cli import (
    bench,
    build_text_cache,
    calibrate,
    compare_eval,
    create_api_key,
    db,
    evaluate,
    export,
    export_runtime,
    faithfulness,
    fit,
    heatmap_localisation,
    list_models,
    predict,
    segment_eval,
    serve,
    train_embedded,
    train_segmentation,
)

COMMANDS = (
    predict,
    evaluate,
    calibrate,
    fit,
    train_embedded,
    build_text_cache,
    export_runtime,
    list_models,
    bench,
    serve,
    create_api_key,
    db,
    export,
    faithfulness,
    compare_eval,
    train_segmentation,
    segment_eval,
    heatmap_localisation,
)


def version_text() -> str:
    """The package version and the default model's name and version (read from its card, not its weights)."""
    from models.backends.registry import DEFAULT_MODEL, get_spec

    try:
        package = version("dermtriage")
    except PackageNotFoundError:  # pragma: no cover - running from a checkout that was never installed
        package = "unknown (not installed)"
    try:
        model_version = get_spec(DEFAULT_MODEL).model_card().version
    except (KeyError, OSError, ValueError) as exc:  # pragma: no cover - a broken install
        model_version = f"unavailable ({exc})"
    return f"dermtriage {package}\ndefault model: {DEFAULT_MODEL} {model_version}"


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dermtriage", description="Dermatology triage: decision support, not a diagnosis.")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action=_VersionAction, help="print the package version and the default model's")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args) or 0)
