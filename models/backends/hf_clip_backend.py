"""transformers `CLIPModel` backend (MONET and other Hugging Face CLIP checkpoints).

The checkpoint's own image processor config supplies `Preprocessing` (size, crop, mean, std,
resample); the processor itself never runs at inference.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.backends.artifacts import ModelArtifacts
from models.backends.base import BackendDefaults, ModelCard, ModelUnavailableError, Preprocessing, SpatialTarget
from models.backends.hub import (
    cached_hub_file,
    first_cached,
    hub_blocked,
    hub_offline,
    loading_errors,
    offline_guard,
    unavailable,
)

log = logging.getLogger(__name__)

TEXT_BATCH = 64
MAX_LOGIT_SCALE = 100.0
PROBE_TEXT = "melanoma"
MIN_VOCAB = 256  # any real BPE / WordPiece vocabulary has at least the byte alphabet
_TOKENIZER_HINT = (
    "Put the checkpoint's tokenizer files next to its weights (tokenizer.save_pretrained), or fill the "
    "Hugging Face cache with the whole repo on a connected machine"
)

_FOLDER_HINT = "Give a folder written by CLIPModel/tokenizer/image processor save_pretrained, or a hub id"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


# --- preprocessing from an image processor config ------------------------------------------


def _field(obj: Any, key: str) -> Any:
    """`key` of a transformers size spec: a dict (4.x), a SizeDict (5.x) or a bare int."""
    if obj is None:
        return None
    if isinstance(obj, int):
        return obj
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def preprocessing_from_processor(processor: Any, *, fallback_size: int) -> Preprocessing:
    """Build `Preprocessing` from a `CLIPImageProcessor` config (its mean/std, size, crop, resample)."""
    size = getattr(processor, "size", None)
    crop = getattr(processor, "crop_size", None)
    do_crop = bool(getattr(processor, "do_center_crop", True))
    shortest = _field(size, "shortest_edge")
    height, width = _field(size, "height"), _field(size, "width")
    crop_h = _field(crop, "height") if do_crop else None

    resize_mode = "shortest" if shortest or do_crop else "squash"
    image_size = int(crop_h or shortest or height or fallback_size)
    if height and width and height != width and not do_crop:
        raise ValueError(f"non-square input {height}x{width} is not supported")
    if shortest and crop_h and shortest != crop_h:
        log.warning(
            "image processor resizes to %s then crops %s; Preprocessing resizes straight to %s",
            shortest,
            crop_h,
            image_size,
        )

    resample = getattr(processor, "resample", 3)
    resample_code = int(getattr(resample, "value", resample)) if resample is not None else 3
    interpolation = _PIL_RESAMPLE.get(resample_code)
    if interpolation is None:
        log.warning("resample %s has no torchvision equivalent here; using bicubic", resample)
        interpolation = "bicubic"

    mean = tuple(float(v) for v in processor.image_mean)
    std = tuple(float(v) for v in processor.image_std)
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"expected 3-channel mean/std, got {mean} / {std}")
    return Preprocessing(
        image_size=image_size,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=interpolation,  # type: ignore[arg-type]
        resize_mode=resize_mode,  # type: ignore[arg-type]
    )


def check_tokenizer(tokenizer: Any, model: str) -> None:
    """Refuse a tokenizer that cannot be real (transformers may build a near-empty one offline)."""
    try:
        size = len(tokenizer)
        ids = tokenizer(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    except Exception as exc:  # any failure here means an unusable tokenizer
        raise unavailable(model, f"its tokenizer does not work ({exc})", hint=_TOKENIZER_HINT) from exc
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    unk = getattr(tokenizer, "unk_token_id", None)
    meaningful = [i for i in ids if i not in special and i != unk]
    if size < MIN_VOCAB or not meaningful:
        raise unavailable(
            model,
            f"its tokenizer is empty or broken (vocabulary {size}, {PROBE_TEXT!r} -> {ids}); "
            "the tokenizer files (vocab.json + merges.txt or tokenizer.json) are missing",
            hint=_TOKENIZER_HINT,
        )


# --- the backend ---------------------------------------------------------------------------


def _as_features(output: Any) -> torch.Tensor:
    """transformers 4.x returns a tensor from get_*_features, 5.x an output with `pooler_output`."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"unexpected feature output {type(output).__name__}")


class HFClipBackend(BackendDefaults):
    """A transformers `CLIPModel` + tokenizer behind the `ImageTextModel` protocol."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        card: ModelCard,
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.card = card
        self.preprocessing = preprocessing
        self.artifacts = ModelArtifacts.bare(card)
        text_cfg = getattr(getattr(model, "config", None), "text_config", None)
        self.context_length = int(getattr(text_cfg, "max_position_embeddings", 77))

    @classmethod
    def load(
        cls,
        path_or_id: str,
        *,
        card: ModelCard,
        device: str | torch.device = "cpu",
        preprocessing: Preprocessing | None = None,
    ) -> HFClipBackend:
        """Load a CLIPModel folder or hub id; raise `ModelUnavailableError` fast when it is not here."""
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        local = Path(path_or_id).expanduser()
        repo: str | None = None
        why: str | None = None
        if local.is_dir():
            source, offline = str(local), hub_offline()
            if not (local / HF_CONFIG).is_file():
                raise unavailable(path_or_id, f"folder {local} has no {HF_CONFIG}", hint=_FOLDER_HINT)
        elif _looks_like_path(path_or_id):
            raise unavailable(path_or_id, f"folder {local} does not exist", hint=_FOLDER_HINT)
        else:
            source = repo = path_or_id
            why = hub_blocked()
            offline = why is not None
            if offline and not (cached_hub_file(repo, HF_CONFIG) and first_cached(repo, HF_WEIGHTS)):
                raise unavailable(
                    path_or_id, "its config and weights are not in the local Hugging Face cache", why=why, repo=repo
                )

        errors = loading_errors()
        with offline_guard(offline):
            try:  # the tokenizer first: cheap, and offline it may come back empty instead of failing
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
                check_tokenizer(tokenizer, path_or_id)
                model, info = CLIPModel.from_pretrained(source, local_files_only=offline, output_loading_info=True)
            except ModelUnavailableError:
                raise
            except errors as exc:
                raise unavailable(
                    path_or_id, f"loading failed: {type(exc).__name__}: {exc}", why=why, repo=repo
                ) from exc
            missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
            if missing:
                raise unavailable(path_or_id, f"the checkpoint lacks {len(missing)} weights, e.g. {missing[:3]}")
            if preprocessing is None:
                try:
                    processor = CLIPImageProcessor.from_pretrained(source, local_files_only=offline)
                except errors as exc:
                    raise unavailable(
                        path_or_id,
                        f"no image processor config (preprocessor_config.json) to take mean/std from: {exc}",
                        why=why,
                        hint="Add the checkpoint's preprocessor_config.json or give its spec a full preprocessing "
                        "override",
                    ) from exc
                preprocessing = preprocessing_from_processor(
                    processor, fallback_size=int(model.config.vision_config.image_size)
                )
        return cls(model, tokenizer, card=card, preprocessing=preprocessing, device=device)

    @property
    def logit_scale(self) -> float:
        return min(float(self.model.logit_scale.exp().item()), MAX_LOGIT_SCALE)

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, D) float32 unit vectors."""
        if self.model.training:
            self.model.eval()
        pixels = pixels.to(self.device, dtype=self.model.dtype)
        if grad:
            with torch.enable_grad():
                return F.normalize(_as_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        with torch.inference_mode():
            emb = F.normalize(_as_features(self.model.get_image_features(pixel_values=pixels)).float(), dim=-1)
        return emb.clone()  # a normal tensor, usable later next to autograd

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> (N, D) float32 unit vectors, in chunks of 64, without gradient."""
        if self.model.training:
            self.model.eval()
        items = list(texts)
        chunks: list[torch.Tensor] = []
        with torch.inference_mode():
            for start in range(0, max(len(items), 1), TEXT_BATCH):
                batch = items[start : start + TEXT_BATCH] or [""]
                tokens = self.tokenizer(
                    batch, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
                ).to(self.device)
                feats = _as_features(
                    self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                )
                chunks.append(F.normalize(feats.float(), dim=-1))
        emb = torch.cat(chunks)
        return emb[: len(items)].clone()

    def spatial_target(self) -> SpatialTarget:
        """The input of the last vision encoder layer: CLS + patch tokens, (B, N, C)."""
        vision_cfg = self.model.config.vision_config
        side = int(vision_cfg.image_size) // int(vision_cfg.patch_size)
        return SpatialTarget(
            layer=self.model.vision_model.encoder.layers[-1],
            kind="vit",
            use_input=True,
            grid=(side, side),
            num_prefix_tokens=1,
        )


def _looks_like_path(value: str) -> bool:
    """A string meant as a local folder rather than an `org/name` hub id."""
    return value.startswith((".", "/", "~")) or value.count("/") > 1 or "\\" in value
