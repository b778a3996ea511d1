"""The `dermtriage` command line on the embedded model: predict and evaluate."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from models.knowledge.taxonomy import load_taxonomy
from service.cli import main

REQUIRED_KEYS = {
    "n",
    "balanced_accuracy",
    "top3_accuracy",
    "malignant_auroc",
    "melanoma_sensitivity",
    "per_class",
    "per_fitzpatrick",
    "model",
}


def _first_photo(folder: Path) -> Path:
    return sorted((folder / "images").glob("*.jpg"))[0]


def test_predict_json(pad_small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(_first_photo(pad_small)), "--json", "--top-k", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"]["name"] == "embedded-pad-lite0" and out["model"]["version"]
    rows = out["differentials"]
    assert len(rows) == 5
    probs = [r["probability"] for r in rows]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 1.0001
    ids = set(load_taxonomy().ids)
    assert all(r["condition_id"] in ids for r in rows)
    u = out["uncertainty"]  # the full answer: calibrated, with its set and flags
    assert u["calibrated"] and u["coverage"] == 0.9 and u["prediction_set"] and isinstance(u["flags"], list)


def test_predict_text_and_custom_labels(pad_small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    photo = str(_first_photo(pad_small))
    assert main(["predict", photo]) == 0
    text = capsys.readouterr().out
    assert "embedded-pad-lite0" in text and "not a diagnosis" in text
    assert main(["predict", photo, "--labels", "a mole,a scar,a tattoo", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["differentials"]
    assert {r["label"] for r in rows} == {"a mole", "a scar", "a tattoo"}


def test_predict_refuses_a_broken_photo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    assert main(["predict", str(bad)]) == 2
    assert "broken.jpg" in capsys.readouterr().err


def test_evaluate_pad_layout_json(pad_small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--data", str(pad_small), "--json"]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert set(report) >= REQUIRED_KEYS
    assert report["n"] == 30 and len(report["labels"]) == 6
    assert report["model"]["name"] == "embedded-pad-lite0"
    assert set(report["per_class"]) == set(report["labels"])
    # these photos are in the training set: the command must say so, and use out-of-fold scores when it has them
    from models.embedded.model import OOF_PATH

    assert report["trained_on_overlap"] == 30
    if OOF_PATH.exists():
        assert report["image_probabilities"] == "out-of-fold" and "out-of-fold" in captured.err
    else:
        assert report["image_probabilities"] == "in-sample" and "optimistic" in captured.err
    # PAD layout: fused figures (same keys, cross-fitted by patient) and the urgency block
    assert set(report["fused"]) >= REQUIRED_KEYS - {"model"}
    assert {"malignant_sensitivity", "melanoma_sensitivity_urgent", "specificity", "counts"} <= set(report["urgency"])
    assert sum(report["urgency"]["counts"].values()) == 30
    # sanity, not a validation figure: the model fits its own training photos
    assert report["balanced_accuracy"] > 1 / 6


def test_evaluate_plain_layout_with_synonyms(pad_small: Path, tmp_path: Path, capsys) -> None:
    synonyms = {"MEL": "malignant melanoma", "NEV": "mole", "BCC": "basal cell carcinoma"}
    with (pad_small / "metadata.csv").open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["diagnostic"] in synonyms]
    with (tmp_path / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label"])
        for r in rows:
            name = Path(r["img_id"]).stem + ".jpg"
            shutil.copy(pad_small / "images" / name, tmp_path / name)
            w.writerow([name, synonyms[r["diagnostic"]]])
    assert main(["evaluate", "--data", str(tmp_path), "--labels", "taxonomy", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n"] == 15 and report["label_scope"] == "taxonomy"
    assert len(report["labels"]) == len(load_taxonomy().ids)
    assert set(report["per_class"]) == {"melanoma", "melanocytic_nevus", "basal_cell_carcinoma"}
