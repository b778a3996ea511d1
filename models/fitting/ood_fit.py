"""Fit and judge the out-of-distribution gate of a model on the development photos.

    dermtriage fit ood              # prints figures; writes ./artifacts/<model>/ood_stats.npz
    dermtriage fit ood --dry-run    # figures only
    dermtriage fit ood --out models/embedded/ood_stats.npz   # replace the shipped file

Thresholds are quantiles of the skin photos' own scores (distance: Gaussian fitted on the other
patients' photos, patient-grouped 5-fold), so the skin false-flag rate is a held-out figure; the
non-skin set (models/fitting/ood_data.py) is only scored, never fitted on.

Caveat measured here, not hidden: the embedded model was trained on these same photos, so their
embeddings are in-sample for the image tower; new skin photos may sit a little farther from the
mean than these do, and their false-flag rate may be higher than the held-out figure printed.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from models.backends.base import ImageTextModel
from models.fitting.ood_cache import forward_runtime
from models.uncertainty.ood import (
    OodDetector,
    OodStats,
    fit_gaussian,
    grouped_quantile_threshold,
    imagenet_log_mass,
    mahalanobis_sq,
    skin_pixel_fraction,
    skin_typical_classes,
)

CACHE_DIR = Path(".cache") / "uncertainty"
DISTANCE_QUANTILE = 0.99  # skin photos beyond the 99th percentile of skin distances are flagged
SKIN_PROB_QUANTILE = 0.99  # ... and below the 1st percentile of skin-prompt mass
SKIN_PIXEL_QUANTILE = 0.99  # ... and below the 1st percentile of the share of skin-coloured pixels
IMAGENET_QUANTILE = 0.99  # ... and below the 1st percentile of the ImageNet mass on skin-typical classes
IMAGENET_CLASS_SHARE = 0.01  # skin-typical: classes with >= 1% of the mean ImageNet probability of skin photos


@torch.inference_mode()
def embed_pil(model: ImageTextModel, images: Sequence[Image.Image], batch_size: int = 16) -> np.ndarray:
    """(N, D) unit image embeddings through the model's own preprocessing (and its test-time views)."""
    out = []
    for i in range(0, len(images), batch_size):
        pixels = model.preprocessing.batch(list(images[i : i + batch_size])).to(model.device)
        out.append(model.encode_image(pixels).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0))


def cross_fitted_imagenet_mass(probs: np.ndarray, groups: Sequence[str], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each photo's log mass on the skin-typical classes chosen without its patient."""
    from sklearn.model_selection import GroupKFold

    out = np.zeros(len(probs))
    for tr, te in GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(probs, groups=groups):
        out[te] = imagenet_log_mass(probs[te], skin_typical_classes(probs[tr], IMAGENET_CLASS_SHARE))
    return out


@dataclass
class PhotoSet:
    """What the OOD rules read of a set of photos, each photo loaded once per set."""

    names: list[str]
    embeddings: np.ndarray
    skin_pixels: np.ndarray
    imagenet: np.ndarray | None  # (N, 1000) frozen-ImageNet probabilities; None: the model has no such trunk


def embed_photo_set(
    model: ImageTextModel, names: list[str], load: Callable[[int], Image.Image], desc: str, batch_size: int = 16
) -> PhotoSet:
    """Embeddings, ImageNet probabilities and skin-pixel shares of a photo set: each photo loaded once and
    forwarded once (`encode_image_with_domain` gives both outputs of the same forward), with a progress bar."""
    n = len(names)
    emb: list[np.ndarray] = []
    inet: list[np.ndarray] = []
    pix: list[float] = []
    has_domain = True
    bar = tqdm(total=n, desc=desc, unit="img")
    for i in range(0, n, batch_size):
        images = [load(j) for j in range(i, min(i + batch_size, n))]
        pix.extend(skin_pixel_fraction(im) for im in images)
        pixels = model.preprocessing.batch(images).to(model.device)
        with torch.inference_mode():
            e, domain = model.encode_image_with_domain(pixels)
        emb.append(e.float().cpu().numpy())
        if domain is None:  # the backend has no frozen ImageNet trunk: the rule stays off
            has_domain = False
        else:
            inet.append(domain.float().cpu().numpy())
        bar.update(len(images))
    bar.close()
    return PhotoSet(
        names=names,
        embeddings=np.concatenate(emb) if emb else np.zeros((0, 0)),
        skin_pixels=np.array(pix),
        imagenet=np.concatenate(inet) if has_domain and inet else None,
    )


def _photo_set(model: ImageTextModel, key: str, names: list[str], load: Any, cache_dir: Path = CACHE_DIR) -> PhotoSet:
    """The development photos' set; their embeddings and ImageNet probabilities reused from the per-folder cache
    (`cached_embeddings`'s files) when both are there, else computed in one pass and written there."""
    ident = f"{model.artifacts.fingerprint}|{forward_runtime(model)}"
    digest = hashlib.sha256(f"{ident}|{key}".encode()).hexdigest()[:16]
    digest_inet = hashlib.sha256(f"{ident}|imagenet|{key}".encode()).hexdigest()[:16]
    emb_path, inet_path = cache_dir / f"embeddings-{digest}.npy", cache_dir / f"imagenet-{digest_inet}.npy"
    if emb_path.exists() and inet_path.exists():
        n = len(names)
        skin = np.array([skin_pixel_fraction(load(j)) for j in tqdm(range(n), desc="OOD: skin pixels", unit="img")])
        return PhotoSet(names, np.load(emb_path), skin, np.load(inet_path))
    photos = embed_photo_set(model, names, load, "OOD: embedding photos")
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.save(emb_path, photos.embeddings)
    if photos.imagenet is not None:
        np.save(inet_path, photos.imagenet)
    return photos


def dev_photos(model: ImageTextModel, items: Sequence[Any]) -> PhotoSet:
    """The folder's photos' set; within a `dermtriage evaluate` run that already forwarded them (a model
    without out-of-fold probabilities for them), that forward's features, not a second one."""
    from models.fitting.evaluation import run_features
    from models.photos import load_photo

    names = [i.stem for i in items]
    seen = run_features(model, [str(i.path) for i in items])
    if seen is not None:
        n = len(names)
        skin = np.array(
            [skin_pixel_fraction(load_photo(items[j].path)) for j in tqdm(range(n), desc="OOD: skin pixels")]
        )
        return PhotoSet(names, seen[0], skin, seen[1])
    return _photo_set(model, "|".join(names), names, lambda j: load_photo(items[j].path))


def non_skin_photos(model: ImageTextModel, cache_dir: Path | None = None) -> PhotoSet:
    """The non-skin set (models/fitting/ood_data.py): its features cached on disk per model, keyed by the
    model's fingerprint and the set's generator parameters; generated and embedded only on a miss."""
    from models.fitting.ood_cache import load_non_skin_cache, non_skin_cache_dir, non_skin_key, save_non_skin_cache
    from models.fitting.ood_data import non_skin_images

    folder = cache_dir if cache_dir is not None else non_skin_cache_dir()
    key = non_skin_key(model)
    cached = load_non_skin_cache(model, key, folder)
    if cached is not None:
        return cached
    images = non_skin_images()
    names = [n for n, _ in images]
    photos = embed_photo_set(model, names, lambda j: images[j][1], "OOD: embedding the non-skin set")
    with contextlib.suppress(OSError):  # a read-only cache: the figures do not depend on it
        save_non_skin_cache(model, key, photos, folder)
    return photos


def rule_flags(
    stats: OodStats,
    distance: np.ndarray,
    skin_probability: np.ndarray,
    skin_pixels: np.ndarray,
    imagenet_mass: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Per-rule flags against `stats` (the rules of OodScore, vectorised); imagenet_mass None: that rule off."""
    off = np.zeros(len(skin_pixels), dtype=bool)
    return {
        "distance": distance > stats.distance_threshold,
        "prompts": skin_probability < stats.skin_probability_threshold,
        "skin_pixels": skin_pixels < stats.skin_pixel_threshold,
        "imagenet": off if imagenet_mass is None else imagenet_mass < stats.imagenet_threshold,
    }


def set_flags(photos: PhotoSet, detector: OodDetector, stats: OodStats) -> dict[str, np.ndarray]:
    """Per-rule flags of a photo set scored against the Gaussian and thresholds of `stats`."""
    mass = None if photos.imagenet is None else stats.imagenet_log_mass(photos.imagenet)
    return rule_flags(
        stats,
        mahalanobis_sq(photos.embeddings, stats.mean, stats.precision),
        detector.skin_probability(photos.embeddings),
        photos.skin_pixels,
        mass,
    )


def cross_fitted_distances(emb: np.ndarray, groups: Sequence[str], folds: int = 5, seed: int = 0) -> np.ndarray:
    """Each photo's squared distance to a Gaussian fitted without its patient."""
    from sklearn.model_selection import GroupKFold

    out = np.zeros(len(emb))
    for tr, te in GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(emb, groups=groups):
        mean, precision = fit_gaussian(emb[tr])
        out[te] = mahalanobis_sq(emb[te], mean, precision)
    return out


def fit_ood(model: ImageTextModel, items: Sequence[Any], prompts: bool = True) -> tuple[OodStats, dict[str, Any]]:
    """Statistics on all development photos, thresholds and held-out figures (skin and non-skin)."""
    dev = dev_photos(model, items)
    emb, inet = dev.embeddings, dev.imagenet
    groups = [i.group for i in items]
    detector = OodDetector(model)
    skin_prob = detector.skin_probability(emb)
    dist_cf = cross_fitted_distances(emb, groups)
    # threshold on cross-fitted distances: the final Gaussian's in-sample distances would be too small
    t_dist, far_cf = grouped_quantile_threshold(dist_cf, groups, DISTANCE_QUANTILE, upper=True)
    t_prob, low_cf = grouped_quantile_threshold(skin_prob, groups, SKIN_PROB_QUANTILE, upper=False)
    if not prompts:  # measured useless for the embedded model (its text projection saw only diagnoses)
        t_prob, low_cf = 0.0, np.zeros(len(items), dtype=bool)
    t_pix, pix_cf = grouped_quantile_threshold(dev.skin_pixels, groups, SKIN_PIXEL_QUANTILE, upper=False)
    mean, precision = fit_gaussian(emb)
    inet_classes, t_inet = None, float("-inf")
    inet_cf = np.zeros(len(items), dtype=bool)
    if inet is not None:
        # classes chosen and threshold set on skin photos only; cross-fitted by patient for the skin figure
        _, inet_cf = grouped_quantile_threshold(
            cross_fitted_imagenet_mass(inet, groups), groups, IMAGENET_QUANTILE, upper=False
        )
        inet_classes = skin_typical_classes(inet, IMAGENET_CLASS_SHARE)
        t_inet = float(np.quantile(imagenet_log_mass(inet, inet_classes), 1 - IMAGENET_QUANTILE))
    fitted = OodStats(  # unrounded thresholds: the figures; the shipped file rounds them below
        model_fingerprint=model.artifacts.fingerprint,
        mean=mean,
        precision=precision,
        distance_threshold=t_dist,
        skin_probability_threshold=t_prob,
        skin_pixel_threshold=t_pix,
        imagenet_classes=inet_classes,
        imagenet_threshold=t_inet,
    )
    ns = non_skin_photos(model)
    names = ns.names
    ns_rules = set_flags(ns, detector, fitted)
    ns_flag = np.logical_or.reduce(list(ns_rules.values()))
    kinds = sorted({_kind(n) for n in names})
    figures = {
        "skin_photos": len(items),
        "skin_flag_rate": float((far_cf | low_cf | pix_cf | inet_cf).mean()),
        "skin_flag_rate_distance": float(far_cf.mean()),
        "skin_flag_rate_prompts": float(low_cf.mean()),
        "skin_flag_rate_skin_pixels": float(pix_cf.mean()),
        "skin_flag_rate_imagenet": float(inet_cf.mean()),
        "non_skin_images": len(names),
        "non_skin_flag_rate": float(ns_flag.mean()),
        "non_skin_flag_rate_distance": float(ns_rules["distance"].mean()),
        "non_skin_flag_rate_prompts": float(ns_rules["prompts"].mean()),
        "non_skin_flag_rate_skin_pixels": float(ns_rules["skin_pixels"].mean()),
        "non_skin_flag_rate_imagenet": float(ns_rules["imagenet"].mean()),
        "non_skin_per_kind": {k: float(ns_flag[[_kind(n) == k for n in names]].mean()) for k in kinds},
        "missed": [n for n, f in zip(names, ns_flag, strict=True) if not f],
        "protocol": "skin: thresholds and Gaussian fitted on 4 patient-grouped folds, judged on the 5th; "
        "non-skin: scored against the statistics fitted on all development photos",
    }
    stats = replace(
        fitted,
        distance_threshold=round(t_dist, 4),
        skin_probability_threshold=round(t_prob, 6),
        skin_pixel_threshold=round(t_pix, 6),
        imagenet_threshold=round(t_inet, 6) if inet is not None else float("-inf"),
        info={
            "data": "PAD-UFES-20 development subset",
            "n": len(items),
            "distance": f"squared Mahalanobis, Ledoit-Wolf; threshold = {DISTANCE_QUANTILE} quantile of cross-fitted",
            "skin_probability": f"skin-prompt softmax mass; threshold = {1 - SKIN_PROB_QUANTILE:.2f} quantile"
            + ("" if prompts else " (off: no separation measured for this model)"),
            "skin_pixels": f"YCbCr skin-range pixel share; threshold = {1 - SKIN_PIXEL_QUANTILE:.2f} quantile",
            "imagenet": f"log frozen-ImageNet mass on classes with >= {IMAGENET_CLASS_SHARE:.0%} of the skin photos' "
            f"mean mass; threshold = {1 - IMAGENET_QUANTILE:.2f} quantile"
            + ("" if inet is not None else " (off: the model has no frozen ImageNet trunk)"),
            "figures": {k: v for k, v in figures.items() if k != "missed"},
        },
    )
    return stats, figures


def _kind(name: str) -> str:
    return name.split(":")[1] if name.startswith("synthetic:") else "package_photo"


def fit_ood_on_folder(
    model: ImageTextModel, data_dir: str | Path, *, prompts: bool = True
) -> tuple[OodStats, dict[str, Any]]:
    """`fit_ood` on the photos of a labelled folder (`dermtriage fit ood`)."""
    from models.fitting.datasets import load_labelled_folder
    from models.knowledge.taxonomy import load_taxonomy

    return fit_ood(model, load_labelled_folder(data_dir, load_taxonomy()), prompts=prompts)
