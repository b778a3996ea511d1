"""`dermtriage evaluate`'s OOD pass: each photo forwarded once per run, the non-skin set's features cached on
disk per model identity (fingerprint + generator parameters), and a cache of another identity never used."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from models.fitting import ood_cache, ood_data, ood_fit

PAD = Path(os.environ.get("DERMTRIAGE_DATA", "")) / "images"


class _RowCounter:
    """Wraps the real image encoder: counts the photos (pixel rows) it is asked to embed."""

    def __init__(self, model: Any) -> None:
        self.rows = 0
        self._inner = model.encode_image

    def __call__(self, pixels: torch.Tensor, **kw: Any) -> torch.Tensor:
        self.rows += pixels.shape[0]
        return self._inner(pixels, **kw)


@pytest.fixture
def small_non_skin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A real, small non-skin set (one synthetic image of each kind) and a private cache dir."""
    monkeypatch.setattr(ood_data, "non_skin_images", lambda: ood_data.synthetic_images(per_kind=1, seed=0))
    monkeypatch.setenv("DERMTRIAGE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # dev_photos' per-folder cache
    return tmp_path / "cache"


def test_one_forward_per_photo_and_same_features(embedded_model, small_non_skin: Path, monkeypatch) -> None:
    images = ood_data.non_skin_images()
    counter = _RowCounter(embedded_model)
    monkeypatch.setattr(embedded_model, "encode_image", counter)
    photos = ood_fit.non_skin_photos(embedded_model)
    assert counter.rows == len(images)  # embeddings and ImageNet probabilities from the same forward
    monkeypatch.setattr(embedded_model, "encode_image", counter._inner)
    # the same figures as the former two passes (embeddings, then ImageNet probabilities)
    pil = [im for _, im in images]
    np.testing.assert_array_equal(photos.embeddings, ood_fit.embed_pil(embedded_model, pil))
    pixels = embedded_model.preprocessing.batch(pil).to(embedded_model.device)
    domain = embedded_model.encode_image_with_domain(pixels)[1]
    if domain is None:
        assert photos.imagenet is None
    else:
        np.testing.assert_array_equal(photos.imagenet, domain.float().cpu().numpy())


@pytest.mark.skipif(not PAD.is_dir(), reason="PAD-UFES-20 not present (DERMTRIAGE_DATA)")
def test_dev_photos_embedded_once(embedded_model, small_non_skin: Path, monkeypatch) -> None:
    from models.fitting.datasets import load_labelled_folder
    from models.knowledge.taxonomy import load_taxonomy

    items = load_labelled_folder(PAD.parent, load_taxonomy())[:5]
    counter = _RowCounter(embedded_model)
    monkeypatch.setattr(embedded_model, "encode_image", counter)
    ood_fit.dev_photos(embedded_model, items)
    ood_fit.non_skin_photos(embedded_model)
    assert counter.rows == len(items) + len(ood_data.non_skin_images())
    ood_fit.non_skin_photos(embedded_model)  # cached on disk: not generated nor embedded again
    assert counter.rows == len(items) + len(ood_data.non_skin_images())


def test_cache_of_another_fingerprint_is_not_used(embedded_model, small_non_skin: Path) -> None:
    fresh = ood_fit.non_skin_photos(embedded_model)
    files = list(small_non_skin.glob("ood/*.npz"))
    assert len(files) == 1  # one file per model
    other = ood_cache.non_skin_key(embedded_model, fingerprint="sha256:another-model")
    bogus = ood_fit.PhotoSet(fresh.names, np.zeros_like(fresh.embeddings), fresh.skin_pixels, fresh.imagenet)
    ood_cache.save_non_skin_cache(embedded_model, other, bogus, small_non_skin / "ood")
    again = ood_fit.non_skin_photos(embedded_model)
    np.testing.assert_array_equal(again.embeddings, fresh.embeddings)  # recomputed, not the other model's zeros
    assert list(small_non_skin.glob("ood/*.npz")) == files  # overwritten in place, still bounded
    assert not list(small_non_skin.glob("ood/*.tmp"))


def test_evaluate_embeds_the_photos_once_per_run(tiny_clip, tmp_path: Path, monkeypatch) -> None:
    """A real run of `dermtriage evaluate`'s passes (figures, scopes, uncertainty) on a model that did not see
    the photos: each photo goes through the image encoder once."""
    from argparse import Namespace

    from models.knowledge.taxonomy import load_taxonomy
    from service.cli.evaluate import _evaluate
    from tests.test_evaluate_splits import _folder

    rows = [(f"p{i}", "MEL" if i % 2 else "NEV", "test", "clinical") for i in range(10)]
    root = _folder(tmp_path, rows)
    counter = _RowCounter(tiny_clip)
    monkeypatch.setattr(tiny_clip, "encode_image", counter)
    args = Namespace(
        data=str(root), labels="dataset", modality="clinical", batch_size=16, split=None, coverage=0.9, no_ood=True
    )
    report = _evaluate(tiny_clip, load_taxonomy(), args)
    assert report["n"] == len(rows) and "ece" in report  # the uncertainty pass ran
    assert counter.rows == len(rows)


def test_the_ood_pass_reuses_the_runs_forward(embedded_model, small_non_skin: Path, monkeypatch) -> None:
    """Issue 19: with the OOD pass on, a model without out-of-fold probabilities for the folder forwards each
    photo once per run (the OOD pass reads the evaluation's forward), plus the non-skin set once; the OOD
    features equal those of a forward of their own."""
    from models.fitting.evaluation import embed_images, one_embedding_per_photo
    from models.knowledge.taxonomy import load_taxonomy
    from tests.test_evaluate_splits import _folder

    root = _folder(small_non_skin.parent, [(f"p{i}", "MEL" if i % 2 else "NEV", "test", "clinical") for i in range(6)])
    from models.fitting.datasets import load_labelled_folder

    items = load_labelled_folder(root, load_taxonomy())
    alone = ood_fit.embed_photo_set(embedded_model, [i.stem for i in items], lambda j: _load(items[j].path), "x")
    counter = _RowCounter(embedded_model)
    monkeypatch.setattr(embedded_model, "encode_image", counter)
    with one_embedding_per_photo():
        embed_images(embedded_model, items, progress=False)
        dev = ood_fit.dev_photos(embedded_model, items)
    assert counter.rows == len(items)
    np.testing.assert_array_equal(dev.embeddings, alone.embeddings)
    np.testing.assert_array_equal(dev.skin_pixels, alone.skin_pixels)
    if alone.imagenet is not None:
        np.testing.assert_array_equal(dev.imagenet, alone.imagenet)
    ood_fit.dev_photos(embedded_model, items)  # outside a run: a forward of its own
    assert counter.rows == 2 * len(items)


def _load(path: Path) -> Any:
    from models.photos import load_photo

    return load_photo(path)


def test_the_non_skin_cache_key_names_the_runtime(embedded_model, monkeypatch) -> None:
    """The runtimes agree within 1e-4, not bit for bit: features cached from one are not reused by another."""
    from types import SimpleNamespace

    torch_key = ood_cache.non_skin_key(embedded_model)
    monkeypatch.setattr(embedded_model, "compiled", SimpleNamespace(name="openvino"))
    assert ood_cache.non_skin_key(embedded_model) != torch_key
    assert '"runtime": "openvino"' in ood_cache.non_skin_key(embedded_model)


def test_every_pass_of_evaluate_and_calibrate_shows_a_progress_bar(
    embedded_model, pad_small: Path, small_non_skin: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Issue 19: no silent pass. `calibrate`: the fusion's cross-fit and each stage's calibration cross-fit;
    `evaluate`: the fused figures of both scopes, the calibration per stage and the OOD pass; the uncertainty
    pass reuses the dataset scope's fusion cross-fit (same rows) instead of running it again."""
    from argparse import Namespace

    from models.fitting.calibration_fit import calibrate_folder
    from models.knowledge.taxonomy import load_taxonomy
    from service.cli.evaluate import _evaluate

    taxonomy = load_taxonomy()
    calibrate_folder(embedded_model, taxonomy, pad_small)
    err = capfd.readouterr().err
    for bar in ("calibration: cross-fitting the fusion", "calibration (image): cross-fitting", "calibration (fused)"):
        assert bar in err
    args = Namespace(
        data=str(pad_small),
        labels="dataset",
        modality="clinical",
        batch_size=16,
        split=None,
        coverage=0.9,
        no_ood=False,
    )
    report = _evaluate(embedded_model, taxonomy, args)
    assert report["ood"] is not None
    err = capfd.readouterr().err
    for bar in (
        "fused figures (dataset): cross-fitting the fusion",
        "fused figures (validated): cross-fitting the fusion",
        "calibration (image): cross-fitting",
        "calibration (fused): cross-fitting",
        "OOD: embedding photos",
        "OOD: embedding the non-skin set",
    ):
        assert bar in err, bar
    assert "calibration: cross-fitting the fusion" not in err  # the same rows as the dataset scope's: reused


def test_generating_the_non_skin_set_shows_a_progress_bar(capfd: pytest.CaptureFixture[str]) -> None:
    quiet = ood_data.synthetic_images(per_kind=1, seed=0)
    assert "generating the non-skin set" not in capfd.readouterr().err
    shown = ood_data.synthetic_images(per_kind=1, seed=0, progress=True)
    assert "OOD: generating the non-skin set" in capfd.readouterr().err
    assert [n for n, _ in shown] == [n for n, _ in quiet]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(shown, quiet, strict=True))
