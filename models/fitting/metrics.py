"""Classification figures for labelled evaluations: one function, one dict, used by every report."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score


def classification_report(
    probs: np.ndarray,
    labels: Sequence[int],
    class_ids: Sequence[str],
    malignant: Sequence[bool],
    fitzpatrick: Sequence[int | None] | None = None,
    melanoma_id: str = "melanoma",
) -> dict[str, object]:
    """Balanced accuracy, top-3, malignant AUROC, melanoma sensitivity, per class and per skin type.

    `probs` is (N, C) over `class_ids`; `labels` index into `class_ids`. The malignant score is
    the summed probability of the malignant classes.
    """
    y = np.asarray(labels)
    pred = probs.argmax(1)
    present = sorted(set(y.tolist()))
    k = min(3, probs.shape[1])
    top3 = np.argsort(-probs, axis=1)[:, :k]
    mal = np.asarray(malignant, dtype=bool)
    y_mal = mal[y]
    score_mal = probs[:, mal].sum(1) if mal.any() else np.zeros(len(y))
    auroc = float(roc_auc_score(y_mal, score_mal)) if 0 < y_mal.sum() < len(y_mal) else None
    per_class = {class_ids[c]: float((pred[y == c] == c).mean()) for c in present}
    mel_sens = per_class.get(melanoma_id)
    per_fitz: dict[str, dict[str, float | int | None]] = {}
    if fitzpatrick is not None:
        fz = np.array([f if f is not None else 0 for f in fitzpatrick])
        for t in sorted(set(fz.tolist()) - {0}):
            m = fz == t
            per_fitz[str(t)] = {
                "n": int(m.sum()),
                "balanced_accuracy": float(balanced_accuracy_score(y[m], pred[m])) if m.sum() >= 10 else None,
            }
    return {
        "n": len(y),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "accuracy": float((pred == y).mean()),
        "top3_accuracy": float((top3 == y[:, None]).any(1).mean()),
        "malignant_auroc": auroc,
        "melanoma_sensitivity": mel_sens,
        "per_class": per_class,
        "per_fitzpatrick": per_fitz,
    }
