"""Model specs: a name -> backend, source, preprocessing override and model card.

A model is data: one JSON file in `models/specs/` per built-in model (open_clip's idea), so
adding a model adds a file, not a branch. `load_model` also takes a path to a spec file, a
`ModelSpec`, or an ad-hoc string:

    open_clip:ARCH[@PRETRAINED_TAG_OR_PATH]   hf-hub:ORG/REPO (open_clip)
    hf_clip:PATH_OR_HF_ID                      local-dir:PATH (open_clip folder)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from models.backends.artifacts import ArtifactFiles, ModelArtifacts, ModelIdentity
from models.backends.base import ImageTextModel, ModelCard, Preprocessing

log = logging.getLogger(__name__)

SPEC_DIR = Path(__file__).resolve().parents[1] / "specs"
DEFAULT_MODEL = "embedded-pad-lite0"
# the embedded model trained on dermatoscope images (ISIC; its own licence caveat): served for
# `modality=dermoscopic` when its spec ships (`DERMTRIAGE_DERMOSCOPIC_MODEL` overrides, `none` turns it off)
DERMOSCOPIC_MODEL = "embedded-isic-lite0"
AD_HOC_FORMS = (
    "open_clip:ARCH[@PRETRAINED_TAG_OR_PATH]",
    "hf-hub:ORG/REPO",
    "hf_clip:PATH_OR_HF_ID",
    "local-dir:PATH",
    "a path to a spec .json file",
)

Backend = Literal["open_clip", "hf_clip", "embedded"]


class PreprocessingOverride(BaseModel):
    """Fields that replace what the checkpoint's own config says (None keeps the checkpoint's)."""

    model_config = ConfigDict(extra="forbid")

    image_size: int | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    interpolation: Literal["bicubic", "bilinear", "nearest"] | None = None
    resize_mode: Literal["shortest", "squash"] | None = None
    crop_pct: float | None = Field(default=None, gt=0.0, le=1.0)

    def apply(self, base: Preprocessing) -> Preprocessing:
        return dataclasses.replace(base, **self.model_dump(exclude_none=True))

    def complete(self) -> Preprocessing | None:
        """A whole `Preprocessing` when every field is given (the checkpoint's config is then not needed)."""
        fields = self.model_dump(exclude_none=True)
        required = set(type(self).model_fields) - {"crop_pct"}  # crop_pct has a default (1.0)
        return Preprocessing(**fields) if required <= fields.keys() else None


class ModelSpec(BaseModel):
    """How to build one model. Extra keys are kept (`model_extra`) for backend-specific settings."""

    model_config = ConfigDict(extra="allow")

    name: str
    backend: Backend
    source: str = Field(description="open_clip arch, `hf-hub:` id, `local-dir:` folder, path or HF id")
    pretrained: str | None = Field(default=None, description="open_clip pretrained tag or weights path")
    preprocessing: PreprocessingOverride | None = None
    card: ModelCard | None = None
    card_path: str | None = Field(default=None, description="model card JSON, relative to the spec file")
    artifacts: ArtifactFiles | None = Field(
        default=None, description="fitted files (calibration, fusion, OOD statistics, text cache, urgency thresholds)"
    )
    base_dir: Path | None = Field(default=None, exclude=True, description="folder of the spec file")

    @classmethod
    def from_file(cls, path: str | Path) -> ModelSpec:
        """Read a spec JSON; relative paths (card, weights) resolve against the file's folder."""
        path = Path(path).expanduser().resolve()
        data = json.loads(path.read_text(encoding="utf-8"))
        spec = cls.model_validate({**data, "base_dir": path.parent})
        updates: dict[str, object] = {}
        if spec.backend in ("open_clip", "hf_clip"):
            updates["source"] = spec._existing_path(spec.source)
            if spec.pretrained:
                updates["pretrained"] = spec._existing_path(spec.pretrained)
        elif spec.pretrained:  # the embedded weights file, next to the spec
            updates["pretrained"] = str(spec.resolve_path(spec.pretrained))
        if spec.card is None and spec.card_path and spec.resolve_path(spec.card_path).is_file():
            updates["card"] = ModelCard.model_validate_json(spec.resolve_path(spec.card_path).read_text("utf-8"))
        return spec.model_copy(update=updates)

    def resolve_path(self, value: str | Path) -> Path:
        """`value` as a path: absolute as is, relative against the spec file's folder (or cwd)."""
        p = Path(value).expanduser()
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p

    def _existing_path(self, value: str) -> str:
        """Rewrite a relative path that exists next to the spec file; leave names and ids alone."""
        prefix = "local-dir:" if value.startswith("local-dir:") else ""
        raw = value[len(prefix) :]
        if self.base_dir is None or Path(raw).is_absolute():
            return value
        candidate = self.base_dir / raw
        return f"{prefix}{candidate}" if candidate.exists() else value

    def declared_artifacts(self) -> ModelArtifacts:
        """The fitted files this spec declares, resolved, with the identity its card gives (no weights
        hash: that needs the weights; `load_model` adds it)."""
        card = self.model_card()
        return ModelArtifacts.resolve(ModelIdentity(card.name, card.version), self.artifacts, self.base_dir)

    def model_card(self) -> ModelCard:
        """The card: inline, from `card_path`, or a minimal "unknown licence" card."""
        if self.card is not None:
            return self.card
        if self.card_path:
            path = self.resolve_path(self.card_path)
            return ModelCard.model_validate_json(path.read_text(encoding="utf-8"))
        return auto_card(self.name, self.backend)


def auto_card(name: str, family: str) -> ModelCard:
    """The minimal card an ad-hoc model gets: nothing is claimed."""
    return ModelCard(name=name, version="unversioned", family=family, source=name, license="unknown")


def _ad_hoc_spec(value: str) -> ModelSpec | None:
    """Spec for `open_clip:`, `hf-hub:`, `hf_clip:` and `local-dir:` strings, else None."""
    backend: Backend
    pretrained: str | None = None
    if value.startswith("open_clip:"):
        arch, _, tail = value[len("open_clip:") :].partition("@")
        backend, source, pretrained = "open_clip", arch, tail or None
    elif value.startswith(("hf-hub:", "local-dir:")):
        backend, source = "open_clip", value
    elif value.startswith("hf_clip:"):
        backend, source = "hf_clip", value[len("hf_clip:") :]
    else:
        return None
    if not source:
        raise ValueError(f"empty model source in {value!r}")
    return ModelSpec(name=value, backend=backend, source=source, pretrained=pretrained, card=auto_card(value, backend))


def _spec_files() -> list[Path]:
    return sorted(SPEC_DIR.glob("*.json"))


def list_specs() -> list[ModelSpec]:
    """All built-in specs, sorted by name (a broken spec file is logged and skipped)."""
    specs = []
    for path in _spec_files():
        try:
            specs.append(ModelSpec.from_file(path))
        except (OSError, ValueError) as exc:
            log.warning("skipping model spec %s: %s", path, exc)
    return sorted(specs, key=lambda s: s.name)


def known_names() -> list[str]:
    return [s.name for s in list_specs()]


def get_spec(name_or_path: str | Path) -> ModelSpec:
    """A built-in name, a path to a spec JSON file, or an ad-hoc string -> `ModelSpec`.

    Raises `KeyError` listing the known names when nothing matches.
    """
    value = str(name_or_path)
    ad_hoc = _ad_hoc_spec(value)
    if ad_hoc is not None:
        return ad_hoc
    path = Path(value).expanduser()
    if path.suffix == ".json" and path.is_file():
        return ModelSpec.from_file(path)
    direct = SPEC_DIR / f"{value}.json"
    if "/" not in value and "\\" not in value and direct.is_file():
        spec = ModelSpec.from_file(direct)
        if spec.name == value:
            return spec
    for spec in list_specs():
        if spec.name == value:
            return spec
    raise KeyError(
        f"unknown model {value!r}; known: {', '.join(known_names()) or 'none'}; or one of: {'; '.join(AD_HOC_FORMS)}"
    )


def default_dermoscopic_model() -> str | None:
    """`DERMOSCOPIC_MODEL` when its spec ships with the package, else None (dermoscopic photos then go
    to the default model)."""
    return DERMOSCOPIC_MODEL if (SPEC_DIR / f"{DERMOSCOPIC_MODEL}.json").is_file() else None


@functools.lru_cache(maxsize=1)
def default_artifacts() -> ModelArtifacts:
    """The default model's declared files: where offline tools and tests find the shipped fits."""
    return get_spec(DEFAULT_MODEL).declared_artifacts()


def load_model(name_or_spec: str | Path | ModelSpec, device: str = "cpu") -> ImageTextModel:
    """Build the model a name, spec file, `ModelSpec` or ad-hoc string describes, with its artifacts:
    `model.artifacts` holds its identity (one fingerprint) and the fitted files its spec declares."""
    spec = name_or_spec if isinstance(name_or_spec, ModelSpec) else get_spec(name_or_spec)
    model: ImageTextModel
    full = spec.preprocessing.complete() if spec.preprocessing is not None else None
    if spec.backend == "open_clip":
        from models.backends.open_clip_backend import OpenClipBackend

        model = OpenClipBackend.load(
            spec.source, spec.pretrained, card=spec.model_card(), device=device, preprocessing=full
        )
    elif spec.backend == "hf_clip":
        from models.backends.hf_clip_backend import HFClipBackend

        model = HFClipBackend.load(spec.source, card=spec.model_card(), device=device, preprocessing=full)
    elif spec.backend == "embedded":
        from models.embedded.model import load_embedded  # written alongside the embedded model

        model = load_embedded(spec, device)
    else:  # pragma: no cover - Literal guards this
        raise ValueError(f"unknown backend {spec.backend!r}")
    if spec.preprocessing is not None:
        model.preprocessing = spec.preprocessing.apply(model.preprocessing)
    model.artifacts = ModelArtifacts.resolve(model.artifacts.identity, spec.artifacts, spec.base_dir)
    return model
