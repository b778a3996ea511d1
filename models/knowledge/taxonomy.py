# size: the taxonomy's schema and its validation rules (pydantic) in one place; most lines are field declarations
"""Skin-condition taxonomy: the classes zero-shot scoring ranks and triage maps to urgency.

The data lives in ``models/knowledge/taxonomy.yaml``; this module validates it with pydantic at load time
(unique ids, look-alikes that exist, no label shared by two conditions, well-formed SNOMED CT and
ICD-10-CM codes, prompt templates with exactly one ``{}``) and offers label resolution, prompt
templates and a content fingerprint used as a cache key by the embedding cache.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

__all__ = [
    "DEFAULT_TAXONOMY_PATH",
    "MODALITIES",
    "Category",
    "Code",
    "Condition",
    "Modality",
    "PromptTemplates",
    "ReferencePrompts",
    "Taxonomy",
    "UnknownLabelError",
    "UrgencyTier",
    "load_taxonomy",
    "normalize_label",
]

DEFAULT_TAXONOMY_PATH = Path(__file__).with_name("taxonomy.yaml")

Modality = Literal["clinical", "dermoscopic"]
MODALITIES: tuple[Modality, ...] = ("clinical", "dermoscopic")

Category = Literal[
    "malignant_neoplasm",
    "premalignant",
    "benign_neoplasm",
    "pigmentary",
    "inflammatory",
    "infectious",
    "infestation",
    "autoimmune_bullous",
    "drug_reaction",
    "genetic",
    "vascular",
    "other",
]


class UrgencyTier(StrEnum):
    """Default triage tier of a condition, most to least urgent."""

    EMERGENCY = "emergency"
    URGENT = "urgent"
    SOON = "soon"
    ROUTINE = "routine"
    SELF_CARE = "self_care"

    @property
    def rank(self) -> int:
        """0 for emergency up to 4 for self_care; lower is more urgent."""
        return list(UrgencyTier).index(self)


class UnknownLabelError(ValueError):
    """A label matched no condition id, name, synonym, abbreviation or dataset code."""

    def __init__(self, label: str, suggestions: list[str]) -> None:
        self.label = label
        self.suggestions = suggestions
        hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else ""
        super().__init__(f"Unknown condition label {label!r}.{hint}")


_SEPARATORS = re.compile(r"[\s_\-/]+")
_ID_PATTERN = r"^[a-z][a-z0-9]*(?:_[a-z0-9]+)*$"
_SCTID = re.compile(r"^[1-9][0-9]{5,17}$")
_ICD10 = re.compile(r"^[A-Z][0-9][0-9A-Z](?:\.[0-9A-Z]{1,4})?$")

# Verhoeff tables (SNOMED CT identifiers end in a Verhoeff check digit).
_VERHOEFF_D = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 2, 3, 4, 0, 6, 7, 8, 9, 5),
    (2, 3, 4, 0, 1, 7, 8, 9, 5, 6),
    (3, 4, 0, 1, 2, 8, 9, 5, 6, 7),
    (4, 0, 1, 2, 3, 9, 5, 6, 7, 8),
    (5, 9, 8, 7, 6, 0, 4, 3, 2, 1),
    (6, 5, 9, 8, 7, 1, 0, 4, 3, 2),
    (7, 6, 5, 9, 8, 2, 1, 0, 4, 3),
    (8, 7, 6, 5, 9, 3, 2, 1, 0, 4),
    (9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
)
_VERHOEFF_P = (
    (0, 1, 2, 3, 4, 5, 6, 7, 8, 9),
    (1, 5, 7, 6, 2, 8, 3, 0, 9, 4),
    (5, 8, 0, 3, 7, 9, 6, 1, 4, 2),
    (8, 9, 1, 6, 0, 4, 3, 5, 2, 7),
    (9, 4, 5, 3, 1, 2, 6, 8, 7, 0),
    (4, 2, 8, 6, 5, 7, 3, 9, 0, 1),
    (2, 7, 9, 3, 8, 0, 6, 4, 1, 5),
    (7, 0, 4, 6, 9, 1, 3, 2, 5, 8),
)


def _verhoeff_ok(digits: str) -> bool:
    check = 0
    for i, ch in enumerate(reversed(digits)):
        check = _VERHOEFF_D[check][_VERHOEFF_P[i % 8][int(ch)]]
    return check == 0


def normalize_label(text: str) -> str:
    """Lookup key: case-folded, apostrophes dropped, runs of space/``_``/``-``/``/`` as one space."""
    folded = text.casefold().replace("\u2019", "'").replace("'", "")
    return _SEPARATORS.sub(" ", folded).strip()


def _dedupe_casefold(values: Iterable[str]) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    for value in values:
        key = value.casefold()
        if key not in seen:
            seen.add(key)
            out.append(value)
    return out


class Code(BaseModel):
    """A coded concept: ``code`` in some code system plus a human-readable ``display``."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    code: str = Field(min_length=1)
    display: str = Field(min_length=1)


class Condition(BaseModel):
    """One skin condition: names for prompts and lookup, codes, flags and default triage tier."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=_ID_PATTERN, max_length=64)
    name: str = Field(min_length=1)
    synonyms: list[str] = Field(default_factory=list)
    abbreviations: list[str] = Field(default_factory=list)
    snomed_ct: Code | None
    icd10: Code
    malignant: bool
    premalignant: bool = False
    category: Category
    urgency: UrgencyTier
    look_alikes: list[str] = Field(default_factory=list)
    dataset_codes: dict[str, str] = Field(default_factory=dict)
    validated_models: list[str] = Field(default_factory=list)
    notes: str | None = None

    @field_validator("synonyms", "abbreviations", "validated_models")
    @classmethod
    def _clean_strings(cls, values: list[str]) -> list[str]:
        cleaned = [v.strip() for v in values]
        if any(not v for v in cleaned):
            raise ValueError("entries must be non-empty strings")
        dupes = sorted({v for v in cleaned if [c.casefold() for c in cleaned].count(v.casefold()) > 1})
        if dupes:
            raise ValueError(f"duplicate entries (case-insensitive): {dupes}")
        return cleaned

    @field_validator("look_alikes")
    @classmethod
    def _unique_look_alikes(cls, values: list[str]) -> list[str]:
        if len(set(values)) != len(values):
            raise ValueError(f"duplicate look-alikes in {values}")
        return values

    @field_validator("dataset_codes")
    @classmethod
    def _clean_dataset_codes(cls, codes: dict[str, str]) -> dict[str, str]:
        cleaned = {k.strip(): v.strip() for k, v in codes.items()}
        if any(not k or not v for k, v in cleaned.items()):
            raise ValueError("dataset names and codes must be non-empty")
        return cleaned

    @field_validator("snomed_ct")
    @classmethod
    def _check_sctid(cls, code: Code | None) -> Code | None:
        if code is None:
            return None
        sctid = code.code
        if not _SCTID.match(sctid) or not _verhoeff_ok(sctid):
            raise ValueError(f"{sctid!r} is not a valid SNOMED CT identifier (format or check digit)")
        if sctid[-3:-1] not in ("00", "10"):
            raise ValueError(f"{sctid!r} is not a SNOMED CT concept id (partition {sctid[-3:-1]})")
        return code

    @field_validator("icd10")
    @classmethod
    def _check_icd10(cls, code: Code) -> Code:
        if not _ICD10.match(code.code):
            raise ValueError(f"{code.code!r} is not a well-formed ICD-10 code")
        return code

    @model_validator(mode="after")
    def _check_consistency(self) -> Condition:
        if self.id in self.look_alikes:
            raise ValueError(f"{self.id}: a condition cannot be its own look-alike")
        if self.malignant and self.premalignant:
            raise ValueError(f"{self.id}: malignant and premalignant are mutually exclusive")
        if (self.category == "malignant_neoplasm") != self.malignant:
            raise ValueError(f"{self.id}: category malignant_neoplasm must match malignant=true")
        if self.category == "premalignant" and not self.premalignant:
            raise ValueError(f"{self.id}: category premalignant requires premalignant=true")
        name_key = self.name.casefold()
        clash = [s for s in self.synonyms if s.casefold() == name_key]
        if clash:
            raise ValueError(f"{self.id}: synonym repeats the name: {clash}")
        return self

    @property
    def prompt_names(self) -> list[str]:
        """Name then synonyms, case-insensitively deduplicated: the texts of the prompt ensemble."""
        return _dedupe_casefold([self.name, *self.synonyms])

    @property
    def is_malignant(self) -> bool:
        """True for malignant neoplasms (premalignant conditions are not malignant)."""
        return self.malignant

    def lookup_labels(self) -> list[str]:
        """Every text that resolves to this condition: id, name, synonyms, abbreviations, dataset codes."""
        return [self.id, self.name, *self.synonyms, *self.abbreviations, *self.dataset_codes.values()]


def _check_template(template: str) -> str:
    if template.count("{}") != 1 or "{" in template.replace("{}", "") or "}" in template.replace("{}", ""):
        raise ValueError(f"template must contain exactly one '{{}}' and no other braces: {template!r}")
    return template


class PromptTemplates(BaseModel):
    """Prompt templates per image modality; each formats one condition name into a sentence."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    clinical: list[str] = Field(min_length=1)
    dermoscopic: list[str] = Field(min_length=1)

    @field_validator("clinical", "dermoscopic")
    @classmethod
    def _check_templates(cls, templates: list[str]) -> list[str]:
        checked = [_check_template(t.strip()) for t in templates]
        if len(set(checked)) != len(checked):
            raise ValueError("duplicate templates")
        return checked


class ReferencePrompts(BaseModel):
    """Condition-free prompts per modality, for MONET-style contrast (prompt minus reference)."""

    model_config = ConfigDict(frozen=True, extra="forbid", str_strip_whitespace=True)

    clinical: str = Field(min_length=1)
    dermoscopic: str = Field(min_length=1)


class Taxonomy(BaseModel):
    """The validated condition list with lookup helpers; treat instances as read-only."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    code_systems: dict[str, str]
    templates: PromptTemplates
    reference_prompts: ReferencePrompts
    conditions: list[Condition] = Field(min_length=1)

    _by_id: dict[str, Condition] = PrivateAttr(default_factory=dict)
    _lookup: dict[str, str] = PrivateAttr(default_factory=dict)
    _fingerprint: str = PrivateAttr(default="")

    @field_validator("code_systems")
    @classmethod
    def _check_code_systems(cls, systems: dict[str, str]) -> dict[str, str]:
        missing = {"snomed_ct", "icd10"} - systems.keys()
        if missing:
            raise ValueError(f"code_systems must name {sorted(missing)}")
        return systems

    @model_validator(mode="after")
    def _check_and_index(self) -> Taxonomy:
        errors: list[str] = []
        by_id: dict[str, Condition] = {}
        for cond in self.conditions:
            if cond.id in by_id:
                errors.append(f"duplicate condition id {cond.id!r}")
            by_id.setdefault(cond.id, cond)

        for cond in self.conditions:
            missing = [a for a in cond.look_alikes if a not in by_id]
            if missing:
                errors.append(f"{cond.id}: look_alikes reference unknown ids {missing}")

        synonym_owner: dict[str, str] = {}
        for cond in self.conditions:
            for syn in cond.synonyms:
                owner = synonym_owner.setdefault(syn.casefold(), cond.id)
                if owner != cond.id:
                    errors.append(f"synonym {syn!r} is shared by {owner} and {cond.id}")

        dataset_owner: dict[tuple[str, str], str] = {}
        for cond in self.conditions:
            for dataset, code in cond.dataset_codes.items():
                owner = dataset_owner.setdefault((dataset, code.casefold()), cond.id)
                if owner != cond.id:
                    errors.append(f"{dataset} code {code!r} is mapped by {owner} and {cond.id}")

        lookup: dict[str, str] = {}
        for cond in self.conditions:
            for label in cond.lookup_labels():
                key = normalize_label(label)
                owner = lookup.setdefault(key, cond.id)
                if owner != cond.id:
                    errors.append(f"label {label!r} is ambiguous: matches {owner} and {cond.id}")

        if errors:
            raise ValueError("invalid taxonomy:\n  " + "\n  ".join(_dedupe_casefold(errors)))

        self._by_id = by_id
        self._lookup = lookup
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        self._fingerprint = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
        return self

    def __len__(self) -> int:
        return len(self.conditions)

    def __contains__(self, condition_id: object) -> bool:
        return condition_id in self._by_id

    @property
    def ids(self) -> list[str]:
        """Condition ids in file order (the class order of zero-shot scoring)."""
        return [c.id for c in self.conditions]

    @property
    def fingerprint(self) -> str:
        """SHA-256 hex of the canonical JSON of the validated content (formatting/comments ignored)."""
        return self._fingerprint

    def get(self, condition_id: str) -> Condition:
        """The condition with this exact id; KeyError (with close ids) otherwise."""
        try:
            return self._by_id[condition_id]
        except KeyError:
            close = difflib.get_close_matches(str(condition_id), self.ids, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; use resolve() for names and synonyms"
            raise KeyError(f"unknown condition id {condition_id!r}{hint}") from None

    def resolve(self, label: str) -> Condition:
        """Condition for an id, name, synonym, abbreviation or dataset code (case-insensitive)."""
        key = normalize_label(label)
        condition_id = self._lookup.get(key)
        if condition_id is not None:
            return self._by_id[condition_id]
        close = difflib.get_close_matches(key, list(self._lookup), n=8, cutoff=0.6)
        suggestions = _dedupe_casefold(self._lookup[k] for k in close)[:5]
        raise UnknownLabelError(label, suggestions)

    def templates_for(self, modality: Modality) -> list[str]:
        """Prompt templates for ``clinical`` or ``dermoscopic`` images (a copy)."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return list(getattr(self.templates, modality))

    def reference_prompt(self, modality: Modality) -> str:
        """The condition-free reference prompt for ``modality``."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        return str(getattr(self.reference_prompts, modality))

    def prompts_for(self, condition_id: str, modality: Modality) -> list[str]:
        """Every template filled with every prompt name of one condition."""
        names = self.get(condition_id).prompt_names
        return [t.format(n) for n in names for t in self.templates_for(modality)]

    def subset(self, ids: Iterable[str]) -> Taxonomy:
        """A taxonomy of these conditions (given order, duplicates dropped); look-alikes outside it are pruned."""
        wanted = list(dict.fromkeys(ids))
        if not wanted:
            raise ValueError("subset needs at least one condition id")
        chosen = [self.get(i) for i in wanted]
        keep = set(wanted)
        data: dict[str, Any] = self.model_dump(mode="json", exclude={"conditions"})
        data["conditions"] = [
            {**c.model_dump(mode="json"), "look_alikes": [a for a in c.look_alikes if a in keep]} for c in chosen
        ]
        return Taxonomy.model_validate(data)

    def validated_for(self, model_name: str) -> list[Condition]:
        """Conditions whose ``validated_models`` lists ``model_name``, in file order."""
        return [c for c in self.conditions if model_name in c.validated_models]


def _read(path: Path) -> Taxonomy:
    with path.open(encoding="utf-8") as fh:
        data = yaml.safe_load(fh)
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return Taxonomy.model_validate(data)


@functools.lru_cache(maxsize=1)
def _load_default() -> Taxonomy:
    return _read(DEFAULT_TAXONOMY_PATH)


def load_taxonomy(path: str | Path | None = None) -> Taxonomy:
    """Load and validate a taxonomy YAML; the packaged default is parsed once and cached.

    Raises pydantic.ValidationError (a ValueError) for invalid content, FileNotFoundError for a
    missing file and yaml.YAMLError for malformed YAML.
    """
    if path is None:
        return _load_default()
    return _read(Path(path))
