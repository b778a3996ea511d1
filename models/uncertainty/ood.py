"""Is this a skin photo at all? Two signals from the image embedding the model already computed.

1. Distance to the training distribution: the squared Mahalanobis distance of the unit image
   embedding to a Gaussian fitted (Ledoit-Wolf shrinkage) on the development photos' embeddings.
   A screenshot, a page or a cat lands far from every skin photo the model has seen.
2. Skin-vs-non-skin prompts: the softmax mass, at the model's logit scale, of skin prompts ("a
   close-up photo of human skin", ...) against non-skin prompts ("a screenshot", "a document",
   "fabric", "a dog", "an empty frame", ...). Works with any CLIP-style model, no statistics needed.

3. What the untouched ImageNet network sees (models with a frozen ImageNet trunk, such as the
   embedded model: models/embedded/domain.py): its probability mass on the ImageNet classes skin
   photos typically get ("tick", "band aid", ...). A cat, a rocket or a uniform puts its mass
   elsewhere, even where the fine-tuned embedding lands near the skin photos.

4. Skin-coloured pixels: the share of pixels in the classic YCbCr skin range (Cb 77-127, Cr
   133-173, not too dark). Grey scans, screenshots, documents and empty frames have almost none.
   Cheap, and it needs no tower: it catches what an embedding trained only on skin cannot place.

A photo is flagged when any crosses its threshold. The thresholds are quantiles of the skin
photos' own values (distance: patient-grouped cross-fitted), never tuned on non-skin images, so
the false-flag rate on skin is what the quantile says and the non-skin rate is measured, not fitted.

The fitted statistics (mean, shrunk precision, thresholds) are tied to the model's fingerprint and
stored as an .npz next to the model (`models/embedded/ood_stats.npz` for the embedded model).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models.backends.base import ImageTextModel

__all__ = [
    "NON_SKIN_PROMPTS",
    "SKIN_PROMPTS",
    "OodDetector",
    "OodScore",
    "OodStats",
    "fit_gaussian",
    "imagenet_log_mass",
    "mahalanobis_sq",
    "skin_pixel_fraction",
    "skin_typical_classes",
]

SKIN_PROMPTS = (
    "a close-up photo of human skin",
    "a clinical photo of a skin lesion",
    "a photo of a mole on the skin",
    "a dermatology photo of a rash",
    "a smartphone photo of a skin spot",
    "a photo of a skin lesion on the arm",
    "a photo of a skin lesion on the face",
)
NON_SKIN_PROMPTS = (
    "a screenshot of a computer screen",
    "a scanned document with text",
    "a page of printed text",
    "a photo of fabric",
    "a textile pattern",
    "a photo of a dog",
    "a photo of a cat",
    "an empty black frame",
    "a blank white image",
    "a photo of a landscape",
    "a photo of a building",
    "a photo of food",
    "a chart or diagram",
    "a photo of an object",
)
# used when a model has no fitted statistics: flag when non-skin prompts take most of the mass
DEFAULT_SKIN_PROBABILITY = 0.5
DEFAULT_SKIN_PIXELS = 0.01


def skin_pixel_fraction(image: Image.Image) -> float:
    """Share of pixels in the YCbCr skin range, on a copy at most 256 px on a side."""
    im = image.convert("RGB")
    im.thumbnail((256, 256))
    y, cb, cr = (np.asarray(c, dtype=np.float64) for c in im.convert("YCbCr").split())
    return float(((cb >= 77) & (cb <= 127) & (cr >= 133) & (cr <= 173) & (y > 40)).mean())


def fit_gaussian(embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and Ledoit-Wolf shrunk precision of (N, D) embeddings (N may be below D)."""
    from sklearn.covariance import LedoitWolf

    lw = LedoitWolf().fit(np.asarray(embeddings, dtype=np.float64))
    return lw.location_, lw.precision_


def mahalanobis_sq(embeddings: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    d = np.atleast_2d(np.asarray(embeddings, dtype=np.float64)) - mean
    return np.einsum("nd,de,ne->n", d, precision, d)


@dataclass
class OodStats:
    """Fitted statistics and thresholds for one model (fingerprint)."""

    model_fingerprint: str
    mean: np.ndarray
    precision: np.ndarray
    distance_threshold: float  # squared Mahalanobis distance above which a photo is flagged
    skin_probability_threshold: float  # skin-prompt mass below which a photo is flagged (0: rule off)
    skin_pixel_threshold: float  # share of skin-coloured pixels below which a photo is flagged
    info: dict[str, Any] = field(default_factory=dict)
    imagenet_classes: np.ndarray | None = None  # ImageNet classes typical of skin photos (None: rule off)
    imagenet_threshold: float = float("-inf")  # log ImageNet mass on those classes below which a photo is flagged

    def imagenet_log_mass(self, probs: np.ndarray) -> np.ndarray | None:
        """(N,) log of the ImageNet probability on the skin-typical classes, None when the rule is off."""
        if self.imagenet_classes is None:
            return None
        return imagenet_log_mass(probs, self.imagenet_classes)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "model_fingerprint": self.model_fingerprint,
            "distance_threshold": self.distance_threshold,
            "skin_probability_threshold": self.skin_probability_threshold,
            "skin_pixel_threshold": self.skin_pixel_threshold,
            "imagenet_threshold": self.imagenet_threshold,
            "info": self.info,
        }
        with path.open("wb") as fh:  # a file handle: np.savez would append .npz to a str path
            np.savez_compressed(
                fh,
                mean=self.mean.astype(np.float32),
                precision=self.precision.astype(np.float32),
                imagenet_classes=np.array(
                    [] if self.imagenet_classes is None else self.imagenet_classes, dtype=np.int64
                ),
                meta=np.array(json.dumps(meta)),
            )

    @classmethod
    def load(cls, path: Path) -> OodStats:
        with np.load(path, allow_pickle=False) as blob:
            meta = json.loads(str(blob["meta"]))
            return cls(
                model_fingerprint=meta["model_fingerprint"],
                mean=blob["mean"].astype(np.float64),
                precision=blob["precision"].astype(np.float64),
                distance_threshold=float(meta["distance_threshold"]),
                skin_probability_threshold=float(meta["skin_probability_threshold"]),
                skin_pixel_threshold=float(meta["skin_pixel_threshold"]),
                info=meta.get("info", {}),
                imagenet_classes=classes
                if "imagenet_classes" in blob and (classes := blob["imagenet_classes"]).size
                else None,
                imagenet_threshold=float(meta.get("imagenet_threshold", float("-inf"))),
            )


@dataclass(frozen=True)
class OodScore:
    distance: float | None  # squared Mahalanobis distance (None without fitted statistics)
    distance_threshold: float | None
    skin_probability: float
    skin_probability_threshold: float
    skin_pixels: float | None = None  # share of skin-coloured pixels (None when no photo was given)
    skin_pixel_threshold: float = 0.0
    imagenet_log_mass: float | None = None  # log ImageNet mass on skin-typical classes (None: not measured)
    imagenet_threshold: float = float("-inf")

    @property
    def far(self) -> bool:
        return (
            self.distance is not None
            and self.distance_threshold is not None
            and self.distance > self.distance_threshold
        )

    @property
    def not_skin_by_prompts(self) -> bool:
        return self.skin_probability < self.skin_probability_threshold

    @property
    def few_skin_pixels(self) -> bool:
        return self.skin_pixels is not None and self.skin_pixels < self.skin_pixel_threshold

    @property
    def not_skin_by_imagenet(self) -> bool:
        return self.imagenet_log_mass is not None and self.imagenet_log_mass < self.imagenet_threshold

    @property
    def flagged(self) -> bool:
        return self.far or self.not_skin_by_prompts or self.few_skin_pixels or self.not_skin_by_imagenet


class OodDetector:
    """Scores image embeddings; prompt embeddings are computed once, at construction."""

    def __init__(self, model: ImageTextModel, stats: OodStats | None = None) -> None:
        self.stats = stats
        with torch.inference_mode():
            z = model.encode_text(list(SKIN_PROMPTS + NON_SKIN_PROMPTS)).float().cpu()
        self.prompts = z.numpy().astype(np.float64)
        self.logit_scale = float(model.logit_scale)
        self.n_skin = len(SKIN_PROMPTS)

    def skin_probability(self, embeddings: np.ndarray) -> np.ndarray:
        """(N,) softmax mass of the skin prompts."""
        logits = self.logit_scale * np.atleast_2d(embeddings) @ self.prompts.T
        logits -= logits.max(1, keepdims=True)
        e = np.exp(logits)
        return e[:, : self.n_skin].sum(1) / e.sum(1)

    def distance(self, embeddings: np.ndarray) -> np.ndarray | None:
        if self.stats is None:
            return None
        return mahalanobis_sq(embeddings, self.stats.mean, self.stats.precision)

    def score(
        self,
        embeddings: np.ndarray | torch.Tensor,
        images: Sequence[Image.Image] | None = None,
        imagenet_probs: np.ndarray | torch.Tensor | None = None,
    ) -> list[OodScore]:
        """One score per embedding; pass the photos for the skin-colour rule and, where the model
        offers them, its frozen ImageNet probabilities (N, 1000) for the ImageNet rule."""
        e = embeddings.detach().float().cpu().numpy() if isinstance(embeddings, torch.Tensor) else embeddings
        e = np.atleast_2d(np.asarray(e, dtype=np.float64))
        skin = self.skin_probability(e)
        dist = self.distance(e)
        t_skin = self.stats.skin_probability_threshold if self.stats else DEFAULT_SKIN_PROBABILITY
        t_dist = self.stats.distance_threshold if self.stats else None
        t_pix = self.stats.skin_pixel_threshold if self.stats else DEFAULT_SKIN_PIXELS
        pix = [skin_pixel_fraction(im) for im in images] if images is not None else [None] * len(e)
        mass = None
        if imagenet_probs is not None and self.stats is not None:
            p = (
                imagenet_probs.detach().float().cpu().numpy()
                if isinstance(imagenet_probs, torch.Tensor)
                else imagenet_probs
            )
            mass = self.stats.imagenet_log_mass(np.atleast_2d(np.asarray(p, dtype=np.float64)))
        t_inet = self.stats.imagenet_threshold if self.stats else float("-inf")
        return [
            OodScore(
                None if dist is None else float(dist[i]),
                t_dist,
                float(skin[i]),
                t_skin,
                pix[i],
                t_pix,
                None if mass is None else float(mass[i]),
                t_inet,
            )
            for i in range(len(e))
        ]


def imagenet_log_mass(probs: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(N,) log of the probability (N, 1000) on `classes`, floored so an empty set is finite."""
    return np.log(np.clip(np.atleast_2d(probs)[:, classes].sum(1), 1e-12, None))


def skin_typical_classes(probs: np.ndarray, share: float = 0.01) -> np.ndarray:
    """ImageNet classes holding at least `share` of the mean probability over skin photos (N, 1000)."""
    mean = np.asarray(probs, dtype=np.float64).mean(0)
    return np.flatnonzero(mean >= share).astype(np.int64)


def grouped_quantile_threshold(
    values: np.ndarray, groups: Sequence[str], q: float, upper: bool, folds: int = 5, seed: int = 0
) -> tuple[float, np.ndarray]:
    """Threshold = the q (or 1 - q) quantile of `values`, plus the held-out flags of a grouped CV of that choice."""
    from sklearn.model_selection import GroupKFold

    v = np.asarray(values, dtype=float)
    flags = np.zeros(len(v), dtype=bool)
    for tr, te in GroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(v, groups=groups):
        t = np.quantile(v[tr], q if upper else 1 - q)
        flags[te] = v[te] > t if upper else v[te] < t
    return float(np.quantile(v, q if upper else 1 - q)), flags
