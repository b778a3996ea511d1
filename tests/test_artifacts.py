"""Artifacts declared per model: one identity, one check, and every shipped file bound to the weights."""

from __future__ import annotations

import pytest

from models.backends.artifacts import ModelArtifacts, ModelIdentity
from models.backends.registry import get_spec
from models.knowledge.taxonomy import load_taxonomy
from models.scoring.fusion import fusion_for_model
from models.scoring.urgency import UrgencyThresholds, thresholds_for_model
from models.scoring.zeroshot import ZeroShotClassifier
from models.uncertainty.calibration import load_calibration
from models.uncertainty.gates import UncertaintyGate
from models.uncertainty.ood import OodStats

SHA = "fcd22feb7c4d" + "0" * 52


def test_fingerprint_round_trips_and_names_the_weights() -> None:
    ident = ModelIdentity("m", "1.1.0", SHA)
    assert ident.fingerprint == "m@1.1.0#fcd22feb7c4d"
    assert ModelIdentity.parse(ident.fingerprint) == ModelIdentity("m", "1.1.0", "fcd22feb7c4d")
    assert ModelIdentity.parse("m@2").fingerprint == "m@2"


@pytest.mark.parametrize(
    ("made_for", "accepted"),
    [
        (ModelIdentity("m", "1.1.0", "fcd22feb7c4d"), True),  # a 12-digit fingerprint of the same weights
        (ModelIdentity("m", "9.9.9", SHA), True),  # a version bump with the same weights keeps its files
        (ModelIdentity("m", "1.1.0", "000000000000"), False),  # other weights
        (ModelIdentity("other", "1.1.0", SHA), False),  # another model
        (ModelIdentity("m", "1.1.0"), True),  # no hash recorded: the version decides
        (ModelIdentity("m", "1.0.0"), False),
    ],
)
def test_one_identity_check(made_for: ModelIdentity, accepted: bool) -> None:
    assert ModelIdentity("m", "1.1.0", SHA).accepts(made_for) is accepted


def test_the_embedded_spec_declares_every_artifact_and_each_names_the_loaded_weights(embedded_model) -> None:
    declared = get_spec("embedded-pad-lite0").declared_artifacts()
    for name in ("calibration", "fusion", "ood_stats", "text_cache", "urgency_thresholds"):
        assert getattr(declared, name) is not None and getattr(declared, name).exists(), name
    arts = embedded_model.artifacts
    ident = arts.identity
    assert ident.weights_sha256 is not None and len(ident.weights_sha256) == 64
    assert ident.accepts(ModelIdentity.parse(load_calibration(arts.calibration).model["fingerprint"]))
    assert ident.accepts(ModelIdentity.parse(OodStats.load(arts.ood_stats).model_fingerprint))
    assert fusion_for_model(embedded_model).fitted
    assert thresholds_for_model(embedded_model) != UrgencyThresholds()  # the tuned ones
    clf = ZeroShotClassifier(embedded_model, load_taxonomy())
    assert (arts.text_cache / f"text-{clf.cache_key('clinical')}.pt").exists()


def test_a_model_that_declares_nothing_gets_the_generic_forms(tiny_clip) -> None:
    assert tiny_clip.artifacts == ModelArtifacts.bare(tiny_clip.card)
    assert not fusion_for_model(tiny_clip).fitted
    assert thresholds_for_model(tiny_clip) == UrgencyThresholds()
    gate = UncertaintyGate(tiny_clip, load_taxonomy())
    assert not gate.calibrated and gate.ood.stats is None


def test_files_for_other_weights_are_not_used(tiny_clip, embedded_model) -> None:
    """The embedded model's files declared on a model with other weights: the fusion falls back to its
    generic form, the OOD statistics stay off, and the calibration refuses to start."""
    import dataclasses
    import types

    from models.uncertainty.calibration import CalibrationMismatchError

    other = ModelIdentity("embedded-pad-lite0", "1.1.0", "0" * 64)
    arts = dataclasses.replace(embedded_model.artifacts, identity=other)
    model = types.SimpleNamespace(
        card=tiny_clip.card, encode_text=tiny_clip.encode_text, logit_scale=tiny_clip.logit_scale, artifacts=arts
    )
    assert not fusion_for_model(model).fitted
    with pytest.raises(CalibrationMismatchError, match="weights"):
        UncertaintyGate(model, load_taxonomy())  # type: ignore[arg-type]
    model.artifacts = dataclasses.replace(arts, calibration=None)
    assert UncertaintyGate(model, load_taxonomy()).ood.stats is None  # type: ignore[arg-type]
