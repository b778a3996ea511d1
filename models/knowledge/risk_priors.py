"""Cited relative risks for the factors and conditions the PAD fit does not cover.

`risk_priors.yaml` lists (factor, value) -> {condition: effect} with a citation each. Fusion
adds log(effect) to a condition's logit when the factor has that value; an unknown factor adds
nothing, so a missing field is never evidence.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field

from models.knowledge.risk_factors import RiskFactors

__all__ = ["DEFAULT_PRIORS_PATH", "LiteraturePriors", "Prior", "load_priors"]

DEFAULT_PRIORS_PATH = Path(__file__).with_name("risk_priors.yaml")


class Prior(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: str
    when: bool | int | str
    kind: Literal["relative_risk", "clinical_rule"]
    effects: dict[str, float] = Field(min_length=1)
    citation: str = Field(min_length=10)

    @property
    def key(self) -> str:
        return f"{self.factor}={str(self.when).lower()}"

    def applies(self, risk: RiskFactors) -> bool:
        value = getattr(risk, self.factor)
        if value is None:
            return False
        if isinstance(value, Enum):
            value = value.value
        return bool(value == self.when) if not isinstance(self.when, bool) else value is self.when


class LiteraturePriors(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: int
    priors: list[Prior]

    def check(self, condition_ids: Sequence[str]) -> None:
        """Every factor is a RiskFactors field and every condition exists; effects are positive."""
        known = set(condition_ids)
        for p in self.priors:
            if p.factor not in RiskFactors.model_fields:
                raise ValueError(f"risk prior for unknown factor {p.factor!r}")
            bad = [c for c, v in p.effects.items() if c not in known or v <= 0]
            if bad:
                raise ValueError(f"{p.key}: unknown condition or non-positive effect for {bad}")

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.priors]

    def indicators(self, risk: RiskFactors) -> np.ndarray:
        """(P,) 1.0 where the prior's factor has its value, else 0.0."""
        return np.array([1.0 if p.applies(risk) else 0.0 for p in self.priors])

    def log_effects(self, labels: Sequence[str]) -> np.ndarray:
        """(C, P) log effect of each prior on each label (0 where the prior says nothing)."""
        out = np.zeros((len(labels), len(self.priors)))
        for j, p in enumerate(self.priors):
            for i, label in enumerate(labels):
                if label in p.effects:
                    out[i, j] = math.log(p.effects[label])
        return out


@functools.lru_cache(maxsize=4)
def load_priors(path: Path = DEFAULT_PRIORS_PATH) -> LiteraturePriors:
    with path.open(encoding="utf-8") as fh:
        return LiteraturePriors.model_validate(yaml.safe_load(fh))
