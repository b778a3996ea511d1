"""`evaluate --from-store` and `calibrate --from-store`: the kept cases with a ground truth (outcome over
review, :mod:`service.cli._store_cases`) judged and refitted with the offline maths of ``models/fitting``.

What a kept answer holds: its top-k differentials (``options.top_k``, default 5), each with the fused
``probability`` and the photo-alone ``image_probability_raw`` (the zero-shot softmax before calibration).
A case's probability vector is built over every condition the chosen cases ranked; a condition a case
did not return gets an equal share of the mass its returned ones leave (exact in total, approximate in
spread: the service does not keep the full vector). Cases whose ground truth is outside the ranked
conditions are left out, and counted."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.cli._store_cases import StoredCase, load_cases

MIN_CALIBRATION_CASES = 50  # five patient-grouped folds of ten
ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}


class TooFewCases(ValueError):
    pass


@dataclass
class StoreMatrix:
    probs: np.ndarray  # (N, C)
    y: np.ndarray  # (N,)
    class_ids: list[str]
    fitzpatrick: list[int | None]
    groups: list[str]  # patient_ref, else the case id
    models: dict[str, int]  # "name version" -> cases
    left_out: int  # labelled, but the ground truth is not among the ranked conditions


async def _read(url: str, model: str | None) -> list[StoredCase]:
    from service.store.db import alchemy_config

    config = alchemy_config(url)
    try:
        async with config.create_session_maker()() as session:
            cases = await load_cases(session)
    finally:
        await config.get_engine().dispose()
    return [c for c in cases if c.ground_truth()[0] and (model is None or c.case.model_name == model)]


def labelled_cases(url: str, model: str | None = None) -> list[StoredCase]:
    return asyncio.run(_read(url, model))


def store_matrix(cases: list[StoredCase], field: str) -> StoreMatrix:
    """The cases' ``field`` (``probability`` or ``image_probability_raw``) as an (N, C) matrix."""
    ranked = [{d["condition_id"]: d.get(field) for d in sc.case.answer.get("differentials") or []} for sc in cases]
    class_ids = sorted({c for r in ranked for c, p in r.items() if c and p is not None})
    index = {c: k for k, c in enumerate(class_ids)}
    rows, y, fitz, groups, models, left_out = [], [], [], [], {}, 0
    for sc, r in zip(cases, ranked, strict=True):
        truth = sc.ground_truth()[0]
        if truth not in index:
            left_out += 1
            continue
        row = np.zeros(len(class_ids))
        for c, p in r.items():
            if c in index and p is not None:
                row[index[c]] = p
        missing = row == 0
        if missing.any():
            row[missing] = max(0.0, 1.0 - row.sum()) / missing.sum()
        rows.append(row / row.sum() if row.sum() > 0 else np.full(len(class_ids), 1 / len(class_ids)))
        y.append(index[truth])
        fitz.append(ROMAN.get(sc.fitzpatrick() or ""))
        groups.append(sc.case.patient_ref or sc.case.id)
        key = f"{sc.case.model_name} {sc.case.model_version}"
        models[key] = models.get(key, 0) + 1
    probs = np.array(rows) if rows else np.zeros((0, len(class_ids)))
    return StoreMatrix(probs, np.array(y, dtype=int), class_ids, fitz, groups, models, left_out)


def evaluate_store(url: str, model: str | None = None) -> dict[str, Any]:
    """`evaluate --json`'s keys where they apply, on the answers as given (the fused ``probability``)."""
    from models.fitting.metrics import classification_report
    from models.knowledge.taxonomy import load_taxonomy

    cases = labelled_cases(url, model)
    m = store_matrix(cases, "probability")
    if not len(m.y):
        raise TooFewCases("no kept case has a ground truth (an outcome, or a review naming a diagnosis)")
    taxonomy = load_taxonomy()
    malignant = [c in taxonomy and taxonomy.get(c).malignant for c in m.class_ids]
    report = classification_report(m.probs, m.y, m.class_ids, malignant, m.fitzpatrick)
    sources = [sc.ground_truth()[1] for sc in cases]
    return {
        **report,
        "models": [{"name_version": k, "n": v} for k, v in sorted(m.models.items())],
        "labels": m.class_ids,
        "label_scope": "store",
        "ground_truth": {"outcome": sources.count("outcome"), "review": sources.count("review")},
        "left_out": m.left_out,
    }


def calibration_stage_from_store(
    url: str, model: str, coverage: float, method: Any, lam: float, k_reg: int, class_conditional: bool
) -> tuple[Any, dict[str, Any]]:
    """The ``image`` stage refitted on the kept cases' uncalibrated image probabilities, with its
    patient-grouped cross-fitted figures; :class:`TooFewCases` under ``MIN_CALIBRATION_CASES``."""
    from models.fitting.calibration_stats import (
        coverage_report,
        cross_fit_calibration,
        expected_calibration_error,
        fit_stage,
    )

    m = store_matrix(labelled_cases(url, model), "image_probability_raw")
    if len(m.y) < MIN_CALIBRATION_CASES:
        raise TooFewCases(
            f"{len(m.y)} kept cases of {model} have a ground truth and image probabilities; "
            f"calibrating needs at least {MIN_CALIBRATION_CASES} (add outcomes or reviews)"
        )
    cf = cross_fit_calibration(
        m.probs, m.y, m.groups, coverage=coverage, method=method, lam=lam, k_reg=k_reg,
        class_conditional=class_conditional,
    )  # fmt: skip
    figures = {
        "n": len(m.y),
        "ece_uncalibrated": expected_calibration_error(m.probs, m.y),
        "ece": expected_calibration_error(cf.calibrated, m.y),
        "nominal_coverage": coverage,
        **coverage_report(cf, m.y, m.class_ids, m.fitzpatrick),
        "fold_temperatures": cf.temperatures,
        "left_out": m.left_out,
    }
    stage = fit_stage(
        m.probs, m.y, m.class_ids, method=method, lam=lam, k_reg=k_reg, class_conditional=class_conditional,
        figures={k: v for k, v in figures.items() if k != "left_out"},
    )  # fmt: skip
    return stage, figures
