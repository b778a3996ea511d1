"""Argument helpers shared by the subcommand modules."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from models.backends.registry import DEFAULT_MODEL

MODALITIES = ("clinical", "dermoscopic")


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registry name, spec file or ad-hoc model ({DEFAULT_MODEL})")


def add_data(p: argparse.ArgumentParser, help: str = "labelled folder (PAD layout or labels.csv)") -> None:
    p.add_argument(
        "--data",
        type=data_dir,
        default="",
        help=f"{help}; default $DERMTRIAGE_DATA, else the checkout's ../shared/data/pad-ufes-20",
    )


def data_dir(value: str) -> Path:
    """`--data`, or the development photos' default location (resolved only when a command runs:
    importing the CLI must not import the fitting room)."""
    if value:
        return Path(value)
    from models.fitting.datasets import DEFAULT_DATA

    return DEFAULT_DATA


def add_modality(p: argparse.ArgumentParser) -> None:
    p.add_argument("--modality", choices=MODALITIES, default="clinical")


def add_out(p: argparse.ArgumentParser, what: str, default: str) -> None:
    p.add_argument(
        "--out",
        help=f"{what} to write (default: ./artifacts/{default}; the shipped file in the installed package is "
        "replaced only when --out names it)",
    )


def set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def subparser(sub: Any, name: str, help: str, run: Any, **kwargs: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=help, **kwargs)
    p.set_defaults(func=run)
    return p


def add_runtime(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnxruntime", "openvino"],
        help="image-tower runtime of the forwards (default: the service's DERMTRIAGE_RUNTIME, auto: the served one; "
        "torch reproduces the PyTorch float32 figures, within 1e-4 of the others: README, Performance)",
    )


def use_runtime(model: Any, setting: str | None) -> str:
    """Run `model`'s forwards on the runtime the service would serve (or `setting`); returns its name."""
    import torch

    from models.embedded.runtime import attach_runtime
    from service.settings import Settings

    settings = Settings()
    return attach_runtime(model, setting or settings.runtime, settings.cache_dir, torch.get_num_threads())
