"""What the untouched ImageNet network says a photo shows: a "domain" signal for the OOD gate.

The embedded image tower keeps the ImageNet EfficientNet-Lite0 weights frozen below its last
`train_unfrozen_blocks` blocks. Those frozen features still know cats, rockets, web pages and
uniforms, which the fine-tuned top (trained on skin photos only) no longer separates. So the
original ImageNet top (the same last blocks, head conv and 1000-class classifier, from the same
wheel) is run on the frozen features the served forward already computed: a few percent of the
tower's cost, no second pass through the trunk.

The OOD gate reads the ImageNet probability mass on the classes skin photos typically get (on the
development photos most get "tick", some "band aid", "nipple", ...: ImageNet has no "skin lesion"
class); a photo that puts almost none there shows something else. Which classes and the threshold
are fitted on skin photos only (models/fitting/ood_fit.py).
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from models.embedded.architecture import convert_lukemelas_state_dict, efficientnet_weights_path


def _flat_blocks(trunk: torch.nn.Module) -> list[torch.nn.Module]:
    return [block for stage in trunk.blocks for block in stage]


class ImageNetTop(torch.nn.Module):
    """The original ImageNet top of EfficientNet-Lite0 above the frozen blocks: features -> (B, 1000) logits."""

    def __init__(self, top_blocks: int) -> None:
        super().__init__()
        import timm

        net = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=1000)
        src = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(convert_lukemelas_state_dict(src, net.state_dict()))
        self.blocks = torch.nn.Sequential(*_flat_blocks(net)[-top_blocks:])
        self.conv_head, self.bn2, self.net = net.conv_head, net.bn2, net
        self.eval().requires_grad_(False)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = self.bn2(self.conv_head(self.blocks(feats)))
        return self.net.forward_head(x)


class FrozenFeatureTap:
    """Captures, for the calling thread only, the input of the first fine-tuned block during one forward."""

    def __init__(self, block: torch.nn.Module) -> None:
        self.block = block
        self.features: torch.Tensor | None = None
        self._thread = threading.get_ident()
        self._handle: Any = None

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if threading.get_ident() == self._thread and self.features is None:
            self.features = args[0].detach()

    def __enter__(self) -> FrozenFeatureTap:
        self._handle = self.block.register_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None


def first_tuned_block(trunk: torch.nn.Module, top_blocks: int) -> torch.nn.Module:
    return _flat_blocks(trunk)[-top_blocks]
