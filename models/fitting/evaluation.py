"""Score any image-text model on a labelled folder with the same zero-shot path the service uses."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from models.backends.base import ImageTextModel
from models.fitting.datasets import LabelledImage, load_labelled_folder, row_modality
from models.fitting.metrics import classification_report
from models.knowledge.taxonomy import Taxonomy
from models.photos import load_photo
from models.scoring.zeroshot import LabelSet, Modality, ZeroShotClassifier

log = logging.getLogger(__name__)

LabelScope = Literal["dataset", "taxonomy", "validated"]


_RUN_MEMO: ContextVar[dict[tuple, Any] | None] = ContextVar("run_memo", default=None)


@contextmanager
def one_embedding_per_photo() -> Iterator[None]:
    """Within this block, `embed_images` embeds a given photo list once and `cross_fit_fusion` cross-fits
    given rows once: the evaluation, its scopes and the uncertainty pass of one `dermtriage evaluate` run
    reuse the same results (same photos, same batches; same fusion rows)."""
    token = _RUN_MEMO.set({})
    try:
        yield
    finally:
        _RUN_MEMO.reset(token)


def _once_per_run(key: tuple, compute: Callable[[], Any]) -> Any:
    memo = _RUN_MEMO.get()
    if memo is None:
        return compute()
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def embed_images(
    model: ImageTextModel, items: Sequence[LabelledImage], batch_size: int = 16, progress: bool = True
) -> torch.Tensor:
    paths = tuple(str(it.path) for it in items)
    memo = _RUN_MEMO.get()

    def compute() -> torch.Tensor:
        out, domain = [], []
        bar = tqdm(total=len(items), desc="scoring photos", unit="img", disable=not progress)
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            pixels = model.preprocessing.batch([load_photo(it.path) for it in chunk]).to(model.device)
            if memo is None:
                out.append(model.encode_image(pixels).cpu())
            else:  # in a run the OOD pass reads the same forward's ImageNet probabilities (`run_domain`)
                with torch.inference_mode():
                    emb, probs = model.encode_image_with_domain(pixels)
                out.append(emb.cpu())
                domain.append(None if probs is None else probs.float().cpu().numpy())
            bar.update(len(chunk))
        bar.close()
        if memo is not None:
            memo[("domain", id(model), paths)] = None if any(d is None for d in domain) else np.concatenate(domain)
        return torch.cat(out)

    return _once_per_run(("embed", id(model), paths, batch_size), compute)


def run_features(model: ImageTextModel, paths: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """These photos' embeddings and ImageNet probabilities when `embed_images` already forwarded them in this
    run (`one_embedding_per_photo`), else None: the OOD pass then needs no forward of its own."""
    memo = _RUN_MEMO.get()
    key = ("domain", id(model), tuple(paths))
    if memo is None or key not in memo:
        return None
    emb = next(v for k, v in memo.items() if k[0] == "embed" and k[1:3] == key[1:])
    return emb.float().numpy(), memo[key]


def cross_fit_fusion(data: Any, progress: str | None = None) -> tuple[np.ndarray, list[Any]]:
    """`fusion_fit.cross_fit` of these rows, once per run (the dataset scope's fused figures and the
    uncertainty pass fuse the same rows); `progress` describes its bar over the folds."""
    from models.fitting.fusion_fit import cross_fit

    digest = hashlib.sha256()
    for part in (data.image, data.text, data.y, data.groups.astype(str)):
        digest.update(np.ascontiguousarray(part).tobytes())
    digest.update(repr((data.class_ids, data.sentences, [r.model_dump_json() for r in data.risks])).encode())
    return _once_per_run(("cross_fit", digest.hexdigest()), lambda: cross_fit(data, progress=progress))


def evaluate(
    model: ImageTextModel,
    taxonomy: Taxonomy,
    data_dir: str | Path,
    *,
    label_scope: LabelScope = "dataset",
    modality: Modality = "clinical",
    batch_size: int = 16,
    progress: bool = True,
    classifier: ZeroShotClassifier | None = None,
    split: str | None = None,
) -> dict[str, object]:
    """Figures for `model` on the photos under `data_dir` (the rows of `split` when given).

    `label_scope="dataset"` ranks only the conditions the folder contains (the published
    zero-shot protocol); `"taxonomy"` ranks every condition the service knows. A row's own
    `modality` column picks its prompts; `modality` is for rows without one.
    """
    items = load_labelled_folder(data_dir, taxonomy, split)
    validated = validated_conditions(model, taxonomy) if label_scope == "validated" else None
    if validated is not None:  # the service's default scope ranks only these: judged on photos of them
        items = [i for i in items if i.condition_id in validated]
    elif label_scope == "validated":  # a card that validates nothing: the service ranks the whole taxonomy
        label_scope = "taxonomy"
    modalities = [row_modality(i, modality) for i in items]
    clf = classifier or ZeroShotClassifier(model, taxonomy)
    present = sorted({i.condition_id for i in items})
    ranked = validated or present
    labels: LabelSet = clf.subset(ranked, modality) if label_scope != "taxonomy" else clf.condition_set(modality)
    y = np.array([labels.ids.index(i.condition_id) for i in items])
    malignant = [taxonomy.get(c).malignant for c in labels.ids]
    overlap = len({i.stem for i in items} & set(model.card.training_image_ids))
    oof = out_of_fold_probabilities(model, items, labels.ids) if overlap else None
    source = "out-of-fold" if oof is not None else "in-sample" if overlap else "model"
    if oof is not None:  # the model's own scores on its training photos would be in-sample: not computed
        probs = oof
    else:
        emb = embed_images(model, items, batch_size, progress)
        scope: LabelScope = "taxonomy" if label_scope == "taxonomy" else "dataset"
        probs = probabilities_by_modality(clf, emb, modalities, ranked, scope)
    fitz = [i.fitzpatrick for i in items]
    report = classification_report(probs, y, list(labels.ids), malignant, fitz)
    report["image_probabilities"] = source
    if (Path(data_dir) / "metadata.csv").exists():
        report.update(_fused_figures(model, items, labels, probs, y, malignant, fitz, taxonomy, label_scope))
    if oof is not None:
        warnings.warn(
            f"{model.card.name} was trained on {overlap} of these {len(items)} photos: image and fused figures use "
            "its out-of-fold probabilities (patient-grouped CV), not its in-sample scores.",
            stacklevel=2,
        )
    if overlap and oof is None:
        msg = (
            f"{model.card.name} was trained on {overlap} of these {len(items)} photos: these figures are optimistic. "
            "Its patient-grouped cross-validation figures are on its model card."
        )
        warnings.warn(msg, stacklevel=2)
    report.update(
        {
            "model": {"name": model.card.name, "version": model.card.version},
            "label_scope": label_scope,
            "labels": list(labels.ids),
            "modality": modalities[0] if len(set(modalities)) == 1 else "mixed",
            "modalities": {m: modalities.count(m) for m in sorted(set(modalities))},
            "split": split,
            "trained_on_overlap": overlap,
        }
    )
    return report


def probabilities_by_modality(
    clf: ZeroShotClassifier,
    emb: torch.Tensor,
    modalities: Sequence[str],
    present: Sequence[str],
    label_scope: LabelScope = "dataset",
) -> np.ndarray:
    """Zero-shot probabilities with each image's own modality's prompts (same label order for all)."""
    out: np.ndarray | None = None
    for m in sorted(set(modalities)):
        sel = np.array([x == m for x in modalities])
        labels = clf.subset(present, m) if label_scope == "dataset" else clf.condition_set(m)  # type: ignore[arg-type]
        p = clf.probabilities(emb[torch.as_tensor(sel)], labels).numpy()
        if out is None:
            out = np.zeros((len(modalities), p.shape[1]), dtype=p.dtype)
        out[sel] = p
    assert out is not None, "no images"
    return out


def validated_conditions(model: ImageTextModel, taxonomy: Taxonomy) -> list[str] | None:
    """The conditions the service ranks by default for `model` (its card's validated ones, taxonomy order);
    None when it validates fewer than two (the service then ranks the whole taxonomy)."""
    card = set(model.card.validated_conditions)
    ids = [c for c in taxonomy.ids if c in card]
    return ids if len(ids) >= 2 else None


def out_of_fold_probabilities(
    model: ImageTextModel, items: Sequence[LabelledImage], class_ids: Sequence[str]
) -> np.ndarray | None:
    """The embedded model's out-of-fold probabilities for these photos, when it has them all."""
    from models.embedded.model import MODEL_NAME, OOF_PATH
    from models.fitting.fusion_fit import read_oof

    if model.card.name != MODEL_NAME or not OOF_PATH.exists():
        return None
    try:
        oof_ids, oof = read_oof(OOF_PATH, [i.stem for i in items])
    except KeyError:
        return None
    if not set(class_ids) <= set(oof_ids):
        return None
    order = [oof_ids.index(c) for c in class_ids]
    sub = oof[:, order]  # fewer classes: renormalised, exactly the fold model's softmax over them alone
    return sub / sub.sum(1, keepdims=True)


def _fused_figures(
    model: ImageTextModel,
    items: Sequence[LabelledImage],
    labels: LabelSet,
    probs: np.ndarray,
    y: np.ndarray,
    malignant: Sequence[bool],
    fitz: Sequence[int | None],
    taxonomy: Taxonomy,
    label_scope: LabelScope,
) -> dict[str, object]:
    """PAD layout: fused figures, cross-fitted by patient (fusion refit per fold), and the urgency block.

    Risk factors and the symptoms sentence come only from PAD_REQUEST_FIELDS (DATA.md: the other
    columns are missing only for benign lesions and would score the artifact, not the fusion)."""
    from models.fitting.fusion_fit import pad_fusion_data
    from models.knowledge.risk_factors import PAD_REQUEST_FIELDS
    from models.scoring.urgency import urgency_report

    if label_scope == "taxonomy":
        return {"fused": None, "urgency": None, "fused_note": "fused figures are computed for --labels dataset"}
    data = pad_fusion_data(items, labels.ids, probs, model, labels.embeddings)
    try:
        fused_probs, results = cross_fit_fusion(data, f"fused figures ({label_scope}): cross-fitting the fusion")
    except ValueError as exc:  # too few photos of a class to cross-fit
        return {"fused": None, "urgency": None, "fused_note": str(exc)}
    fused = classification_report(fused_probs, y, list(labels.ids), malignant, fitz)
    fused["protocol"] = "patient-grouped StratifiedGroupKFold, fusion refit per fold"
    fused["risk_fields"] = sorted(PAD_REQUEST_FIELDS)
    urgency = urgency_report(results, [i.condition_id for i in items], taxonomy=taxonomy)
    return {"fused": fused, "urgency": urgency}
