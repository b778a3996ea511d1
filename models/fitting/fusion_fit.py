# size: the whole fusion fit (data, cross-fitting, urgency threshold tuning) in one offline module, read top to bottom
"""Fit the fusion on PAD-UFES-20: stacking on out-of-fold image probabilities, patient-grouped.

The embedded image model was trained on these photos, so its own scores on them are in-sample:
fusion is fitted (and judged) on its out-of-fold probabilities (`validation/oof_predictions.csv`,
patient-grouped 5-fold CV). Risk features come only from fields a real request carries and whose
missingness in PAD is not an artifact (age, body site, the six lesion questions; DATA.md), and
the same lesion questions, written as a patient would, give the symptoms text.

Fitted by class-balanced multinomial maximum likelihood with an L2 penalty on the risk weights:
one tempered image weight `a`, one text weight `s` (both shared by all conditions, so the
form carries over to conditions outside PAD), per-class intercepts and per-class risk weights.

    dermtriage fit fusion                 # refit; writes ./artifacts/embedded-pad-lite0/fusion.json
    dermtriage fit fusion --out models/embedded/fusion.json   # replace the shipped file
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from sklearn.model_selection import StratifiedGroupKFold
from tqdm import tqdm

from models.backends.artifacts import sha256_file
from models.fitting.datasets import DEFAULT_DATA, LabelledImage, sentence_from_pad
from models.knowledge.risk_factors import PAD_REQUEST_FIELDS, RiskFactors, risk_factors_from_pad
from models.knowledge.symptoms import apply_findings, extract_findings
from models.knowledge.taxonomy import Taxonomy, UrgencyTier
from models.scoring.fusion import (
    FITTED_FEATURES,
    LOG_FLOOR,
    FeatureEncoding,
    FusionModel,
    FusionResult,
    fuse,
)
from models.scoring.urgency import (
    UrgencyThresholds,
    assess_urgency,
    fired_rules,
    label_table,
    ng12_checklist,
    urgency_report,
)

log = logging.getLogger(__name__)

__all__ = [
    "FusionData",
    "cross_fit",
    "fit_fusion",
    "fuse_row",
    "nested_urgency",
    "pad_fusion_data",
    "read_oof",
    "text_similarities",
    "tune_urgency",
]

# Chosen by patient-grouped CV on the development set (3 split seeds; recorded in fusion.json):
# class weights count**-0.5 trade balanced accuracy against malignant AUROC better than full balancing.
DEFAULT_L2 = 3.0  # on the risk weights
DEFAULT_BALANCE = 0.5


@dataclass
class FusionData:
    """Everything the fit needs, aligned row by row."""

    class_ids: list[str]
    y: np.ndarray  # (N,) index into class_ids
    groups: np.ndarray  # (N,) patient ids
    image: np.ndarray  # (N, C) image probabilities
    text: np.ndarray  # (N, C) symptoms-text similarities (0 where a row has no text)
    risks: list[RiskFactors]
    sentences: list[str]


def read_oof(path: Path, stems: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Class ids and (N, C) out-of-fold probabilities in the order of `stems`; KeyError if one is missing."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c for c in (reader.fieldnames or []) if c.startswith("p_")]
        rows = {r["image_id"]: [float(r[c]) for c in cols] for r in reader}
    missing = [s for s in stems if s not in rows]
    if missing:
        raise KeyError(f"{path} has no out-of-fold row for {len(missing)} photos, e.g. {missing[:3]}")
    return [c[2:] for c in cols], np.array([rows[s] for s in stems])


def pad_inputs(items: Sequence[LabelledImage], fields: frozenset[str] = PAD_REQUEST_FIELDS) -> tuple[list, list]:
    """Per photo: merged RiskFactors (explicit PAD fields + findings from its sentence) and the sentence."""
    risks, sentences = [], []
    for it in items:
        sentence = sentence_from_pad(it.metadata)
        risks.append(apply_findings(risk_factors_from_pad(it.metadata, fields), extract_findings(sentence)))
        sentences.append(sentence)
    return risks, sentences


def text_similarities(model, label_embeddings, sentences: Sequence[str]) -> np.ndarray:
    """(N, C) cosine similarity of each sentence with each label embedding (0 rows for empty text)."""
    unique = sorted({s for s in sentences if s})
    out = np.zeros((len(sentences), label_embeddings.shape[0]))
    if not unique:
        return out
    z = model.encode_text(unique)
    sims = (z @ label_embeddings.T).detach().cpu().numpy()
    index = {s: i for i, s in enumerate(unique)}
    for n, s in enumerate(sentences):
        if s:
            out[n] = sims[index[s]]
    return out


def pad_fusion_data(
    items: Sequence[LabelledImage],
    class_ids: Sequence[str],
    image_probs: np.ndarray,
    model=None,
    label_embeddings=None,
    fields: frozenset[str] = PAD_REQUEST_FIELDS,
) -> FusionData:
    """Align labels, patients, image probabilities, risk factors and (with a model) text similarities."""
    risks, sentences = pad_inputs(items, fields)
    text = (
        text_similarities(model, label_embeddings, sentences)
        if model is not None and label_embeddings is not None
        else np.zeros_like(image_probs)
    )
    return FusionData(
        class_ids=list(class_ids),
        y=np.array([list(class_ids).index(i.condition_id) for i in items]),
        groups=np.array([i.group for i in items]),
        image=np.asarray(image_probs, dtype=float),
        text=text,
        risks=risks,
        sentences=sentences,
    )


# ----------------------------------------------------------------------------- the fit


@dataclass
class Params:
    a: float
    s: float
    b: np.ndarray  # (C,)
    v: np.ndarray  # (C, F)

    def logits(self, log_img: np.ndarray, text: np.ndarray, x: np.ndarray) -> np.ndarray:
        return self.a * log_img + self.s * text + self.b + x @ self.v.T


def _log_image(p: np.ndarray) -> np.ndarray:
    return np.log(np.clip(p, LOG_FLOOR, 1.0))


def fit_params(
    log_img: np.ndarray,
    text: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2: float = DEFAULT_L2,
    balance: float = DEFAULT_BALANCE,
) -> Params:
    """Multinomial maximum likelihood with rows weighted count**-balance (1: class-balanced, 0: as
    sampled), L2 on the risk weights (L-BFGS, exact gradient)."""
    n, f = x.shape
    c = n_classes
    counts = np.bincount(y, minlength=c).astype(float)
    w = np.maximum(counts, 1)[y] ** -balance
    w /= w.sum()
    onehot = np.eye(c)[y]

    def unpack(theta: np.ndarray) -> Params:
        return Params(theta[0], theta[1], theta[2 : 2 + c], theta[2 + c :].reshape(c, f))

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        p = unpack(theta)
        z = p.logits(log_img, text, x)
        z -= z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        nll = -(w * (onehot * logp).sum(1)).sum()
        g = (np.exp(logp) - onehot) * w[:, None]  # d nll / d z
        reg = 0.5 * l2 / n * (p.v**2).sum() + 0.5e-3 * (p.b**2).sum()
        grad = np.concatenate(
            [
                [(g * log_img).sum(), (g * text).sum()],
                g.sum(0) + 1e-3 * p.b,
                (g.T @ x + l2 / n * p.v).ravel(),
            ]
        )
        return nll + reg, grad

    theta0 = np.zeros(2 + c + c * f)
    theta0[0] = 1.0
    bounds = [(0.0, 5.0), (0.0, 200.0)] + [(None, None)] * (c + c * f)
    res = minimize(loss, theta0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 2000})
    if not res.success:
        log.warning("fusion fit did not converge: %s", res.message)
    p = unpack(res.x)
    # softmax ignores shared shifts: centre intercepts and each feature's weights across classes
    return Params(float(p.a), float(p.s), p.b - p.b.mean(), p.v - p.v.mean(0, keepdims=True))


def fit_fusion(
    data: FusionData, rows: np.ndarray | None = None, l2: float = DEFAULT_L2, balance: float = DEFAULT_BALANCE
) -> FusionModel:
    """A FusionModel fitted on `rows` of `data` (all rows by default); encoding fitted on the same rows."""
    rows = np.arange(len(data.y)) if rows is None else rows
    encoding = FeatureEncoding.from_training([data.risks[i] for i in rows])
    x = np.stack([encoding.encode(data.risks[i]) for i in rows])
    p = fit_params(_log_image(data.image[rows]), data.text[rows], x, data.y[rows], len(data.class_ids), l2, balance)
    return FusionModel(
        classes=list(data.class_ids),
        image_weight=p.a,
        text_weight=p.s,
        intercepts=dict(zip(data.class_ids, p.b.tolist(), strict=True)),
        features=list(FITTED_FEATURES),
        encoding=encoding,
        risk_weights={
            c: dict(zip(FITTED_FEATURES, p.v[k].tolist(), strict=True)) for k, c in enumerate(data.class_ids)
        },
    )


def fuse_row(model: FusionModel, data: FusionData, i: int) -> FusionResult:
    """`fuse()` on row i of `data` (its risk factors already carry the sentence's findings)."""
    labels = data.class_ids
    text = dict(zip(labels, data.text[i].tolist(), strict=True)) if data.sentences[i] else None
    return fuse(dict(zip(labels, data.image[i].tolist(), strict=True)), text, data.risks[i], model=model)


def cross_fit(
    data: FusionData, folds: int = 5, seed: int = 0, l2: float = DEFAULT_L2, progress: str | None = None
) -> tuple[np.ndarray, list[FusionResult]]:
    """Patient-grouped cross-fitted answers: each row fused by a model fitted without its patient.

    Returns the (N, C) posteriors over data.class_ids and the per-row FusionResults (for urgency).
    `progress`: a progress bar over the folds with this description.
    """
    k = min(folds, int(np.bincount(data.y, minlength=len(data.class_ids)).min()))
    if k < 2:
        raise ValueError("cross-fitting needs at least 2 photos of every class")
    results: list[FusionResult | None] = [None] * len(data.y)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    splits = splitter.split(np.zeros(len(data.y)), data.y, data.groups)
    for tr, te in tqdm(splits, total=k, desc=progress, unit="fold", disable=progress is None):
        assert not set(data.groups[tr]) & set(data.groups[te]), "a patient in both fit and test rows"
        model = fit_fusion(data, tr, l2)
        for i in te:
            results[i] = fuse_row(model, data, int(i))
    done = [r for r in results if r is not None]
    probs = np.array([[r.posterior[c] for c in data.class_ids] for r in done])
    return probs, done


# ----------------------------------------------------------------------------- urgency thresholds

MALIGNANT_GRID = (0.02, 0.03, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5)
PIGMENTED_GRID = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)  # the checklist stays in force on pigmented lesions


def _ranks(results: Sequence[FusionResult], t: UrgencyThresholds, taxonomy: Taxonomy) -> dict[str, np.ndarray]:
    """Per row the parts of the urgency decision that do not move with the tuned thresholds."""
    no_ng12 = t.model_copy(update={"pigmented_threshold": 2.0})
    ids = tuple(results[0].posterior)
    table = label_table(ids, t, taxonomy)
    upper = np.array([[r.posterior_upper[c] for c in ids] for r in results])

    def red_flag_rank(u: np.ndarray, r: FusionResult) -> int:
        fired = fired_rules(u, r.risk, False, ng12_checklist(r.risk), no_ng12, table)
        return min((x.category.rank for x in fired), default=9)

    red = np.array([red_flag_rank(u, r) for u, r in zip(upper, results, strict=True)])
    ng12 = np.array([ng12_checklist(r.risk, t.ng12_referral_points).suspected_cancer for r in results])
    return {"upper": upper, "red": red, "ng12": ng12, "pig": upper[:, table.pigmented].sum(1), "rank": table.rank}


def _rank_under(parts: dict[str, np.ndarray], thr: np.ndarray, pigmented: float) -> np.ndarray:
    cond = np.where(parts["upper"] >= thr, parts["rank"], 9).min(1)
    ng12 = np.where(parts["ng12"] & (parts["pig"] >= pigmented), UrgencyTier.URGENT.rank, 9)
    return np.minimum(np.minimum(cond, ng12), parts["red"])


def tune_urgency(
    results: Sequence[FusionResult],
    true_ids: Sequence[str],
    taxonomy: Taxonomy,
    base: UrgencyThresholds | None = None,
    min_sensitivity: float = 0.90,
    min_melanoma_urgent: float = 0.90,
) -> UrgencyThresholds:
    """Thresholds (melanoma, SCC, BCC, pigmented mass) with the best specificity meeting both floors.

    Grid search on a vectorised copy of the rules; `urgency_report` re-checks the choice with
    `assess_urgency` itself. Falls back to the most sensitive grid point when no point meets both.
    """
    base = base or UrgencyThresholds()
    ids = list(results[0].posterior)
    parts = _ranks(results, base, taxonomy)
    malignant = np.array([taxonomy.get(c).malignant for c in true_ids])
    melanoma = np.array([c == "melanoma" for c in true_ids])
    default_thr = np.array([base.threshold(taxonomy.get(c)) if c in taxonomy else 2.0 for c in ids])
    tuned = [c for c in ("melanoma", "squamous_cell_carcinoma", "basal_cell_carcinoma") if c in ids]
    best: tuple[tuple[float, ...], UrgencyThresholds] | None = None
    for values in itertools.product(MALIGNANT_GRID, repeat=len(tuned)):
        thr = default_thr.copy()
        for c, v in zip(tuned, values, strict=True):
            thr[ids.index(c)] = v
        for pig in PIGMENTED_GRID:
            rank = _rank_under(parts, thr, pig)
            sens = float((rank[malignant] <= UrgencyTier.SOON.rank).mean())
            mel = float((rank[melanoma] <= UrgencyTier.URGENT.rank).mean()) if melanoma.any() else 1.0
            spec = float((rank[~malignant] > UrgencyTier.SOON.rank).mean())
            ok = sens >= min_sensitivity and mel >= min_melanoma_urgent
            key = (float(ok), spec if ok else sens + mel, sens, mel, -sum(values), -pig)
            if best is None or key > best[0]:
                malignant_thr = {**base.malignant, **dict(zip(tuned, values, strict=True))}
                best = (key, base.model_copy(update={"malignant": malignant_thr, "pigmented_threshold": pig}))
    assert best is not None
    return best[1]


def nested_urgency(
    data: FusionData, results: Sequence[FusionResult], taxonomy: Taxonomy, folds: int = 5, seed: int = 0
) -> dict[str, object]:
    """Honest figures for the tuning itself: thresholds tuned without a patient's fold, applied to it."""
    ids = [data.class_ids[k] for k in data.y]
    cats: list[str] = [""] * len(results)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed + 1)
    for tr, te in splitter.split(np.zeros(len(data.y)), data.y, data.groups):
        t = tune_urgency([results[i] for i in tr], [ids[i] for i in tr], taxonomy)
        for i in te:
            cats[i] = assess_urgency(results[i], t, taxonomy).category.value
    rank = np.array([UrgencyTier(c).rank for c in cats])
    malignant = np.array([taxonomy.get(c).malignant for c in ids])
    melanoma = np.array([c == "melanoma" for c in ids])
    return {
        "protocol": "thresholds tuned on 4 patient-grouped folds of the cross-fitted answers, applied to the 5th",
        "malignant_sensitivity": float((rank[malignant] <= UrgencyTier.SOON.rank).mean()),
        "melanoma_sensitivity_urgent": float((rank[melanoma] <= UrgencyTier.URGENT.rank).mean()),
        "specificity": float((rank[~malignant] > UrgencyTier.SOON.rank).mean()),
    }


# ----------------------------------------------------------------------------- the committed fit


def _figures(probs: np.ndarray, y: np.ndarray, class_ids: Sequence[str], malignant: Sequence[bool]) -> dict:
    from models.fitting.metrics import classification_report

    rep = classification_report(probs, y, list(class_ids), malignant)
    return {k: rep[k] for k in ("balanced_accuracy", "malignant_auroc", "melanoma_sensitivity", "per_class")}


def fit_pad_fusion(
    data_dir: str | Path = DEFAULT_DATA, oof_path: Path | None = None, l2: float = DEFAULT_L2
) -> FusionModel:
    """The fusion of the embedded model on PAD: fitted on all rows, with its urgency thresholds and the
    cross-fitted figures (`fit["cross_fitted"]`) in the returned `FusionModel` (`dermtriage fit fusion`)."""
    from models.backends.registry import load_model
    from models.embedded.model import MODEL_NAME, OOF_PATH, WEIGHTS_PATH, load_card
    from models.fitting.datasets import load_labelled_folder
    from models.knowledge.taxonomy import load_taxonomy
    from models.scoring.zeroshot import ZeroShotClassifier

    oof_path = Path(oof_path) if oof_path else OOF_PATH
    taxonomy = load_taxonomy()
    items = load_labelled_folder(data_dir, taxonomy)
    class_ids, image = read_oof(oof_path, [i.stem for i in items])
    model = load_model(MODEL_NAME)  # the out-of-fold probabilities are this model's
    labels = ZeroShotClassifier(model, taxonomy).subset(class_ids, "clinical")
    data = pad_fusion_data(items, class_ids, image, model, labels.embeddings)
    malignant = [taxonomy.get(c).malignant for c in class_ids]
    cv, results = cross_fit(data, l2=l2)
    true_ids = [class_ids[k] for k in data.y]
    thresholds = tune_urgency(results, true_ids, taxonomy)
    urgency = urgency_report(results, true_ids, thresholds, taxonomy)
    urgency["nested"] = nested_urgency(data, results, taxonomy)
    fused = fit_fusion(data, l2=l2)
    card = load_card()
    fused = fused.model_copy(
        update={
            "urgency_thresholds": thresholds.model_dump(mode="json"),
            "image_model": {
                "name": card.name,
                "version": card.version,
                "weights_sha256": sha256_file(WEIGHTS_PATH),
            },
            "taxonomy": {"version": taxonomy.version, "fingerprint": taxonomy.fingerprint},
            "fit": {
                "data": "PAD-UFES-20 development subset",
                "n": len(data.y),
                "image_probabilities": "out-of-fold",
                "oof_sha256": sha256_file(oof_path),
                "risk_fields": sorted(PAD_REQUEST_FIELDS),
                "l2": l2,
                "class_weight": f"count**-{DEFAULT_BALANCE}",
                "selection": "l2 in {0.3,1,3,10,30} x class-weight power in {0.25,0.5,0.75,1} x site groups vs sites, "
                "by the mean of 3 patient-grouped CV split seeds (the reported figures use seed 0 of the same rows)",
                "fitted_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "cross_fitted": {
                    "protocol": "StratifiedGroupKFold(5, shuffle, seed 0) on patient_id; fusion refit per fold",
                    "image_only": _figures(image, data.y, class_ids, malignant),
                    "fused": _figures(cv, data.y, class_ids, malignant),
                    "urgency": urgency,
                },
            },
        }
    )
    return fused


def save_fusion(fused: FusionModel, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fused.model_dump(mode="json"), indent=1) + "\n", encoding="utf-8")
