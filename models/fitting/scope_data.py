"""Photos the embedded model cannot judge, for fitting and measuring the `outside_scope` gate.

Two labelled sources, both offline and seeded:

- **Synthetic inflammatory skin** (`synthetic_scope_set`): skin-coloured textures (tone from pale to
  dark brown, low-frequency shading, pores and noise) carrying what none of the six validated lesion
  types looks like: many small red papules and pustules (acne, papular rash), diffuse blotchy
  erythema (cellulitis, flushing), scaly red plaques (psoriasis, eczema) and urticarial wheals.
  Each image is drawn from its own seed, so a set is reproducible image by image; half of each kind
  (`half="a"`) chooses thresholds, the other half (`half="b"`) is only reported.
- **Dermoscopic photos sent as clinical** (`isic_as_clinical`): ISIC 2017 images (`labels.csv`),
  `train` rows to choose thresholds, `validation` rows to report; `test` is never read here.

No public-domain photos of rashes were available offline (the installed packages' sample images hold
no skin), so the inflammatory set is synthetic: it checks the gate's mechanics and separability,
not its rate on real rash photos. Judge the gate on real photos before trusting the rate.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

__all__ = ["KINDS", "ScopePhoto", "isic_as_clinical", "synthetic_photo", "synthetic_scope_set"]

KINDS = ("papules", "erythema", "plaques", "wheals")
SIZE = 320


@dataclass(frozen=True)
class ScopePhoto:
    name: str
    kind: str  # a KINDS entry, or "dermoscopic"
    image: Image.Image | None = None
    path: Path | None = None

    def load(self) -> Image.Image:
        if self.image is not None:
            return self.image
        from models.photos import load_photo

        assert self.path is not None
        return load_photo(self.path)


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    """(size, size) noise in [0, 1] with features about `scale` pixels wide."""
    small = rng.random((max(2, size // scale), max(2, size // scale)))
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC)
    img = img.filter(ImageFilter.GaussianBlur(scale / 4))
    a = np.asarray(img, dtype=np.float64) / 255.0
    return (a - a.min()) / max(a.max() - a.min(), 1e-6)


def _skin(rng: np.random.Generator, size: int) -> np.ndarray:
    """A skin-coloured (size, size, 3) float image in [0, 1]: tone, shading, pores, sensor noise."""
    tone = rng.uniform(0.0, 1.0)  # 0 pale .. 1 dark brown
    base = np.array([0.93, 0.76, 0.66]) * (1 - tone) + np.array([0.45, 0.29, 0.2]) * tone
    shade = 0.85 + 0.25 * _smooth_noise(rng, size, 96)[..., None]
    skin = base * shade
    pores = rng.random((size, size)) < 0.01
    skin[pores] *= 0.85
    skin += rng.normal(0, 0.015, skin.shape)
    return np.clip(skin, 0, 1)


def _blend(img: np.ndarray, mask: np.ndarray, colour: np.ndarray, strength: float) -> np.ndarray:
    m = np.clip(mask, 0, 1)[..., None] * strength
    return img * (1 - m) + colour * m


def _dots(rng: np.random.Generator, size: int, n: int, r_lo: float, r_hi: float, soft: float) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size))
    for _ in range(n):
        cy, cx, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(r_lo, r_hi)
        d = np.hypot(yy - cy, xx - cx)
        mask = np.maximum(mask, np.clip((r - d) / (soft * r) + 1, 0, 1))
    return mask


def synthetic_photo(kind: str, seed: int, size: int = SIZE) -> Image.Image:
    """One synthetic photo of `kind` (see KINDS) from `seed`."""
    rng = np.random.default_rng(seed)
    img = _skin(rng, size)
    red = np.array([0.78, 0.2, 0.2]) * rng.uniform(0.8, 1.05)
    if kind == "papules":  # acne / papular rash: many small red bumps, some with a pale head
        img = _blend(img, _dots(rng, size, int(rng.integers(40, 140)), 3, 9, 0.8), red, rng.uniform(0.55, 0.85))
        heads = _dots(rng, size, int(rng.integers(5, 25)), 1.5, 3, 0.5)
        img = _blend(img, heads, np.array([0.95, 0.92, 0.75]), 0.8)
    elif kind == "erythema":  # diffuse, blotchy redness with soft edges
        field = _smooth_noise(rng, size, int(rng.integers(40, 120)))
        img = _blend(img, np.clip((field - 0.3) * 2, 0, 1), red, rng.uniform(0.4, 0.75))
    elif kind == "plaques":  # psoriasis / eczema: irregular red plaques with white scale
        field = _smooth_noise(rng, size, int(rng.integers(60, 140)))
        plaque = (field > rng.uniform(0.45, 0.65)).astype(float)
        plaque = np.asarray(Image.fromarray((plaque * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(3))) / 255
        img = _blend(img, plaque, red * 0.95, 0.75)
        scale = (rng.random((size, size)) < 0.25) * plaque * _smooth_noise(rng, size, 6)
        img = _blend(img, scale, np.array([0.93, 0.92, 0.9]), 0.7)
    elif kind == "wheals":  # urticaria: pale raised wheals with red flare
        flare = _dots(rng, size, int(rng.integers(4, 12)), 20, 55, 1.5)
        img = _blend(img, flare, red, 0.55)
        img = _blend(img, _dots(rng, size, int(rng.integers(4, 12)), 10, 35, 0.8), np.array([0.97, 0.82, 0.78]), 0.5)
    else:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    img = np.clip(img + rng.normal(0, 0.01, img.shape), 0, 1)
    return Image.fromarray((img * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))


def synthetic_scope_set(per_kind: int = 24, half: str = "all", seed: int = 0) -> Iterator[ScopePhoto]:
    """`per_kind` photos of each kind; `half` "a" (even indices: choose thresholds), "b" (odd: report) or "all"."""
    for k, kind in enumerate(KINDS):
        for i in range(per_kind):
            if (half == "a" and i % 2) or (half == "b" and not i % 2):
                continue
            s = seed * 100_003 + k * 1_009 + i
            yield ScopePhoto(name=f"{kind}-{i:03d}", kind=kind, image=synthetic_photo(kind, s))


def isic_as_clinical(root: str | Path, split: str, limit: int | None = None, seed: int = 0) -> list[ScopePhoto]:
    """ISIC 2017 images of one split (`train` or `validation`; never `test`), a seeded sample of `limit`."""
    if split == "test":
        raise ValueError("the ISIC test split is for the dermoscopic model's report; never tune on it")
    root = Path(root)
    with (root / "labels.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("split") == split]
    paths = [root / r["file"] for r in rows if (root / r["file"]).exists()]
    if limit is not None and len(paths) > limit:
        pick = np.random.default_rng(seed).choice(len(paths), limit, replace=False)
        paths = [paths[i] for i in sorted(pick)]
    return [ScopePhoto(name=p.stem, kind="dermoscopic", path=p) for p in paths]
