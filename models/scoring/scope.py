"""Which conditions an answer ranks, and what says a photo lies outside them (issue 16, "an honest default scope").

A model's card names the conditions it was validated for (`validated_conditions`). By default the
engine ranks only those (`TriageOptions.label_scope = "validated"`): the image softmax renormalised
within them, the fitted fusion, calibration and conformal sets exactly as they were fitted and measured.
The other taxonomy conditions get no probability; instead `ScopeReader.evidence` collects what points at
them (`ScopeReading`), and the `outside_scope` gate (models/uncertainty/gates.py `scope_flags`) turns it
into a flag that requires review:

- the generic fusion (image weight 1, the symptom words, cited priors) over the *whole* taxonomy: its
  mass on conditions outside the validated ones;
- never-validated inflammatory, infective, drug-reaction or bullous conditions the history names
  ("acne", "a rash", "hives"), read by the symptom reader's ConText (not "no rash", "my son's eczema");
- inflammatory findings the symptom reader found present (fever, spreading redness, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from models.knowledge.context import ContextReader
from models.knowledge.risk_factors import RiskFactors
from models.knowledge.risk_priors import LiteraturePriors
from models.knowledge.taxonomy import Taxonomy
from models.scoring.features import LabelScores
from models.scoring.fusion import FusionModel, fuse_scores

__all__ = ["INFLAMMATORY_FINDINGS", "ScopeReader", "ScopeReading"]

# findings that point at an inflammatory or infective condition, none of which the lesion models were validated on
INFLAMMATORY_FINDINGS = ("inflammation", "fever", "spreading_redness", "widespread_blistering", "skin_pain", "shingles")

# a named condition counts only when ConText reads it as the patient's, current and asserted
NOT_CURRENT = frozenset({"negated", "hypothetical", "historical", "family"})
GENERIC_WORDS = frozenset({"spot", "spots", "lump", "bump", "growth", "mark", "sore", "patch"})
# conditions whose names in the history point outside a lesion model's scope (warts excluded: "wart" is
# what many people call a seborrheic keratosis)
OUT_OF_SCOPE_CATEGORIES = ("inflammatory", "infectious", "infestation", "drug_reaction", "autoimmune_bullous")


@dataclass(frozen=True)
class ScopeReading:
    """What points outside the validated conditions (the `outside_scope` gate's input).

    `outside_mass`: the generic fusion's posterior mass (photo over the whole taxonomy, symptom words,
    cited priors) on conditions outside the validated ones; `named`: never-validated conditions the
    symptoms text names; `findings`: inflammatory findings reported present; `closest`: the
    never-validated conditions that mass favours, most first (names, shown without numbers)."""

    validated: tuple[str, ...]
    outside_mass: float
    named: tuple[str, ...] = ()
    findings: tuple[str, ...] = ()
    closest: tuple[str, ...] = ()


class ScopeReader:
    """The validated conditions of one model, and the evidence that an answer falls outside them."""

    def __init__(
        self, taxonomy: Taxonomy, validated: Sequence[str], generic: FusionModel, priors: LiteraturePriors
    ) -> None:
        chosen = set(validated)
        self.taxonomy = taxonomy
        self.validated = tuple(c for c in taxonomy.ids if c in chosen)  # taxonomy order
        self.generic = generic
        self.priors = priors
        self.patterns = self._patterns()

    def note(self, scope: str | None) -> str | None:
        """The ranked scope in words (JSON `scope_note`, the viewer, FHIR RiskAssessment.method, the CDS card)."""
        if scope == "validated":
            names = ", ".join(self.taxonomy.get(c).name for c in self.validated)
            return (
                f"ranked among the {len(self.validated)} conditions this model was validated for ({names}); "
                "other conditions are not ranked (see the outside-scope flag)"
            )
        if scope == "taxonomy":
            return f"ranked among all {len(self.taxonomy.ids)} taxonomy conditions, validated or not"
        return None

    def evidence(
        self, full: LabelScores, risk: RiskFactors | None, symptoms: str | None, findings: Any
    ) -> ScopeReading:
        """`full`: the photo (and symptom words) scored over the whole taxonomy."""
        generic = fuse_scores(full, risk, findings, model=self.generic, priors=self.priors)
        validated = set(self.validated)
        outside = {k: v for k, v in generic.posterior.items() if k not in validated}
        closest = sorted(outside, key=lambda k: -outside[k])[:3]
        present = findings.present if findings is not None else frozenset()
        return ScopeReading(
            validated=self.validated,
            outside_mass=float(sum(outside.values())),
            named=self.named(symptoms),
            findings=tuple(f for f in INFLAMMATORY_FINDINGS if f in present),
            closest=tuple(self.taxonomy.get(k).name for k in closest if k in self.taxonomy),
        )

    def named(self, text: str | None) -> tuple[str, ...]:
        """Never-validated conditions (of OUT_OF_SCOPE_CATEGORIES) the text names as the patient's own and
        current, in the order named; the symptom reader's ConText decides ("no acne", "my sister's eczema",
        "had acne as a teenager", "if it turns into a rash" name nothing; "might be eczema" does)."""
        if not text:
            return ()
        lowered = text.lower()
        hits = sorted((m.start(), m.end(), name) for pattern, name in self.patterns for m in pattern.finditer(lowered))
        if not hits:
            return ()
        reader = ContextReader(lowered, [(start, end) for start, end, _ in hits])
        named: list[str] = []
        for start, end, name in hits:
            if name not in named and not reader.categories(start, end) & NOT_CURRENT:
                named.append(name)
        return tuple(named[:3])

    def _patterns(self) -> list[tuple[re.Pattern[str], str]]:
        out = [(re.compile(r"(?<![a-z])rash(?:es)?(?![a-z])"), "a rash")]
        for cond in self.taxonomy.conditions:
            category = getattr(cond.category, "value", cond.category)
            if cond.id in self.validated or category not in OUT_OF_SCOPE_CATEGORIES or cond.id == "viral_wart":
                continue
            for term in {cond.name, *cond.synonyms}:
                t = term.lower().strip()
                if len(t) >= 4 and t not in GENERIC_WORDS:
                    out.append((re.compile(rf"(?<![a-z]){re.escape(t)}(?![a-z])"), cond.name))
        return out
