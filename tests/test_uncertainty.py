"""Calibration and conformal sets: the maths on synthetic data, and the file's binding to a model."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from models.backends.artifacts import ModelIdentity
from models.backends.registry import default_artifacts
from models.embedded.model import MODEL_NAME, WEIGHTS_PATH, load_card
from models.fitting.calibration_stats import (
    cross_fit_calibration,
    expected_calibration_error,
    fit_stage,
    fit_temperature,
)
from models.knowledge.taxonomy import load_taxonomy
from models.uncertainty.calibration import (
    CalibrationFile,
    CalibrationMismatchError,
    Calibrator,
    apply_temperature,
    check_calibration,
    load_calibration,
)
from models.uncertainty.conformal import conformal_quantile, conformity_scores, prediction_sets, set_coverage


def calibrated_data(n: int, c: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable answers whose labels are drawn from their own probabilities (so they are calibrated)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2.0, (n, c))
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=row) for row in p])
    return p, y


@pytest.mark.parametrize(("method", "lam", "k_reg"), [("aps", 0.0, 0), ("raps", 0.05, 1)])
@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_split_conformal_coverage_is_nominal_within_sampling_error(method, lam, k_reg, coverage):
    p, y = calibrated_data(8000, seed=1)
    cal, test = slice(0, 2000), slice(2000, None)
    q = conformal_quantile(conformity_scores(p[cal], y[cal], lam, k_reg), coverage)
    covered = set_coverage(prediction_sets(p[test], q, lam, k_reg), y[test])
    se = np.sqrt(coverage * (1 - coverage) / covered.size)
    assert abs(covered.mean() - coverage) < 4 * se + 1 / 2001  # sampling error plus the finite-sample slack


def test_class_conditional_sets_cover_every_class():
    rng = np.random.default_rng(3)
    p, y = calibrated_data(9000, seed=3)
    groups = rng.integers(0, 3000, len(y)).astype(str)
    cf = cross_fit_calibration(p, y, groups, coverage=0.9, class_conditional=True)
    for k in range(p.shape[1]):
        assert cf.covered[y == k].mean() > 0.87


def test_temperature_recovers_a_known_softening():
    p, y = calibrated_data(5000, seed=2)
    sharpened = apply_temperature(p, 1 / 2.5)  # an over-confident model: logits x 2.5
    t = fit_temperature(sharpened, y)
    assert t == pytest.approx(2.5, rel=0.1)
    assert expected_calibration_error(apply_temperature(sharpened, t), y) < 0.5 * expected_calibration_error(
        sharpened, y
    )
    assert (apply_temperature(sharpened, t).argmax(1) == sharpened.argmax(1)).all()  # ranking kept


def test_sets_are_never_empty_and_keep_the_top_label():
    p, _ = calibrated_data(200, seed=4)
    member = prediction_sets(p, q_hat=-1.0)
    assert member.sum(1).min() == 1 and member[np.arange(200), p.argmax(1)].all()


def _file(name: str = "m", fingerprint: str = "m@1#abc", taxonomy: str = "tax") -> CalibrationFile:
    p, y = calibrated_data(300, seed=5)
    stage = fit_stage(p, y, [f"c{k}" for k in range(6)], class_conditional=True)
    return CalibrationFile(
        model={"name": name, "version": "1", "fingerprint": fingerprint},
        taxonomy={"version": "1", "fingerprint": taxonomy},
        stages={"image": stage},
    )


def test_a_file_for_another_model_weights_or_taxonomy_is_refused():
    cal = _file()
    same = ModelIdentity.parse("m@1#abc")
    check_calibration(cal, identity=same, taxonomy_fingerprint="tax")
    check_calibration(cal, identity=ModelIdentity("m", "2", "abc"), taxonomy_fingerprint="tax")  # same weights
    with pytest.raises(CalibrationMismatchError, match="not 'other'"):
        check_calibration(cal, identity=ModelIdentity.parse("other@1"), taxonomy_fingerprint="tax")
    with pytest.raises(CalibrationMismatchError, match="weights"):
        check_calibration(cal, identity=ModelIdentity.parse("m@1#def"), taxonomy_fingerprint="tax")
    with pytest.raises(CalibrationMismatchError, match="taxonomy"):
        check_calibration(cal, identity=same, taxonomy_fingerprint="new")


def test_engine_gate_refuses_an_explicit_file_for_another_model(tiny_clip, tmp_path):
    from models.uncertainty.gates import UncertaintyGate

    path = tmp_path / "cal.json"
    _file(name=MODEL_NAME, fingerprint="embedded-pad-lite0@1.0.0#000000000000").write(path)
    with pytest.raises(CalibrationMismatchError):
        UncertaintyGate(tiny_clip, load_taxonomy(), calibration_path=path)
    gate = UncertaintyGate(tiny_clip, load_taxonomy())  # the shipped file is the embedded model's: not used
    assert not gate.calibrated


def test_file_round_trip_and_calibrator(tmp_path):
    path = tmp_path / "cal.json"
    _file().write(path)
    cal = load_calibration(path)
    calibrator = Calibrator(cal, coverage=0.9)
    p, _ = calibrated_data(5, seed=6)
    out = calibrator.calibrate(p)
    assert np.allclose(out.sum(1), 1) and (out.argmax(1) == p.argmax(1)).all()
    assert calibrator.prediction_set(out[0], cal.stages["image"].classes).dtype == bool


def test_shipped_file_is_bound_to_the_shipped_weights_and_taxonomy():
    cal = load_calibration(default_artifacts().calibration)
    card = load_card()
    sha = hashlib.sha256(WEIGHTS_PATH.read_bytes()).hexdigest()
    assert card.name == MODEL_NAME
    check_calibration(
        cal, identity=ModelIdentity(card.name, card.version, sha), taxonomy_fingerprint=load_taxonomy().fingerprint
    )
    for stage in cal.stages.values():  # cross-fitted figures recorded at fit time
        assert abs(stage.figures["coverage"] - 0.9) <= 0.03
        assert stage.figures["ece"] < stage.figures["ece_uncalibrated"] / 2 or stage.figures["ece"] <= 0.05
    # the ECE target holds for the probabilities the service ranks and returns (the fused stage);
    # the image stage measured 0.058 with model 1.1.0 and is reported as such in the README
    assert cal.stages["fused"].figures["ece"] <= 0.05
