"""The `dermtriage` command line: predict and evaluate on the embedded model; its shape (`--version`, `fit`,
one module per subcommand) and where the fitting commands write."""

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


# ----------------------------------------------------------------------------- the command line's shape


def test_version_prints_package_and_default_model(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    from models.backends.registry import DEFAULT_MODEL, get_spec

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert f"dermtriage {version('dermtriage')}" in out
    assert f"{DEFAULT_MODEL} {get_spec(DEFAULT_MODEL).model_card().version}" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["fit", "--help"], ["fusion", "ood", "calibration"]),
        (["fit", "fusion", "--help"], ["--data", "--oof", "--out", "--l2"]),
        (["fit", "ood", "--help"], ["--model", "--data", "--out", "--threads", "--dry-run", "--no-prompts"]),
        (["fit", "calibration", "--help"], ["--out", "--method", "--marginal"]),
    ],
)
def test_fit_subcommands_parse(argv: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in expected), out


def test_every_subcommand_is_one_module_with_add_parser_and_run() -> None:
    import argparse
    import importlib
    import pkgutil

    import service.cli as cli

    names = {m.name for m in pkgutil.iter_modules(cli.__path__) if not m.name.startswith("_")}
    assert names == {m.__name__.rsplit(".", 1)[1] for m in cli.COMMANDS}
    for name in names:
        module = importlib.import_module(f"service.cli.{name}")
        assert callable(getattr(module, "add_parser", None)) and callable(getattr(module, "run", None)), name
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {
        "predict", "evaluate", "calibrate", "fit", "train-embedded", "build-text-cache",
        "models", "bench", "serve", "create-api-key", "faithfulness", "db", "export", "export-runtime",
        "train-segmentation", "segment-eval", "heatmap-localisation", "compare-eval",
    }  # fmt: skip
    for choice, parser in sub.choices.items():
        assert parser.get_default("func").__name__ == "run", choice


def test_cli_and_benchmarks_are_small_and_acyclic() -> None:
    """No file over 400 lines, no function over 80; the CLI and the benchmarks never import each other
    at module level (`dermtriage bench` imports `benchmarks.service_bench` when it runs)."""
    import ast

    root = Path(__file__).resolve().parents[1]
    for folder, forbidden in (("service/cli", "benchmarks"), ("benchmarks", "service.cli")):
        for path in sorted((root / folder).glob("*.py")):
            text = path.read_text(encoding="utf-8")
            assert text.count("\n") <= 400, path
            tree = ast.parse(text)
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno - node.lineno + 1 <= 80, f"{path}:{node.name}"
            for node in tree.body:
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                mods += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                assert not any(m == forbidden or m.startswith(forbidden + ".") for m in mods), f"{path}: {mods}"


# ----------------------------------------------------------------------------- no writes into the package


def _package_dir() -> Path:
    import models

    return Path(models.__file__).resolve().parent


def test_default_output_is_in_the_working_directory_never_the_package(tmp_path: Path, monkeypatch) -> None:
    from models.backends.registry import DEFAULT_MODEL
    from models.fitting.calibration_fit import calibration_output

    monkeypatch.chdir(tmp_path)
    out = calibration_output(DEFAULT_MODEL)
    assert out == tmp_path / "artifacts" / DEFAULT_MODEL / "calibration.json"
    assert not out.resolve().is_relative_to(_package_dir())
    assert calibration_output(DEFAULT_MODEL, "x/cal.json") == Path("x/cal.json")  # --out is taken as given
    assert calibration_output("hf-hub:org/repo").parent.name == "hf-hub_org_repo"  # one folder per model
    monkeypatch.chdir(_package_dir() / "embedded")  # a default never lands inside the package
    with pytest.raises(ValueError, match="--out"):
        calibration_output(DEFAULT_MODEL)


class _Written:
    def __init__(self) -> None:
        self.paths: list[Path] = []

    def __call__(self, path: Path) -> None:
        self.paths.append(Path(path))


def _fake_model(name: str = "embedded-pad-lite0"):
    from types import SimpleNamespace

    return SimpleNamespace(card=SimpleNamespace(name=name))


def _patch_calibrate(monkeypatch, written: _Written) -> None:
    from types import SimpleNamespace

    import models.fitting.calibration_fit as calibration_fit

    figures = {"image": dict.fromkeys(("n", "ece_uncalibrated", "ece", "coverage", "mean_set_size"), 1)}
    figures["image"]["fold_temperatures"] = [1.0]
    cal = SimpleNamespace(write=written, id="fake", stages={"image": SimpleNamespace(temperature=1.0)})
    monkeypatch.setattr(calibration_fit, "calibrate_folder", lambda *a, **k: (cal, figures))


def _patch_fit_ood(monkeypatch, written: _Written) -> None:
    from types import SimpleNamespace

    import models.fitting.ood_fit as ood_fit

    monkeypatch.setattr(ood_fit, "fit_ood_on_folder", lambda *a, **k: (SimpleNamespace(save=written), {"ok": 1}))


def _patch_fit_fusion(monkeypatch, written: _Written) -> None:
    from types import SimpleNamespace

    import models.fitting.fusion_fit as fusion_fit

    monkeypatch.setattr(fusion_fit, "fit_pad_fusion", lambda *a, **k: SimpleNamespace(fit={"cross_fitted": {}}))
    monkeypatch.setattr(fusion_fit, "save_fusion", lambda fused, path: written(path))


def _patch_text_cache(monkeypatch, written: _Written) -> None:
    import models.fitting.text_cache as text_cache

    monkeypatch.setattr(text_cache, "build_text_cache", lambda model, taxonomy, out: written(out))


def _patch_train(monkeypatch, written: _Written) -> None:
    from types import SimpleNamespace

    import models.fitting.embedded_card as embedded_card
    import models.fitting.text_cache as text_cache
    import models.fitting.train_embedded as train_embedded

    rep = {"balanced_accuracy": 0.5, "malignant_auroc": 0.8, "melanoma_sensitivity": 0.5}
    result = SimpleNamespace(reports={"single": rep, "flip4": rep, "config": {}}, seconds=1.0)
    monkeypatch.setattr(train_embedded, "train_embedded", lambda *a, **k: result)
    monkeypatch.setattr(embedded_card, "write_release", lambda result, version, out: written(out))
    monkeypatch.setattr(text_cache, "build_text_cache", lambda model, taxonomy, out: written(out))


@pytest.mark.parametrize(
    ("argv", "patch", "expected"),
    [
        (["calibrate"], _patch_calibrate, ["calibration.json"]),
        (["fit", "calibration"], _patch_calibrate, ["calibration.json"]),
        (["fit", "ood"], _patch_fit_ood, ["ood_stats.npz"]),
        (["fit", "fusion"], _patch_fit_fusion, ["fusion.json"]),
        (["build-text-cache"], _patch_text_cache, ["text_cache"]),
        (["train-embedded"], _patch_train, ["", "text_cache"]),
    ],
)
def test_no_command_writes_inside_the_package_without_out(
    argv: list[str], patch, expected: list[str], tmp_path: Path, monkeypatch, capsys
) -> None:
    """Each writing command, its fitting replaced by a stub: without --out the files go to
    ./artifacts/<model>/, with --out exactly where it says."""
    import models.backends.registry as registry

    monkeypatch.setattr(registry, "load_model", lambda *a, **k: _fake_model())
    monkeypatch.chdir(tmp_path)
    written = _Written()
    patch(monkeypatch, written)
    assert main(argv) == 0
    base = tmp_path / "artifacts" / "embedded-pad-lite0"
    assert written.paths == [base / name if name else base for name in expected]
    assert not any(p.resolve().is_relative_to(_package_dir()) for p in written.paths)
    captured = capsys.readouterr()
    assert str(written.paths[0]) in captured.out + captured.err  # the path written is printed
    written.paths.clear()
    assert main([*argv, "--out", str(tmp_path / "chosen")]) == 0
    assert written.paths[0] == tmp_path / "chosen"
