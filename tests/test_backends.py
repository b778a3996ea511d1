"""Backends and registry on tiny models built here: no downloads, the hub is never contacted."""

from __future__ import annotations

import gzip
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from models.backends.base import ImageTextModel, ModelCard, ModelUnavailableError, SpatialTarget
from models.backends.hf_clip_backend import HFClipBackend, check_tokenizer
from models.backends.hub import cached_hub_file
from models.backends.open_clip_backend import OpenClipBackend
from models.backends.registry import DEFAULT_MODEL, ModelSpec, get_spec, list_specs, load_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TEXTS = ["melanoma", "a photo of a benign nevus", "basal cell carcinoma on the nose"]
TINY_OC = "dermtriage-test-tiny-vit"
TINY_OC_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
MISSING_REPO = "dermtriage-test/no-such-model"


def card(name: str = "tiny") -> ModelCard:
    return ModelCard(name=name, version="0", family="test", source="built in the test", license="MIT")


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def pixels(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))


def hook_and_backprop(model: ImageTextModel, x: torch.Tensor) -> tuple[SpatialTarget, torch.Tensor, torch.Tensor]:
    """Hook the spatial target, score image-text similarity, backprop; return (target, activation, grad)."""
    target = model.spatial_target()
    text = model.encode_text(TEXTS[:1])  # made under inference_mode: must still mix with autograd
    seen: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        act = inputs[0] if target.use_input else output
        act.retain_grad()
        seen["act"] = act

    handle = target.layer.register_forward_hook(hook)
    try:
        emb = model.encode_image(x, grad=True)
        (emb @ text.T).sum().backward()
    finally:
        handle.remove()
    act = seen["act"]
    assert act.grad is not None
    return target, act, act.grad


# --- tiny open_clip model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_oc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import open_clip

    root = tmp_path_factory.mktemp("open_clip")
    (root / "configs").mkdir()
    (root / "configs" / f"{TINY_OC}.json").write_text(json.dumps(TINY_OC_CFG))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_OC).eval()
    weights = root / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return {"root": root, "model": model, "weights": weights, "tokenizer": open_clip.get_tokenizer(TINY_OC)}


def reference_oc(tiny: dict[str, Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    model = tiny["model"]
    with torch.no_grad():
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(model.encode_text(tiny["tokenizer"](TEXTS)), dim=-1)
    return img, txt


def assert_same_embeddings(model: ImageTextModel, ref: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor) -> None:
    img, txt = model.encode_image(x), model.encode_text(TEXTS)
    assert img.dtype == txt.dtype == torch.float32
    torch.testing.assert_close(img, ref[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(txt, ref[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(img.norm(dim=-1), torch.ones(len(x)))


def test_open_clip_arch_plus_weights_file(tiny_oc: dict[str, Any]) -> None:
    model = OpenClipBackend.load(TINY_OC, str(tiny_oc["weights"]), card=card())
    assert isinstance(model, ImageTextModel)
    x = pixels()
    assert_same_embeddings(model, reference_oc(tiny_oc, x), x)
    assert model.preprocessing.image_size == 64
    assert model.preprocessing.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert 1.0 < model.logit_scale <= 100.0
    assert model.encode_text([]).shape == (0, 32)
    many = model.encode_text([f"lesion {i}" for i in range(130)])  # three chunks of 64
    assert many.shape == (130, 32)
    torch.testing.assert_close(many[100], model.encode_text(["lesion 100"])[0], atol=1e-6, rtol=0)


def test_open_clip_from_model(tiny_oc: dict[str, Any]) -> None:
    from models.backends.open_clip_backend import preprocessing_from_open_clip

    pre = preprocessing_from_open_clip(tiny_oc["model"])
    model = OpenClipBackend.from_model(tiny_oc["model"], tiny_oc["tokenizer"], card=card(), preprocessing=pre)
    x = pixels()
    assert_same_embeddings(model, reference_oc(tiny_oc, x), x)


def test_registry_spec_file(tiny_oc: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "tiny.pt").write_bytes(tiny_oc["weights"].read_bytes())
    (tmp_path / "card.json").write_text(card("tiny-from-spec").model_dump_json())
    spec_file = tmp_path / "tiny.json"
    spec_file.write_text(
        json.dumps(
            {
                "name": "tiny-from-spec",
                "backend": "open_clip",
                "source": TINY_OC,
                "pretrained": "tiny.pt",  # relative to the spec file
                "card_path": "card.json",
                "preprocessing": {"interpolation": "bilinear"},
            }
        )
    )
    spec = get_spec(str(spec_file))
    assert spec.pretrained == str(tmp_path / "tiny.pt")
    model = load_model(str(spec_file))
    assert model.card.name == "tiny-from-spec" and model.card.license == "MIT"
    assert model.preprocessing.interpolation == "bilinear"  # override
    assert model.preprocessing.image_size == 64  # the checkpoint's own
    x = pixels()
    assert_same_embeddings(model, reference_oc(tiny_oc, x), x)
    # the same through a ModelSpec object and through the ad-hoc string form
    assert_same_embeddings(load_model(spec), reference_oc(tiny_oc, x), x)
    adhoc = load_model(f"open_clip:{TINY_OC}@{tiny_oc['weights']}")
    assert adhoc.card.license == "unknown" and adhoc.card.version == "unversioned"
    assert_same_embeddings(adhoc, reference_oc(tiny_oc, x), x)


def test_open_clip_local_dir(tiny_oc: dict[str, Any], tmp_path: Path) -> None:
    folder = open_clip_folder(tiny_oc, tmp_path / "tiny-local")
    model = OpenClipBackend.load(f"local-dir:{folder}", card=card())
    x = pixels()
    assert_same_embeddings(model, reference_oc(tiny_oc, x), x)
    assert model.preprocessing.mean == pytest.approx(IMAGENET_MEAN)
    assert model.preprocessing.std == pytest.approx(IMAGENET_STD)
    assert model.preprocessing.interpolation == "bilinear"
    assert_same_embeddings(load_model(f"local-dir:{folder}"), reference_oc(tiny_oc, x), x)


def test_open_clip_vit_spatial_target(tiny_oc: dict[str, Any]) -> None:
    model = OpenClipBackend.load(TINY_OC, str(tiny_oc["weights"]), card=card())
    target, act, grad = hook_and_backprop(model, pixels())
    assert target.kind == "vit" and target.use_input and target.grid == (4, 4) and not target.seq_first
    assert act.shape == (2, 17, 64)
    assert target.to_map(act).shape == (2, 64, 4, 4)
    assert target.to_map(grad).abs().sum() > 0  # patch tokens get gradient at the last block's input


@pytest.mark.parametrize("tower", ["modified_resnet", "timm_efficientnet", "timm_vit"])
def test_open_clip_cnn_and_timm_spatial_targets(tower: str) -> None:
    from types import SimpleNamespace

    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel

    from models.backends.open_clip_backend import open_clip_spatial_target

    torch.manual_seed(0)
    if tower == "modified_resnet":
        visual, size = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=16), 64
    elif tower == "timm_efficientnet":
        visual, size = TimmModel("efficientnet_b0", embed_dim=32, image_size=64, pool="avg", proj="linear"), 64
    else:  # open_clip's timm wrapper around a small timm VisionTransformer (BiomedCLIP's tower type)
        from timm.models.vision_transformer import VisionTransformer

        visual, size = TimmModel("efficientnet_b0", embed_dim=32, image_size=64, pool="", proj="linear"), 64
        visual.trunk = VisionTransformer(img_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=0)
        visual.head = torch.nn.Linear(32, 32)
    target = open_clip_spatial_target(SimpleNamespace(visual=visual.eval()))  # type: ignore[arg-type]
    seen: dict[str, torch.Tensor] = {}

    def hook(_module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        act = inputs[0] if target.use_input else output
        act.retain_grad()
        seen["act"] = act

    handle = target.layer.register_forward_hook(hook)
    try:
        visual(pixels(1, size)).sum().backward()
    finally:
        handle.remove()
    fmap = target.to_map(seen["act"])
    assert fmap.ndim == 4 and fmap.shape[0] == 1
    if tower == "timm_vit":
        assert target.kind == "vit" and target.use_input and target.grid == (4, 4)
        assert fmap.shape[2:] == (4, 4)
    else:
        assert target.kind == "cnn" and fmap.shape[2:] == (2, 2)
    if tower == "timm_efficientnet":
        assert target.layer is visual.trunk.bn2
    assert target.to_map(seen["act"].grad).abs().sum() > 0


def test_open_clip_offline_failures(tiny_oc: dict[str, Any], tmp_path: Path) -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=MISSING_REPO) as err:
        OpenClipBackend.load(f"hf-hub:{MISSING_REPO}", card=card())
    assert time.monotonic() - start < 5
    assert "HF_HUB_OFFLINE" in str(err.value) and "local-dir:" in str(err.value)

    with pytest.raises(ModelUnavailableError, match=r"missing\.pt"):
        OpenClipBackend.load(TINY_OC, str(tmp_path / "missing.pt"), card=card())
    with pytest.raises(ModelUnavailableError, match="no-such-tag"):
        OpenClipBackend.load(TINY_OC, "no-such-tag", card=card())
    empty = tmp_path / "empty-dir"
    empty.mkdir()
    (empty / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OC_CFG}))
    with pytest.raises(ModelUnavailableError, match="no weights"):  # open_clip would init randomly
        OpenClipBackend.load(f"local-dir:{empty}", card=card())
    with pytest.raises(ModelUnavailableError):
        OpenClipBackend.load(f"local-dir:{tmp_path / 'nowhere'}", card=card())


@pytest.mark.parametrize(
    ("name", "repo", "filename"),
    [
        ("dermlip-vit-b16", "redlessone/DermLIP_ViT-B-16", "open_clip_config.json"),
        ("biomedclip", "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224", "open_clip_config.json"),
        ("openai-vit-b32", "timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin"),
        ("monet", "suinleelab/monet", "config.json"),
    ],
)
def test_builtin_specs_refuse_fast_offline(name: str, repo: str, filename: str) -> None:
    if cached_hub_file(repo, filename):
        pytest.skip(f"{repo} is in the local cache")
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=repo.split("/")[-1]):
        load_model(name)
    assert time.monotonic() - start < 5


# --- tiny transformers CLIPModel -----------------------------------------------------------


def write_clip_tokenizer(folder: Path) -> None:
    """CLIP's real BPE vocabulary (shipped with open_clip) as vocab.json + merges.txt."""
    from open_clip.tokenizer import bytes_to_unicode, default_bpe

    with gzip.open(default_bpe(), "rt", encoding="utf-8") as f:
        merges = f.read().split("\n")[1 : 49152 - 256 - 2 + 1]
    vocab = list(bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("hf_clip")
    write_clip_tokenizer(root)
    tokenizer = CLIPTokenizer.from_pretrained(root)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 64,
            "patch_size": 16,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    folder = root / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    CLIPImageProcessor(
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
        size={"shortest_edge": 64},
        crop_size={"height": 64, "width": 64},
    ).save_pretrained(folder)
    return {"folder": folder, "model": model, "tokenizer": tokenizer}


def reference_hf(tiny: dict[str, Any], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from models.backends.hf_clip_backend import _as_features

    model, tok = tiny["model"], tiny["tokenizer"]
    with torch.no_grad():
        img = _as_features(model.get_image_features(pixel_values=x))
        tokens = tok(TEXTS, padding=True, return_tensors="pt")
        txt = _as_features(model.get_text_features(**tokens))
    return F.normalize(img, dim=-1), F.normalize(txt, dim=-1)


def test_hf_clip_load(tiny_hf: dict[str, Any]) -> None:
    model = HFClipBackend.load(str(tiny_hf["folder"]), card=card())
    assert isinstance(model, ImageTextModel)
    x = pixels()
    assert_same_embeddings(model, reference_hf(tiny_hf, x), x)
    pre = model.preprocessing  # from the checkpoint's processor config, not CLIP defaults
    assert pre.mean == pytest.approx(IMAGENET_MEAN) and pre.std == pytest.approx(IMAGENET_STD)
    assert pre.image_size == 64 and pre.interpolation == "bicubic" and pre.resize_mode == "shortest"
    assert 1.0 < model.logit_scale <= 100.0
    assert model.encode_text([]).shape == (0, 16)
    adhoc = load_model(f"hf_clip:{tiny_hf['folder']}")
    assert_same_embeddings(adhoc, reference_hf(tiny_hf, x), x)


def test_hf_clip_spatial_target(tiny_hf: dict[str, Any]) -> None:
    model = HFClipBackend.load(str(tiny_hf["folder"]), card=card())
    target, act, grad = hook_and_backprop(model, pixels())
    assert target.kind == "vit" and target.use_input and target.grid == (4, 4)
    assert act.shape == (2, 17, 32)
    assert target.to_map(act).shape == (2, 32, 4, 4)
    assert target.to_map(grad).abs().sum() > 0


def test_hf_clip_offline_failures(tiny_hf: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match=MISSING_REPO):
        HFClipBackend.load(MISSING_REPO, card=card())
    assert time.monotonic() - start < 5

    # a folder with model weights and image processor config but no tokenizer files
    folder = tmp_path / "weights-only"
    folder.mkdir()
    for f in tiny_hf["folder"].iterdir():
        if "token" not in f.name and f.name not in ("vocab.json", "merges.txt"):
            shutil.copyfile(f, folder / f.name)
    with pytest.raises(ModelUnavailableError, match="tokenizer is empty or broken"):
        HFClipBackend.load(str(folder), card=card())

    # weights without an image processor config: no silent fallback to CLIP mean/std
    folder = tmp_path / "no-processor"
    shutil.copytree(tiny_hf["folder"], folder)
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(ModelUnavailableError, match="preprocessor_config"):
        HFClipBackend.load(str(folder), card=card())

    # transformers offline may hand back a near-empty tokenizer instead of raising: refuse it
    from transformers import AutoTokenizer, CLIPTokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: CLIPTokenizer())
    with pytest.raises(ModelUnavailableError, match="empty or broken"):
        HFClipBackend.load(str(tiny_hf["folder"]), card=card())
    check_tokenizer(tiny_hf["tokenizer"], "tiny")  # the real one passes


# --- hub ids served from a local Hugging Face cache -----------------------------------------


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache that huggingface_hub and transformers use for this test."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def put_in_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Lay files out as a hub download would (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, src in files.items():
        shutil.copyfile(src, snapshot / name)


def open_clip_folder(tiny: dict[str, Any], folder: Path) -> Path:
    """An open_clip `local-dir:` / hf-hub layout of the tiny model with ImageNet mean/std."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    pp = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "interpolation": "bilinear"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OC_CFG, "preprocess_cfg": pp}))
    state = {k: v.contiguous() for k, v in tiny["model"].state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder


def test_open_clip_hf_hub_from_cache(tiny_oc: dict[str, Any], hub_cache: Path, tmp_path: Path) -> None:
    folder = open_clip_folder(tiny_oc, tmp_path / "repo")
    repo = "dermtriage-test/tiny-open-clip"
    put_in_cache(hub_cache, repo, {f.name: f for f in folder.iterdir()})
    x = pixels()
    model = OpenClipBackend.load(f"hf-hub:{repo}", card=card())
    assert_same_embeddings(model, reference_oc(tiny_oc, x), x)
    assert model.preprocessing.mean == pytest.approx(IMAGENET_MEAN)
    spec_file = tmp_path / "spec.json"  # the same shape as the DermLIP / BiomedCLIP specs
    spec_file.write_text(json.dumps({"name": "t", "backend": "open_clip", "source": f"hf-hub:{repo}"}))
    assert_same_embeddings(load_model(str(spec_file)), reference_oc(tiny_oc, x), x)

    only_config = "dermtriage-test/config-only"
    put_in_cache(hub_cache, only_config, {"open_clip_config.json": folder / "open_clip_config.json"})
    with pytest.raises(ModelUnavailableError, match=r"open_clip_model\.safetensors"):
        OpenClipBackend.load(f"hf-hub:{only_config}", card=card())


def test_hf_clip_hub_id_from_cache(tiny_hf: dict[str, Any], hub_cache: Path) -> None:
    repo = "dermtriage-test/tiny-hf-clip"
    put_in_cache(hub_cache, repo, {f.name: f for f in tiny_hf["folder"].iterdir()})
    x = pixels()
    model = HFClipBackend.load(repo, card=card())
    assert_same_embeddings(model, reference_hf(tiny_hf, x), x)
    assert model.preprocessing.mean == pytest.approx(IMAGENET_MEAN)


def test_unreachable_hub_fails_fast_and_uses_cache(
    tiny_oc: dict[str, Any], hub_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not marked offline, but no network: no 25 s of retries; cached models still load."""
    from huggingface_hub import constants

    from models.backends import hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=0.0: False)
    start = time.monotonic()
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        OpenClipBackend.load(f"hf-hub:{MISSING_REPO}", card=card())
    with pytest.raises(ModelUnavailableError, match="unreachable"):
        HFClipBackend.load(MISSING_REPO, card=card())
    assert time.monotonic() - start < 5

    repo = "dermtriage-test/tiny-open-clip"
    folder = open_clip_folder(tiny_oc, tmp_path / "repo")
    put_in_cache(hub_cache, repo, {f.name: f for f in folder.iterdir()})
    x = pixels()
    assert_same_embeddings(OpenClipBackend.load(f"hf-hub:{repo}", card=card()), reference_oc(tiny_oc, x), x)
    assert time.monotonic() - start < 10
    assert constants.HF_HUB_OFFLINE is False  # the guard put it back


# --- registry ------------------------------------------------------------------------------


def test_list_specs_builtins() -> None:
    specs = {s.name: s for s in list_specs()}
    for name in ("dermlip-vit-b16", "biomedclip", "monet", "openai-vit-b32"):
        assert name in specs
        card_ = specs[name].model_card()
        assert card_.license and card_.license != "unknown"
        assert card_.credits, f"{name} needs a citation"
    assert specs["dermlip-vit-b16"].source == "hf-hub:redlessone/DermLIP_ViT-B-16"
    monet = specs["monet"]
    assert monet.backend == "hf_clip" and monet.preprocessing is not None
    assert monet.preprocessing.mean == IMAGENET_MEAN and monet.preprocessing.std == IMAGENET_STD
    assert DEFAULT_MODEL == "embedded-pad-lite0"


def test_unknown_name_lists_known() -> None:
    with pytest.raises(KeyError) as err:
        get_spec("no-such-model")
    assert "dermlip-vit-b16" in str(err.value) and "monet" in str(err.value)
    with pytest.raises(KeyError):
        load_model("no-such-model")


def test_ad_hoc_strings() -> None:
    spec = get_spec("open_clip:ViT-B-32@laion2b_s34b_b79k")
    assert (spec.backend, spec.source, spec.pretrained) == ("open_clip", "ViT-B-32", "laion2b_s34b_b79k")
    assert get_spec("hf-hub:org/repo").backend == "open_clip"
    assert get_spec("local-dir:/x").source == "local-dir:/x"
    hf = get_spec("hf_clip:org/repo")
    assert (hf.backend, hf.source, hf.model_card().license) == ("hf_clip", "org/repo", "unknown")


def test_embedded_backend_dispatch_attaches_the_declared_artifacts(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The embedded backend is built by its own loader; `load_model` then resolves the spec's declared
    files against the spec file's folder and keeps the identity (with the weights hash) the loader found."""
    import sys
    import types

    from models.backends.artifacts import ArtifactFiles, ModelArtifacts, ModelIdentity

    built = types.SimpleNamespace(preprocessing=None, artifacts=ModelArtifacts(ModelIdentity("emb", "1", "ab" * 32)))
    calls: list[tuple[ModelSpec, str]] = []
    fake = types.ModuleType("models.embedded.model")
    fake.load_embedded = lambda spec, device: calls.append((spec, device)) or built  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "models.embedded.model", fake)
    spec = ModelSpec(
        name="emb",
        backend="embedded",
        source="weights.safetensors",
        card=card("emb"),
        artifacts=ArtifactFiles(calibration="cal.json", text_cache="cache"),
        base_dir=tmp_path,
    )
    model = load_model(spec, device="cpu")
    assert calls == [(spec, "cpu")]
    assert model.artifacts.calibration == tmp_path / "cal.json"
    assert model.artifacts.text_cache == tmp_path / "cache"
    assert model.artifacts.fusion is None
    assert model.artifacts.fingerprint == "emb@1#" + "ab" * 6
