"""The embedded model's served forward on ONNX Runtime / OpenVINO (models/embedded/export.py, runtime.py): the same
answers as PyTorch on real photos, a cached export reused only for the weights it was made for, and
PyTorch when a runtime is missing or fails."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from models.backends.artifacts import ModelIdentity
from models.embedded import runtime
from models.embedded.export import cached_export, ensure_export
from models.embedded.runtime import attach_runtime, choose_runtime, installed

MAX_PROB_CHANGE = 0.01  # the bar the default runtime was chosen at (benchmarks/runtime_agreement.py)
COMPILED = [n for n in ("onnxruntime", "openvino") if installed(n)]


@pytest.fixture(scope="module")
def model():
    """A model of this module's own: attaching a runtime must not leak into the shared fixture."""
    from models.backends.registry import load_model

    m = load_model("embedded-pad-lite0")
    yield m
    m.compiled = None


@pytest.fixture(scope="module")
def photos(pad_dir: Path, model) -> torch.Tensor:
    from models.photos import load_photo

    paths = sorted((pad_dir / "images").glob("*.jpg"))[:6]
    return model.preprocessing.batch([load_photo(p) for p in paths])


@pytest.mark.parametrize("name", COMPILED)
def test_runtime_answers_as_torch_on_real_photos(model, photos, name: str, tmp_path: Path) -> None:
    from models.knowledge.taxonomy import load_taxonomy
    from models.scoring.zeroshot import ZeroShotClassifier

    model.compiled = None
    ref_emb, ref_domain = model.encode_image_with_domain(photos)
    assert attach_runtime(model, name, tmp_path, threads=1) == name
    try:
        assert model.runtime_name == name
        emb, domain = model.encode_image_with_domain(photos)
        plain = model.encode_image(photos[:2])  # the path without the domain view, batch 2
    finally:
        model.compiled = None
    clf = ZeroShotClassifier(model, load_taxonomy())
    labels = clf.condition_set("clinical")
    p_ref, p = clf.probabilities(ref_emb, labels), clf.probabilities(emb, labels)
    assert torch.equal(p.argmax(1), p_ref.argmax(1))
    assert float((p - p_ref).abs().max()) <= MAX_PROB_CHANGE
    assert domain is not None and ref_domain is not None
    assert float((domain - ref_domain).abs().max()) <= MAX_PROB_CHANGE
    assert torch.allclose(plain, emb[:2], atol=1e-4)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(emb)), atol=1e-4)


@pytest.mark.skipif(not COMPILED, reason="neither onnxruntime nor openvino is installed")
def test_heatmap_gradients_stay_on_torch(model, photos, tmp_path: Path) -> None:
    attach_runtime(model, COMPILED[0], tmp_path, threads=1)
    try:
        out = model.encode_image(photos[:1].clone().requires_grad_(True), grad=True)
    finally:
        model.compiled = None
    assert out.requires_grad and out.grad_fn is not None


def test_stale_export_is_rebuilt_not_used(model, tmp_path: Path) -> None:
    first = ensure_export(model, tmp_path)
    meta_path = first.with_suffix(".json")
    assert cached_export(model, tmp_path) == first  # same weights: reused
    stamp = first.stat().st_mtime_ns
    assert ensure_export(model, tmp_path) == first and first.stat().st_mtime_ns == stamp

    original = model.artifacts
    other = ModelIdentity(original.identity.name, original.identity.version, "0" * 64)
    try:
        model.artifacts = replace(original, identity=other)  # the same name, other weights
        assert cached_export(model, tmp_path) is None
        rebuilt = ensure_export(model, tmp_path)
        assert rebuilt == first and rebuilt.stat().st_mtime_ns != stamp
        made_for = ModelIdentity.parse(json.loads(meta_path.read_text())["made_for"])
        assert other.accepts(made_for) and not original.identity.accepts(made_for)
    finally:
        model.artifacts = original
    assert cached_export(model, tmp_path) is None  # made for the other weights now: not ours
    assert len(list(tmp_path.iterdir())) == 2  # one export and its record per model name: bounded


def test_export_for_other_test_time_views_is_not_reused(model, tmp_path: Path) -> None:
    path = ensure_export(model, tmp_path)
    meta = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".json").write_text(json.dumps(meta | {"tta_flips": not model.tta_flips}))
    assert cached_export(model, tmp_path) is None


def test_auto_and_missing_runtimes_fall_back_to_torch(model, monkeypatch, caplog, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "installed", lambda name: name == "torch")
    with caplog.at_level(logging.WARNING, logger="models.embedded.runtime"):
        assert choose_runtime("auto") == "torch"
        assert choose_runtime("onnxruntime") == "torch"
    assert "not installed" in caplog.text
    model.compiled = object()  # type: ignore[assignment]
    assert attach_runtime(model, "auto", tmp_path) == "torch" and model.compiled is None
    assert not list(tmp_path.iterdir())  # nothing exported for a runtime that cannot run it


def test_auto_prefers_the_measured_order_and_torch_on_cuda(monkeypatch) -> None:
    monkeypatch.setattr(runtime, "installed", lambda name: True)
    assert choose_runtime("auto") == runtime.AUTO_ORDER[0]
    assert choose_runtime("openvino") == "openvino"
    assert choose_runtime("auto", device="cuda") == "torch"
    assert choose_runtime("torch") == "torch"


def test_a_failing_runtime_leaves_the_model_on_torch(model, monkeypatch, caplog, tmp_path: Path) -> None:
    monkeypatch.setattr(runtime, "installed", lambda name: True)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(runtime, "compile_tower", broken)
    with caplog.at_level(logging.WARNING, logger="models.embedded.runtime"):
        assert attach_runtime(model, "onnxruntime", tmp_path) == "torch"
    assert model.compiled is None and "no such kernel" in caplog.text


def test_other_backends_stay_on_torch(tiny_clip, tmp_path: Path) -> None:
    assert attach_runtime(tiny_clip, "auto", tmp_path) == "torch"
    assert getattr(tiny_clip, "compiled", None) is None and not list(tmp_path.iterdir())


def test_runtime_setting(monkeypatch) -> None:
    from pydantic import ValidationError

    from service.settings import Settings

    monkeypatch.setenv("DERMTRIAGE_RUNTIME", "openvino")
    assert Settings().runtime == "openvino"
    monkeypatch.setenv("DERMTRIAGE_RUNTIME", "tensorrt")
    with pytest.raises(ValidationError):
        Settings()


def test_export_runtime_command_builds_then_reuses(tmp_path: Path, capsys) -> None:
    from service.cli import main

    assert main(["export-runtime", "--cache-dir", str(tmp_path)]) == 0
    assert "exported" in capsys.readouterr().out
    onnx_file = tmp_path / "embedded-pad-lite0.onnx"
    stamp = onnx_file.stat().st_mtime_ns
    assert main(["export-runtime", "--cache-dir", str(tmp_path)]) == 0
    assert "up to date" in capsys.readouterr().out and onnx_file.stat().st_mtime_ns == stamp
