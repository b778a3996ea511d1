"""What a model ships beside its weights, and the one answer to "is this file for this model?".

A model spec declares its fitted files (open_clip's pretrained configs and timm's `pretrained_cfg`
do the same for weights and preprocessing): calibration, fusion, OOD statistics, the condition
text-embedding cache and the urgency thresholds. `load_model` resolves them into one
`ModelArtifacts` on the loaded model, with the model's identity (name, version, weights hash).
Every fitted file records the identity it was made for; `ModelIdentity.accepts` is the only check.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from models.backends.base import ModelCard

SHA_PREFIX = 12  # hex digits of the weights hash a fingerprint carries


def default_cache_root() -> Path:
    """Where dermtriage caches what it builds (runtime exports, compiled kernels, OOD features) when
    DERMTRIAGE_CACHE_DIR is not set: $XDG_CACHE_HOME/dermtriage, else ~/.cache/dermtriage."""
    return Path(os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")) / "dermtriage"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class ModelIdentity:
    """Who a model is: name and version from its card, and the hash of its weights where known."""

    name: str
    version: str
    weights_sha256: str | None = None

    @property
    def fingerprint(self) -> str:
        """`name@version#sha12` (`name@version` when the weights hash is unknown): a cache and file key."""
        base = f"{self.name}@{self.version}"
        return f"{base}#{self.weights_sha256[:SHA_PREFIX]}" if self.weights_sha256 else base

    @classmethod
    def parse(cls, fingerprint: str) -> ModelIdentity:
        head, _, sha = fingerprint.partition("#")
        name, _, version = head.rpartition("@") if "@" in head else (head, "", "")
        return cls(name=name, version=version, weights_sha256=sha or None)

    def accepts(self, made_for: ModelIdentity) -> bool:
        """A file made for `made_for` applies to this model: the same name and, where both know
        their weights, the same weights (a version bump with the same weights keeps its files);
        otherwise the same version."""
        if made_for.name != self.name:
            return False
        if self.weights_sha256 and made_for.weights_sha256:
            n = min(len(self.weights_sha256), len(made_for.weights_sha256))
            return self.weights_sha256[:n] == made_for.weights_sha256[:n]
        return made_for.version == self.version


class ArtifactFiles(BaseModel):
    """The `artifacts` block of a spec file: paths relative to the spec file's folder."""

    model_config = ConfigDict(extra="forbid")

    calibration: str | None = None
    fusion: str | None = None
    ood_stats: str | None = None
    text_cache: str | None = None
    urgency_thresholds: str | None = None


@dataclass(frozen=True)
class ModelArtifacts:
    """A loaded model's identity and the resolved paths of its fitted files (None: not shipped)."""

    identity: ModelIdentity
    calibration: Path | None = None
    fusion: Path | None = None
    ood_stats: Path | None = None
    text_cache: Path | None = None
    urgency_thresholds: Path | None = None

    @property
    def fingerprint(self) -> str:
        return self.identity.fingerprint

    @classmethod
    def bare(cls, card: ModelCard, weights_sha256: str | None = None) -> ModelArtifacts:
        """No fitted files: what a model built outside the registry (or an ad-hoc spec) has."""
        return cls(ModelIdentity(card.name, card.version, weights_sha256))

    @classmethod
    def resolve(cls, identity: ModelIdentity, files: ArtifactFiles | None, base_dir: Path | None) -> ModelArtifacts:
        if files is None:
            return cls(identity)

        def path(value: str | None) -> Path | None:
            if value is None:
                return None
            p = Path(value).expanduser()
            return p if p.is_absolute() or base_dir is None else (base_dir / p).resolve()

        return cls(
            identity,
            calibration=path(files.calibration),
            fusion=path(files.fusion),
            ood_stats=path(files.ood_stats),
            text_cache=path(files.text_cache),
            urgency_thresholds=path(files.urgency_thresholds),
        )
