"""Write a split-trained embedded model (train_splits.py) as a folder of its own, separable from the
CC BY-only default model: weights, card (JSON and Markdown), config, urgency thresholds, validation
and test predictions, and the spec that declares them (`models/specs/<name>.json` when asked)."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models.backends.base import ModelCard, ValidationRecord
from models.embedded.architecture import CONFIG_PATH, load_preprocessing
from models.embedded.model import save_weights
from models.fitting.embedded_card import LITE0_CREDIT, MINILM_CREDIT, card_markdown
from models.scoring.urgency import UrgencyThresholds

if TYPE_CHECKING:
    from models.backends.registry import ModelSpec
    from models.fitting.train_splits import SplitResult

ISIC_NAME = "embedded-isic-lite0"
ISIC_LICENCE = (  # verbatim from ../shared/data/isic-2017/ATTRIBUTION.md, which asks for exactly this
    "The 2016-2017 challenge data is commonly listed as CC-0, but this was not confirmed from the challenge's "
    "own pages here; individual ISIC Archive images carry their own licence (CC-0, CC-BY or CC-BY-NC), and this "
    "copy's per-image licences were not checked against the archive."
)
ISIC_CREDIT = (
    "ISIC Archive (International Skin Imaging Collaboration). ISIC 2017 challenge Part 3: Codella NCF et al., "
    "'Skin Lesion Analysis Toward Melanoma Detection: A Challenge at the 2017 International Symposium on "
    "Biomedical Imaging (ISBI), Hosted by the International Skin Imaging Collaboration (ISIC)', "
    "arXiv:1710.05006 (2017). Used: 2,719 images resized to 256x256 without keeping the aspect ratio. " + ISIC_LICENCE
)
PREDICTIONS = {"validation": "validation/validation_predictions.csv", "test": "validation/test_predictions.csv"}
FILES = {
    "weights": f"weights/{ISIC_NAME}.safetensors",
    "card": "model_card.json",
    "config": "config.json",
    "urgency": "urgency_thresholds.json",
    "text_cache": "text_cache",
    "history": "validation/epochs.json",
}


def limitations(result: SplitResult) -> list[str]:
    test = result.reports["test"]
    return [
        "Dermoscopic images only (ISIC 2017: melanoma, melanocytic nevus, seborrheic keratosis); not for clinical "
        "photos, and its scores for any other condition are not validated.",
        "Trained and measured on 256x256 copies squashed from 4:3-3:2 originals: lesion shape is distorted; "
        "full-resolution or correctly proportioned images were not measured.",
        "No patient ids: several ISIC images can show the same lesion or patient, across splits too.",
        f"The test labels were recovered from a public copy (label_source 'inferred'); class counts match the "
        f"official test set ({test['counts']}).",
        "The melanoma urgency threshold is on this model's three-class image probability (validation split); the "
        "service's fused, taxonomy-wide melanoma posterior is a different number until a fusion and calibration "
        "fit exist for this model.",
        "Licence of the training images: " + ISIC_LICENCE + " Keep this model apart from the CC BY-only "
        "embedded-pad-lite0 where that matters.",
        "Decision support, not a diagnosis.",
    ]


def _record(split: str, rep: dict, result: SplitResult) -> ValidationRecord:
    protocol = {
        "validation": f"ISIC 2017 validation split (used to choose the epoch, views and threshold), "
        f"test-time views: {result.tta}",
        "test": f"ISIC 2017 test split, held out (never trained or tuned on), test-time views: {result.tta}",
    }[split]
    keys = (
        "melanoma_auroc",
        "seborrheic_keratosis_auroc",
        "balanced_accuracy",
        "accuracy",
        "melanoma_threshold",
        "melanoma_sensitivity_urgent",
        "melanoma_specificity_urgent",
    )
    return ValidationRecord(
        dataset=f"ISIC 2017 challenge Part 3, {split} split ({rep['n']} dermoscopic images)",
        protocol=protocol,
        n=int(rep["n"]),
        metrics={k: rep[k] for k in keys},
        per_class_recall=rep["per_class_recall"],
        notes="zero-shot over the three ISIC 2017 classes with the dermoscopic prompt ensemble",
    )


def build_card(result: SplitResult, version: str, sha: str) -> ModelCard:
    return ModelCard(
        name=ISIC_NAME,
        version=version,
        family="open_clip CustomTextCLIP: timm tf_efficientnet_lite0 + HF all-MiniLM-L6-v2 (mean pooled)",
        source="models/embedded_isic (trained by `dermtriage train-embedded --dataset isic`)",
        license="Apache-2.0 parts; training images: ISIC Archive, licence not confirmed (see limitations)",
        description=(
            "The embedded model's architecture and LiT recipe, trained on ISIC 2017 dermoscopic images "
            "(train split only) for modality=dermoscopic. Kept apart from the CC BY-only default model."
        ),
        modality=["dermoscopic"],
        card_url=f"/v1/models/{ISIC_NAME}",
        validated_conditions=list(result.class_ids),
        validation=[_record(s, result.reports[s], result) for s in ("test", "validation")],
        training_data="ISIC 2017 challenge Part 3, train split (ISIC Archive; licence caveat in limitations)",
        training_image_ids=sorted(result.ids["train"]),
        limitations=limitations(result),
        credits=[ISIC_CREDIT, LITE0_CREDIT, MINILM_CREDIT],
        inference={
            "tta_flips": result.tta == "flip4",
            "crop_pct": load_preprocessing().crop_pct,
            "train_seconds": round(result.seconds, 1),
            "weights_sha256": sha,
            "best_epoch": result.best_epoch,
            **{f"train_{k}": v for k, v in result.config.items() if isinstance(v, int | float | str)},
        },
    )


def write_predictions(ids: list[str], probs: np.ndarray, class_ids: list[str], path: Path) -> None:
    """Ids and probabilities only: the labels stay in the dataset's own labels.csv."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", *(f"p_{c}" for c in class_ids)])
        for image_id, row in zip(ids, probs, strict=True):
            writer.writerow([image_id, *(f"{p:.6f}" for p in row)])


def write_split_release(
    result: SplitResult, version: str, out_dir: Path, extra_md: str = "", spec_dir: Path | None = None
) -> ModelSpec:
    """Every file of the release under `out_dir`; a spec file in `spec_dir` when given (paths relative
    to it). Returns the spec that loads the written model."""
    from models.backends.artifacts import ArtifactFiles
    from models.backends.registry import ModelSpec

    assert result.state_dict is not None, "no fit to write"
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = save_weights(result.state_dict, out_dir / FILES["weights"], name=ISIC_NAME)
    (out_dir / FILES["weights"]).chmod(0o644)
    card = build_card(result, version, sha)
    (out_dir / FILES["card"]).write_text(card.model_dump_json(indent=2) + "\n")
    md = card_markdown(card).replace(
        "Fitzpatrick types with fewer than 10 validation photos (flagged as under-represented): none.",
        "Fitzpatrick types: not recorded in ISIC 2017, so performance by skin type is unknown.",
    )
    (out_dir / "MODEL_CARD.md").write_text(md.rstrip() + "\n" + extra_md)
    shutil.copyfile(CONFIG_PATH, out_dir / FILES["config"])
    thresholds = UrgencyThresholds().model_dump(mode="json")
    thresholds["malignant"]["melanoma"] = round(result.melanoma_threshold, 6)
    UrgencyThresholds.model_validate(thresholds)
    blob = {
        "model": f"{ISIC_NAME}@{version}#{sha[:12]}",
        "fit": "melanoma: the highest three-class melanoma probability flagging >= 90 % of the ISIC 2017 "
        "validation melanomas; other fields are the defaults",
        "urgency_thresholds": thresholds,
    }
    (out_dir / FILES["urgency"]).write_text(json.dumps(blob, indent=2) + "\n")
    (out_dir / FILES["history"]).parent.mkdir(parents=True, exist_ok=True)
    (out_dir / FILES["history"]).write_text(json.dumps(result.history, indent=1) + "\n")
    for split, rel in PREDICTIONS.items():
        write_predictions(result.ids[split], result.probs[split], result.class_ids, out_dir / rel)
    base = spec_dir or out_dir

    def rel(name: str) -> str:
        return os.path.relpath(out_dir / name, base)

    data = {
        "name": ISIC_NAME,
        "backend": "embedded",
        "source": "models/embedded_isic",
        "pretrained": rel(FILES["weights"]),
        "card_path": rel(FILES["card"]),
        "config": rel(FILES["config"]),
        "artifacts": {"text_cache": rel(FILES["text_cache"]), "urgency_thresholds": rel(FILES["urgency"])},
    }
    ArtifactFiles.model_validate(data["artifacts"])
    if spec_dir is not None:
        spec_dir.mkdir(parents=True, exist_ok=True)
        (spec_dir / f"{ISIC_NAME}.json").write_text(json.dumps(data, indent=2) + "\n")
    return ModelSpec.model_validate({**data, "base_dir": base}).model_copy(
        update={"pretrained": str(out_dir / FILES["weights"]), "card": card}
    )


def release_isic(
    result: SplitResult, artefacts: dict, out_dir: Path, version: str = "1.0.0", spec_dir: Path | None = None
) -> ModelSpec:
    """Everything `dermtriage train-embedded --dataset isic` writes: the release files, the artefact
    check (JSON, and as a section of MODEL_CARD.md) and the model's own condition-embedding cache."""
    from models.backends.registry import load_model
    from models.fitting.split_report import artefact_markdown
    from models.fitting.text_cache import build_text_cache
    from models.knowledge.taxonomy import load_taxonomy

    spec = write_split_release(result, version, out_dir, artefact_markdown(artefacts), spec_dir)
    (out_dir / "validation" / "artefact_check.json").write_text(json.dumps(artefacts, indent=2) + "\n")
    build_text_cache(load_model(spec), load_taxonomy(), out_dir / FILES["text_cache"])
    return spec
