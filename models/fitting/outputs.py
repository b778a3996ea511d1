"""Where fitting commands write by default: a working-directory folder, never the installed package.

`dermtriage calibrate`, `fit fusion`, `fit ood`, `train-embedded` and `build-text-cache` write
under `./artifacts/<model-name>/` unless `--out` names another place (the shipped files in
`models/embedded/` are replaced only when `--out` points there).
"""

from __future__ import annotations

import re
from pathlib import Path

import models

ARTIFACTS_DIR = Path("artifacts")
PACKAGE_DIR = Path(models.__file__).resolve().parent

CALIBRATION_FILE = "calibration.json"
FUSION_FILE = "fusion.json"
OOD_FILE = "ood_stats.npz"
TEXT_CACHE_DIR = "text_cache"


def safe_name(model_name: str) -> str:
    """A model name as one folder name (ad-hoc names carry ':' and '/')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_name).strip("._") or "model"


def inside_package(path: Path) -> bool:
    return path.resolve().is_relative_to(PACKAGE_DIR)


def default_output(model_name: str, name: str = "", root: Path | None = None) -> Path:
    """`<root or ./artifacts>/<model-name>/<name>`, absolute; refuses a place inside the installed package."""
    out = ((root or Path.cwd() / ARTIFACTS_DIR) / safe_name(model_name) / name).resolve()
    if inside_package(out):
        raise ValueError(f"default output {out} is inside the installed package {PACKAGE_DIR}; pass --out")
    return out


def resolve_output(out: str | Path | None, model_name: str, name: str = "") -> Path:
    """`--out` as given, else the default folder for this model."""
    return Path(out) if out else default_output(model_name, name)
