"""Class-activation heatmaps for CLIP-style models: one map per differential, aligned to the photo.

Design (pytorch-grad-cam's): a small base class owns the hook and the gradient computation;
the thing explained is a separate target object (`SimilarityTarget`); each method is a
subclass that only says how activations and gradients combine (Grad-CAM is a few lines).

Where the gradient is taken: `model.spatial_target()` names the layer. CNN towers (the embedded
EfficientNet-Lite0): the output of the last feature stage. ViT towers: the *input* of the last
block (its patch tokens; the last block's own patch outputs get zero gradient because only CLS
feeds the embedding), CLS dropped and reshaped to the patch grid by `SpatialTarget.to_map`.

Why not captum's `LayerGradCam` (it is the reference in the tests, where it agrees with
`GradCAM` to float precision on the CNN tower):

* batching: captum explains one target per batch row, so k differentials cost k image copies
  through the whole tower. Here one forward of the photo is shared by all k targets and their
  gradients come from one batched backward (`torch.autograd.grad(..., is_grads_batched=True)`)
  that only runs from the embedding down to the hooked layer.
* concurrency: captum's forward hook on the shared module records the activation of *any*
  forward that passes while it is attached (another request's, in another thread) and keys it by
  device only. Here the hook is registered per call, filters on the calling thread and keeps its
  state in the call's own object, so concurrent requests on one shared model never mix.
* layout: captum averages gradients over every dimension after the second, which is wrong for a
  ViT token sequence (B, N, C) with a CLS token (and for open_clip's sequence-first (N, B, C)).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from explain.capture import LayerCapture, StagesCapture, batched_grads, finer_stage
from models.backends.base import ImageTextModel

DEFAULT_METHOD = "fusedcam"  # points at the lesion on off-centre composites, passes the sanity check: explain/README.md
EPS = 1e-7


# --- targets -------------------------------------------------------------------------------


class SimilarityTarget:
    """What a heatmap explains: the similarity of the image embedding to one text embedding.

    `scale=1` gives the cosine similarity; `scale=model.logit_scale` the zero-shot logit. The
    normalised heatmap is the same for both (a positive scale only rescales the gradient).
    """

    def __init__(self, text_embedding: torch.Tensor, scale: float = 1.0) -> None:
        if text_embedding.dim() != 1:
            raise ValueError(f"one text embedding (D,) per target, got shape {tuple(text_embedding.shape)}")
        self.text_embedding = F.normalize(text_embedding.detach().float(), dim=-1)
        self.scale = float(scale)

    def __call__(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) image embeddings -> (B,) scores."""
        text = self.text_embedding.to(image_embeddings.device)
        return self.scale * (F.normalize(image_embeddings, dim=-1) @ text)


Target = Callable[[torch.Tensor], torch.Tensor]


# --- methods -------------------------------------------------------------------------------


class CamPass:
    """One forward of the photo(s) with autograd on, kept until the targets are known (used once).

    It holds the embeddings and the captured layer tensors; the graph reaches back only to the
    first captured layer (a detached leaf, `capture.py`), so what stays in memory is the top of
    the tower. `maps_and_scores(targets)` runs the one batched backward, in any thread: the
    service runs the forward beside the served runtime's and the backward once the answer has
    ranked the differentials (issue 19). When the few candidates the differentials will be drawn
    from are known, `precompute` runs that backward for all of them at once, and `maps_for` picks
    the ranked ones' rows.
    """

    def __init__(self, cam: BaseCAM, embeddings: torch.Tensor, captured: list[torch.Tensor]) -> None:
        self.cam = cam
        self.embeddings: torch.Tensor | None = embeddings
        self.captured = captured
        self.forward_ms = 0.0  # set by `prepare_heatmaps`
        self.candidates: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # text rows, maps, scores

    def precompute(self, text_embeddings: torch.Tensor) -> None:
        """The maps and scores of every candidate (N, D) now, in one batched backward."""
        maps, scores = self.maps_and_scores([SimilarityTarget(t) for t in text_embeddings])
        self.candidates = (text_embeddings.detach().clone(), maps, scores)

    def maps_for(self, text_embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Maps (B, K, h, w) and scores (B, K) of the K text embeddings: the precomputed candidates'
        rows, or the backward now; None when they were precomputed and a row is not among them."""
        if self.candidates is None:
            return self.maps_and_scores([SimilarityTarget(t) for t in text_embeddings])
        rows, maps, scores = self.candidates
        found = [next((i for i, r in enumerate(rows) if torch.equal(r, t)), None) for t in text_embeddings]
        if any(i is None for i in found):
            return None
        return maps[:, found], scores[:, found]

    def gradients(self, targets: Sequence[Target]) -> tuple[list[torch.Tensor], torch.Tensor]:
        """-> the gradients of the scores w.r.t. each captured tensor ((K, *shape) each), the scores
        (B, K); the graph is released."""
        if not targets:
            raise ValueError("at least one target")
        if self.embeddings is None:
            raise RuntimeError("a CamPass is used once")
        with torch.inference_mode(False), torch.enable_grad():
            scores = torch.stack([t(self.embeddings) for t in targets], dim=1)  # (B, K)
            grads = batched_grads(scores, *self.captured)
        self.embeddings = None
        self.captured = [c.detach() for c in self.captured]
        return grads, scores.detach()

    def maps_and_scores(self, targets: Sequence[Target]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> maps (B, K, h, w) in [0, 1], scores (B, K)."""
        return self.cam.pass_maps(self, targets)


class BaseCAM(ABC):
    """One forward of the photo(s), one batched backward for all targets, then `combine`.

    `__call__(pixels (B,3,S,S), targets[K]) -> (B, K, h, w)` maps in [0, 1] (ReLU, then divided
    by each map's maximum; a map with no positive evidence is all zeros). `forward` and
    `CamPass.maps_and_scores` are the same in two steps.
    """

    name: ClassVar[str]
    label: ClassVar[str]

    def __init__(self, model: ImageTextModel) -> None:
        self.model = model
        self.spatial = model.spatial_target()

    def forward(self, pixels: torch.Tensor) -> CamPass:
        pixels = pixels.to(self.model.device)
        # inference_mode(False): a caller inside inference_mode would otherwise get no graph
        with torch.inference_mode(False), torch.enable_grad(), LayerCapture(self.spatial) as capture:
            embeddings = self.model.encode_image(pixels, grad=True)
        if capture.activation is None:
            raise RuntimeError(f"spatial layer {type(self.spatial.layer).__name__} did not run in the forward")
        return CamPass(self, embeddings, [capture.activation])

    def activations_and_gradients(
        self, pixels: torch.Tensor, targets: Sequence[Target]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> activations (B, C, h, w), gradients (K, B, C, h, w), scores (B, K)."""
        return self._acts_grads(self.forward(pixels), targets)

    def _acts_grads(
        self, cam_pass: CamPass, targets: Sequence[Target]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        [grads], scores = cam_pass.gradients(targets)
        acts = self.spatial.to_map(cam_pass.captured[0]).float()
        grad_maps = torch.stack([self.spatial.to_map(g) for g in grads]).float()
        return acts, grad_maps, scores

    @abstractmethod
    def combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """activations (B, C, h, w), gradients (K, B, C, h, w) -> raw maps (K, B, h, w)."""

    def pass_maps(self, cam_pass: CamPass, targets: Sequence[Target]) -> tuple[torch.Tensor, torch.Tensor]:
        acts, grads, scores = self._acts_grads(cam_pass, targets)
        return normalised(self.combine(acts, grads)).permute(1, 0, 2, 3), scores  # (B, K, h, w)

    def maps_and_scores(self, pixels: torch.Tensor, targets: Sequence[Target]) -> tuple[torch.Tensor, torch.Tensor]:
        if not targets:
            raise ValueError("at least one target")
        return self.forward(pixels).maps_and_scores(targets)

    def __call__(self, pixels: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
        return self.maps_and_scores(pixels, targets)[0]


class GradCAM(BaseCAM):
    """Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradient.

    With a cosine target on a pooled CNN its raw map sums to zero over the grid: the cosine does
    not change when the embedding is scaled, so its gradient is orthogonal to the embedding
    (Euler), and the pooled, linearly projected embedding is the sum of the cells. The map can
    only say where the photo looks more like the condition than the photo as a whole, and half
    of that contrast is cut away by the ReLU: often the background (measured in the README).
    """

    name = "gradcam"
    label = "Grad-CAM"

    def combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        weights = grads.mean(dim=(3, 4), keepdim=True)  # (K, B, C, 1, 1)
        return (weights * acts.unsqueeze(0)).sum(dim=2)


class GradCAMPlusPlus(BaseCAM):
    """Grad-CAM++ (Chattopadhay et al. 2018), the closed form pytorch-grad-cam uses.

    Only positive gradients count, each weighted by alpha = g^2 / (2 g^2 + sum(A) g^3): channels
    whose activation raises the similarity, and nothing that lowers it. The map is therefore not
    a zero-sum contrast (see `GradCAM`); it is the default because it was the more faithful one.

    alpha is computed as 1 / (2 + sum(A) g), the same value without the additive epsilon of
    the usual form: cosine gradients are ~1e-6, so g^2 ~ 1e-12 and an epsilon of 1e-7 would
    dominate and turn the weights into relu(g)^3.
    """

    name = "gradcampp"
    label = "Grad-CAM++"

    def combine(self, acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return gradcampp_combine(acts, grads)


def gradcampp_combine(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ raw maps: activations (B, C, h, w), gradients (K, B, C, h, w) -> (K, B, h, w)."""
    sum_acts = acts.sum(dim=(2, 3), keepdim=True).unsqueeze(0)  # (1, B, C, 1, 1)
    denom = 2 + sum_acts * grads
    positive = grads > 0
    alpha = torch.where(positive & (denom > EPS), 1 / denom.clamp_min(EPS), torch.zeros_like(grads))
    weights = (grads.clamp_min(0) * alpha).sum(dim=(3, 4), keepdim=True)
    return (weights * acts.unsqueeze(0)).sum(dim=2)


def layercam_combine(acts: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """LayerCAM (Jiang et al. 2021) raw maps: each cell weighs each channel by its own positive
    gradient, so an earlier, finer stage keeps its spatial detail."""
    return (grads.clamp_min(0) * acts.unsqueeze(0)).sum(dim=2)


def normalised(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then each map (last two dims) divided by its maximum; a map with no positive evidence -> zeros."""
    cams = cams.clamp_min(0)
    peak = cams.amax(dim=(-2, -1), keepdim=True)
    return torch.where(peak > EPS, cams / peak.clamp_min(EPS), torch.zeros_like(cams))


class FusedCAM(GradCAMPlusPlus):
    """A finer map: Grad-CAM++ on the last stage (7x7 on the embedded model), upsampled bilinearly
    to the last stage twice as fine (`capture.finer_stage`: 14x14) and fused with a map computed
    there (`fine`: Grad-CAM++ or LayerCAM), by product (the coarse map says where, the fine one
    sharpens it) or mean. One forward and one batched backward down to the finer stage. Towers
    without a finer CNN stage (ViTs) get plain Grad-CAM++.
    """

    name = "fusedcam"
    label = "Grad-CAM++ x LayerCAM"
    fine: ClassVar[Literal["gradcampp", "layercam"]] = "layercam"
    fusion: ClassVar[Literal["product", "mean", "fine"]] = "product"

    def forward(self, pixels: torch.Tensor) -> CamPass:
        fine_layer = finer_stage(self.model)
        if fine_layer is None:
            return super().forward(pixels)
        pixels = pixels.to(self.model.device)
        with torch.inference_mode(False), torch.enable_grad(), StagesCapture([fine_layer, self.spatial.layer]) as cap:
            embeddings = self.model.encode_image(pixels, grad=True)
        return CamPass(self, embeddings, cap.tensors())

    def pass_maps(self, cam_pass: CamPass, targets: Sequence[Target]) -> tuple[torch.Tensor, torch.Tensor]:
        if len(cam_pass.captured) == 1:  # no finer stage: plain Grad-CAM++
            return super().pass_maps(cam_pass, targets)
        (g_fine, g_coarse), scores = cam_pass.gradients(targets)
        fine, coarse = cam_pass.captured
        coarse_map = normalised(gradcampp_combine(coarse.float(), g_coarse.float()))  # (K, B, h, w)
        combine = layercam_combine if self.fine == "layercam" else gradcampp_combine
        fine_map = normalised(combine(fine.float(), g_fine.float()))  # (K, B, 2h, 2w)
        k, b = coarse_map.shape[:2]
        up = F.interpolate(coarse_map.flatten(0, 1)[:, None], size=fine_map.shape[-2:], mode="bilinear")
        up = up.view(k, b, *fine_map.shape[-2:])
        fused = {"product": up * fine_map, "mean": (up + fine_map) / 2, "fine": fine_map}[self.fusion]
        return normalised(fused).permute(1, 0, 2, 3), scores


class FusedMeanCAM(FusedCAM):
    name = "fusedcam-mean"
    label = "Grad-CAM++ + LayerCAM (mean)"
    fusion = "mean"


class FusedPlusPlusCAM(FusedCAM):
    name = "fusedcam-pp"
    label = "Grad-CAM++ x Grad-CAM++ (finer stage)"
    fine = "gradcampp"


class LayerCAMFine(FusedCAM):
    name = "layercam-fine"
    label = "LayerCAM (finer stage)"
    fusion = "fine"


class GradCAMPlusPlusFine(FusedCAM):
    name = "gradcampp-fine"
    label = "Grad-CAM++ (finer stage)"
    fine = "gradcampp"
    fusion = "fine"


METHODS: dict[str, type[BaseCAM]] = {
    cls.name: cls
    for cls in (GradCAM, GradCAMPlusPlus, FusedCAM, FusedMeanCAM, FusedPlusPlusCAM, LayerCAMFine, GradCAMPlusPlusFine)
}


def get_method(name: str) -> type[BaseCAM]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown heatmap method {name!r}; known: {', '.join(METHODS)}") from None
