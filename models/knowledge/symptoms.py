"""Structured findings from free-text symptoms: concepts, negation and duration.

Patients write "mole bleeding and getting bigger, no pain"; clinicians write "denies itch".
A small lexicon finds concept mentions (longest match wins), a NegEx-style rule decides whether
each is negated, and a duration parser reads "3 days", "two months", "since last year". The
findings fill the unknown fields of a `RiskFactors` (explicit risk factors always win).

Negation scope: a cue ("no", "not", "denies", "without", "never", "hasn't", ...) negates the
mentions after it in its clause; a clause ends at . ; ! ? or a newline, at a contrast ("but",
"however", "although", ...) or at a new subject ("and it", "which", "that"). A comma ends it too,
unless the clause goes on as a list ("no bleeding, itch or pain"). Trailing cues ("bleeding: no",
"itch denied") negate the mention before them. A concept both affirmed and denied counts as
present: for triage a missed alarm costs more than a false one.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from models.knowledge.risk_factors import Immunosuppression, RiskFactors

__all__ = [
    "RISK_CONCEPTS",
    "FindingSpan",
    "SymptomFindings",
    "apply_findings",
    "extract_findings",
    "findings_provenance",
    "parse_duration",
]

_W = r"(?<![a-z])"  # left word boundary that treats digits as word characters too
_E = r"(?![a-z])"

# concept -> patterns; matched on lower-cased text. Concepts named like RiskFactors fields map onto them.
_LEXICON: dict[str, tuple[str, ...]] = {
    "itch": (r"itch\w*", r"prurit\w*", r"scratch(?:y|ing)"),
    "pain": (r"pain(?:ful)?", r"hurt\w*", r"sore", r"tender\w*", r"aching|aches?", r"sting(?:s|ing)?"),
    "bleeding": (r"bleed\w*", r"bled", r"blood\w*", r"ooz\w*", r"weep\w*", r"crust\w*", r"scab\w*"),
    "changed_size": (
        r"grow\w*|grew|grown",
        r"enlarg\w*",
        r"(?:getting |got |gotten |become |became )?(?:bigger|larger)",
        r"chang\w* (?:in |its )?size",
        r"size (?:has |have )?chang\w*",
        r"increas\w* in size",
    ),
    "rapid_growth": (
        r"(?:grow\w*|grew|grown|enlarg\w*) (?:very |really )?(?:fast|quickly|rapidly)",
        r"(?:rapid|quick|fast)(?:ly)?[ -](?:grow\w*|enlarg\w*)",
        r"rapid growth",
    ),
    "changed_shape": (r"chang\w* (?:in |its )?shape", r"shape (?:has |have )?chang\w*"),
    "changed": (r"chang(?:ed|es|ing)", r"evolv\w*", r"looks? different"),
    "changed_colour": (
        r"chang\w* (?:in |its )?colou?r",
        r"colou?r (?:has |have )?chang\w*",
        r"(?:got|getting|gone|turned|became|become) darker",
        r"darken\w*",
    ),
    "irregular_shape": (r"irregular (?:shape|border|edge)s?", r"ragged (?:border|edge)s?", r"asymmetric\w*"),
    "irregular_colour": (r"(?:irregular|uneven|multiple|several|different|many) colou?rs?", r"multi-?colou?r\w*"),
    "ulceration": (
        r"ulcer\w*",
        r"open sore",
        r"sore (?:that |which )?(?:won'?t|doesn'?t|does not|will not) heal",
        r"(?:won'?t|doesn'?t|does not|will not|not) heal\w*",
        r"non-?healing",
    ),
    "elevation": (r"raised", r"elevated", r"lump\w*", r"bump\w*", r"nodul\w*", r"protrud\w*"),
    "inflammation": (r"inflam\w*", r"swollen|swelling"),
    "fever": (r"fever\w*", r"temperature", r"chills?", r"rigou?rs?", r"pyrexi\w*"),
    "spreading_redness": (
        r"spreading (?:redness|rash|red\w*|infection)",
        r"(?:redness|red area|rash) (?:that |which )?(?:is |has been |keeps )?spreading",
        r"red streaks?",
    ),
    "widespread_blistering": (
        r"(?:widespread|extensive|many|lots of) blisters?",
        r"blister\w* (?:all over|everywhere|over (?:my|the|his|her) (?:whole )?body)",
        r"(?:skin (?:is )?peeling|peeling skin|skin (?:is )?coming off)",
    ),
    "skin_pain": (
        r"skin (?:is |feels )?(?:very |really )?(?:painful|sore|tender|burning)",
        r"(?:painful|burning) skin",
        r"skin (?:hurts|burns)",
    ),
    "near_eye": (
        r"(?:near|around|by|next to|close to|on|above|below|under) (?:my |the |his |her )?(?:left |right )?eyes?",
        r"eyelids?",
        r"forehead",
        r"tip of (?:my |the |his |her )?nose",
        r"periorbital",
    ),
    "family_history_melanoma": (
        r"(?:mother|father|mom|mum|dad|sister|brother|parent|sibling|family)\w* (?:had|has|with|died of) melanoma",
        r"family history of melanoma",
        r"melanoma runs in (?:my|the|our) family",
    ),
    "personal_history_skin_cancer": (
        r"(?:history of|had|previous|prior|past) (?:a )?(?:skin cancer|melanoma|basal cell|bcc|squamous cell|scc)",
    ),
    "immunosuppression": (
        r"(?:kidney|liver|heart|lung|organ|renal) transplant\w*",
        r"transplant\w*",
        r"immuno-?suppress\w*",
        r"immuno-?compromised",
        r"on (?:methotrexate|azathioprine|tacrolimus|ciclosporin|cyclosporine|mycophenolate|biologics?|"
        r"steroids|prednisolone|prednisone|chemo\w*)",
        r"hiv",
    ),
    "sunburn_history": (r"sun ?burn\w*",),
    "many_moles": (
        r"(?:many|lots of|numerous|loads of|a lot of|hundreds of|over 50|more than 50|> ?50) (?:moles|nevi|naevi)",
    ),
    "shingles": (r"shingles", r"zoster"),
}

# words that deny a concept by themselves
_NEGATIVE_FORMS: dict[str, tuple[str, ...]] = {
    "pain": (r"painless", r"pain-free"),
    "elevation": (r"flat",),
    "itch": (r"non-?itchy",),
    "bleeding": (r"non-?bleeding",),
}

RISK_CONCEPTS = frozenset(set(_LEXICON) - {"shingles", "changed"})  # concepts that are RiskFactors fields

_PRE_CUES = re.compile(
    _W + r"(?:no|not|never|denies|denied|deny|without|none|nor|neither|negative for|free of|absence of|"
    r"hasn'?t|haven'?t|hadn'?t|doesn'?t|don'?t|didn'?t|isn'?t|aren'?t|wasn'?t|won'?t|cannot|can'?t|no longer)" + _E
)
_POST_CUE = re.compile(r"\s*+(?:[:=\-–]\s*+)?(?:no|none|denied|absent|negative|not present)" + _E)
_CLAUSE_END = re.compile(
    r"[.;!?\n]|" + _W + r"(?:but|however|although|though|yet|except|apart from|and it|and has|"
    r"and is|and was|and now|and i|which|that|so)" + _E
)
_LIST_WORD = re.compile(_W + r"(?:or|nor)" + _E)

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


class FindingSpan(BaseModel):
    """One concept mention: where it is, what it said, and whether it was negated."""

    model_config = ConfigDict(frozen=True)

    concept: str
    start: int
    end: int
    text: str
    negated: bool


class SymptomFindings(BaseModel):
    """Concepts affirmed and denied in the text, the lesion duration, and the evidence spans."""

    model_config = ConfigDict(frozen=True)

    present: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()
    duration_days: float | None = Field(default=None, description="First duration mentioned, in days.")
    duration_text: str | None = None
    diameter_mm: float | None = Field(default=None, description="A size given in mm or cm, in millimetres.")
    immunosuppression_kind: Immunosuppression | None = None
    spans: tuple[FindingSpan, ...] = ()


_WORD_TAIL = r"\w{0,40}+"  # a stem's ending: bounded and possessive, so a long run is walked once


def _compile() -> list[tuple[str, bool, re.Pattern[str]]]:
    """The lexicon as compiled patterns; ``\\w*`` (readable above) becomes :data:`_WORD_TAIL`."""
    out = []
    for concept, patterns in _LEXICON.items():
        out.extend((concept, False, re.compile(_W + f"(?:{p})".replace(r"\w*", _WORD_TAIL) + _E)) for p in patterns)
    for concept, patterns in _NEGATIVE_FORMS.items():
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


class _Clauses:
    """Clause ends, negation cues, commas and list words of one text, found once (linear time) and
    looked up per mention by bisection, instead of re-scanning the text for every mention."""

    def __init__(self, text: str) -> None:
        self.text = text
        ends = list(_CLAUSE_END.finditer(text))
        self.end_starts = [m.start() for m in ends]
        self.end_ends = [m.end() for m in ends]
        cues = list(_PRE_CUES.finditer(text))
        self.cue_starts = [m.start() for m in cues]
        self.cue_ends = [m.end() for m in cues]
        self.commas = [i for i, ch in enumerate(text) if ch == ","]
        self.list_words = [(m.start(), m.end()) for m in _LIST_WORD.finditer(text)]

    def start_of(self, pos: int) -> int:
        """Where the clause holding ``pos`` starts: after the last clause end that ends by ``pos``."""
        i = bisect_right(self.end_ends, pos)
        return self.end_ends[i - 1] if i else 0

    def stop_after(self, pos: int) -> int:
        """Where the clause holding ``pos`` stops: the next clause end starting at or after ``pos``."""
        i = bisect_left(self.end_starts, pos)
        return self.end_starts[i] if i < len(self.end_starts) else len(self.text)

    def last_cue_end(self, lo: int, hi: int) -> int | None:
        """The end of the last negation cue inside ``[lo, hi)``, or None."""
        i = bisect_right(self.cue_ends, hi) - 1
        return self.cue_ends[i] if i >= 0 and self.cue_starts[i] >= lo else None

    def has_comma(self, lo: int, hi: int) -> bool:
        i = bisect_left(self.commas, lo)
        return i < len(self.commas) and self.commas[i] < hi

    def has_list_word(self, lo: int, hi: int) -> bool:
        i = bisect_left(self.list_words, (lo, lo))
        return i < len(self.list_words) and self.list_words[i][1] <= hi

    def is_negated(self, start: int, end: int) -> bool:
        cue_end = self.last_cue_end(self.start_of(start), start)
        if cue_end is not None:
            if not self.has_comma(cue_end, start):
                return True
            # the cue's scope crosses commas only in a list: "no bleeding, itch or pain"
            if self.has_list_word(cue_end, self.stop_after(start)):
                return True
        return bool(_POST_CUE.match(self.text, end))


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


def extract_findings(text: str | None) -> SymptomFindings:
    """Concepts affirmed and denied in `text`, with spans and the first duration."""
    if not text or not text.strip():
        return SymptomFindings()
    low = text.lower().replace("\u2019", "'")
    spans: list[FindingSpan] = []
    present: set[str] = set()
    absent: set[str] = set()
    kind: Immunosuppression | None = None
    clauses = _Clauses(low)
    for start, end, concept, negative_form in _mentions(low):
        negated = negative_form != clauses.is_negated(start, end)
        spans.append(FindingSpan(concept=concept, start=start, end=end, text=text[start:end], negated=negated))
        (absent if negated else present).add(concept)
        if concept == "immunosuppression" and not negated and kind is not Immunosuppression.TRANSPLANT:
            kind = _immunosuppression_kind(low[start:end])
    if "rapid_growth" in present:
        present.add("changed_size")
    absent -= present
    duration = parse_duration(low)
    size = _DIAMETER.search(low)
    diameter = float(size.group(1)) * (10 if size and size.group(2).startswith("c") else 1) if size else None
    return SymptomFindings(
        present=frozenset(present),
        absent=frozenset(absent),
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


def apply_findings(risk: RiskFactors | None, findings: SymptomFindings | None) -> RiskFactors:
    """`risk` with its unknown fields filled from the text findings; explicit values always win."""
    risk = risk or RiskFactors()
    if findings is None:
        return risk
    explicit = risk.model_dump(exclude_none=True)
    merged = {**_finding_values(findings), **explicit}
    return RiskFactors(**merged)


def findings_provenance(risk: RiskFactors | None, findings: SymptomFindings | None) -> frozenset[str]:
    """The RiskFactors fields whose value comes from the text (not given explicitly)."""
    if findings is None:
        return frozenset()
    explicit = (risk or RiskFactors()).model_dump(exclude_none=True)
    return frozenset(k for k in _finding_values(findings) if k not in explicit)
