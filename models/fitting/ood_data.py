"""A non-skin photo set for judging the out-of-distribution gate, built offline from what packages ship.

Real photos: scikit-image's sample images (`skimage.data`: a cat, coffee, a rocket, coins, a
page of text, bricks, grass, ...), scikit-learn's two sample photos and matplotlib's sample
portrait, each whole and as a crop. Synthetic: screenshots (window chrome, text lines, buttons),
documents (printed pages, forms, receipts), textures (fabric weaves, plaid, knit, wood grain,
noise) and empty frames (flat colours, gradients, sensor noise, lens-cap black). Seeded, so the
set is the same on every run. None of it is used to fit anything: thresholds come from skin photos.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from models.photos import load_photo

log = logging.getLogger(__name__)

__all__ = ["non_skin_images", "package_photos", "synthetic_images"]

SKIMAGE_NAMES = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock", "coffee",
    "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo",
    "microaneurysms", "moon", "page", "retina", "rocket", "shepp_logan_phantom", "text",
)  # fmt: skip


def _to_rgb(a: np.ndarray) -> Image.Image:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype != np.uint8:
        a = np.clip(255 * (a - a.min()) / max(float(a.max() - a.min()), 1e-9), 0, 255).astype(np.uint8)
    im = Image.fromarray(a)
    if im.mode == "RGBA":
        bg = Image.new("RGB", im.size, "white")
        bg.paste(im, mask=im.getchannel("A"))
        return bg
    return im.convert("RGB")


def package_photos() -> list[tuple[str, Image.Image]]:
    """Sample photos that scikit-image, scikit-learn and matplotlib ship (whatever is installed)."""
    out: list[tuple[str, Image.Image]] = []
    try:
        import skimage.data as skd

        for name in SKIMAGE_NAMES:
            try:
                out.append((f"skimage:{name}", _to_rgb(getattr(skd, name)())))
            except Exception as exc:  # an optional extra (pooch) missing for some images
                log.debug("skimage.data.%s unavailable: %s", name, exc)
    except ImportError:
        log.warning("scikit-image not installed: its sample photos are left out")
    try:
        from sklearn.datasets import load_sample_images

        for name, a in zip(("china", "flower"), load_sample_images().images, strict=True):
            out.append((f"sklearn:{name}", _to_rgb(a)))
    except Exception as exc:
        log.debug("sklearn sample images unavailable: %s", exc)
    try:
        import matplotlib.cbook as cbook

        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            out.append(("matplotlib:grace_hopper", load_photo(fh)))
    except Exception as exc:
        log.debug("matplotlib sample photo unavailable: %s", exc)
    crops = []
    for name, im in out:  # a centre crop and a corner crop: what a phone pointed at the thing would frame
        w, h = im.size
        s = int(min(w, h) * 0.6)
        crops.append((f"{name}#centre", im.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2))))
        crops.append((f"{name}#corner", im.crop((0, 0, s, s)).transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    return out + crops


# ----------------------------------------------------------------------------- synthetic


def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, 3))  # type: ignore[return-value]


def _text_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int], ink) -> None:
    """Rows of word-like bars and real glyphs (PIL's default font): text as a camera sees it."""
    x0, y0, x1, y1 = box
    y = y0
    step = int(rng.integers(12, 22))
    while y + step < y1:
        x = x0
        if rng.random() < 0.5:
            words = " ".join("".join(chr(int(c)) for c in rng.integers(97, 123, rng.integers(2, 9))) for _ in range(12))
            draw.text((x, y), words[: max(1, (x1 - x0) // 6)], fill=ink)
        else:
            while x < x1 - 20:
                w = int(rng.integers(10, 60))
                draw.rectangle((x, y + 3, min(x + w, x1), y + step - 5), fill=ink)
                x += w + int(rng.integers(4, 10))
        y += step


def _screenshot(rng: np.random.Generator) -> Image.Image:
    w, h = int(rng.choice([640, 800, 1024])), int(rng.choice([480, 600, 768]))
    dark = rng.random() < 0.3
    bg = _colour(rng, 20, 50) if dark else _colour(rng, 225, 256)
    im = Image.new("RGB", (w, h), bg)
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, w, 32), fill=_colour(rng, 40, 200))  # title / tab bar
    for k in range(3):
        d.ellipse((10 + 22 * k, 9, 24 + 22 * k, 23), fill=_colour(rng))
    if rng.random() < 0.6:
        d.rectangle((0, 32, int(w * 0.22), h), fill=_colour(rng, 30, 90) if dark else _colour(rng, 200, 240))
        _text_lines(d, rng, (8, 44, int(w * 0.22) - 8, h - 8), _colour(rng, 0, 120))
    ink = (220, 220, 220) if dark else _colour(rng, 0, 90)
    _text_lines(d, rng, (int(w * 0.25), 50, w - 20, int(h * 0.7)), ink)
    for _ in range(int(rng.integers(1, 5))):  # buttons
        x, y = int(rng.integers(int(w * 0.25), w - 120)), int(rng.integers(int(h * 0.72), h - 40))
        d.rounded_rectangle((x, y, x + 100, y + 30), radius=6, fill=_colour(rng))
    if rng.random() < 0.4:  # an embedded chart
        x0, y0 = int(w * 0.3), int(h * 0.45)
        pts = [(x0 + 20 * i, y0 + int(rng.integers(0, 100))) for i in range(int(rng.integers(5, 15)))]
        d.line(pts, fill=_colour(rng), width=3)
    return im


def _document(rng: np.random.Generator) -> Image.Image:
    w, h = 850, 1100
    paper = _colour(rng, 215, 256)
    im = Image.new("RGB", (w, h), paper)
    d = ImageDraw.Draw(im)
    ink = _colour(rng, 0, 70)
    kind = rng.integers(0, 3)
    if kind == 0:  # a printed page
        d.rectangle((80, 60, 600, 100), fill=ink)
        _text_lines(d, rng, (80, 130, w - 80, h - 80), ink)
    elif kind == 1:  # a form: boxes and lines
        for y in range(120, h - 100, 70):
            d.text((80, y), "".join(chr(int(c)) for c in rng.integers(65, 91, 8)), fill=ink)
            d.rectangle((300, y - 5, w - 80, y + 30), outline=ink, width=2)
    else:  # a receipt
        im = Image.new("RGB", (380, 1000), paper)
        d = ImageDraw.Draw(im)
        _text_lines(d, rng, (20, 30, 360, 960), ink)
    if rng.random() < 0.5:  # photographed, not scanned: a tilt on a desk
        desk = Image.new("RGB", (int(im.width * 1.4), int(im.height * 1.3)), _colour(rng, 60, 180))
        desk.paste(im.rotate(float(rng.uniform(-12, 12)), expand=True, fillcolor=paper), (int(im.width * 0.15), 40))
        im = desk
    return im


def _texture(rng: np.random.Generator) -> Image.Image:
    n = 512
    y, x = np.mgrid[0:n, 0:n].astype(float)
    kind = int(rng.integers(0, 5))
    c1, c2 = np.array(_colour(rng)), np.array(_colour(rng))
    if kind == 0:  # plain weave
        f = float(rng.uniform(0.2, 0.6))
        t = (np.sin(x * f) * np.sin(y * f) > 0).astype(float) * 0.6 + 0.4 * (0.5 + 0.5 * np.sin((x + y) * f * 2))
    elif kind == 1:  # plaid / tartan
        f1, f2 = rng.uniform(0.02, 0.08, 2)
        t = 0.5 * (np.sin(x * f1) > 0.3) + 0.5 * (np.sin(y * f2) > 0.3)
    elif kind == 2:  # knit: staggered chevrons
        f = float(rng.uniform(0.1, 0.3))
        t = 0.5 + 0.5 * np.sin(f * y + 2.5 * np.abs(np.sin(f * x)))
    elif kind == 3:  # wood grain
        f = float(rng.uniform(0.02, 0.06))
        t = 0.5 + 0.5 * np.sin(f * x + 6 * np.sin(y * 0.01 + rng.uniform(0, 6)))
    else:  # coarse noise (carpet, gravel)
        t = rng.random((n // 8, n // 8))
        t = np.kron(t, np.ones((8, 8)))
    img = c1[None, None] * t[..., None] + c2[None, None] * (1 - t[..., None])
    img += rng.normal(0, 6, img.shape)
    im = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.2))))


def _empty_frame(rng: np.random.Generator) -> Image.Image:
    n = 480
    kind = int(rng.integers(0, 4))
    if kind == 0:
        a = np.zeros((n, n, 3)) + np.array(_colour(rng))
    elif kind == 1:  # gradient (a wall, the sky)
        t = np.linspace(0, 1, n)[:, None, None]
        a = np.array(_colour(rng)) * t + np.array(_colour(rng)) * (1 - t) + np.zeros((n, n, 3))
    elif kind == 2:  # lens cap: near black with sensor noise
        a = rng.normal(8, 4, (n, n, 3))
    else:  # overexposed
        a = rng.normal(250, 3, (n, n, 3))
    a += rng.normal(0, 2, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


SYNTHETIC: dict[str, Callable[[np.random.Generator], Image.Image]] = {
    "screenshot": _screenshot,
    "document": _document,
    "texture": _texture,
    "empty": _empty_frame,
}


def synthetic_images(per_kind: int = 30, seed: int = 0, progress: bool = False) -> list[tuple[str, Image.Image]]:
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    jobs = [(kind, make, i) for kind, make in SYNTHETIC.items() for i in range(per_kind)]
    bar = tqdm(jobs, desc="OOD: generating the non-skin set", unit="img", disable=not progress)
    return [(f"synthetic:{kind}:{i}", make(rng)) for kind, make, i in bar]


def non_skin_images(per_kind: int = 30, seed: int = 0) -> list[tuple[str, Image.Image]]:
    """Package sample photos (whole and cropped) plus `per_kind` synthetic images of each kind."""
    return package_photos() + synthetic_images(per_kind, seed, progress=True)
