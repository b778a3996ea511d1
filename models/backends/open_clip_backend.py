# size: one backend class plus the tower-specific spatial targets it needs (ViT, timm, ModifiedResNet); splitting
#   would scatter one family
"""open_clip backend: built-in architectures + pretrained tags or weight files, `hf-hub:` repos
(DermLIP, BiomedCLIP) and `local-dir:` folders, behind the `ImageTextModel` protocol.

Loading goes through `open_clip.create_model_and_transforms` / `get_tokenizer`. Before that, a
preflight looks in the local Hugging Face cache (never the network when offline): open_clip
itself only warns and returns a randomly initialised model when hub weights cannot be fetched.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from models.backends.artifacts import ModelArtifacts
from models.backends.base import (
    INTERPOLATIONS,
    BackendDefaults,
    ModelCard,
    ModelUnavailableError,
    Preprocessing,
    SpatialTarget,
)
from models.backends.hub import (
    HubAccess,
    cached_hub_file,
    first_cached,
    hub_offline,
    loading_errors,
    offline_guard,
    unavailable,
)

log = logging.getLogger(__name__)

TEXT_BATCH = 64
MAX_LOGIT_SCALE = 100.0
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
OC_CONFIG = "open_clip_config.json"
OC_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_CHECKPOINT_GLOBS = ("*.safetensors", "*.bin", "*.pth", "*.pt")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


def preprocessing_from_open_clip(model: torch.nn.Module) -> Preprocessing:
    """The checkpoint's preprocessing from `model.visual.preprocess_cfg` (size, mean, std, ...)."""
    from open_clip import get_model_preprocess_cfg

    cfg = dict(get_model_preprocess_cfg(model))
    size = cfg.get("size", 224)
    if isinstance(size, list | tuple):
        if len(set(size)) != 1:
            raise ValueError(f"non-square input size {tuple(size)} is not supported")
        size = size[0]
    interpolation = str(cfg.get("interpolation", "bicubic"))
    if interpolation not in INTERPOLATIONS:
        log.warning("interpolation %r is not supported at inference; using bicubic", interpolation)
        interpolation = "bicubic"
    resize_mode = str(cfg.get("resize_mode", "shortest"))
    if resize_mode not in ("shortest", "squash"):
        log.warning("resize_mode %r is not supported; using 'shortest' (resize + centre crop)", resize_mode)
        resize_mode = "shortest"
    mean = tuple(float(v) for v in cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(float(v) for v in cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    return Preprocessing(
        image_size=int(size),
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        interpolation=interpolation,  # type: ignore[arg-type]
        resize_mode=resize_mode,  # type: ignore[arg-type]
    )


# --- preflight: are the weights here? ------------------------------------------------------


def _hub_dependencies(config_path: str | Path | None, *, tokenizer: bool) -> list[tuple[str, tuple[str, ...]]]:
    """Other hub repos an open_clip config needs: an HF text tower's config and (hub) tokenizer files."""
    if not config_path:
        return []
    try:
        cfg = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    text_cfg = cfg.get("model_cfg", cfg).get("text_cfg", {})
    deps: list[tuple[str, tuple[str, ...]]] = []
    if text_cfg.get("hf_model_name"):
        deps.append((text_cfg["hf_model_name"], ("config.json",)))
    if tokenizer and text_cfg.get("hf_tokenizer_name"):
        deps.append((text_cfg["hf_tokenizer_name"], _TOKENIZER_FILES))
    return deps


def _check_dependencies(deps: list[tuple[str, tuple[str, ...]]], label: str, hub: HubAccess) -> None:
    """Refuse when a needed companion repo is neither cached nor downloadable."""
    missing = [repo for repo, names in deps if not first_cached(repo, names)]
    if missing and hub.offline:
        raise unavailable(
            label,
            f"it also needs {', '.join(missing)} (text tower config / tokenizer), not in the local cache",
            why=hub.why,
            repo=missing[0],
        )


def _preflight_hub(repo_id: str, label: str, hub: HubAccess) -> None:
    """Make sure config + weights of an `hf-hub:` repo are cached, downloading them when the hub is up."""
    config = cached_hub_file(repo_id, OC_CONFIG)
    weights = first_cached(repo_id, OC_WEIGHTS)
    if not (config and weights):
        if hub.offline:
            missing = [n for n, p in ((OC_CONFIG, config), (" or ".join(OC_WEIGHTS), weights)) if not p]
            raise unavailable(
                label, f"{' and '.join(missing)} not in the local Hugging Face cache", why=hub.why, repo=repo_id
            )
        config, weights = _download_hub(repo_id, label)
    _check_dependencies(_hub_dependencies(config, tokenizer=True), label, hub)


def _download_hub(repo_id: str, label: str) -> tuple[str, str]:
    """Fetch config and weights now, so a failure is an error rather than a random-initialised model."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    errors = loading_errors()
    try:
        config = hf_hub_download(repo_id, OC_CONFIG)
        for name in OC_WEIGHTS:
            try:
                return config, hf_hub_download(repo_id, name)
            except EntryNotFoundError:
                continue
    except errors as exc:
        raise unavailable(label, f"fetching it failed: {type(exc).__name__}: {exc}", repo=repo_id) from exc
    raise unavailable(label, f"the repo has no open_clip weights ({' or '.join(OC_WEIGHTS)})", repo=repo_id)


def _preflight_tag(arch: str, tag: str, label: str, hub: HubAccess) -> dict[str, Any]:
    """Check a pretrained tag's weights are cached or downloadable; return the tag's config."""
    from open_clip import get_pretrained_cfg, list_pretrained_tags_by_model

    cfg = get_pretrained_cfg(arch, tag)
    if not cfg:
        tags = list_pretrained_tags_by_model(arch)
        raise unavailable(
            label,
            f"{tag!r} is neither a pretrained tag of {arch} (known: {', '.join(tags) or 'none'}) nor an existing file",
            hint="Pass a known tag or the path of a weights file",
        )
    hub_path = cfg.get("hf_hub", "")
    if hub_path:
        repo_id, filename = os.path.split(hub_path)  # open_clip's convention: "org/repo/" or "org/repo/file"
        names = [filename] if filename else list(OC_WEIGHTS)
        if filename.endswith((".bin", ".pth")):
            names.insert(0, filename[:-4] + ".safetensors")
        if first_cached(repo_id, names) or not hub.offline:
            return cfg
        raise unavailable(
            label,
            f"weights {repo_id} ({' or '.join(names)}) are not in the local Hugging Face cache",
            why=hub.why,
            repo=repo_id,
        )
    url = cfg.get("url", "")
    target = Path("~/.cache/clip").expanduser() / os.path.basename(url)
    if (url and target.is_file()) or not hub_offline():
        return cfg
    raise unavailable(
        label,
        f"weights {url or tag} are not downloaded ({target})",
        hint=f"Download {url} into ~/.cache/clip on a connected machine, or pass a local weights file",
    )


def _find_checkpoint(folder: Path) -> Path | None:
    for pattern in _CHECKPOINT_GLOBS:
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    return None


def _preflight_local_dir(folder: str, label: str) -> Path:
    """The folder, once it is known to hold an open_clip config and a weights file."""
    path = Path(folder).expanduser()
    hint = "Give a folder holding open_clip_config.json and the weights (open_clip_model.safetensors)"
    if not path.is_dir():
        raise unavailable(label, f"folder {path} does not exist", hint=hint)
    if not (path / OC_CONFIG).is_file():
        raise unavailable(label, f"folder {path} has no {OC_CONFIG}", hint=hint)
    if _find_checkpoint(path) is None:  # open_clip would only warn and initialise randomly
        raise unavailable(label, f"folder {path} holds no weights file ({', '.join(_CHECKPOINT_GLOBS)})", hint=hint)
    return path


# --- spatial targets -----------------------------------------------------------------------


def _timm_target(trunk: torch.nn.Module) -> SpatialTarget:
    """Last feature stage of a timm trunk: input of the last block for a ViT, else a CNN stage."""
    if hasattr(trunk, "patch_embed") and hasattr(trunk, "blocks") and hasattr(trunk, "num_prefix_tokens"):
        grid = tuple(int(g) for g in trunk.patch_embed.grid_size)
        return SpatialTarget(
            layer=trunk.blocks[-1],
            kind="vit",
            use_input=True,
            grid=grid,  # type: ignore[arg-type]
            num_prefix_tokens=int(trunk.num_prefix_tokens),
        )
    if hasattr(trunk, "conv_head") and hasattr(trunk, "bn2"):  # EfficientNet / MobileNet family
        return SpatialTarget(layer=trunk.bn2, kind="cnn")
    for name in ("stages", "blocks", "layer4", "features"):
        stage = getattr(trunk, name, None)
        if isinstance(stage, torch.nn.Sequential | torch.nn.ModuleList) and len(stage):
            return SpatialTarget(layer=stage[-1], kind="cnn")
        if isinstance(stage, torch.nn.Module) and name == "layer4":
            return SpatialTarget(layer=stage, kind="cnn")
    raise NotImplementedError(f"no spatial target known for timm trunk {type(trunk).__name__}")


def open_clip_spatial_target(model: torch.nn.Module) -> SpatialTarget:
    """Where to hook an open_clip image tower (open_clip ViT, ModifiedResNet or a timm trunk)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.timm_model import TimmModel
    from open_clip.transformer import VisionTransformer

    visual = model.visual
    if isinstance(visual, VisionTransformer):
        grid = tuple(int(g) for g in visual.grid_size)
        return SpatialTarget(
            layer=visual.transformer.resblocks[-1],
            kind="vit",
            use_input=True,
            grid=grid,  # type: ignore[arg-type]
            num_prefix_tokens=1,
            seq_first=not getattr(visual.transformer, "batch_first", True),
        )
    if isinstance(visual, ModifiedResNet):
        return SpatialTarget(layer=visual.layer4, kind="cnn")
    if isinstance(visual, TimmModel):
        return _timm_target(visual.trunk)
    raise NotImplementedError(f"no spatial target known for image tower {type(visual).__name__}")


# --- the backend ---------------------------------------------------------------------------


class OpenClipBackend(BackendDefaults):
    """An open_clip model + tokenizer behind the `ImageTextModel` protocol."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Callable[..., torch.Tensor],
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

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        tokenizer: Callable[..., torch.Tensor],
        *,
        card: ModelCard,
        preprocessing: Preprocessing,
        device: str | torch.device = "cpu",
    ) -> OpenClipBackend:
        """Wrap an already-built open_clip model (e.g. the embedded model)."""
        return cls(model, tokenizer, card=card, preprocessing=preprocessing, device=device)

    @classmethod
    def load(
        cls,
        model_name: str,
        pretrained: str | None = None,
        *,
        card: ModelCard,
        device: str | torch.device = "cpu",
        preprocessing: Preprocessing | None = None,
    ) -> OpenClipBackend:
        """Load `ARCH` (+ tag or weights file), `hf-hub:org/repo` or `local-dir:/path`.

        Raises `ModelUnavailableError` quickly when the weights are neither on disk nor (when
        online) reachable; with HF_HUB_OFFLINE set the network is never tried.
        """
        import open_clip

        hub = HubAccess()
        label = model_name if not pretrained else f"{model_name}@{pretrained}"
        kwargs: dict[str, Any] = {}
        repo: str | None = None
        if model_name.startswith(HF_HUB_PREFIX):
            repo = model_name[len(HF_HUB_PREFIX) :]
            _preflight_hub(repo, label, hub)
            offline, pretrained = hub.offline, None
        elif model_name.startswith(LOCAL_DIR_PREFIX):
            folder = _preflight_local_dir(model_name[len(LOCAL_DIR_PREFIX) :], label)
            deps = _hub_dependencies(folder / OC_CONFIG, tokenizer=False)  # its tokenizer is in the folder
            _check_dependencies(deps, label, hub)
            offline, pretrained = (hub.offline if deps else hub_offline()), None
        else:
            arch = model_name.replace("/", "-")
            if arch not in open_clip.list_models():
                raise unavailable(
                    label,
                    f"open_clip has no architecture {arch!r}",
                    hint="Use a name from open_clip.list_models(), or `hf-hub:` / `local-dir:`",
                )
            if pretrained is None:
                raise unavailable(
                    label,
                    "no pretrained tag or weights file given (that would be random weights)",
                    hint="Pass a pretrained tag or the path of a weights file",
                )
            if Path(pretrained).expanduser().is_file():
                pretrained = str(Path(pretrained).expanduser())
                offline = hub_offline()
            elif _looks_like_file(pretrained):
                raise unavailable(
                    label,
                    f"weights file {pretrained} does not exist",
                    hint="Check the path, or copy the weights file here from a connected machine",
                )
            else:
                tag_cfg = _preflight_tag(arch, pretrained, label, hub)
                offline = hub.offline
                if tag_cfg.get("quick_gelu") and not open_clip.get_model_config(arch).get("quick_gelu"):
                    kwargs["force_quick_gelu"] = True  # weights trained with QuickGELU (OpenAI)

        errors = loading_errors()
        with offline_guard(offline):
            try:
                model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained, device=device, **kwargs)
                tokenizer = open_clip.get_tokenizer(model_name)
            except ModelUnavailableError:
                raise
            except errors as exc:
                why = hub.why if offline else None
                raise unavailable(label, f"loading failed: {type(exc).__name__}: {exc}", why=why, repo=repo) from exc
        if preprocessing is None:
            preprocessing = preprocessing_from_open_clip(model)
        return cls(model, tokenizer, card=card, preprocessing=preprocessing, device=device)

    @property
    def logit_scale(self) -> float:
        return min(float(self.model.logit_scale.exp().item()), MAX_LOGIT_SCALE)

    def _dtype(self) -> torch.dtype:
        return next(self.model.visual.parameters()).dtype

    def encode_image(self, pixels: torch.Tensor, *, grad: bool = False) -> torch.Tensor:
        """(B, 3, H, W) preprocessed pixels -> (B, D) float32 unit vectors."""
        if self.model.training:
            self.model.eval()
        pixels = pixels.to(self.device, dtype=self._dtype())
        if grad:
            with torch.enable_grad():
                return F.normalize(self.model.encode_image(pixels).float(), dim=-1)
        with torch.inference_mode():
            emb = F.normalize(self.model.encode_image(pixels).float(), dim=-1)
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
                tokens = self._trim_padding(self.tokenizer(batch)).to(self.device)
                chunks.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        emb = torch.cat(chunks)
        return emb[: len(items)].clone()

    def _trim_padding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Drop trailing all-padding columns for Hugging Face text towers.

        They mask padding out of attention and pooling, so the result is unchanged while short
        prompts cost a fraction of the full context length (prompt ensembles are thousands of them).
        """
        pad_id = getattr(getattr(getattr(self.model, "text", None), "config", None), "pad_token_id", None)
        if pad_id is None:
            return tokens
        used = (tokens != pad_id).any(0).nonzero()
        return tokens[:, : int(used.max()) + 1] if used.numel() else tokens[:, :1]

    def spatial_target(self) -> SpatialTarget:
        return open_clip_spatial_target(self.model)


def _looks_like_file(value: str) -> bool:
    """A `pretrained` value meant as a path rather than a tag."""
    return any(sep in value for sep in ("/", "\\")) or value.endswith(
        (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
    )
