"""Per-call hooks on the image tower: the tensors a CAM needs, and their gradients for K targets.

`LayerCapture` hooks one layer (`model.spatial_target()`); `StagesCapture` hooks several CNN
layers in one forward (a finer stage and the last one, for `FusedCAM`); `finer_stage` finds the
last layer before the hooked one whose map is twice as fine. All hooks act only in the thread
that opened them and are removed on exit, exceptions included.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch

from models.backends.base import ImageTextModel, SpatialTarget


class LayerCapture:
    """Per-call capture of the hooked layer's tensor, released by the context manager.

    The hook only acts in the thread that opened the capture: forwards run in the calling
    thread, so a concurrent request (or plain inference) passing through the same shared module
    is ignored. It swaps the captured tensor for a detached leaf that requires grad: the values
    are unchanged, the gradient w.r.t. it is exactly what Grad-CAM needs, and it works even when
    the backend froze its parameters. The handle is removed on exit, exceptions included.
    """

    def __init__(self, spatial: SpatialTarget) -> None:
        self.spatial = spatial
        self.activation: torch.Tensor | None = None
        self._thread = threading.get_ident()
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def _leaf(self, tensor: Any) -> torch.Tensor:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"hooked layer gave {type(tensor).__name__}, expected a tensor")
        self.activation = tensor.detach().requires_grad_(True)
        return self.activation

    def _output_hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
        if threading.get_ident() != self._thread:
            return None
        return self._leaf(output)

    def _input_hook(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        if threading.get_ident() != self._thread:
            return None
        if args:
            return (self._leaf(args[0]), *args[1:]), kwargs
        key = next((k for k, v in kwargs.items() if isinstance(v, torch.Tensor)), None)
        if key is None:
            raise TypeError("hooked block received no tensor input")
        return args, {**kwargs, key: self._leaf(kwargs[key])}

    def __enter__(self) -> LayerCapture:
        layer = self.spatial.layer
        if self.spatial.use_input:
            self._handle = layer.register_forward_pre_hook(self._input_hook, with_kwargs=True)
        else:
            self._handle = layer.register_forward_hook(self._output_hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


class StagesCapture:
    """Per-call capture of several CNN layers' outputs in one forward (same thread rule as
    `LayerCapture`).

    The first hooked layer to run is swapped for a detached leaf that requires grad (frozen
    parameters do not matter); the later ones are recorded as they are, so the graph from the
    leaf through them stays intact and one backward reaches all of them.
    """

    def __init__(self, layers: Sequence[torch.nn.Module]) -> None:
        self.layers = list(layers)
        self.outputs: dict[int, torch.Tensor] = {}
        self._leaf_taken = False
        self._thread = threading.get_ident()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, index: int) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            if threading.get_ident() != self._thread or not isinstance(output, torch.Tensor):
                return None
            if not self._leaf_taken:
                self._leaf_taken = True
                self.outputs[index] = output.detach().requires_grad_(True)
                return self.outputs[index]
            self.outputs[index] = output
            return None

        return hook

    def tensors(self) -> list[torch.Tensor]:
        """The captured tensors, in the order the layers were given."""
        missing = [i for i in range(len(self.layers)) if i not in self.outputs]
        if missing:
            raise RuntimeError(f"hooked layers {missing} did not run in the forward")
        return [self.outputs[i] for i in range(len(self.layers))]

    def __enter__(self) -> StagesCapture:
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


_FINER: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module | None] = weakref.WeakKeyDictionary()
_FINER_LOCK = threading.Lock()


def finer_stage(model: ImageTextModel, factor: int = 2) -> torch.nn.Module | None:
    """The last stage (a child of a Sequential or ModuleList) that runs before the hooked CNN layer
    and whose map is `factor` times finer, found once per model by a probe forward; None for ViTs
    or where there is none. Embedded EfficientNet-Lite0: `trunk.blocks[4]` (14x14x112)."""
    spatial = model.spatial_target()
    if spatial.kind != "cnn" or spatial.use_input:
        return None
    with _FINER_LOCK:
        if spatial.layer not in _FINER:
            _FINER[spatial.layer] = _probe_finer(model, spatial, factor)
        return _FINER[spatial.layer]


def _probe_finer(model: ImageTextModel, spatial: SpatialTarget, factor: int) -> torch.nn.Module | None:
    modules = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
    root = next((m for m in modules if _contains(m, spatial.layer)), None)
    if root is None:
        return None
    stages = [
        child
        for parent in root.modules()
        if isinstance(parent, torch.nn.Sequential | torch.nn.ModuleList)
        for child in parent.children()
    ]
    seen: list[tuple[torch.nn.Module, tuple[int, ...]]] = []
    thread = threading.get_ident()

    def record(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if threading.get_ident() == thread and isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append((module, tuple(output.shape[-2:])))

    handles = [m.register_forward_hook(record) for m in [*stages, spatial.layer]]
    try:
        size = model.preprocessing.image_size
        with torch.no_grad():
            model.encode_image(torch.zeros(1, 3, size, size, device=model.device))
    finally:
        for handle in handles:
            handle.remove()
    coarse = next((shape for m, shape in seen if m is spatial.layer), None)
    if coarse is None:
        return None
    before = seen[: next(i for i, (m, _) in enumerate(seen) if m is spatial.layer)]
    wanted = (coarse[0] * factor, coarse[1] * factor)
    return next((m for m, shape in reversed(before) if shape == wanted), None)


def _contains(root: torch.nn.Module, layer: torch.nn.Module) -> bool:
    return any(m is layer for m in root.modules())


def batched_grads(scores: torch.Tensor, *inputs: torch.Tensor) -> list[torch.Tensor]:
    """Gradients of each target column of `scores` (B, K) w.r.t. each input: (K, *input.shape) each.

    One backward for all K targets: the K one-hot output gradients are vmapped through a single
    backward pass (`is_grads_batched`). Should an op lack a batching rule, fall back to K
    backward passes over the retained graph (still one forward; only the head is re-run).
    """
    k = scores.shape[1]
    if k == 1:
        return [g.unsqueeze(0) for g in torch.autograd.grad(scores.sum(), inputs)]
    eye = torch.eye(k, dtype=scores.dtype, device=scores.device)
    grad_outputs = eye.unsqueeze(1).expand(k, scores.shape[0], k).contiguous()
    try:
        return list(
            torch.autograd.grad(scores, inputs, grad_outputs=grad_outputs, is_grads_batched=True, retain_graph=True)
        )
    except RuntimeError:
        per_target = [torch.autograd.grad(scores[:, i].sum(), inputs, retain_graph=i < k - 1) for i in range(k)]
        return [torch.stack([g[j] for g in per_target]) for j in range(len(inputs))]
