"""Split-conformal prediction sets: APS and RAPS (a short, deterministic implementation).

Score of label y for one answer (Romano et al. 2020, APS; Angelopoulos et al. 2021, RAPS):

    s(x, y) = sum of the probabilities ranked strictly above y  +  lam * max(0, rank(y) - k_reg)

(rank 1 = most probable; `lam = 0` is APS). This is the papers' randomised score with U fixed at
0: a fixed score function, so answers do not change between calls, and split conformal still
gives marginal coverage >= 1 - alpha on exchangeable data. The set is every label whose score is
at most q_hat, the ceil((n + 1)(1 - alpha)) / n empirical quantile of the scores of the true
labels on n calibration answers; the score rises with rank, so the set is a prefix of the
ranking, and the top label (score 0 under APS) is always in, so a set is never empty. Counting
the label's own mass instead (U = 1) with the top label forced in would over-cover: calibration
would count confident top-1 answers as misses that the set then includes anyway.

Class-conditional ("Mondrian") sets use one q_hat per true class, fitted on that class's answers
only: coverage >= 1 - alpha holds for every class, rare ones included (marginal coverage can hide
a rare class, e.g. melanoma, missed far more often). Labels without enough calibration answers
fall back to the marginal q_hat. With per-label thresholds a set need not be a prefix of the
ranking: a rare class can be in while a more probable common one is out.

Only the sorted calibration scores are stored, so the service can serve any coverage level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

Method = Literal["aps", "raps"]

__all__ = [
    "Method",
    "conformal_quantile",
    "conformity_scores",
    "label_scores",
    "prediction_sets",
    "set_coverage",
]


def label_scores(probs: np.ndarray, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """(N, C) score of every label of every answer (see the module docstring)."""
    p = np.atleast_2d(np.asarray(probs, dtype=float))
    order = np.argsort(-p, axis=1, kind="stable")
    sorted_p = np.take_along_axis(p, order, axis=1)
    ranks = np.arange(1, p.shape[1] + 1)
    above = np.cumsum(sorted_p, axis=1) - sorted_p
    sorted_scores = above + lam * np.maximum(0, ranks - k_reg)
    scores = np.empty_like(p)
    np.put_along_axis(scores, order, sorted_scores, axis=1)
    return scores


def conformity_scores(probs: np.ndarray, labels: Sequence[int], lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """(N,) score of the true label of each calibration answer."""
    y = np.asarray(labels, dtype=int)
    return label_scores(probs, lam, k_reg)[np.arange(len(y)), y]


def conformal_quantile(scores: Sequence[float] | np.ndarray, coverage: float) -> float:
    """The finite-sample corrected (1 - alpha) quantile; +inf when n is too small for `coverage`."""
    if not 0.0 < coverage < 1.0:
        raise ValueError(f"coverage must be in (0, 1), got {coverage}")
    s = np.sort(np.asarray(scores, dtype=float))
    n = len(s)
    k = math.ceil((n + 1) * coverage)
    return float("inf") if k > n else float(s[k - 1])


def prediction_sets(probs: np.ndarray, q_hat: float | np.ndarray, lam: float = 0.0, k_reg: int = 0) -> np.ndarray:
    """(N, C) boolean membership; `q_hat` is one threshold or one per label; the top label is always in."""
    p = np.atleast_2d(np.asarray(probs, dtype=float))
    member = label_scores(p, lam, k_reg) <= np.asarray(q_hat, dtype=float) + 1e-12
    member[np.arange(len(p)), p.argmax(1)] = True
    return member


def set_coverage(member: np.ndarray, labels: Sequence[int]) -> np.ndarray:
    """(N,) whether each set holds its true label."""
    y = np.asarray(labels, dtype=int)
    return member[np.arange(len(y)), y]
