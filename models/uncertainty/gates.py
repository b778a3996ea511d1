"""Gates: turn measured numbers into the flags of `Uncertainty` (models/uncertainty/contract.py).

Pure functions over numbers the engine already has (calibrated probabilities, the conformal set,
the out-of-distribution score, the photo's quality measures, the model card); no I/O here.
Every flag carries the value measured and the threshold crossed. Quality thresholds sit below
what the development photos show (their 1st percentiles: Laplacian variance 1.9, brightness 0.35,
shorter side 300 px), so a clean phone photo passes and a broken capture does not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from models.backends.artifacts import ModelIdentity
from models.backends.base import ImageTextModel
from models.knowledge.taxonomy import Taxonomy
from models.uncertainty.contract import Flag, Uncertainty
from models.uncertainty.ood import OodScore

__all__ = [
    "GateThresholds",
    "ScopeEvidence",
    "UncertaintyGate",
    "answer_flags",
    "assess",
    "entropy",
    "ood_flags",
    "quality_flags",
    "scope_flags",
    "top2_margin",
]


class GateThresholds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_laplacian_var: float = Field(default=1.0, description="below: blurred (dev photos' minimum 1.16)")
    min_brightness: float = Field(default=0.15, description="mean luminance below: under-exposed")
    max_brightness: float = Field(default=0.92, description="mean luminance above: over-exposed")
    max_dark_fraction: float = Field(default=0.5, description="share of near-black pixels above: under-exposed")
    max_bright_fraction: float = Field(default=0.5, description="share of blown-out pixels above: over-exposed")
    min_side: int = Field(default=150, description="shorter side in pixels below: too small to judge")
    low_confidence: float = Field(default=0.4, description="calibrated top probability below: low confidence")
    max_set_size: int = Field(default=3, description="conformal set larger than this: ambiguous")
    # outside_scope (models/fitting/scope_fit.py chose these on development data: PAD-UFES-20 photos,
    # half the synthetic inflammatory set and ISIC 2017 `train` images sent as clinical)
    scope_outside_mass: float = Field(
        default=0.714, description="generic fused mass on conditions the model was never validated for, above: outside"
    )
    scope_imagenet_margin: float | None = Field(
        default=0.93, description="ImageNet skin-class log mass below the OOD gate's threshold plus this: outside"
    )


def entropy(p: np.ndarray) -> float:
    """Shannon entropy in nats."""
    q = np.clip(np.asarray(p, dtype=float), 1e-300, 1.0)
    return float(max(0.0, -(q * np.log(q)).sum()))


def top2_margin(p: np.ndarray) -> float:
    s = np.sort(np.asarray(p, dtype=float))[::-1]
    return float(min(1.0, max(0.0, s[0] - (s[1] if len(s) > 1 else 0.0))))


def quality_flags(quality: Mapping[str, float], t: GateThresholds) -> list[Flag]:
    """`quality` keys as service ImageQuality: blur_laplacian_var, mean_brightness, dark_fraction,
    bright_fraction, min_side. One `poor_quality` flag per failed check."""
    checks = [
        ("blur_laplacian_var", "<", t.min_laplacian_var, "The photo is blurred; retake it in focus."),
        ("mean_brightness", "<", t.min_brightness, "The photo is too dark; retake it in better light."),
        ("dark_fraction", ">", t.max_dark_fraction, "Much of the photo is black; retake it in better light."),
        ("mean_brightness", ">", t.max_brightness, "The photo is over-exposed; avoid flash glare."),
        ("bright_fraction", ">", t.max_bright_fraction, "Much of the photo is blown out; avoid flash glare."),
        ("min_side", "<", t.min_side, "The photo is too small to judge; send a larger one."),
    ]
    flags = []
    for key, op, threshold, message in checks:
        value = quality.get(key)
        if value is None:
            continue
        if (value < threshold) if op == "<" else (value > threshold):
            flags.append(
                Flag(
                    name="poor_quality",
                    measure=key,
                    value=round(float(value), 4),
                    threshold=threshold,
                    requires_review=True,
                    message=message,
                )
            )
    return flags


def ood_flags(score: OodScore) -> list[Flag]:
    """One `out_of_distribution` flag per OOD rule that fired, each with its own measure."""
    rules = (
        (score.far, "mahalanobis_sq_distance", score.distance, 2, score.distance_threshold,
         "This does not look like the skin photos the model was validated on."),
        (score.not_skin_by_prompts, "skin_prompt_probability", score.skin_probability, 4,
         score.skin_probability_threshold, "The model reads this photo as something other than skin."),
        (score.few_skin_pixels, "skin_pixel_fraction", score.skin_pixels, 4, score.skin_pixel_threshold,
         "Almost no skin-coloured pixels: this may not be a photo of skin."),
        (score.not_skin_by_imagenet, "imagenet_skin_class_log_mass", score.imagenet_log_mass, 3,
         round(score.imagenet_threshold, 3),
         "A general image network sees an object or scene here, not a skin close-up."),
    )  # fmt: skip
    return [
        Flag(
            name="out_of_distribution",
            measure=measure,
            value=round(float(value or 0.0), digits),
            threshold=threshold,
            requires_review=True,
            message=message,
        )
        for fired, measure, value, digits, threshold, message in rules
        if fired
    ]


class ScopeEvidence(Protocol):
    """What says a photo may lie outside the conditions a model was validated for (produced by
    models/scoring/scope.py `ScopeReader.evidence`): the generic fusion's `outside_mass` on
    never-validated conditions, never-validated conditions the history `named`, inflammatory `findings`
    reported present, and the never-validated conditions that mass favours (`closest`, names)."""

    @property
    def outside_mass(self) -> float: ...
    @property
    def named(self) -> tuple[str, ...]: ...
    @property
    def findings(self) -> tuple[str, ...]: ...
    @property
    def closest(self) -> tuple[str, ...]: ...


def scope_flags(evidence: ScopeEvidence, ood: OodScore | None, t: GateThresholds) -> list[Flag]:
    """One `outside_scope` flag (requires review) per rule that fired: the photo or the history points
    outside the conditions the model was validated for, so its ranking of those says little."""
    rules: list[tuple[str, Any, Any, str]] = []
    if evidence.outside_mass > t.scope_outside_mass:
        rules.append(("outside_validated_mass", round(evidence.outside_mass, 4), t.scope_outside_mass,
                      "The photo and history fit conditions this model was never validated for better than "
                      "the ones it was."))  # fmt: skip
    if ood is not None and ood.flagged:  # not like the photos it was validated on (see out_of_distribution)
        rules.append(("out_of_distribution", "flagged", "out_of_distribution",
                      "The photo does not look like the lesion photos the model was validated on."))  # fmt: skip
    if t.scope_imagenet_margin is not None and ood is not None and ood.imagenet_log_mass is not None:
        limit = float(ood.imagenet_threshold) + t.scope_imagenet_margin
        if ood.imagenet_log_mass < limit:
            rules.append(("imagenet_skin_class_log_mass", round(float(ood.imagenet_log_mass), 3), round(limit, 3),
                          "A general image network does not see an ordinary skin close-up here."))  # fmt: skip
    if evidence.named:
        rules.append(("symptoms_name_unvalidated", ", ".join(evidence.named), "validated_conditions",
                      f"The history names {', '.join(evidence.named)}, which this model was never validated "
                      "for."))  # fmt: skip
    if evidence.findings:
        words = ", ".join(f.replace("_", " ") for f in evidence.findings)
        rules.append(("inflammatory_findings", words, "validated_conditions",
                      f"The history reports {words}: an inflammatory or infective condition is outside what "
                      "this model was validated for."))  # fmt: skip
    closest = f" Consider also: {', '.join(evidence.closest)}." if evidence.closest else ""
    return [
        Flag(
            name="outside_scope",
            measure=measure,
            value=value,
            threshold=threshold,
            requires_review=True,
            message=f"Possibly outside this model's scope: {message}{closest}",
        )
        for measure, value, threshold, message in rules
    ]


def answer_flags(
    labels: Sequence[str],
    p: np.ndarray,
    order: np.ndarray,
    prediction_set: list[str] | None,
    t: GateThresholds,
    *,
    calibrated_ok: bool,
    top_validated: bool | None,
    fitzpatrick: int | None,
    underrepresented: Sequence[int],
) -> list[Flag]:
    """Flags about the answer itself: confidence, set size, validation, skin type, calibration."""
    flags: list[Flag] = []
    top = float(p[order[0]])
    if top < t.low_confidence:
        message = f"The most likely condition has only {top:.0%} probability."
        flags.append(Flag(name="low_confidence", measure="top_probability", value=round(top, 4),
                          threshold=t.low_confidence, requires_review=True, message=message))  # fmt: skip
    if prediction_set is not None and len(prediction_set) > t.max_set_size:
        message = f"{len(prediction_set)} conditions are needed to reach the set's coverage."
        flags.append(Flag(name="ambiguous", measure="prediction_set_size", value=float(len(prediction_set)),
                          threshold=float(t.max_set_size), requires_review=False, message=message))  # fmt: skip
    if top_validated is False:
        message = f"The top condition ({labels[order[0]]}) was never validated for this model."
        flags.append(Flag(name="unvalidated_condition", measure="top_condition", value=labels[order[0]],
                          threshold="validated_for_model", requires_review=True, message=message))  # fmt: skip
    if fitzpatrick is not None and fitzpatrick in set(underrepresented):
        message = f"Fitzpatrick type {fitzpatrick} has too few validation photos for this model."
        flags.append(Flag(name="underrepresented_skin_type", measure="fitzpatrick", value=float(fitzpatrick),
                          threshold=",".join(map(str, sorted(underrepresented))), requires_review=True,
                          message=message))  # fmt: skip
    if not calibrated_ok:
        message = "No calibration was fitted for this model: probabilities are raw zero-shot scores."
        flags.append(Flag(name="uncalibrated", measure="calibration_file", value=None, threshold=None,
                          requires_review=False, message=message))  # fmt: skip
    return flags


def assess(
    labels: Sequence[str],
    calibrated: np.ndarray,
    member: np.ndarray | None,
    *,
    calibrated_ok: bool,
    calibration_id: str | None = None,
    temperature: float | None = None,
    coverage: float | None = None,
    ood: OodScore | None = None,
    quality: Mapping[str, float] | None = None,
    top_validated: bool | None = None,
    fitzpatrick: int | None = None,
    underrepresented: Sequence[int] = (),
    thresholds: GateThresholds | None = None,
    scope: ScopeEvidence | None = None,
) -> Uncertainty:
    """The uncertainty block for one answer over `labels` (probabilities already calibrated)."""
    t = thresholds or GateThresholds()
    p = np.asarray(calibrated, dtype=float)
    order = np.argsort(-p, kind="stable")
    prediction_set = [labels[i] for i in order if member is not None and member[i]]
    flags: list[Flag] = []
    if ood is not None:
        flags += ood_flags(ood)
    if quality is not None:
        flags += quality_flags(quality, t)
    if scope is not None:
        flags += scope_flags(scope, ood, t)
    flags += answer_flags(
        labels,
        p,
        order,
        prediction_set if member is not None else None,
        t,
        calibrated_ok=calibrated_ok,
        top_validated=top_validated,
        fitzpatrick=fitzpatrick,
        underrepresented=underrepresented,
    )
    reasons = list(dict.fromkeys(f.message for f in flags if f.requires_review))
    return Uncertainty(
        calibrated=calibrated_ok,
        calibration_id=calibration_id,
        temperature=temperature,
        prediction_set=prediction_set,
        coverage=coverage if member is not None else None,
        entropy=round(entropy(p), 6),
        top2_margin=round(top2_margin(p), 6),
        flags=flags,
        needs_review=bool(reasons),
        review_reasons=reasons,
    )


class UncertaintyGate:
    """Everything the engine needs, loaded and checked once at start-up.

    The calibration and OOD statistics are the files the model's spec declares
    (`model.artifacts`); `calibration_path` / `ood_path` override them. Without a calibration the
    gate runs uncalibrated (with an `uncalibrated` flag); a calibration made for another model,
    other weights or another taxonomy raises CalibrationMismatchError (OOD statistics made for other
    weights are ignored: the rules that need them stay off).
    """

    def __init__(
        self,
        model: ImageTextModel,
        taxonomy: Taxonomy,
        calibration_path: Path | None = None,
        coverage: float = 0.9,
        thresholds: GateThresholds | None = None,
        ood_path: Path | None = None,
    ) -> None:
        from models.uncertainty.calibration import Calibrator, check_calibration, load_calibration
        from models.uncertainty.ood import OodDetector, OodStats

        self.thresholds = thresholds or GateThresholds()
        self.coverage = coverage
        identity = model.artifacts.identity
        self.calibrator: Calibrator | None = None
        path = Path(calibration_path) if calibration_path else model.artifacts.calibration
        if path is not None and path.exists():
            cal = load_calibration(path)
            check_calibration(cal, identity=identity, taxonomy_fingerprint=taxonomy.fingerprint, source=str(path))
            self.calibrator = Calibrator(cal, coverage)
        elif calibration_path is not None:
            raise FileNotFoundError(f"calibration file {path} does not exist")
        stats = None
        ood_file = Path(ood_path) if ood_path else model.artifacts.ood_stats
        if ood_file is not None and ood_file.exists():
            loaded = OodStats.load(ood_file)
            stats = loaded if identity.accepts(ModelIdentity.parse(loaded.model_fingerprint)) else None
        self.ood = OodDetector(model, stats)
        self.underrepresented = list(getattr(model.card, "underrepresented_fitzpatrick", []) or [])

    @property
    def uses_imagenet_view(self) -> bool:
        """The OOD statistics for this model carry the ImageNet rule (see models/uncertainty/ood.py)."""
        stats = self.ood.stats
        return stats is not None and stats.imagenet_classes is not None

    @property
    def calibrated(self) -> bool:
        return self.calibrator is not None

    def calibrate(self, probs: np.ndarray, stage: str = "image") -> np.ndarray:
        """Temperature-scaled probabilities (unchanged without a calibration); ranking is preserved."""
        if self.calibrator is None:
            return np.asarray(probs, dtype=float)
        return self.calibrator.calibrate(probs, stage)  # type: ignore[arg-type]

    def assess(
        self,
        labels: Sequence[str],
        calibrated: np.ndarray,
        *,
        stage: str = "image",
        embedding: Any = None,
        image: Any = None,
        imagenet_probs: Any = None,
        quality: Mapping[str, float] | None = None,
        top_validated: bool | None = None,
        fitzpatrick: int | None = None,
        scope: ScopeEvidence | None = None,
    ) -> Uncertainty:
        """The Uncertainty block for one answer; `embedding` is the (1, D) or (D,) image embedding already computed."""
        member = None
        temperature = None
        if self.calibrator is not None:
            member = self.calibrator.prediction_set(np.asarray(calibrated, dtype=float), labels, stage)  # type: ignore[arg-type]
            temperature = self.calibrator.temperature(stage)  # type: ignore[arg-type]
        ood = None
        if embedding is not None:
            ood = self.ood.score(embedding, [image] if image is not None else None, imagenet_probs)[0]
        return assess(
            labels,
            calibrated,
            member,
            calibrated_ok=self.calibrator is not None,
            calibration_id=self.calibrator.id if self.calibrator else None,
            temperature=temperature,
            coverage=self.coverage,
            ood=ood,
            quality=quality,
            top_validated=top_validated,
            fitzpatrick=fitzpatrick,
            underrepresented=self.underrepresented,
            thresholds=self.thresholds,
            scope=scope,
        )
