"""Train the embedded model on a split-based folder (the ISIC 2017 layout: `labels.csv` with
`file,label,split,modality,...`), with the same LiT recipe as the PAD model (train_embedded.py):

- fit on the `train` split only;
- after every epoch score `validation` and keep the epoch (and the test-time views) with the best
  mean of the melanoma and seborrheic keratosis AUROCs (the ISIC 2017 challenge's score);
- set the melanoma urgency threshold on `validation` (the highest melanoma probability that still
  flags >= 90 % of its melanomas);
- score `test` once, with the chosen weights, at the very end: nothing is chosen on it.

The images are 256x256 copies squashed from 4:3-3:2 originals, so the training crops jitter the
aspect ratio more widely than PAD's (ISIC_RATIO).
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from models.fitting.datasets import DEFAULT_DATA, LabelledImage, load_labelled_folder
from models.fitting.embedded_steps import TTA_MODES
from models.fitting.train_embedded import TrainConfig, prepare_run, start_run
from models.knowledge.taxonomy import Taxonomy, load_taxonomy

log = logging.getLogger(__name__)
TEXT_PREFIX = "text.transformer."  # the frozen MiniLM: loaded from its wheel, never saved

ISIC_DIR = DEFAULT_DATA.parent / "isic-2017"
ISIC_RATIO = (0.6, 1.6)  # aspect-ratio jitter of the training crops (PAD: 0.8-1.25)
SPLITS = ("train", "validation", "test")
MELANOMA, SEBORRHEIC_KERATOSIS = "melanoma", "seborrheic_keratosis"
TARGET_SENSITIVITY = 0.90


def dermoscopic_config(**overrides: object) -> TrainConfig:
    """The PAD recipe for a split-based dermoscopic run: dermoscopic prompts and captions, no CV
    folds, 6 augmented views an image (3.3x more images than PAD's 588, on the same CPU)."""
    base = {"modality": "dermoscopic", "folds": 0, "train_views": 6}
    return TrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


@dataclass
class SplitResult:
    class_ids: list[str]
    ids: dict[str, list[str]] = field(default_factory=dict)  # split -> image stems
    paths: dict[str, list[Path]] = field(default_factory=dict)  # "validation" / "test" -> image files
    labels: dict[str, list[str]] = field(default_factory=dict)  # split -> condition ids
    probs: dict[str, np.ndarray] = field(default_factory=dict)  # "validation" / "test" -> (n, C), chosen views
    history: list[dict[str, float]] = field(default_factory=list)  # validation figures per epoch and views
    best_epoch: int = 0
    tta: str = "flip4"
    melanoma_threshold: float = 0.5
    reports: dict[str, dict[str, object]] = field(default_factory=dict)  # "validation" / "test"
    state_dict: dict[str, torch.Tensor] | None = None
    config: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0


def by_split(items: list[LabelledImage]) -> dict[str, list[LabelledImage]]:
    out: dict[str, list[LabelledImage]] = {s: [] for s in SPLITS}
    for it in items:
        split = (it.metadata.get("split") or "").strip().lower()
        if split in out:
            out[split].append(it)
    missing = [s for s in SPLITS if not out[s]]
    if missing:
        raise ValueError(f"labels.csv has no rows in split(s) {', '.join(missing)} (a `split` column is needed)")
    return out


def melanoma_threshold(p_mel: np.ndarray, is_mel: np.ndarray, target: float = TARGET_SENSITIVITY) -> float:
    """The highest threshold t with sensitivity P(p_mel >= t | melanoma) >= target."""
    scores = np.sort(p_mel[is_mel.astype(bool)])[::-1]
    k = int(np.ceil(target * len(scores)))  # flag at least k of the melanomas
    return float(scores[max(k, 1) - 1])


def split_report(probs: np.ndarray, labels: list[str], class_ids: list[str], threshold: float) -> dict[str, object]:
    """Melanoma and SK AUROC (one-vs-rest), balanced accuracy, and the melanoma threshold's effect."""
    y = np.array([class_ids.index(c) for c in labels])
    mel, sk = class_ids.index(MELANOMA), class_ids.index(SEBORRHEIC_KERATOSIS)
    is_mel = y == mel
    flagged = probs[:, mel] >= threshold
    pred = probs.argmax(1)
    return {
        "n": len(y),
        "counts": {c: int((y == i).sum()) for i, c in enumerate(class_ids)},
        "melanoma_auroc": float(roc_auc_score(is_mel, probs[:, mel])),
        "seborrheic_keratosis_auroc": float(roc_auc_score(y == sk, probs[:, sk])),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "accuracy": float((pred == y).mean()),
        "per_class_recall": {c: float((pred[y == i] == i).mean()) for i, c in enumerate(class_ids)},
        "melanoma_threshold": threshold,
        "melanoma_sensitivity_urgent": float(flagged[is_mel].mean()),
        "melanoma_specificity_urgent": float((~flagged[~is_mel]).mean()),
        "urgent_fraction": float(flagged.mean()),
    }


def train_on_splits(
    data_dir: Path, cfg: TrainConfig, *, cache_dir: Path | None = None, taxonomy: Taxonomy | None = None
) -> SplitResult:
    """Fit on `train`, choose the epoch, the views and the threshold on `validation`, then score `test`."""
    t0 = start_run(cfg)
    taxonomy = taxonomy or load_taxonomy()
    splits = by_split(load_labelled_folder(data_dir, taxonomy))
    items = [it for s in SPLITS for it in splits[s]]
    n_train, n_val = len(splits["train"]), len(splits["validation"])
    class_ids = sorted({i.condition_id for i in splits["train"]})
    run = prepare_run(items, class_ids, taxonomy, cfg, cache_dir, n_train=n_train, ratio=ISIC_RATIO)
    log.info("features cached (%.0f s)", time.time() - t0)
    val_idx = np.arange(n_train, n_train + n_val)
    test_idx = np.arange(n_train + n_val, len(items))
    val_labels = [it.condition_id for it in splits["validation"]]
    result = SplitResult(class_ids=class_ids, config=asdict(cfg))
    best: dict[str, object] = {"score": -1.0}

    def on_epoch(epoch: int) -> None:
        probs = run.predict(val_idx)
        for mode in TTA_MODES:
            rep = split_report(probs[mode], val_labels, class_ids, 0.5)
            score = (rep["melanoma_auroc"] + rep["seborrheic_keratosis_auroc"]) / 2  # type: ignore[operator]
            result.history.append({"epoch": epoch, "views": mode, "score": score, **_figures(rep)})
            if score > best["score"]:  # type: ignore[operator]
                state = {
                    k: v.detach().clone() for k, v in run.model.state_dict().items() if not k.startswith(TEXT_PREFIX)
                }
                best.update(score=score, epoch=epoch, mode=mode, state=state)
        log.info("epoch %d: validation %s (%.0f s)", epoch, result.history[-1], time.time() - t0)

    run.fit(np.arange(n_train), cfg, cfg.seed + 100, "train split", on_epoch=on_epoch)
    run.model.load_state_dict(best["state"], strict=False)  # type: ignore[arg-type]
    result.best_epoch, result.tta = int(best["epoch"]), str(best["mode"])  # type: ignore[call-overload]
    result.state_dict = best["state"]  # type: ignore[assignment]
    val_probs = run.predict(val_idx)[result.tta]
    mel = class_ids.index(MELANOMA)
    result.melanoma_threshold = melanoma_threshold(val_probs[:, mel], np.array([c == MELANOMA for c in val_labels]))
    result.probs["validation"] = val_probs
    result.probs["test"] = run.predict(test_idx)[result.tta]  # the one look at test
    for split in ("validation", "test"):
        result.ids[split] = [it.stem for it in splits[split]]
        result.paths[split] = [it.path for it in splits[split]]
        result.labels[split] = [it.condition_id for it in splits[split]]
        result.reports[split] = split_report(
            result.probs[split], result.labels[split], class_ids, result.melanoma_threshold
        )
    result.ids["train"] = [it.stem for it in splits["train"]]
    result.seconds = time.time() - t0
    return result


def _figures(rep: dict[str, object]) -> dict[str, float]:
    keys = ("melanoma_auroc", "seborrheic_keratosis_auroc", "balanced_accuracy")
    return {k: round(float(rep[k]), 4) for k in keys}  # type: ignore[arg-type]
