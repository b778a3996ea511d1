"""Export the embedded model's served image-tower forward to ONNX, once, into a bounded cache.

The served forward (4 flipped views, their mean embedding, and the frozen ImageNet view the OOD
rule reads, models/embedded/domain.py) becomes one float32 graph with `torch.onnx` (dynamic batch).
The file is not shipped (about 28 MB, and its bytes depend on the torch version): it is built at
first start (or by `dermtriage export-runtime`) into a cache folder, one file per model name,
beside a JSON that records the identity it was made for; `ModelIdentity.accepts` decides whether
it is reused, else it is rebuilt. Runs at start-up, never per request (models/embedded/runtime.py
runs the result).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from models.backends.artifacts import ModelIdentity, default_cache_root
from models.embedded.domain import FrozenFeatureTap, first_tuned_block

if TYPE_CHECKING:
    from models.embedded.model import EmbeddedBackend

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when the exported graph changes meaning
OPSET = 17


def default_cache_dir() -> Path:
    return default_cache_root() / "runtime"


class ServedForward(torch.nn.Module):
    """The served forward as one traceable module: pixels -> (unit embedding, ImageNet probabilities)."""

    def __init__(self, backend: EmbeddedBackend) -> None:
        super().__init__()
        self.model = backend.model
        self.tta = backend.tta_flips
        self.top = backend.imagenet_top
        self.block = first_tuned_block(backend.model.visual.trunk, backend.tuned_blocks) if self.top else None

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = pixels.shape[0]
        views = pixels
        if self.tta:
            views = torch.cat([pixels, pixels.flip(-1), pixels.flip(-2), pixels.flip(-1).flip(-2)])
        if self.block is None or self.top is None:
            emb = F.normalize(self.model.encode_image(views).float(), dim=-1)
            domain = torch.zeros(b, 1)
        else:
            with FrozenFeatureTap(self.block) as tap:
                emb = F.normalize(self.model.encode_image(views).float(), dim=-1)
            assert tap.features is not None
            domain = torch.softmax(self.top(tap.features[:b].float()), dim=-1)
        if self.tta:
            emb = F.normalize(emb.reshape(4, b, -1).mean(0), dim=-1)
        return emb, domain


def export_meta(backend: EmbeddedBackend) -> dict[str, Any]:
    return {
        "made_for": backend.artifacts.identity.fingerprint,
        "format": EXPORT_FORMAT,
        "tta_flips": backend.tta_flips,
        "tuned_blocks": backend.tuned_blocks,
        "image_size": backend.preprocessing.image_size,
    }


def export_paths(backend: EmbeddedBackend, cache_dir: Path | None) -> tuple[Path, Path]:
    """One file per model name (a new weights hash replaces it: the cache stays bounded)."""
    folder = Path(cache_dir) if cache_dir else default_cache_dir()
    stem = backend.artifacts.identity.name.replace("/", "_")
    return folder / f"{stem}.onnx", folder / f"{stem}.json"


def cached_export(backend: EmbeddedBackend, cache_dir: Path | None) -> Path | None:
    """The cached export when it was made for these weights (the one identity check), else None."""
    onnx_path, meta_path = export_paths(backend, cache_dir)
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return None
    if not onnx_path.exists() or not isinstance(meta, dict):
        return None
    want = export_meta(backend)
    made_for = ModelIdentity.parse(str(meta.get("made_for", "")))
    same = all(meta.get(k) == want[k] for k in want if k != "made_for")
    return onnx_path if same and backend.artifacts.identity.accepts(made_for) else None


def export_onnx(backend: EmbeddedBackend, cache_dir: Path | None) -> Path:
    """Export the served forward (float32, dynamic batch) to ONNX; atomic, so a crash leaves no half file."""
    onnx_path, meta_path = export_paths(backend, cache_dir)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    size = backend.preprocessing.image_size
    module = ServedForward(backend).eval()
    tmp = onnx_path.with_suffix(f".{os.getpid()}.tmp")
    with torch.no_grad():
        torch.onnx.export(
            module,
            (torch.zeros(2, 3, size, size),),
            str(tmp),
            input_names=["pixels"],
            output_names=["embedding", "domain"],
            dynamic_axes={"pixels": {0: "batch"}, "embedding": {0: "batch"}, "domain": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    os.replace(tmp, onnx_path)
    meta_tmp = meta_path.with_suffix(f".{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps(export_meta(backend), indent=1))
    os.replace(meta_tmp, meta_path)
    log.info("exported the image tower of %s to %s", backend.artifacts.fingerprint, onnx_path)
    return onnx_path


def ensure_export(backend: EmbeddedBackend, cache_dir: Path | None = None) -> Path:
    """The cached export for these weights, built now when missing or made for other weights."""
    return cached_export(backend, cache_dir) or export_onnx(backend, cache_dir)
