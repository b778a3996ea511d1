"""Structured findings from free-text symptoms: concepts, their clinical context, and duration.

Patients write "mole bleeding and getting bigger, no pain"; clinicians write "denies itch". A small
lexicon (`lexicon.py`) finds concept mentions (longest match wins), the ConText rules
(`context.py`) decide each mention's status, and a duration parser reads "3 days", "two months",
"since last year". The findings fill the unknown fields of a `RiskFactors` (explicit risk factors
always win).

A concept's status is one of `present`, `absent` ("no pain", "denies itch"), `possible` ("might be
bleeding", "not sure if it bleeds"), `hypothetical` ("call if it starts to bleed"), `historical`
("it bled last year but has healed") or `family` (said of another person: "my sister's mole
bleeds"). Pseudo-negations ("not only bleeding", "no doubt it is bleeding") stay `present`. A skin
cancer said of a relative ("sister had skin cancer") is `family` for the patient's own history and
`present` for `family_history_skin_cancer` (or `family_history_melanoma`). When one concept is
mentioned more than once the statuses combine in the order present > possible > absent >
historical > hypothetical > family: for triage a missed alarm costs more than a false one.

Only `present` and `absent` fill risk factors (True / False). `possible` alarm concepts ride on
the merged `RiskFactors` as `possible_findings` (not a field, never sent or shown as one): fusion
treats them as unknown, urgency escalates them one tier less than the plain statement (see
`models/scoring/urgency.py`). `hypothetical`, `historical` and `family` are unknown everywhere.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.knowledge.context import ContextReader
from models.knowledge.lexicon import FAMILY_CONCEPTS, HISTORY_CONCEPTS, LEXICON, NEGATIVE_FORMS, RELATIVE_CANCER
from models.knowledge.risk_factors import Immunosuppression, RiskFactors

__all__ = [
    "RISK_CONCEPTS",
    "FindingSpan",
    "FindingStatus",
    "SymptomFindings",
    "apply_findings",
    "extract_findings",
    "findings_provenance",
    "parse_duration",
    "possible_concepts",
]

_W = r"(?<![a-z])"  # left word boundary that treats digits as word characters too
_E = r"(?![a-z])"

RISK_CONCEPTS = frozenset(set(LEXICON) - {"shingles", "changed"})  # concepts that are RiskFactors fields

_NUMBER_WORDS = {
    "a": 1,
    "an": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "eleven": 11,
    "twelve": 12,
    "fifteen": 15,
    "twenty": 20,
    "a few": 3,
    "few": 3,
    "several": 4,
    "a couple of": 2,
    "couple of": 2,
    "a couple": 2,
    "half a": 0.5,
    "a half": 0.5,
}
_UNIT_DAYS = {"hour": 1 / 24, "day": 1.0, "week": 7.0, "month": 30.44, "year": 365.25}
_UNIT = r"(hours?|hrs?|days?|d|weeks?|wks?|months?|mos?|years?|yrs?|y)"
_UNIT_KEY = {"h": "hour", "d": "day", "w": "week", "m": "month", "y": "year"}
# Linear time (issue 15): a number starts only where no digit precedes it (``_N``), runs of digits,
# spaces and dashes are matched possessively (what follows them never starts with one), so a long
# run of digits or spaces is walked once instead of once per start position.
_N = r"(?<![a-z0-9])"
_FLOAT = r"(\d++(?:\.\d++)?+)"
_DIAMETER = re.compile(_N + _FLOAT + r"\s*+(mm|cm|millimet\w{0,20}+|centimet\w{0,20}+)" + _E)
_NUM = _FLOAT + r"(?:\s*+(?:-|to)\s*+" + _FLOAT + ")?"
_WORDNUM = "|".join(sorted((re.escape(k) for k in _NUMBER_WORDS), key=len, reverse=True))
_DURATION_NUM = re.compile(rf"(?:{_N}{_NUM}\s*+(?:-\s*+)?|{_W}({_WORDNUM})[\s-]++){_UNIT}" + _E)
_DURATION_SINCE = re.compile(
    _W + r"since (?:(last|this|a) (week|month|year|morning|night)|(yesterday)|(childhood|birth))" + _E
)
_SINCE_DAYS = {"week": 7.0, "month": 30.44, "year": 365.25, "morning": 0.5, "night": 1.0}


class FindingStatus(StrEnum):
    """What the text says about one concept (ConText's classes, for the patient)."""

    PRESENT = "present"
    ABSENT = "absent"  # negated: "no pain", "denies itch", "painless"
    POSSIBLE = "possible"  # uncertain: "might be bleeding", "not sure if it bleeds"
    HYPOTHETICAL = "hypothetical"  # "call if it starts to bleed"
    HISTORICAL = "historical"  # "it bled last year but has healed"
    FAMILY = "family"  # experiencer is another person: "my sister's mole bleeds"


# how statuses of one concept combine (first wins): a missed alarm costs more than a false one
_PRECEDENCE = (
    FindingStatus.PRESENT,
    FindingStatus.POSSIBLE,
    FindingStatus.ABSENT,
    FindingStatus.HISTORICAL,
    FindingStatus.HYPOTHETICAL,
    FindingStatus.FAMILY,
)


class FindingSpan(BaseModel):
    """One concept mention: where it is, what it said, and its status."""

    model_config = ConfigDict(frozen=True)

    concept: str
    start: int
    end: int
    text: str
    negated: bool = Field(description="status is absent (kept for older readers)")
    status: FindingStatus = FindingStatus.PRESENT


class SymptomFindings(BaseModel):
    """Each concept's status, the lesion duration, and the evidence spans; `present` and `absent`
    are the concepts whose status is present / absent (kept for older readers)."""

    model_config = ConfigDict(frozen=True)

    present: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()
    status: dict[str, FindingStatus] = Field(
        default_factory=dict,
        description="concept -> present, absent, possible, hypothetical, historical or family",
    )
    duration_days: float | None = Field(default=None, description="First duration mentioned, in days.")
    duration_text: str | None = None
    diameter_mm: float | None = Field(default=None, description="A size given in mm or cm, in millimetres.")
    immunosuppression_kind: Immunosuppression | None = None
    spans: tuple[FindingSpan, ...] = ()

    def with_status(self, status: FindingStatus) -> frozenset[str]:
        """The concepts whose combined status is `status`."""
        return frozenset(c for c, s in self.status.items() if s is status)


_WORD_TAIL = r"\w{0,40}+"  # a stem's ending: bounded and possessive, so a long run is walked once


def _compile() -> list[tuple[str, bool, re.Pattern[str]]]:
    """The lexicon as compiled patterns; ``\\w*`` (readable above) becomes :data:`_WORD_TAIL`."""
    out = []
    for concept, patterns in LEXICON.items():
        out.extend((concept, False, re.compile(_W + f"(?:{p})".replace(r"\w*", _WORD_TAIL) + _E)) for p in patterns)
    for concept, patterns in NEGATIVE_FORMS.items():
        out.extend((concept, True, re.compile(_W + f"(?:{p})" + _E)) for p in patterns)
    return out


_PATTERNS = _compile()


def _mentions(text: str) -> list[tuple[int, int, str, bool]]:
    """Non-overlapping concept mentions, the longest (then earliest) match winning each region."""
    found = [(m.start(), m.end(), c, neg) for c, neg, p in _PATTERNS for m in p.finditer(text)]
    found.sort(key=lambda f: (-(f[1] - f[0]), f[0]))
    occupied = bytearray(len(text))  # 1 where a mention was taken: one lookup per candidate, not a scan of all
    taken: list[tuple[int, int, str, bool]] = []
    for f in found:
        if occupied.find(1, f[0], f[1]) < 0:
            occupied[f[0] : f[1]] = b"\x01" * (f[1] - f[0])
            taken.append(f)
    return sorted(taken)


def parse_duration(text: str) -> tuple[float, str] | None:
    """The first duration in `text`, in days, and the words that said it; None when there is none."""
    text = text.lower()
    candidates: list[tuple[int, float, str]] = []
    for m in _DURATION_NUM.finditer(text):
        if m.group(1):
            lo = float(m.group(1))
            hi = float(m.group(2)) if m.group(2) else lo
            value = (lo + hi) / 2
        else:
            value = float(_NUMBER_WORDS[m.group(3)])
        key = _UNIT_KEY[m.group(4)[0]]
        candidates.append((m.start(), value * _UNIT_DAYS[key], m.group(0)))
    for m in _DURATION_SINCE.finditer(text):
        if m.group(3):
            days = 1.0
        elif m.group(4):
            continue  # "since childhood/birth": long-standing, no number to give
        else:
            days = _SINCE_DAYS[m.group(2)] * (0.5 if m.group(1) == "this" and m.group(2) in ("week", "month") else 1)
        candidates.append((m.start(), days, m.group(0)))
    if not candidates:
        return None
    _, days, said = min(candidates)
    return days, said


def _immunosuppression_kind(span: str) -> Immunosuppression:
    if "transplant" in span:
        return Immunosuppression.TRANSPLANT
    if span.startswith("on "):
        return Immunosuppression.DRUGS
    return Immunosuppression.OTHER if "hiv" in span else Immunosuppression.DRUGS


def _status(concept: str, categories: set[str], negative_form: bool) -> FindingStatus:
    """One mention's status from the ConText categories whose scope holds it."""
    if "family" in categories and concept not in FAMILY_CONCEPTS:
        return FindingStatus.FAMILY
    if "hypothetical" in categories:
        return FindingStatus.HYPOTHETICAL
    if "possible" in categories:
        return FindingStatus.POSSIBLE
    if negative_form != ("negated" in categories):
        return FindingStatus.ABSENT
    if "historical" in categories and concept not in HISTORY_CONCEPTS:
        return FindingStatus.HISTORICAL
    return FindingStatus.PRESENT


def _combine(status: dict[str, FindingStatus], concept: str, new: FindingStatus) -> None:
    old = status.get(concept)
    if old is None or _PRECEDENCE.index(new) < _PRECEDENCE.index(old):
        status[concept] = new


def extract_findings(text: str | None) -> SymptomFindings:
    """Each concept's status in `text` (ConText), with spans, the first duration and any size."""
    if not text or not text.strip():
        return SymptomFindings()
    low = text.lower().replace("\u2019", "'")
    mentions = _mentions(low)
    reader = ContextReader(low, [(m[0], m[1]) for m in mentions])
    spans: list[FindingSpan] = []
    status: dict[str, FindingStatus] = {}
    kind: Immunosuppression | None = None
    for start, end, concept, negative_form in mentions:
        categories: set[str] = set(reader.categories(start, end))
        said = _status(concept, categories, negative_form)
        spans.append(
            FindingSpan(
                concept=concept,
                start=start,
                end=end,
                text=text[start:end],
                negated=said is FindingStatus.ABSENT,
                status=said,
            )
        )
        _combine(status, concept, said)
        if concept == RELATIVE_CANCER[0] and said is FindingStatus.FAMILY:
            # "my sister had skin cancer": the patient's family history, in the sister's own context
            relative = RELATIVE_CANCER[1] if "melanoma" in low[start:end] else RELATIVE_CANCER[2]
            _combine(status, relative, _status(relative, categories - {"family"}, negative_form))
        if (
            concept == "immunosuppression"
            and said is FindingStatus.PRESENT
            and kind is not Immunosuppression.TRANSPLANT
        ):
            kind = _immunosuppression_kind(low[start:end])
    if status.get("rapid_growth") in (FindingStatus.PRESENT, FindingStatus.POSSIBLE):
        _combine(status, "changed_size", status["rapid_growth"])
    duration = parse_duration(low)
    size = _DIAMETER.search(low)
    diameter = float(size.group(1)) * (10 if size and size.group(2).startswith("c") else 1) if size else None
    return SymptomFindings(
        present=frozenset(c for c, s in status.items() if s is FindingStatus.PRESENT),
        absent=frozenset(c for c, s in status.items() if s is FindingStatus.ABSENT),
        status=status,
        duration_days=duration[0] if duration else None,
        duration_text=duration[1] if duration else None,
        immunosuppression_kind=kind,
        diameter_mm=diameter if diameter is not None and diameter <= 300 else None,
        spans=tuple(spans),
    )


def _finding_values(findings: SymptomFindings) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for concept in RISK_CONCEPTS & (findings.present | findings.absent):
        values[concept] = concept in findings.present
    if "immunosuppression" in values:
        values["immunosuppression"] = (
            findings.immunosuppression_kind or Immunosuppression.DRUGS
            if values["immunosuppression"]
            else Immunosuppression.NONE
        )
    if "changed" in findings.present:
        values.setdefault("changed_shape", True)
    elif "changed" in findings.absent:
        values.setdefault("changed_shape", False)
        values.setdefault("changed_colour", False)
    if findings.duration_days is not None:
        values["lesion_duration_days"] = min(findings.duration_days, 120 * 365.25)
    if findings.diameter_mm is not None:
        values["diameter_mm"] = findings.diameter_mm
    return values


def possible_concepts(findings: SymptomFindings) -> frozenset[str]:
    """RiskFactors fields (and "shingles") the text says only possibly: "might be bleeding"."""
    said = findings.with_status(FindingStatus.POSSIBLE)
    out = set(said & (RISK_CONCEPTS | {"shingles"})) - {"immunosuppression"}  # yes/no facts only
    if "changed" in said:
        out.add("changed_shape")
    return frozenset(out)


def apply_findings(risk: RiskFactors | None, findings: SymptomFindings | None) -> RiskFactors:
    """`risk` with its unknown fields filled from the text findings; explicit values always win."""
    risk = risk or RiskFactors()
    if findings is None:
        return risk
    explicit = risk.model_dump(exclude_none=True)
    merged = RiskFactors(**{**_finding_values(findings), **explicit})
    possible = {
        c for c in possible_concepts(findings) if c not in RiskFactors.model_fields or getattr(merged, c) is None
    }
    return merged.with_possible(possible) if possible else merged


def findings_provenance(risk: RiskFactors | None, findings: SymptomFindings | None) -> frozenset[str]:
    """The RiskFactors fields whose value comes from the text (not given explicitly)."""
    if findings is None:
        return frozenset()
    explicit = (risk or RiskFactors()).model_dump(exclude_none=True)
    return frozenset(k for k in _finding_values(findings) if k not in explicit)
