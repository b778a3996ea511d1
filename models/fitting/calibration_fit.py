"""`dermtriage calibrate` and the uncertainty block of `dermtriage evaluate`, on a labelled folder.

Stages (models/uncertainty/calibration.py): `image`, the zero-shot softmax over the folder's conditions;
`fused`, the posterior of the fitted fusion (PAD layout only, when the model has a fitted fusion).
The embedded model was trained on the development photos, so its image probabilities there are
its out-of-fold ones (patient-grouped CV) and the fused answers are cross-fitted (fusion refit per
fold). Figures are cross-fitted once more for the calibration itself: temperature and conformal
threshold fitted on 4 patient-grouped folds, judged on the 5th. The written file is then fitted on
all rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.backends.base import ImageTextModel
from models.fitting.calibration_stats import (
    coverage_report,
    cross_fit_calibration,
    expected_calibration_error,
    fit_stage,
    provenance,
    reliability_bins,
)
from models.knowledge.taxonomy import Taxonomy
from models.uncertainty.calibration import CalibrationFile
from models.uncertainty.conformal import Method

__all__ = ["FolderAnswers", "calibrate_folder", "calibration_output", "folder_answers", "stage_figures"]


def calibration_output(model_name: str, out: str | Path | None = None) -> Path:
    """Where `dermtriage calibrate` writes: `out` when given, else ./artifacts/<model>/calibration.json
    (the file shipped inside the installed package is replaced only when `out` names it)."""
    from models.fitting.outputs import CALIBRATION_FILE, resolve_output

    return resolve_output(out, model_name, CALIBRATION_FILE)


@dataclass
class FolderAnswers:
    items: list[Any]
    class_ids: list[str]
    y: np.ndarray
    groups: np.ndarray
    fitzpatrick: list[int | None]
    stages: dict[str, np.ndarray]  # stage -> (N, C) uncalibrated probabilities
    source: str  # image probabilities: out-of-fold | model


def folder_answers(
    model: ImageTextModel,
    taxonomy: Taxonomy,
    data_dir: str | Path,
    modality: str = "clinical",
    progress: bool = True,
    split: str | None = None,
) -> FolderAnswers:
    """Uncalibrated answers of each stage on the folder (the rows of `split`), honest for a model trained on it."""
    from models.fitting.datasets import load_labelled_folder, row_modality
    from models.fitting.evaluation import embed_images, out_of_fold_probabilities, probabilities_by_modality
    from models.scoring.zeroshot import ZeroShotClassifier

    items = load_labelled_folder(data_dir, taxonomy, split)
    clf = ZeroShotClassifier(model, taxonomy)
    present = sorted({i.condition_id for i in items})
    labels = clf.subset(present, modality)  # type: ignore[arg-type]
    y = np.array([labels.ids.index(i.condition_id) for i in items])
    overlap = len({i.stem for i in items} & set(model.card.training_image_ids))
    image = out_of_fold_probabilities(model, items, labels.ids) if overlap else None
    source = "out-of-fold"
    if image is None:
        if overlap:
            raise ValueError(
                f"{model.card.name} was trained on {overlap} of these photos and has no out-of-fold probabilities "
                "for them: calibrating on its in-sample scores would be optimistic"
            )
        emb = embed_images(model, items, progress=progress)
        image = probabilities_by_modality(clf, emb, [row_modality(i, modality) for i in items], present)
        source = "model"
    stages = {"image": image}
    if (Path(data_dir) / "metadata.csv").exists():
        from models.fitting.evaluation import cross_fit_fusion
        from models.fitting.fusion_fit import pad_fusion_data
        from models.scoring.fusion import fusion_for_model

        if fusion_for_model(model).fitted:
            data = pad_fusion_data(items, labels.ids, image, model, labels.embeddings)
            stages["fused"], _ = cross_fit_fusion(data, "calibration: cross-fitting the fusion")
    return FolderAnswers(
        items=list(items),
        class_ids=list(labels.ids),
        y=y,
        groups=np.array([i.group for i in items]),
        fitzpatrick=[i.fitzpatrick for i in items],
        stages=stages,
        source=source,
    )


def stage_figures(
    answers: FolderAnswers,
    probs: np.ndarray,
    coverage: float,
    method: Method,
    lam: float,
    k_reg: int,
    cc: bool,
    stage: str = "",
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Cross-fitted figures of one stage (named `stage` on its progress bar), plus its cross-fitted
    calibrated answers and set membership."""
    cf = cross_fit_calibration(
        probs,
        answers.y,
        answers.groups,
        coverage=coverage,
        method=method,
        lam=lam,
        k_reg=k_reg,
        class_conditional=cc,
        progress=f"calibration ({stage}): cross-fitting",
    )
    rep = coverage_report(cf, answers.y, answers.class_ids, answers.fitzpatrick)
    figures = {
        "n": len(answers.y),
        "ece_uncalibrated": expected_calibration_error(probs, answers.y),
        "ece": expected_calibration_error(cf.calibrated, answers.y),
        "nominal_coverage": coverage,
        **rep,
        "fold_temperatures": cf.temperatures,
        "reliability_uncalibrated": reliability_bins(probs, answers.y),
        "reliability": reliability_bins(cf.calibrated, answers.y),
    }
    return figures, cf.calibrated, cf.member


def calibrate_folder(
    model: ImageTextModel,
    taxonomy: Taxonomy,
    data_dir: str | Path,
    *,
    coverage: float = 0.9,
    method: Method = "aps",
    lam: float = 0.01,
    k_reg: int = 2,
    class_conditional: bool = True,
    modality: str = "clinical",
) -> tuple[CalibrationFile, dict[str, Any]]:
    """The calibration file for `model` fitted on the folder, and its cross-fitted figures per stage."""
    answers = folder_answers(model, taxonomy, data_dir, modality)
    stages, figures = {}, {}
    settings: dict[str, Any] = {"method": method, "lam": lam, "k_reg": k_reg, "class_conditional": class_conditional}
    for name, probs in answers.stages.items():
        figs, _, _ = stage_figures(answers, probs, coverage, method, lam, k_reg, class_conditional, name)
        summary = {k: v for k, v in figs.items() if not k.startswith("reliability")}
        stages[name] = fit_stage(probs, answers.y, answers.class_ids, figures=summary, **settings)
        figures[name] = figs
    cal = CalibrationFile(
        model={"name": model.card.name, "version": model.card.version, "fingerprint": model.artifacts.fingerprint},
        taxonomy={"version": taxonomy.version, "fingerprint": taxonomy.fingerprint},
        stages=stages,
        fit=provenance(
            str(Path(data_dir).name),
            "temperature (NLL) then split-conformal "
            + ("class-conditional " if class_conditional else "")
            + f"{method.upper()} on all rows; figures: patient-grouped 5-fold cross-fitting of the calibration",
            n=len(answers.y),
            image_probabilities=answers.source,
            fused="cross-fitted (fusion refit per patient-grouped fold)" if "fused" in answers.stages else None,
            classes=answers.class_ids,
        ),
    )
    return cal, figures


def ood_rates(model: ImageTextModel, items: Sequence[Any]) -> dict[str, Any] | None:
    """OOD flag rate on the folder's photos (cross-fitted) and on the non-skin set, with the shipped thresholds."""
    from models.backends.artifacts import ModelIdentity
    from models.fitting.ood_fit import (
        cross_fitted_distances,
        cross_fitted_imagenet_mass,
        dev_photos,
        non_skin_photos,
        rule_flags,
        set_flags,
    )
    from models.uncertainty.ood import OodDetector, OodStats

    path = model.artifacts.ood_stats
    if path is None or not path.exists():
        return None
    stats = OodStats.load(path)
    if not model.artifacts.identity.accepts(ModelIdentity.parse(stats.model_fingerprint)):
        return None
    det = OodDetector(model, stats)
    dev = dev_photos(model, items)
    trained = {i.stem for i in items} & set(model.card.training_image_ids)
    groups = [i.group for i in items]
    dist = cross_fitted_distances(dev.embeddings, groups) if trained else det.distance(dev.embeddings)
    mass = None
    if dev.imagenet is not None and stats.imagenet_classes is not None:
        mass = cross_fitted_imagenet_mass(dev.imagenet, groups) if trained else stats.imagenet_log_mass(dev.imagenet)
    skin = np.logical_or.reduce(
        list(rule_flags(stats, dist, det.skin_probability(dev.embeddings), dev.skin_pixels, mass).values())
    )
    ns = np.logical_or.reduce(list(set_flags(non_skin_photos(model), det, stats).values()))
    return {
        "skin": float(skin.mean()),
        "non_skin": float(ns.mean()),
        "n_skin": len(items),
        "n_non_skin": len(ns),
        "protocol": "skin: distance to a Gaussian fitted without the photo's patient (when the model saw the photos)",
    }


def uncertainty_report(
    model: ImageTextModel,
    taxonomy: Taxonomy,
    data_dir: str | Path,
    *,
    coverage: float = 0.9,
    modality: str = "clinical",
    ood: bool = True,
    split: str | None = None,
) -> dict[str, Any]:
    """The uncertainty keys of `dermtriage evaluate`: cross-fitted ECE, coverage, set size, gate rates.

    Uses the method of the shipped calibration when there is one for this model, class-conditional
    APS otherwise. Top-level keys describe the stage the service answers with (`fused` when fitted).
    """
    from models.uncertainty.calibration import load_calibration
    from models.uncertainty.gates import GateThresholds

    answers = folder_answers(model, taxonomy, data_dir, modality, split=split)
    method, lam, k_reg, cc = "aps", 0.0, 0, True
    declared = model.artifacts.calibration
    if declared is not None and declared.exists():
        shipped = next(iter(load_calibration(declared).stages.values()))
        method, lam, k_reg, cc = shipped.method, shipped.lam, shipped.k_reg, shipped.class_conditional
    stages: dict[str, Any] = {}
    main = "fused" if "fused" in answers.stages else "image"
    t = GateThresholds()
    for name, probs in answers.stages.items():
        figs, calibrated, member = stage_figures(answers, probs, coverage, method, lam, k_reg, cc, name)  # type: ignore[arg-type]
        figs["confusion"] = _confusion(calibrated.argmax(1), answers.y, len(answers.class_ids))
        figs["gate_rates"] = {
            "low_confidence": float((calibrated.max(1) < t.low_confidence).mean()),
            "ambiguous": float((member.sum(1) > t.max_set_size).mean()),
        }
        stages[name] = figs
    top = stages[main]
    under = set(getattr(model.card, "underrepresented_fitzpatrick", []) or [])
    gate_rates = dict(top["gate_rates"])
    gate_rates["underrepresented_skin_type"] = float(np.mean([f in under for f in answers.fitzpatrick]))
    validated = set(getattr(model.card, "validated_conditions", []) or [])
    calibrated_top = [answers.class_ids[k] for k in answers.stages[main].argmax(1)]
    gate_rates["unvalidated_condition"] = float(np.mean([c not in validated for c in calibrated_top]))
    rates = ood_rates(model, answers.items) if ood else None
    if rates is not None:
        gate_rates["out_of_distribution"] = rates["skin"]
    return {
        "uncertainty_stage": main,
        "calibration_method": ("class-conditional " if cc else "") + method,
        "nominal_coverage": coverage,
        "ece": top["ece"],
        "ece_uncalibrated": top["ece_uncalibrated"],
        "coverage": top["coverage"],
        "mean_set_size": top["mean_set_size"],
        "per_class_coverage": {c: v["coverage"] for c, v in top["per_class"].items()},
        "per_fitzpatrick_coverage": top["per_fitzpatrick"],
        "gate_rates": gate_rates,
        "ood_flag_rate": None if rates is None else rates["skin"],
        "ood_flag_rate_non_skin": None if rates is None else rates["non_skin"],
        "ood": rates,
        "calibration": stages,
        "class_ids": answers.class_ids,
    }


def _confusion(pred: np.ndarray, y: np.ndarray, c: int) -> list[list[int]]:
    m = np.zeros((c, c), dtype=int)
    np.add.at(m, (y, pred), 1)
    return m.tolist()
