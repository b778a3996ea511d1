"""The lesion segmenter: the ImageNet EfficientNet-Lite0 trunk, frozen, with a U-Net style decoder.

The trunk is the same timm `tf_efficientnet_lite0` with the same ImageNet weights as the
embedded image tower (models/embedded/architecture.py), so no other pretrained part ships; only
the head (about 470 k parameters, shipped in fp16) is trained, on the ISIC 2017 expert masks
(models/fitting/segmentation_fit.py). Its weights carry the ISIC licence caveat
(models/segmentation/MODEL_CARD.md) and live apart from both classifiers.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F

from models.embedded.architecture import convert_lukemelas_state_dict, efficientnet_weights_path

INPUT_SIZE = 256  # square input, the ISIC copy's own size
TAPS = (1, 2, 4, 6)  # blocks after which the trunk is tapped: strides 4, 8, 16, 32
TAP_CHANNELS = (24, 40, 112, 320)
DECODER_WIDTHS = (32, 48, 64, 96)  # decoder channels at strides 4, 8, 16, 32
HEAD_WEIGHTS = Path(__file__).with_name("weights") / "lesion-seg-head.safetensors"


class Trunk(nn.Module):
    """Frozen multi-scale features of the ImageNet EfficientNet-Lite0 (mean = std = 0.5 input)."""

    def __init__(self) -> None:
        super().__init__()
        net = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        src = torch.load(efficientnet_weights_path(), map_location="cpu", weights_only=True)
        net.load_state_dict(convert_lukemelas_state_dict(src, net.state_dict()), strict=False)
        self.stem = nn.Sequential(net.conv_stem, net.bn1)
        self.blocks = net.blocks[: TAPS[-1] + 1]
        self.eval().requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        taps = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in TAPS:
                taps.append(x)
        return taps


def _conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


class UNetHead(nn.Module):
    """U-Net style decoder to stride 4, one logit map; upsampled to the input by the caller.

    Two 3x3 conv blocks on the stride-32 map plus a global-context term (the mean of that map), then
    at each finer tap: upsample, concatenate the tap's 1x1 projection, two 3x3 conv blocks. Widths
    grow with the stride (DECODER_WIDTHS), so the costly fine scales stay narrow.
    """

    def __init__(self, widths: tuple[int, int, int, int] = DECODER_WIDTHS) -> None:
        super().__init__()
        top = widths[3]
        self.top = nn.Sequential(
            _conv_bn_relu(TAP_CHANNELS[3], top, 1), _conv_bn_relu(top, top), _conv_bn_relu(top, top)
        )
        self.context = nn.Sequential(nn.Conv2d(TAP_CHANNELS[3], top, 1), nn.ReLU(inplace=True))
        self.skip = nn.ModuleList(_conv_bn_relu(c, w, 1) for c, w in zip(TAP_CHANNELS[:3], widths[:3], strict=True))
        self.fuse = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(widths[i + 1] + widths[i], widths[i]), _conv_bn_relu(widths[i], widths[i]))
            for i in range(3)
        )
        self.out = nn.Conv2d(widths[0], 1, 1)

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        t = [x.float() for x in taps]
        x = self.top(t[3]) + self.context(t[3].mean((2, 3), keepdim=True))
        for i in (2, 1, 0):
            x = F.interpolate(x, size=t[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.fuse[i](torch.cat([x, self.skip[i](t[i])], 1))
        return self.out(x)


class Segmenter(nn.Module):
    """Trunk + head: (B, 3, 256, 256) normalised photos -> (B, 1, 256, 256) lesion logits."""

    def __init__(self, head: UNetHead | None = None) -> None:
        super().__init__()
        self.trunk = Trunk()
        self.head = head or UNetHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.trunk(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_segmenter(path: Path = HEAD_WEIGHTS) -> Segmenter:
    head = UNetHead()
    head.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in load_file(str(path)).items()})
    return Segmenter(head).eval()
