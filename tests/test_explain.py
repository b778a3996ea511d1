"""Heatmaps: ground truth (pointing game on a CLIP-style model trained here), hooks, threads, ViT,
alignment to the photo, rendering, faithfulness metrics and the `faithfulness` command."""

from __future__ import annotations

import base64
import io
import json
import math
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from explain import DEFAULT_METHOD, METHODS, GradCAM, SimilarityTarget, explain_differentials, prepare_heatmaps
from explain.faithfulness import FaithfulnessConfig, auc, evaluate_faithfulness, perturbed_batch, ranks
from explain.render import colormap_lut, heat_on_canvas, legend_png
from models.backends.artifacts import ModelArtifacts
from models.backends.base import ModelCard, Preprocessing, SpatialTarget
from models.scoring.zeroshot import LabelSet

# --- a tiny CLIP-style model and its synthetic world -----------------------------------------

KINDS = {"red": (190, 35, 45), "dark brown": (75, 45, 30), "blue": (60, 85, 175)}
NAMES = list(KINDS)
TEMPLATES = ("a photo of a {} spot on skin", "a {} lesion", "skin with a {} mark", "close-up of a {} blob")
PHOTO_W, PHOTO_H, SIZE = 56, 44, 32  # non-square photos: the model sees the resized centre crop
CROP_LEFT = (PHOTO_W - PHOTO_H) // 2


def synthetic_photos(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, 3, H, W) photos in [0, 1] (skin-toned, shaded, noisy) with one blob each in the crop box.

    Returns photos, kind index (n,) and blob masks (n, H, W).
    """
    skin = torch.tensor([[224, 172, 140], [198, 134, 100], [141, 85, 56], [236, 200, 170]], dtype=torch.float32)
    tone = skin[torch.randint(len(skin), (n,), generator=gen)] + 12 * torch.randn(n, 3, generator=gen)
    ys, xs = torch.meshgrid(torch.arange(PHOTO_H), torch.arange(PHOTO_W), indexing="ij")
    slope = torch.randn(n, 2, 1, 1, generator=gen) * 0.25
    shade = 1 + slope[:, :1] * (xs / PHOTO_W - 0.5) + slope[:, 1:] * (ys / PHOTO_H - 0.5)
    img = tone[:, :, None, None] * shade[:, None, 0] + 6 * torch.randn(n, 3, PHOTO_H, PHOTO_W, generator=gen)
    kind = torch.randint(len(KINDS), (n,), generator=gen)
    radius = 5 + 3 * torch.rand(n, generator=gen)
    cx = CROP_LEFT + radius + torch.rand(n, generator=gen) * (PHOTO_H - 2 * radius)
    cy = radius + torch.rand(n, generator=gen) * (PHOTO_H - 2 * radius)
    dist = ((xs[None] - cx[:, None, None]) ** 2 + (ys[None] - cy[:, None, None]) ** 2).sqrt()
    mask = dist <= radius[:, None, None]
    colour = torch.tensor(list(KINDS.values()), dtype=torch.float32)[kind] + 10 * torch.randn(n, 3, generator=gen)
    img = torch.where(mask[:, None], colour[:, :, None, None], img)
    return (img / 255).clamp(0, 1), kind, mask


def to_pil(photo: torch.Tensor) -> Image.Image:
    return Image.fromarray((photo.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8), "RGB")


class TinyClip(nn.Module):
    """Image tower: 3 convs -> 16x16 spatial map -> average pool -> projection. Text tower: token
    embeddings (CLIP's own BPE tokens, renumbered compactly), mean pooled -> projection."""

    def __init__(self, vocab: int, dim: int = 32) -> None:
        super().__init__()
        self.visual = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, padding=1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
        )
        self.image_proj = nn.Linear(32, dim)
        self.token_embedding = nn.Embedding(vocab, dim, padding_idx=0)
        self.text_proj = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.visual(pixels).mean(dim=(2, 3))), dim=-1)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        keep = (tokens != 0).float().unsqueeze(-1)
        pooled = (self.token_embedding(tokens) * keep).sum(1) / keep.sum(1).clamp_min(1)
        return F.normalize(self.text_proj(pooled), dim=-1)


class TinyBackend:
    """The tiny model behind the `ImageTextModel` protocol."""

    def __init__(self) -> None:
        import open_clip

        self.tokenizer = open_clip.SimpleTokenizer(context_length=16)
        words = [t.format(k) for k in NAMES for t in TEMPLATES]
        known = torch.unique(self.tokenizer(words))
        self.vocab = torch.ones(49408, dtype=torch.long)  # 1: unknown token
        self.vocab[0] = 0  # padding
        self.vocab[known[known > 0]] = torch.arange(2, 2 + int((known > 0).sum()))
        self.net = TinyClip(vocab=2 + int((known > 0).sum())).eval()
        self.card = ModelCard(name="tiny-synthetic", version="0", family="test", source="test", license="none")
        self.preprocessing = Preprocessing(image_size=SIZE, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        self.device = torch.device("cpu")
        self.artifacts = ModelArtifacts.bare(self.card)
        self.steps = 0

    @property
    def logit_scale(self) -> float:
        return float(self.net.logit_scale.detach().exp())

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        if grad:
            with torch.enable_grad():
                return self.net.encode_image(pixels)
        with torch.no_grad():
            return self.net.encode_image(pixels)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.net.encode_text(self.tokenize(texts))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.vocab[self.tokenizer(list(texts))]

    def spatial_target(self) -> SpatialTarget:
        return SpatialTarget(layer=self.net.visual[-1], kind="cnn")

    def class_embeddings(self) -> torch.Tensor:
        """Zero-shot classifier: per kind, the normalised mean over the templates."""
        z = self.encode_text([t.format(k) for k in NAMES for t in TEMPLATES]).view(len(NAMES), len(TEMPLATES), -1)
        return F.normalize(z.mean(1), dim=-1)


def model_inputs(photos: torch.Tensor) -> torch.Tensor:
    """The preprocessing, in torch for whole batches: centre crop, resize, normalise."""
    crop = photos[:, :, :, CROP_LEFT : CROP_LEFT + PHOTO_H]
    x = F.interpolate(crop, size=(SIZE, SIZE), mode="bicubic", antialias=True, align_corners=False)
    return (x.clamp(0, 1) - 0.5) / 0.5


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy CPU those threads thrash
    (training here took 9x longer with 2 threads than with 1 next to other jobs)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> tuple[TinyBackend, torch.Tensor]:
    return train_tiny_clip()


def train_tiny_clip(max_steps: int = 400, lr: float = 3e-3) -> tuple[TinyBackend, torch.Tensor]:
    """Train CLIP-style (cross-entropy of image embeddings against caption embeddings) until the
    zero-shot accuracy on fresh photos reaches 0.95 (a few seconds); `backend.steps` says how long."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    backend = TinyBackend()
    net = backend.net
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    captions = backend.tokenize([t.format(k) for k in NAMES for t in TEMPLATES]).view(len(NAMES), len(TEMPLATES), -1)
    pool, pool_kind, _ = synthetic_photos(1024, gen)
    pool_x = model_inputs(pool)
    val_photos, val_kind, _ = synthetic_photos(200, torch.Generator().manual_seed(1))
    val_x = model_inputs(val_photos)
    for step in range(max_steps):
        backend.steps = step + 1
        batch = torch.randint(len(pool), (48,), generator=gen)
        pick = torch.randint(len(TEMPLATES), (len(NAMES),), generator=gen)
        net.train()
        text = net.encode_text(captions[torch.arange(len(NAMES)), pick])
        logits = net.logit_scale.exp() * net.encode_image(pool_x[batch]) @ text.T
        loss = F.cross_entropy(logits, pool_kind[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            net.eval()
            acc = (backend.encode_image(val_x) @ backend.class_embeddings().T).argmax(1).eq(val_kind).float().mean()
            if acc >= 0.95:
                break
    net.eval()
    return backend, backend.class_embeddings()


def test_pointing_game_on_a_clip_style_model_trained_here(trained: tuple[TinyBackend, torch.Tensor]) -> None:
    backend, classes = trained
    photos, kind, masks = synthetic_photos(100, torch.Generator().manual_seed(2))
    pil = [to_pil(p) for p in photos]
    pixels = backend.preprocessing.batch(pil)
    accuracy = (backend.encode_image(pixels) @ classes.T).argmax(1).eq(kind).float().mean().item()
    assert accuracy >= 0.9, f"zero-shot accuracy {accuracy:.2f} on fresh photos"
    hits = 0
    for photo, k, mask in zip(pil, kind.tolist(), masks, strict=True):
        [heatmap] = explain_differentials(backend, photo, classes[k : k + 1])
        x, y = heatmap.peak
        hits += bool(mask[int(y), int(x)])
    assert hits / len(pil) >= 0.9, f"peak inside the planted blob for {hits}/{len(pil)} photos"


def test_grad_cam_matches_captum(trained: tuple[TinyBackend, torch.Tensor]) -> None:
    """The hand-written, batched Grad-CAM equals captum's LayerGradCam, target by target."""
    from captum.attr import LayerGradCam

    backend, classes = trained
    photos, _, _ = synthetic_photos(2, torch.Generator().manual_seed(3))
    pixels = model_inputs(photos)
    cam = GradCAM(backend)
    acts, grads, _ = cam.activations_and_gradients(pixels, [SimilarityTarget(c) for c in classes])
    ours = cam.combine(acts, grads)  # (K, B, h, w), before ReLU
    for k, text in enumerate(classes):
        layer = backend.spatial_target().layer
        expected = LayerGradCam(lambda x, t=text: backend.encode_image(x, grad=True) @ t, layer).attribute(pixels)[:, 0]
        torch.testing.assert_close(ours[k], expected, atol=1e-6, rtol=1e-4)


def test_batched_targets_equal_one_at_a_time(trained: tuple[TinyBackend, torch.Tensor]) -> None:
    backend, classes = trained
    pixels = model_inputs(synthetic_photos(1, torch.Generator().manual_seed(4))[0])
    for method in METHODS.values():
        cam = method(backend)
        batched = cam(pixels, [SimilarityTarget(c) for c in classes])[0]
        for k, c in enumerate(classes):
            torch.testing.assert_close(batched[k], cam(pixels, [SimilarityTarget(c)])[0, 0], atol=1e-5, rtol=1e-4)


def test_a_pass_prepared_in_another_thread_gives_the_same_heatmaps(trained: tuple[TinyBackend, torch.Tensor]) -> None:
    """Issue 19: the forward run ahead (another thread, before the targets are known), then the
    backward: the same maps, scores and overlays as in one go; a pass is used once."""
    backend, classes = trained
    photo = to_pil(synthetic_photos(1, torch.Generator().manual_seed(6))[0][0])
    for method in METHODS:
        with ThreadPoolExecutor(1) as pool:
            cam_pass = pool.submit(prepare_heatmaps, backend, photo, method=method).result()
        ahead = explain_differentials(backend, photo, classes, method=method, want_grid=True, cam_pass=cam_pass)
        assert ahead == explain_differentials(backend, photo, classes, method=method, want_grid=True)
        with pytest.raises(RuntimeError, match="used once"):
            cam_pass.maps_and_scores([SimilarityTarget(classes[0])])
    other = prepare_heatmaps(backend, photo, method="gradcam")
    with pytest.raises(ValueError, match="prepared pass"):
        explain_differentials(backend, photo, classes, method="fusedcam", cam_pass=other)
    # every candidate's backward run ahead: the ranked rows picked, in their order; a row not among
    # the candidates gets a fresh pass
    direct = explain_differentials(backend, photo, classes, want_grid=True)
    for chosen in ([1, 0], [1], [2, 0]):
        ahead = explain_differentials(
            backend,
            photo,
            classes[chosen],
            want_grid=True,
            cam_pass=prepare_heatmaps(backend, photo, candidates=classes[:2]),
        )
        for got, k in zip(ahead, chosen, strict=True):
            np.testing.assert_allclose(got.grid, direct[k].grid, atol=2e-4)
            assert got.score == pytest.approx(direct[k].score, abs=2e-6)


def _hook_count(layer: nn.Module) -> int:
    return len(layer._forward_hooks) + len(layer._forward_pre_hooks)


def test_hooks_are_removed_after_a_call_and_after_an_exception(trained, tiny_clip) -> None:
    def broken_target(embeddings: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("target failed")

    for backend, size in ((trained[0], SIZE), (tiny_clip, 64)):
        layer = backend.spatial_target().layer
        before = _hook_count(layer)
        text = backend.encode_text(["a red spot"])
        explain_differentials(backend, Image.new("RGB", (size + 10, size), (200, 150, 120)), text)
        assert _hook_count(layer) == before
        with pytest.raises(RuntimeError, match="target failed"):
            GradCAM(backend)(torch.zeros(1, 3, size, size), [broken_target])
        assert _hook_count(layer) == before


def test_concurrent_requests_give_the_same_maps_as_sequential(trained: tuple[TinyBackend, torch.Tensor]) -> None:
    """Eight heatmap requests on one shared model, at once, beside plain inference traffic."""
    backend, classes = trained
    photos, kind, _ = synthetic_photos(8, torch.Generator().manual_seed(5))
    pil = [to_pil(p) for p in photos]

    def request(i: int) -> np.ndarray:
        order = torch.roll(torch.arange(len(NAMES)), -int(kind[i]))
        maps = explain_differentials(backend, pil[i], classes[order], want_grid=True)
        return np.array([m.grid for m in maps])

    sequential = [request(i) for i in range(len(pil))]
    stop = threading.Event()

    def traffic() -> None:
        x = model_inputs(photos)
        while not stop.is_set():
            backend.encode_image(x)

    noise = threading.Thread(target=traffic)
    noise.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            concurrent = list(pool.map(request, list(range(len(pil))) * 3))
    finally:
        stop.set()
        noise.join()
    for i, got in enumerate(concurrent):
        np.testing.assert_allclose(got, sequential[i % len(pil)], atol=1e-5)
    assert _hook_count(backend.spatial_target().layer) == 0


def test_vit_path_uses_the_patch_grid(tiny_clip) -> None:
    grid = tuple(int(g) for g in tiny_clip.model.visual.grid_size)
    photo = to_pil(synthetic_photos(1, torch.Generator().manual_seed(6))[0][0])
    text = tiny_clip.encode_text(["a red spot", "a blue spot", "a dark brown spot"])
    for method in METHODS:
        maps = explain_differentials(tiny_clip, photo, text, method=method, want_grid=True)
        assert len(maps) == 3
        for m in maps:
            values = np.array(m.grid)
            assert m.grid_shape == grid == values.shape
            assert values.min() >= 0 and values.max() <= 1 and values.std() > 1e-3


def _decode(b64: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    return img.convert("RGB")


@pytest.mark.parametrize(("size", "expected"), [((200, 120), (200, 120)), ((1600, 900), (640, 360))])
def test_overlay_is_aligned_to_the_photo(trained, size: tuple[int, int], expected: tuple[int, int]) -> None:
    backend, classes = trained
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(60, 200, (size[1], size[0], 3), dtype=np.uint8), "RGB")
    [heatmap] = explain_differentials(backend, photo, classes[:1], want_grid=True)
    overlay = np.asarray(_decode(heatmap.png_base64), dtype=np.int16)
    assert (heatmap.width, heatmap.height) == expected == (overlay.shape[1], overlay.shape[0])
    assert (heatmap.photo_width, heatmap.photo_height) == size
    box = heatmap.covers
    assert (box.left, box.top, box.right, box.bottom) == backend.preprocessing.geometry(*size)
    scale = expected[0] / size[0]
    base = np.asarray(photo.resize(expected, Image.Resampling.LANCZOS) if scale < 1 else photo, dtype=np.int16)
    left, right = round(box.left * scale), round(box.right * scale)
    margin = 3  # the dashed outline of the crop box
    assert np.array_equal(overlay[:, : left - margin], base[:, : left - margin]), "heat left of the crop box"
    assert np.array_equal(overlay[:, right + margin :], base[:, right + margin :]), "heat right of the crop box"
    assert np.abs(overlay[:, left + margin : right - margin] - base[:, left + margin : right - margin]).mean() > 5
    assert box.left <= heatmap.peak[0] <= box.right
    grid = np.array(heatmap.grid)
    assert grid.shape == heatmap.grid_shape and grid.min() >= 0 and grid.max() <= 1
    assert explain_differentials(backend, photo, classes[:1])[0].grid is None


def test_heat_is_placed_in_the_crop_box_and_legend_renders() -> None:
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[0, 3] = 1.0  # top-right cell of the crop
    heat, mask = heat_on_canvas(grid, (50.0, 0.0, 150.0, 100.0), (200, 100))
    assert heat.shape == mask.shape == (100, 200)
    assert not mask[:, :50].any() and not mask[:, 150:].any() and mask[:, 50:150].all()
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert 125 <= x < 150 and y < 25
    lut = colormap_lut("viridis")
    assert lut.shape == (256, 3) and lut[0].sum() < lut[-1].sum()
    with pytest.raises(ValueError, match="perceptually uniform"):
        colormap_lut("jet")
    img = Image.open(io.BytesIO(legend_png("inferno", "gradcam")))
    assert img.format == "PNG" and img.width > img.height


# --- faithfulness ------------------------------------------------------------------------------


def test_deletion_insertion_building_blocks() -> None:
    gen = torch.Generator().manual_seed(0)
    saliency = torch.zeros(4, 4)
    saliency[1, 2] = 1.0
    r = ranks(saliency, gen)
    assert r[1, 2] == 0 and sorted(r.flatten().tolist()) == list(range(16))
    pixels, base = torch.ones(1, 3, 4, 4), torch.zeros(1, 3, 4, 4)
    deletion, insertion = perturbed_batch(pixels, base, r, steps=4)
    assert deletion.shape == insertion.shape == (5, 3, 4, 4)
    assert torch.equal(deletion[0], pixels[0]) and torch.equal(deletion[-1], base[0])
    assert torch.equal(insertion[0], base[0]) and torch.equal(insertion[-1], pixels[0])
    assert deletion[1, 0, 1, 2] == 0 and deletion[1].sum() == 3 * 12
    assert auc([1, 1, 1]) == pytest.approx(1.0) and auc([0, 1]) == pytest.approx(0.5)


def test_heatmaps_beat_both_baselines_where_the_truth_is_known(trained: tuple[TinyBackend, torch.Tensor]) -> None:
    backend, classes = trained
    photos, kind, _ = synthetic_photos(12, torch.Generator().manual_seed(7))
    labels = LabelSet(tuple(NAMES), classes)
    items = [((lambda p=p: to_pil(p)), int(k)) for p, k in zip(photos, kind, strict=True)]
    report = evaluate_faithfulness(backend, items, labels, config=FaithfulnessConfig(target="label", steps=8))
    assert report.n == 12
    for ref in ("random", "center"):
        assert report.deletion_auc[DEFAULT_METHOD] < report.deletion_auc[ref]
        assert report.insertion_auc[DEFAULT_METHOD] > report.insertion_auc[ref]


def test_faithfulness_command_prints_one_json_object(pad_small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from service.cli import main

    assert main(["faithfulness", "--data", str(pad_small), "--limit", "2", "--steps", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"method", "n", "deletion_auc", "insertion_auc", "targets"}
    assert set(out["targets"]) == {
        "deletion better than random",
        "insertion better than random",
        "insertion better than center",
    }
    assert out["n"] == 2 and out["method"] == DEFAULT_METHOD
    for key in ("deletion_auc", "insertion_auc"):
        assert set(out[key]) == {DEFAULT_METHOD, "random", "center"}
        assert all(0 <= v <= 1 for v in out[key].values())


def test_embedded_model_heatmaps(pad_small: Path, embedded_model) -> None:
    """The real CNN path: the default fused map is 14x14 (`blocks[4]` with the last stage's 7x7
    map upsampled), Grad-CAM++ alone 7x7; one per differential."""
    photo = Image.open(sorted((pad_small / "images").glob("*.jpg"))[0]).convert("RGB")
    names = ["melanoma", "basal cell carcinoma", "melanocytic nevus", "seborrheic keratosis", "actinic keratosis"]
    maps = explain_differentials(embedded_model, photo, embedded_model.encode_text(names), want_grid=True)
    assert [m.index for m in maps] == list(range(5))
    assert all(m.grid_shape == (14, 14) and (m.width, m.height) == render_size(photo.size) for m in maps)
    assert any(np.array(m.grid).std() > 0.01 for m in maps)
    coarse = explain_differentials(embedded_model, photo, embedded_model.encode_text(names[:1]), method="gradcampp")
    assert coarse[0].grid_shape == (7, 7)


def render_size(size: tuple[int, int], cap: int = 640) -> tuple[int, int]:
    scale = min(1.0, cap / max(size))
    return (round(size[0] * scale), round(size[1] * scale))


def test_overlay_blends_the_colour_map_in_the_box_and_the_png_is_lossless() -> None:
    """The uint8 blend equals the float formula (to rounding) inside the crop box, leaves the
    photo untouched outside it, and the PNG decodes to exactly the overlay's pixels."""
    from explain.render import overlay, png_bytes

    rng = np.random.default_rng(3)
    base = Image.fromarray(rng.integers(0, 256, (90, 160, 3), dtype=np.uint8), "RGB")
    grid = rng.random((7, 7)).astype(np.float32)
    box = (30.0, 0.0, 120.0, 90.0)
    out, peak = overlay(base, grid, box, base.size, alpha=0.4)
    heat, mask = heat_on_canvas(grid, box, base.size)
    colours = colormap_lut("inferno")[(heat * 255).round().astype(np.uint8)].astype(np.float64)
    rgb = np.asarray(base, dtype=np.float64)
    expected = np.where(mask[..., None], 0.6 * rgb + 0.4 * colours, rgb)
    got = np.asarray(out, dtype=np.float64)
    inside = mask.copy()
    inside[:, 28:33] = inside[:, 117:122] = inside[:3] = inside[-3:] = False  # the dashed outline of the box
    assert np.abs(got - expected)[inside].max() <= 1
    assert np.array_equal(got[:, :28], rgb[:, :28]) and np.array_equal(got[:, 122:], rgb[:, 122:])
    y, x = np.unravel_index(heat.argmax(), heat.shape)
    assert peak == (x + 0.5, y + 0.5)
    decoded = Image.open(io.BytesIO(png_bytes(out)))
    assert decoded.format == "PNG" and np.array_equal(np.asarray(decoded.convert("RGB")), np.asarray(out))
