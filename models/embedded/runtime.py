"""The served image-tower forward on an optimised CPU runtime (ONNX Runtime or OpenVINO).

Eager PyTorch spends most of EfficientNet-Lite0's time between its depthwise convolutions; the
exported graph (models/embedded/export.py) runs the same forward, float32, on OpenVINO or ONNX
Runtime, chosen by `DERMTRIAGE_RUNTIME` (README, Performance: picked by photos/s at equal answers).
The PyTorch model stays loaded: heatmaps need autograd, training and CUDA use it.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from models.embedded.export import ensure_export

if TYPE_CHECKING:
    from models.embedded.model import EmbeddedBackend

log = logging.getLogger(__name__)

RuntimeName = Literal["torch", "onnxruntime", "openvino"]
RuntimeSetting = Literal["torch", "onnxruntime", "openvino", "auto"]
AUTO_ORDER: tuple[RuntimeName, ...] = ("openvino", "onnxruntime")  # fastest at equal answers first (README)
_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


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
        with self._lock:  # copied inside: OpenVINO's outputs are views of the request's reused buffers
            if self.name == "onnxruntime":
                outputs = self._session.run(None, {"pixels": x})
            else:
                result = self._request.infer({"pixels": x})
                outputs = [result[i] for i in range(2)]
            emb, domain = (torch.from_numpy(np.array(o, np.float32, copy=True)) for o in outputs)
        return emb, domain


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
        tower = compile_tower(model, name, cache_dir, threads, precision)
    except Exception as exc:  # any export or runtime failure: serve with PyTorch instead
        log.warning("image-tower runtime %s failed (%s: %s); running PyTorch", name, type(exc).__name__, exc)
        model.compiled = None
        return "torch"
    model.compiled = tower
    log.info("%s: image tower on %s (%s), heatmaps on PyTorch", model.artifacts.fingerprint, name, tower.precision)
    return name
