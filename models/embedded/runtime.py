"""The served image-tower forward on an optimised CPU runtime (ONNX Runtime or OpenVINO).

The served forward of the embedded model (4 flipped views, their mean embedding, and the frozen
ImageNet view the OOD rule reads, models/embedded/domain.py) is exported once with `torch.onnx`
into one graph and run by ONNX Runtime or OpenVINO; eager PyTorch spends most of its time between
the depthwise convolutions of EfficientNet-Lite0. The PyTorch model stays loaded: heatmaps need
autograd, training and CUDA use it.

The exported file is not shipped (about 28 MB, and its bytes depend on the torch version): it is
built at first start into a cache folder, one file per model name, beside a JSON that records the
identity it was made for; `ModelIdentity.accepts` decides whether it is reused, else it is rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from models.backends.artifacts import ModelIdentity
from models.embedded.domain import FrozenFeatureTap, first_tuned_block

if TYPE_CHECKING:
    from models.embedded.model import EmbeddedBackend

log = logging.getLogger(__name__)

RuntimeName = Literal["torch", "onnxruntime", "openvino"]
RuntimeSetting = Literal["torch", "onnxruntime", "openvino", "auto"]
AUTO_ORDER: tuple[RuntimeName, ...] = ("openvino", "onnxruntime")  # fastest at equal answers first (README)
EXPORT_FORMAT = 1  # bump when the exported graph changes meaning
OPSET = 17
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dermtriage" / "runtime"


def installed(name: str) -> bool:
    return name == "torch" or importlib.util.find_spec(_MODULES[name]) is not None


def choose_runtime(setting: str, device: str = "cpu") -> RuntimeName:
    """The runtime that will run: `torch` on CUDA; `auto` takes the first installed of AUTO_ORDER;
    a named runtime that is not installed falls back to torch with a warning."""
    if device != "cpu" or setting == "torch":
        return "torch"
    wanted = AUTO_ORDER if setting == "auto" else (setting,)
    for name in wanted:
        if installed(name):
            return name  # type: ignore[return-value]
    log.warning("image-tower runtime %s is not installed; running PyTorch", " or ".join(wanted))
    return "torch"


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


class CompiledTower:
    """An exported served forward on ONNX Runtime or OpenVINO: float32 pixels -> (embedding, domain)."""

    def __init__(self, name: RuntimeName, path: Path, threads: int, precision: str = "float32") -> None:
        self.name = name
        self.path = path
        self.precision = "bfloat16" if name == "openvino" and precision == "bfloat16" else "float32"
        self._lock = threading.Lock()  # one inference at a time per compiled model (the batcher is one thread)
        if name == "onnxruntime":
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
            opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        elif name == "openvino":
            import openvino as ov

            hint = "bf16" if self.precision == "bfloat16" else "f32"  # OpenVINO's CPU default is bf16 where fast
            config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": hint, "PERFORMANCE_HINT": "LATENCY"}
            self._request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        else:
            raise ValueError(f"no compiled runtime called {name!r}")

    def __call__(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.ascontiguousarray(pixels.detach().float().cpu().numpy())
        with self._lock:
            if self.name == "onnxruntime":
                emb, domain = self._session.run(None, {"pixels": x})
            else:
                out = self._request.infer({"pixels": x})
                emb, domain = (out[i] for i in range(2))
        return torch.from_numpy(np.array(emb, np.float32)), torch.from_numpy(np.array(domain, np.float32))


def compile_tower(
    backend: EmbeddedBackend,
    name: RuntimeName,
    cache_dir: Path | None = None,
    threads: int | None = None,
    precision: str = "float32",
) -> CompiledTower:
    """The model's served forward on `name` (exported now unless cached for these weights)."""
    path = ensure_export(backend, cache_dir)
    return CompiledTower(name, path, threads or torch.get_num_threads(), precision)


def attach_runtime(
    model: object,
    setting: str,
    cache_dir: Path | None = None,
    threads: int | None = None,
    precision: str = "float32",
) -> str:
    """Run `model`'s served forward on the chosen runtime (embedded models on CPU only); returns its name.
    A runtime that fails to export or load leaves the model on PyTorch, with a warning."""
    from models.embedded.model import EmbeddedBackend

    if not isinstance(model, EmbeddedBackend):
        return "torch"
    name = choose_runtime(setting, model.device.type)
    if name == "torch":
        model.compiled = None
        return name
    try:
        model.compiled = compile_tower(model, name, cache_dir, threads, precision)
    except Exception as exc:  # any export or runtime failure: serve with PyTorch instead
        log.warning("image-tower runtime %s failed (%s: %s); running PyTorch", name, type(exc).__name__, exc)
        model.compiled = None
        return "torch"
    return name
