"""The one protocol every CLIP-style backend implements, and the data that travels with a model.

A backend hides a model family (open_clip, transformers CLIP, the embedded model) behind
`ImageTextModel`: its own preprocessing, L2-normalised image and text embeddings, the logit
scale, a spatial layer for the explain layer, and a model card.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from PIL import Image
from pydantic import BaseModel, Field
from torchvision.transforms import v2 as T

from models.backends.artifacts import ModelArtifacts

INTERPOLATIONS = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


class ModelUnavailableError(RuntimeError):
    """The weights of a model are neither on disk nor reachable: says which model and how to fix it."""


@dataclass(frozen=True)
class Preprocessing:
    """A checkpoint's own preprocessing: resize the shortest side, centre-crop, normalise.

    It travels with the model (timm's idea), so no caller can pair a model with the wrong
    mean/std. `geometry` tells the explain layer how a crop maps back onto the photo.
    `crop_pct` (timm's name) < 1 resizes the shortest side to `image_size / crop_pct` first, so
    the crop keeps the central `crop_pct` of it: a model trained on random zoomed crops sees
    objects at its training scale (Touvron et al. 2019, "FixRes").
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    resize_mode: Literal["shortest", "squash"] = "shortest"
    crop_pct: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_pct <= 1.0:
            raise ValueError(f"crop_pct must be in (0, 1], got {self.crop_pct}")

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        size = self.image_size
        interp = INTERPOLATIONS[self.interpolation]
        scaled = round(size / self.crop_pct)
        resize = (
            T.Resize(scaled, interpolation=interp, antialias=True)
            if self.resize_mode == "shortest"
            else T.Resize((scaled, scaled), interpolation=interp, antialias=True)
        )
        return T.Compose(
            [
                T.ToImage(),
                resize,
                T.CenterCrop(size),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform()(image.convert("RGB"))

    def batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        tf = self.transform()
        return torch.stack([tf(im.convert("RGB")) for im in images])

    def geometry(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The crop box (left, top, right, bottom) in photo pixels that the model input covers."""
        if self.resize_mode == "squash":
            w, h = width * self.crop_pct, height * self.crop_pct
        else:
            w = h = min(width, height) * self.crop_pct
        left = (width - w) / 2
        top = (height - h) / 2
        return (left, top, left + w, top + h)


@dataclass
class SpatialTarget:
    """Where the explain layer hooks the image tower and how it reads a spatial map from it.

    `kind="cnn"`: the hooked output is already (B, C, H, W).
    `kind="vit"`: the hooked tensor is a token sequence (B, N, C) (or (N, B, C) when
    `seq_first`); the first `num_prefix_tokens` (CLS, registers) are dropped and the rest is
    reshaped to `grid`. For ViTs hook the *input* of the last block (`use_input=True`): the last
    block's patch-token outputs get zero gradient since only CLS feeds the embedding.
    """

    layer: torch.nn.Module
    kind: Literal["cnn", "vit"]
    use_input: bool = False
    grid: tuple[int, int] | None = None
    num_prefix_tokens: int = 1
    seq_first: bool = False

    def to_map(self, activation: torch.Tensor) -> torch.Tensor:
        """Turn the hooked tensor into (B, C, H, W)."""
        if self.kind == "cnn":
            return activation
        tokens = activation.transpose(0, 1) if self.seq_first else activation
        tokens = tokens[:, self.num_prefix_tokens :, :]
        b, n, c = tokens.shape
        h, w = self.grid if self.grid else (int(n**0.5), int(n**0.5))
        if h * w != n:
            raise ValueError(f"cannot reshape {n} patch tokens to a {h}x{w} grid")
        return tokens.reshape(b, h, w, c).permute(0, 3, 1, 2)


class ValidationRecord(BaseModel):
    """One measured result on one dataset: what the card may claim, and nothing more."""

    dataset: str
    protocol: str
    n: int
    metrics: dict[str, float | None] = Field(default_factory=dict)
    per_class_recall: dict[str, float] = Field(default_factory=dict)
    per_fitzpatrick: dict[str, dict[str, float | int | None]] = Field(default_factory=dict)
    notes: str = ""


class ModelCard(BaseModel):
    """Machine-readable model card; every triage answer names `name` and `version`."""

    name: str
    version: str
    family: str
    source: str
    license: str
    description: str = ""
    modality: list[Literal["clinical", "dermoscopic"]] = Field(default_factory=lambda: ["clinical"])
    card_url: str | None = None
    validated_conditions: list[str] = Field(default_factory=list)
    validation: list[ValidationRecord] = Field(default_factory=list)
    underrepresented_fitzpatrick: list[int] = Field(default_factory=list)
    training_data: str | None = None
    training_image_ids: list[str] = Field(default_factory=list)
    limitations: list[str] = Field(default_factory=list)
    credits: list[str] = Field(default_factory=list)
    inference: dict[str, bool | int | float | str] = Field(
        default_factory=dict, description="settings the validated figures were measured with (e.g. test-time flips)"
    )


@runtime_checkable
class ImageTextModel(Protocol):
    """What every backend offers. Embeddings are L2-normalised, on CPU unless `device` says so."""

    card: ModelCard
    preprocessing: Preprocessing
    device: torch.device
    artifacts: ModelArtifacts  # identity (name, version, weights hash) and fitted files; set by `load_model`

    @property
    def logit_scale(self) -> float: ...

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, D) unit vectors. `grad=True` keeps autograd on."""
        ...

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> (N, D) unit vectors (no gradient)."""
        ...

    def spatial_target(self) -> SpatialTarget:
        """The layer the explain layer hooks, and how to read a spatial map from it."""
        ...

    def encode_image_with_domain(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Optional capability: the embeddings plus, from the same forward, the (B, 1000) ImageNet
        probabilities of a frozen ImageNet trunk (the OOD gate's domain rule); None where the
        backend has no such trunk (`BackendDefaults` gives that answer)."""
        ...


class BackendDefaults:
    """What a backend without the optional capabilities answers; backends inherit it."""

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def encode_image_with_domain(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode_image(pixels), None
