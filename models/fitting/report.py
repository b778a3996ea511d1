"""`dermtriage evaluate --report DIR`: a Markdown report with PNG plots (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _reliability(stage: dict[str, Any], title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect")
    for key, label, style in (("reliability_uncalibrated", "uncalibrated", "o-"), ("reliability", "calibrated", "s-")):
        rows = stage[key]
        ece = stage["ece_uncalibrated" if "uncal" in key else "ece"]
        ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], style, label=f"{label} (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top probability)", ylabel="accuracy", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _confusion(matrix: list[list[int]], classes: list[str], title: str, path: Path) -> None:
    plt = _plt()
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(m / np.maximum(m.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=8)
    short = [c.replace("_", " ")[:14] for c in classes]
    ax.set_xticks(range(len(classes)), short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), short, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _groups(stage: dict[str, Any], nominal: float, title: str, path: Path) -> None:
    plt = _plt()
    groups = [(c.replace("_", " ")[:14], v) for c, v in stage["per_class"].items()]
    groups += [(f"Fitzpatrick {t}", v) for t, v in stage["per_fitzpatrick"].items()]
    fig, ax = plt.subplots(figsize=(7, 4))
    x = np.arange(len(groups))
    ax.bar(x, [v["coverage"] for _, v in groups], color="tab:blue")
    ax.axhline(nominal, color="k", ls="--", lw=1, label=f"nominal {nominal:.0%}")
    for i, (_, v) in enumerate(groups):
        ax.text(i, 0.02, f"n={v['n']}\n|S|={v['mean_set_size']:.1f}", ha="center", fontsize=6, color="white")
    ax.set_xticks(x, [g for g, _ in groups], rotation=45, ha="right", fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="coverage", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> Path:
    """Write report.md and its PNGs under `out`; returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    classes = report["class_ids"]
    model = report.get("model", {})
    lines = [
        f"# Evaluation: {model.get('name', '?')} {model.get('version', '')}",
        "",
        f"n = {report.get('n')}; balanced accuracy {report.get('balanced_accuracy', float('nan')):.3f}; "
        f"image probabilities: {report.get('image_probabilities', '?')}.",
        "",
        "## Uncertainty (patient-grouped cross-fitted calibration)",
        "",
        f"Stage the service answers with: **{report['uncertainty_stage']}**; method: {report['calibration_method']}; "
        f"nominal coverage {report['nominal_coverage']:.0%}.",
        "",
        "| stage | ECE before | ECE after | coverage | mean set size |",
        "|---|---|---|---|---|",
    ]
    for name, st in report["calibration"].items():
        lines.append(
            f"| {name} | {st['ece_uncalibrated']:.3f} | {st['ece']:.3f} | {st['coverage']:.3f} | "
            f"{st['mean_set_size']:.2f} |"
        )
    for name, st in report["calibration"].items():
        _reliability(st, f"reliability ({name})", out / f"reliability_{name}.png")
        _confusion(st["confusion"], classes, f"confusion ({name}, calibrated argmax)", out / f"confusion_{name}.png")
        _groups(st, report["nominal_coverage"], f"coverage per group ({name})", out / f"coverage_groups_{name}.png")
        lines += ["", f"### {name}", "", f"![reliability](reliability_{name}.png) ![confusion](confusion_{name}.png)"]
        lines += ["", f"![coverage per group](coverage_groups_{name}.png)", ""]
        lines += ["| group | n | coverage | mean set size |", "|---|---|---|---|"]
        lines += [
            f"| {c} | {v['n']} | {v['coverage']:.3f} | {v['mean_set_size']:.2f} |" for c, v in st["per_class"].items()
        ]
        lines += [
            f"| Fitzpatrick {t} | {v['n']} | {v['coverage']:.3f} | {v['mean_set_size']:.2f} |"
            for t, v in st["per_fitzpatrick"].items()
        ]
    lines += ["", "## Gate rates on these photos", "", "| gate | rate |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in report["gate_rates"].items()]
    ood = report.get("ood")
    if ood:
        lines += [
            "",
            f"Out-of-distribution flag rate: skin photos {ood['skin']:.3f} (n={ood['n_skin']}), "
            f"non-skin set {ood['non_skin']:.3f} (n={ood['n_non_skin']}; models/fitting/ood_data.py).",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
