"""`dermtriage evaluate` on a split-based labels.csv (the ISIC 2017 layout): `--split` selects rows,
each row's `modality` picks its prompts, ISIC's usual labels resolve, and an unknown label or a
missing file is one line on stderr with exit status 2, never a traceback."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.fitting.datasets import DatasetError, load_labelled_folder, resolve_label
from models.knowledge.taxonomy import load_taxonomy
from service.cli import main

ISIC_LABELS = {
    "pigmented benign keratosis": "seborrheic_keratosis",
    "vascular lesion": "cherry_angioma",
    "nevus": "melanocytic_nevus",
    "MEL": "melanoma",
    "NEV": "melanocytic_nevus",
    "SEK": "seborrheic_keratosis",
    "BKL": "seborrheic_keratosis",
    "DF": "dermatofibroma",
    "VASC": "cherry_angioma",
    "AKIEC": "actinic_keratosis",
    "basal cell carcinoma": "basal_cell_carcinoma",
    "squamous cell carcinoma": "squamous_cell_carcinoma",
}


def _folder(root: Path, rows: list[tuple[str, str, str, str]], missing: tuple[str, ...] = ()) -> Path:
    """labels.csv with file,label,split,modality and small random images (none for `missing`)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with (root / "labels.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "split", "modality", "age_approximate", "sex"])
        for name, label, split, modality in rows:
            w.writerow([f"images/{name}.jpg", label, split, modality, "", ""])
            if name not in missing:
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{name}.jpg")
    return root


def test_isic_usual_labels_resolve() -> None:
    tax = load_taxonomy()
    for label, condition_id in ISIC_LABELS.items():
        assert resolve_label(tax, label).id == condition_id, label
        assert resolve_label(tax, label.upper()).id == condition_id, label


def test_split_selects_rows_and_keeps_modality(tmp_path: Path) -> None:
    rows = [
        ("a", "MEL", "train", "dermoscopic"),
        ("b", "NEV", "test", "dermoscopic"),
        ("c", "pigmented benign keratosis", "test", "clinical"),
        ("d", "MEL", "validation", "dermoscopic"),
    ]
    root = _folder(tmp_path, rows)
    tax = load_taxonomy()
    test = load_labelled_folder(root, tax, "test")
    assert [i.stem for i in test] == ["b", "c"]
    assert [i.condition_id for i in test] == ["melanocytic_nevus", "seborrheic_keratosis"]
    assert [i.metadata["modality"] for i in test] == ["dermoscopic", "clinical"]
    assert len(load_labelled_folder(root, tax)) == 4
    with pytest.raises(DatasetError, match=r"no rows in split 'tset'.*test, train, validation"):
        load_labelled_folder(root, tax, "tset")


def test_unknown_label_and_missing_file_are_one_line(tmp_path: Path) -> None:
    tax = load_taxonomy()
    bad = _folder(tmp_path / "bad", [("a", "MEL", "test", "dermoscopic"), ("b", "UNK", "test", "dermoscopic")])
    with pytest.raises(DatasetError) as exc:
        load_labelled_folder(bad, tax, "test")
    assert "'UNK' (1 rows)" in str(exc.value) and "\n" not in str(exc.value)
    gone = _folder(tmp_path / "gone", [("a", "MEL", "test", "dermoscopic")], missing=("a",))
    with pytest.raises(DatasetError, match="1 listed file"):
        load_labelled_folder(gone, tax)


@pytest.mark.parametrize("case", ["unknown", "missing", "no-split-column"])
def test_evaluate_cli_says_one_line(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if case == "unknown":
        root = _folder(tmp_path, [("a", "MEL", "test", "dermoscopic"), ("b", "keloidish", "test", "dermoscopic")])
    elif case == "missing":
        root = _folder(tmp_path, [("a", "MEL", "test", "dermoscopic")], missing=("a",))
    else:
        root = tmp_path
        (root / "labels.csv").write_text("file,label\nimages/a.jpg,MEL\n")
    assert main(["evaluate", "--data", str(root), "--split", "test"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err


def test_each_row_is_scored_with_its_own_modality(tiny_clip, tmp_path: Path) -> None:
    from models.fitting.datasets import row_modality
    from models.fitting.evaluation import embed_images, evaluate, probabilities_by_modality
    from models.scoring.zeroshot import ZeroShotClassifier

    rows = [
        ("a", "MEL", "test", "dermoscopic"),
        ("b", "NEV", "test", "dermoscopic"),
        ("c", "MEL", "test", "clinical"),
        ("d", "NEV", "test", "clinical"),
        ("e", "NEV", "train", "clinical"),
    ]
    root = _folder(tmp_path, rows)
    tax = load_taxonomy()
    clf = ZeroShotClassifier(tiny_clip, tax)
    report = evaluate(tiny_clip, tax, root, split="test", progress=False, classifier=clf)
    assert report["n"] == 4 and report["split"] == "test"
    assert report["modalities"] == {"clinical": 2, "dermoscopic": 2} and report["modality"] == "mixed"
    items = load_labelled_folder(root, tax, "test")
    emb = embed_images(tiny_clip, items, progress=False)
    ids = sorted({"melanoma", "melanocytic_nevus"})
    derm = clf.probabilities(emb[:2], clf.subset(ids, "dermoscopic"))
    clin = clf.probabilities(emb[:2], clf.subset(ids, "clinical"))
    assert not torch.allclose(derm, clin)  # the modality changes the prompts, so it must be honoured per row
    probs = probabilities_by_modality(clf, emb, [row_modality(i, "clinical") for i in items], ids)
    assert np.allclose(probs[:2], derm.numpy(), atol=1e-6)
    assert np.allclose(probs[2:], clf.probabilities(emb[2:], clf.subset(ids, "clinical")).numpy(), atol=1e-6)
