"""Zero-shot scoring on a tiny real CLIP model: ensembles, caching, caller labels, probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from models.knowledge.taxonomy import load_taxonomy
from models.scoring.zeroshot import ZeroShotClassifier, ensemble_embedding


class CountingModel:
    """Delegates to a real backend and counts text-encoder calls (to prove the cache holds)."""

    def __init__(self, inner) -> None:
        self.inner, self.text_calls = inner, 0
        self.card, self.preprocessing, self.device = inner.card, inner.preprocessing, inner.device
        self.artifacts = inner.artifacts

    @property
    def logit_scale(self) -> float:
        return self.inner.logit_scale

    def encode_text(self, texts):
        self.text_calls += 1
        return self.inner.encode_text(texts)

    def encode_image(self, pixels, *, grad=False):
        return self.inner.encode_image(pixels, grad=grad)


def test_condition_embeddings_are_prompt_ensembles(tiny_clip) -> None:
    tax = load_taxonomy()
    clf = ZeroShotClassifier(tiny_clip, tax)
    labels = clf.condition_set("clinical")
    assert labels.ids == tuple(tax.ids)
    assert torch.allclose(labels.embeddings.norm(dim=-1), torch.ones(len(tax.ids)), atol=1e-5)
    mel = tax.get("melanoma")
    templates = tax.templates_for("clinical")
    manual = []
    for name in mel.prompt_names:
        z = tiny_clip.encode_text([t.format(name) for t in templates])
        manual.append(F.normalize(z.mean(0), dim=-1))
    expected = F.normalize(torch.stack(manual).mean(0), dim=-1)
    assert torch.allclose(labels.embeddings[tax.ids.index("melanoma")], expected, atol=1e-5)
    derm = clf.condition_set("dermoscopic")
    assert not torch.allclose(derm.embeddings, labels.embeddings)


def test_condition_embeddings_computed_once_and_cached_on_disk(tiny_clip, tmp_path) -> None:
    tax = load_taxonomy()
    model = CountingModel(tiny_clip)
    clf = ZeroShotClassifier(model, tax, cache_dir=tmp_path)
    first = clf.condition_set("clinical")
    calls = model.text_calls
    assert calls == len(tax.conditions)
    assert clf.condition_set("clinical") is first
    assert model.text_calls == calls
    assert list(tmp_path.glob("text-*.pt"))
    fresh = CountingModel(tiny_clip)
    again = ZeroShotClassifier(fresh, tax, cache_dir=tmp_path).condition_set("clinical")
    assert fresh.text_calls == 0
    assert torch.equal(again.embeddings, first.embeddings)


def test_cache_key_depends_on_taxonomy(tiny_clip) -> None:
    tax = load_taxonomy()
    small = tax.subset(["melanoma", "basal_cell_carcinoma"])
    assert ZeroShotClassifier(tiny_clip, tax).cache_key("clinical") != ZeroShotClassifier(tiny_clip, small).cache_key(
        "clinical"
    )


def test_custom_labels_and_probabilities(tiny_clip) -> None:
    clf = ZeroShotClassifier(tiny_clip, load_taxonomy())
    labels = clf.custom_set(["a purple bruise", "a tattoo", "melanoma"])
    assert labels.ids == ("a purple bruise", "a tattoo", "melanoma")
    x = torch.randn(3, 3, 64, 64)
    probs = clf.probabilities(tiny_clip.encode_image(x), labels)
    assert probs.shape == (3, 3)
    assert torch.allclose(probs.sum(-1), torch.ones(3), atol=1e-5)
    emb = ensemble_embedding(tiny_clip, ["a tattoo"], load_taxonomy().templates_for("clinical"))
    assert torch.allclose(labels.embeddings[1], emb, atol=1e-6)
    hotter = clf.probabilities(tiny_clip.encode_image(x), labels, temperature=0.1)
    assert (hotter.max(-1).values >= probs.max(-1).values - 1e-6).all()


def test_subset_follows_requested_order(tiny_clip) -> None:
    clf = ZeroShotClassifier(tiny_clip, load_taxonomy())
    sub = clf.subset(["melanoma", "actinic_keratosis"])
    full = clf.condition_set()
    assert sub.ids == ("melanoma", "actinic_keratosis")
    assert torch.equal(sub.embeddings[0], full.embeddings[full.ids.index("melanoma")])
