"""Test-time augmentation for the segmenter: the dihedral views of a square input (quarter turns,
each optionally mirrored), their logit maps turned back onto the input and averaged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

View = tuple[int, bool]  # (quarter turns counter-clockwise, mirrored left-right after turning)
DIHEDRAL: tuple[View, ...] = tuple((k, m) for k in range(4) for m in (False, True))


def to_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """(..., H, W) -> the view of it."""
    turns, mirrored = view
    x = torch.rot90(x, turns, (-2, -1))
    return x.flip(-1) if mirrored else x


def from_view(y: torch.Tensor, view: View) -> torch.Tensor:
    """Undo `to_view`: a map computed on the view, back in the input's orientation."""
    turns, mirrored = view
    if mirrored:
        y = y.flip(-1)
    return torch.rot90(y, -turns, (-2, -1))


def tta_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, views: Sequence[View]) -> torch.Tensor:
    """(B, C, S, S) square inputs -> the model's (B, 1, S, S) logits averaged over `views`, all
    views of the batch in one forward."""
    out = model(torch.cat([to_view(x, v) for v in views]))
    parts = out.split(len(x))
    return torch.stack([from_view(p, v) for p, v in zip(parts, views, strict=True)]).mean(0)
