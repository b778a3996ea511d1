"""On-disk cache of the non-skin reference set's OOD features (models/fitting/ood_data.py), per model.

One file per model name under $DERMTRIAGE_CACHE_DIR/ood (else $XDG_CACHE_HOME/dermtriage/ood), holding the
embeddings, ImageNet probabilities and skin-pixel shares with the key they were made under: the model's
fingerprint plus the set's generator parameters. Another key is ignored (and overwritten on the next write);
writes go to a temporary file renamed over the model's file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.backends.artifacts import default_cache_root
from models.backends.base import ImageTextModel

if TYPE_CHECKING:
    from models.fitting.ood_fit import PhotoSet

NON_SKIN_CACHE_FORMAT = 1  # bump when the cached arrays or the set's generator change meaning


def non_skin_cache_dir() -> Path:
    """$DERMTRIAGE_CACHE_DIR/ood (the service's cache dir), else $XDG_CACHE_HOME/dermtriage/ood or ~/.cache/..."""
    root = os.environ.get("DERMTRIAGE_CACHE_DIR")
    if root:
        return Path(root) / "ood"
    return default_cache_root() / "ood"


def non_skin_params(per_kind: int = 30, seed: int = 0) -> dict[str, Any]:
    """What the non-skin set is generated from (models/fitting/ood_data.py), part of its cache key."""
    from importlib.metadata import PackageNotFoundError, version

    from models.fitting.ood_data import SKIMAGE_NAMES, SYNTHETIC

    versions = {}
    for pkg in ("scikit-image", "scikit-learn", "matplotlib", "numpy", "pillow", "pooch"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return {
        "format": NON_SKIN_CACHE_FORMAT,
        "per_kind": per_kind,
        "seed": seed,
        "skimage_names": list(SKIMAGE_NAMES),
        "synthetic": list(SYNTHETIC),
        "packages": versions,
    }


def forward_runtime(model: ImageTextModel) -> str:
    """The runtime the model's forwards run on, part of every cache key of its features (the runtimes
    agree within 1e-4, not bit for bit)."""
    return getattr(model, "runtime_name", "torch")


def non_skin_key(model: ImageTextModel, fingerprint: str | None = None) -> str:
    """The cache key: the model's fingerprint (or `fingerprint`), the runtime its forwards ran on (the
    runtimes agree within 1e-4, not bit for bit) and the set's generator parameters."""
    fp = model.artifacts.fingerprint if fingerprint is None else fingerprint
    return json.dumps(
        {"fingerprint": fp, "runtime": forward_runtime(model), "params": non_skin_params()}, sort_keys=True
    )


def _cache_file(model: ImageTextModel, cache_dir: Path) -> Path:
    """One file per model name: a new fingerprint overwrites it (bounded)."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model.card.name)
    return cache_dir / f"non-skin-{safe}.npz"


def load_non_skin_cache(model: ImageTextModel, key: str, cache_dir: Path) -> PhotoSet | None:
    path = _cache_file(model, cache_dir)
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:  # another model identity or another generator: not used
                return None
            inet = z["imagenet"] if bool(z["has_imagenet"]) else None
            from models.fitting.ood_fit import PhotoSet

            return PhotoSet([str(n) for n in z["names"]], z["embeddings"], z["skin_pixels"], inet)
    except (OSError, KeyError, ValueError):  # unreadable or partial: recomputed
        return None


def save_non_skin_cache(model: ImageTextModel, key: str, photos: PhotoSet, cache_dir: Path) -> Path:
    """Written to a temporary file in the same folder, then renamed over the model's file (atomic)."""
    path = _cache_file(model, cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=cache_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(
                fh,
                key=np.array(key),
                names=np.array(photos.names),
                embeddings=photos.embeddings,
                skin_pixels=photos.skin_pixels,
                has_imagenet=np.array(photos.imagenet is not None),
                imagenet=photos.imagenet if photos.imagenet is not None else np.zeros((0, 0)),
            )
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
