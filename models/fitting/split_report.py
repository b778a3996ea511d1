"""Say what a split-based run (train_splits.py) measured: the console lines and the card's artefact section."""

from __future__ import annotations

from typing import TYPE_CHECKING

from models.fitting import artefact_check as ac

if TYPE_CHECKING:
    from models.fitting.train_splits import SplitResult


def check_artefacts(result: SplitResult) -> dict:
    """The artefact check on the test split's images with the chosen weights' melanoma probabilities."""
    mel = result.class_ids.index("melanoma")
    return ac.artefact_report(result.paths["test"], result.labels["test"], result.probs["test"][:, mel])


def split_line(name: str, rep: dict) -> str:
    return (
        f"{name:10s} n={rep['n']} melanoma AUROC {rep['melanoma_auroc']:.3f}  SK AUROC "
        f"{rep['seborrheic_keratosis_auroc']:.3f}  balanced accuracy {rep['balanced_accuracy']:.3f}  melanoma "
        f"sensitivity {rep['melanoma_sensitivity_urgent']:.3f} / specificity {rep['melanoma_specificity_urgent']:.3f}"
        f" at threshold {rep['melanoma_threshold']:.3f}"
    )


def print_split_result(result: SplitResult, artefacts: dict) -> None:
    print(f"chosen on validation: epoch {result.best_epoch}, test-time views {result.tta}")
    for split in ("validation", "test"):
        print(split_line(split, result.reports[split]))
    for name in ("vignette", "ink"):
        a = artefacts[name]
        diffs = ", ".join(
            f"{k} {v['difference']:+.3f} (n {v['n_with']}/{v['n_without']})"
            for k, v in a.items()
            if isinstance(v, dict) and v["difference"] is not None
        )
        print(f"test {name}: {a['n_with']} with, {a['n_without']} without; melanoma score with - without: {diffs}")
    if "melanoma_auroc_no_artefact" in artefacts:
        print(
            f"test melanoma AUROC on the {artefacts['n_no_artefact']} images with neither: "
            f"{artefacts['melanoma_auroc_no_artefact']:.3f}"
        )
    print(f"{result.seconds:.0f} s in all")


def _cell(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def artefact_markdown(artefacts: dict) -> str:
    """The artefact check as a card section (the heuristics are artefact_check.py's, stated here)."""
    lines = [
        "",
        "## Artefact check (ISIC 2017 test split)",
        "",
        f"Heuristics (`models/fitting/artefact_check.py`): dark vignette = at least 2 of the 4 corner "
        f"{ac.VIGNETTE_PATCH}x{ac.VIGNETTE_PATCH} px squares with mean luminance below {ac.VIGNETTE_LUMA:.0f}/255; "
        f"purple/blue ink = more than {ac.INK_FRACTION:.1%} of pixels with hue {ac.INK_HUE[0]:.0f}-{ac.INK_HUE[1]:.0f}"
        f" degrees, saturation >= {ac.INK_SAT} and value >= {ac.INK_VALUE}. Rulers are not detected.",
        "",
        "| artefact | true class | n with / without | mean melanoma probability with | without | difference |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("vignette", "ink"):
        for cls, v in artefacts[name].items():
            if isinstance(v, dict):
                lines.append(
                    f"| {name} | {cls} | {v['n_with']} / {v['n_without']} | {_cell(v['mean_with'])} | "
                    f"{_cell(v['mean_without'])} | {_cell(v['difference'])} |"
                )
    if "melanoma_auroc_no_artefact" in artefacts:
        lines += [
            "",
            f"Melanoma AUROC on the {artefacts['n_no_artefact']} test images with neither artefact: "
            f"{artefacts['melanoma_auroc_no_artefact']:.3f}.",
        ]
    return "\n".join(lines) + "\n"
