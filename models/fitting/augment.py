"""Training-time views of a photo: random zoomed crops, flips, turns, colour jitter and, on request,
a synthetic dermatoscope vignette (offline only: serving uses the model's own preprocessing)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2 as T


class DermatoscopeVignette(torch.nn.Module):
    """A dermatoscope's round field: dark outside a circle of random radius and centre, soft edge.

    Radii 0.40-0.62 of the side darken the corners the way ISIC's vignetted images are (the corner
    is 0.71 of the side from the centre), which is what `artefact_check` flags."""

    def forward(self, img: torch.Tensor) -> torch.Tensor:  # (C, H, W) floats in [0, 1]
        _, h, w = img.shape
        side = float(min(h, w))
        cy, cx = (torch.rand(2) - 0.5) * 0.2 * side + torch.tensor([h / 2, w / 2])
        radius = side * (0.40 + 0.22 * float(torch.rand(())))
        edge = side * (0.01 + 0.05 * float(torch.rand(())))
        yy = torch.arange(h, dtype=torch.float32)[:, None]
        xx = torch.arange(w, dtype=torch.float32)[None, :]
        dist = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        inside = torch.sigmoid((radius - dist) / edge)
        floor = 0.08 * float(torch.rand(()))
        return img * inside + floor * (1 - inside)


def train_augment(
    size: int = 224, ratio: tuple[float, float] = (0.8, 1.25), vignette: float = 0.0
) -> Callable[[Image.Image], torch.Tensor]:
    """Random zoomed crops (aspect `ratio` jitter), flips, right-angle turns, a little colour jitter
    and, on a share `vignette` of the views, a synthetic dermatoscope vignette."""
    return T.Compose(
        [
            T.ToImage(),
            T.RandomResizedCrop(size, scale=(0.35, 1.0), ratio=ratio, antialias=True),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.15, hue=0.02),
            T.ToDtype(torch.float32, scale=True),
            *([T.RandomApply([DermatoscopeVignette()], p=vignette)] if vignette else []),
            T.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )
