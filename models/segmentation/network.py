"""The lesion segmenter: the ImageNet EfficientNet-Lite0 trunk, frozen, with a light FPN head.

The trunk is the same timm `tf_efficientnet_lite0` with the same ImageNet weights as the
embedded image tower (models/embedded/architecture.py), so no other pretrained part ships; only
the head (about 60 k parameters) is trained, on the ISIC 2017 expert masks
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


class FPNHead(nn.Module):
    """Top-down feature pyramid to stride 4, one logit map; upsampled to the input by the caller."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in TAP_CHANNELS)
        self.smooth = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, taps: list[torch.Tensor]) -> torch.Tensor:
        x = self.lateral[-1](taps[-1].float())
        for lat, feat in zip(reversed(self.lateral[:-1]), reversed(taps[:-1]), strict=True):
            x = F.interpolate(x, size=feat.shape[-2:], mode="bilinear", align_corners=False) + lat(feat.float())
        return self.smooth(x)


class Segmenter(nn.Module):
    """Trunk + head: (B, 3, 256, 256) normalised photos -> (B, 1, 256, 256) lesion logits."""

    def __init__(self, head: FPNHead | None = None) -> None:
        super().__init__()
        self.trunk = Trunk()
        self.head = head or FPNHead()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.trunk(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def load_segmenter(path: Path = HEAD_WEIGHTS) -> Segmenter:
    head = FPNHead()
    head.load_state_dict(load_file(str(path)))
    return Segmenter(head).eval()
