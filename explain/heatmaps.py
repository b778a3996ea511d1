"""The engine's entry point to heatmaps: one overlay per differential, aligned to the photo.

`prepare_heatmaps` runs the CAM's forward before the differentials are known (the service runs it
beside the served runtime's forward, issue 19); `explain_differentials` runs what is left (the
batched backward, unless run ahead for the candidates) and renders the overlays (`render.py`).
"""

from __future__ import annotations

import base64
import time

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from explain import render
from explain.gradcam import DEFAULT_METHOD, CamPass, get_method
from models.backends.base import ImageTextModel

CANDIDATES_AHEAD = 8  # `prepare_heatmaps` runs every candidate's backward ahead up to this many


class CropBox(BaseModel):
    """The part of the photo the model saw (photo pixels); the heatmap covers only this box."""

    left: float
    top: float
    right: float
    bottom: float
    note: str = Field(
        default="the model sees only this centre crop; outside it the overlay shows no heat (not 'low heat')"
    )


class Heatmap(BaseModel):
    """One differential's heatmap: a PNG overlay aligned to the photo, optionally the raw grid."""

    index: int = Field(description="row of the text embeddings this map explains (differential order)")
    method: str
    score: float = Field(description="cosine similarity of the image and text embeddings")
    grid_shape: tuple[int, int]
    grid: list[list[float]] | None = Field(default=None, description="low-resolution map in [0, 1], row-major")
    png_base64: str = Field(description="image/png overlay, the photo's aspect ratio (long side capped)")
    width: int = Field(description="overlay width in pixels")
    height: int = Field(description="overlay height in pixels")
    photo_width: int
    photo_height: int
    covers: CropBox
    peak: tuple[float, float] = Field(description="(x, y) of the map's maximum, in photo pixels")
    colormap: str
    legend_png_base64: str = Field(description="image/png colour bar, low -> high, with what the colours mean")


def prepare_heatmaps(
    model: ImageTextModel, image: Image.Image, *, method: str = DEFAULT_METHOD, candidates: torch.Tensor | None = None
) -> CamPass:
    """The heatmaps' forward pass for one photo, before its differentials are known: hand it to
    `explain_differentials(..., cam_pass=...)`, which then runs only the backward and the overlays.
    `candidates` (N, D), the text embeddings the differentials will be drawn from: when there are at
    most `CANDIDATES_AHEAD` (the default scope's six conditions; top 5 of 6 costs one map more) their
    backward runs now too, so that only the overlays are left."""
    t0 = time.perf_counter()
    cam_pass = get_method(method)(model).forward(model.preprocessing.batch([image.convert("RGB")]))
    if candidates is not None and candidates.shape[0] <= CANDIDATES_AHEAD:
        cam_pass.precompute(candidates)
    cam_pass.forward_ms = (time.perf_counter() - t0) * 1000
    return cam_pass


def explain_differentials(
    model: ImageTextModel,
    image: Image.Image,
    text_embeddings: torch.Tensor,
    *,
    method: str = DEFAULT_METHOD,
    want_grid: bool = False,
    colormap: str = render.DEFAULT_COLORMAP,
    max_side: int = render.DEFAULT_MAX_SIDE,
    alpha: float = render.DEFAULT_ALPHA,
    cam_pass: CamPass | None = None,
) -> list[Heatmap]:
    """Heatmaps for the K differentials whose text embeddings (K, D) are given, in that order.

    `image` is the photo as decoded (already EXIF-oriented): the overlays have its aspect ratio
    and size (long side capped at `max_side`). One forward and one batched backward for all K;
    `cam_pass` (`prepare_heatmaps` of this photo and method) is that forward, run earlier.
    """
    if text_embeddings.dim() != 2 or text_embeddings.shape[0] == 0:
        raise ValueError(f"text_embeddings must be (K, D) with K >= 1, got {tuple(text_embeddings.shape)}")
    photo = image.convert("RGB")
    if cam_pass is not None and (cam_pass.cam.name != method or cam_pass.cam.model is not model):
        raise ValueError(f"the prepared pass is {cam_pass.cam.name} on another model or method than {method}")
    found = cam_pass.maps_for(text_embeddings) if cam_pass is not None else None
    if found is None:  # not prepared, or prepared for other candidates
        cam_pass = prepare_heatmaps(model, photo, method=method)
        found = cam_pass.maps_for(text_embeddings)
        assert found is not None
    cam = cam_pass.cam
    maps, scores = found
    grids = maps[0].cpu().numpy()  # (K, h, w)
    box = model.preprocessing.geometry(*photo.size)
    base = render.fit(photo, max_side)
    legend = base64.b64encode(render.legend_png(colormap, cam.label)).decode("ascii")
    out = []
    for k, grid in enumerate(grids):
        overlay, peak = render.overlay(base, grid, box, photo.size, colormap=colormap, alpha=alpha)
        out.append(
            Heatmap(
                index=k,
                method=cam.name,
                score=round(float(scores[0, k]), 6),
                grid_shape=(int(grid.shape[0]), int(grid.shape[1])),
                grid=_rounded(grid) if want_grid else None,
                png_base64=base64.b64encode(render.png_bytes(overlay)).decode("ascii"),
                width=overlay.width,
                height=overlay.height,
                photo_width=photo.width,
                photo_height=photo.height,
                covers=CropBox(left=box[0], top=box[1], right=box[2], bottom=box[3]),
                peak=peak,
                colormap=colormap,
                legend_png_base64=legend,
            )
        )
    return out


def _rounded(grid: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in np.clip(grid, 0.0, 1.0)]
