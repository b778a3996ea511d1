"""transformers `CLIPModel` backend (MONET and other Hugging Face CLIP checkpoints).

Also home of the small Hugging Face Hub helpers both hub-backed backends share: is the hub
offline right now, what is already in the local cache, and one explicit `ModelUnavailableError`
that says how to provide weights when they are missing.

The checkpoint's own image processor config supplies `Preprocessing` (size, crop, mean, std,
resample); the processor itself never runs at inference.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.backends.base import ModelCard, ModelUnavailableError, Preprocessing, SpatialTarget

log = logging.getLogger(__name__)

TEXT_BATCH = 64
MAX_LOGIT_SCALE = 100.0
PROBE_TEXT = "melanoma"
MIN_VOCAB = 256  # any real BPE / WordPiece vocabulary has at least the byte alphabet
HUB_PROBE_TIMEOUT_S = 3.0
_TOKENIZER_HINT = (
    "Put the checkpoint's tokenizer files next to its weights (tokenizer.save_pretrained), or fill the "
    "Hugging Face cache with the whole repo on a connected machine"
)

_FOLDER_HINT = "Give a folder written by CLIPModel/tokenizer/image processor save_pretrained, or a hub id"
HF_CONFIG = "config.json"
HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
_PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}


# --- Hugging Face Hub helpers (shared with the open_clip backend) --------------------------


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """Whether the hub must not be contacted: HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE, read now.

    huggingface_hub reads these once, at import; reading the environment here makes a setting
    made later (by settings code or a test) count as well.
    """
    from huggingface_hub import constants

    env = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


@contextlib.contextmanager
def offline_guard(offline: bool) -> Iterator[None]:
    """While loading, make huggingface_hub (and transformers, which asks it) refuse the network.

    Needed when HF_HUB_OFFLINE was set after huggingface_hub was imported: its constant, which
    every download consults, would otherwise still say "online".
    """
    if not offline:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def cached_hub_file(repo_id: str, filename: str, revision: str | None = None) -> str | None:
    """The path of `filename` from `repo_id` in the local HF cache, or None (never the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        path = try_to_load_from_cache(repo_id, filename, revision=revision)
    except ValueError:  # malformed repo id
        return None
    return path if isinstance(path, str) else None


def first_cached(repo_id: str, filenames: Iterable[str]) -> str | None:
    """The first of `filenames` that the local HF cache holds for `repo_id`."""
    for name in filenames:
        path = cached_hub_file(repo_id, name)
        if path:
            return path
    return None


def loading_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "these weights cannot be had", to be wrapped in ModelUnavailableError."""
    errors: list[type[BaseException]] = [OSError, RuntimeError, ValueError]
    with contextlib.suppress(ImportError):
        from huggingface_hub import errors as hub_errors

        errors += [
            hub_errors.HfHubHTTPError,
            hub_errors.LocalEntryNotFoundError,
            hub_errors.OfflineModeIsEnabled,
        ]
    with contextlib.suppress(ImportError):
        import httpx

        errors.append(httpx.HTTPError)
    with contextlib.suppress(ImportError):
        import requests

        errors.append(requests.RequestException)
    return tuple(errors)


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One quick request to the hub endpoint (proxies honoured, no retries): can downloads work?"""
    import httpx
    from huggingface_hub import constants

    try:
        httpx.head(constants.ENDPOINT, timeout=timeout)
    except (httpx.HTTPError, OSError):
        return False
    return True


def hub_blocked() -> str | None:
    """None when the hub may be used now; otherwise why not (offline setting, or unreachable).

    Probing first matters: huggingface_hub retries a dead network for about 25 s per file.
    """
    if hub_offline():
        return "HF_HUB_OFFLINE is set, so the hub was not contacted"
    if not hub_reachable():
        from huggingface_hub import constants

        return f"the Hugging Face Hub ({constants.ENDPOINT}) is unreachable"
    return None


class HubAccess:
    """Whether this load may use the hub, asked at most once and only when the hub is needed."""

    def __init__(self) -> None:
        self._asked = False
        self._why: str | None = None

    @property
    def why(self) -> str | None:
        """None when the hub can be used; otherwise the reason it cannot."""
        if not self._asked:
            self._why, self._asked = hub_blocked(), True
        return self._why

    @property
    def offline(self) -> bool:
        return self.why is not None


def unavailable(
    model: str, problem: str, *, why: str | None = None, repo: str | None = None, hint: str | None = None
) -> ModelUnavailableError:
    """A `ModelUnavailableError` naming the model, what is wrong, why, and how to provide the weights."""
    if hint is None:
        local = (
            "point the model spec at local weights instead (open_clip: ARCH + a weights file, or a "
            "`local-dir:/path` folder holding open_clip_config.json + weights; transformers: a "
            "save_pretrained folder)"
        )
        hint = (
            f"On a connected machine run `hf download {repo}` (or load the model once) to fill the Hugging "
            "Face cache (HF_HOME, default ~/.cache/huggingface) and copy that cache here, or " + local
            if repo
            else local[0].upper() + local[1:]
        )
    reason = f" ({why})" if why else ""
    return ModelUnavailableError(f"Model {model!r} is unavailable: {problem}{reason}. {hint}.")


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


class HFClipBackend:
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
