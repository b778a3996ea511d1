"""ConText for patient text: is a mention negated, uncertain, hypothetical, historical, or someone else's?

The ConText algorithm (Harkema H, Dowling JN, Thornblade T, Chapman WW. ConText: an algorithm for
determining negation, experiencer, and temporal status from clinical reports. J Biomed Inform
2009;42:839-51), as a small rule engine over regular expressions:

- **triggers** set a category for the mentions in their scope: `negated`, `possible`,
  `hypothetical`, `historical`, `family` (the experiencer is another person). A *forward*
  trigger (pre-modifier: "no", "might", "if", "used to", "my sister") covers the mentions after
  it; a *backward* one (post-modifier: "hard to say", "last year", "has healed", "in my family")
  the mentions before it.
- **pseudo-triggers** look like triggers but trigger nothing ("not only", "no doubt", "can't
  stop", "hasn't stopped", "since last year", "mum says"); overlapping matches are resolved
  longest first, so "not only" hides its "not" and "not sure if" hides its "not".
- **termination**: a scope ends at a sentence end (. ; ! ? newline), at a termination term
  ("but", "however", "although", "which", "that", "except", "and it", "and I", ...), at a comma
  unless the clause goes on as a list ("no bleeding, itch or pain"), and at category-specific
  terms: "now", "currently", "still", "again" end a historical scope; "I", "me", "my", "mine"
  end another person's; "then" ends a hypothetical one.
- a trigger inside a concept mention is not a trigger ("a sore that won't heal").

Every pattern is a plain alternation with possessive or bounded tails, found once per text
(`finditer`), and each mention looks up its nearest trigger and terminator by bisection, so one
text costs O(n log n) (issue 15: 2,000 characters in well under 50 ms).
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["CATEGORIES", "Category", "ContextReader"]

Category = Literal["negated", "possible", "hypothetical", "historical", "family"]
CATEGORIES: tuple[Category, ...] = ("negated", "possible", "hypothetical", "historical", "family")
Direction = Literal["forward", "backward", "both"]

_W = r"(?<![a-z])"  # word boundaries that treat digits as word characters too
_E = r"(?![a-z])"
_RELATIVE = (
    r"(?:mother|mom|mum|mummy|mommy|father|dad|daddy|sister|brother|sibling|parent|son|daughter|child|kid|"
    r"aunt|auntie|uncle|cousin|niece|nephew|grand(?:mother|father|ma|pa|parent)|granny|grandad|gran|"
    r"husband|wife|partner|boyfriend|girlfriend|friend|flatmate|colleague|neighbou?r)s?"
)
_PERIOD = r"(?:week|month|year|summer|winter|spring|autumn|fall|night|weekend|christmas|time)"
_MONTH = r"(?:january|february|march|april|june|july|august|september|october|november|december)"

# (category, direction, pattern): the triggers, matched on lower-cased text
_TRIGGERS: tuple[tuple[Category | None, Direction, str], ...] = (
    # pseudo-triggers (category None): match, occupy their words, trigger nothing
    (
        None,
        "forward",
        r"not only|not just|not merely|no doubt|without (?:a |any )?doubt|no question|"
        r"not (?:getting |any )?better|no better|no improvement|not improv\w{0,10}+|(?:can'?t|cannot|won'?t|"
        r"doesn'?t|does not|didn'?t|hasn'?t|has not|haven'?t|will not|never) stop(?:ped|s)?|"
        r"not go(?:ing)? away|won'?t go away|doesn'?t go away|no sign of (?:it )?stopping|no end",
    ),
    (
        None,
        "forward",
        r"(?:since|over|during|within|in) (?:the )?(?:last|past|previous) "
        r"(?:few |couple of |\d{1,3}+ |two |three |several )?"
        + _PERIOD
        + r"?s?|since last "
        + _PERIOD
        + r"|(?:started|began|begun|appeared|came up|first noticed|noticed it) (?:about |around )?"
        r"(?:\w{1,12}+ ){0,2}+ago|since (?:may|then|" + _MONTH + r")|in may|even if|as if|if so|if any\w*",
    ),
    (
        None,
        "forward",
        _RELATIVE + r"(?:'s)? (?:says?|said|thinks?|thought|noticed|notices|spotted|saw|"
        r"sees|told me|tells me|pointed (?:it )?out|mentioned|reckons|is worried|was worried|worries|asked|"
        r"made me|booked|wants)",
    ),
    # negated
    (
        "negated",
        "forward",
        r"no|not|never|denies|denied|deny|without|none|nor|neither|negative for|"
        r"free of|absence of|no longer|hasn'?t|haven'?t|hadn'?t|doesn'?t|don'?t|didn'?t|isn'?t|aren'?t|"
        r"wasn'?t|won'?t|cannot|can'?t|ruled out|rules out",
    ),
    # possible / uncertain
    (
        "possible",
        "forward",
        r"might|may|maybe|perhaps|possibl[ey]|probabl[ey]|could (?:be|have|it)|"
        r"(?:i'?m |i am )?(?:not sure|unsure|not certain|uncertain)(?: (?:if|whether|that))?|"
        r"(?:i )?(?:don'?t|do not|can'?t|cannot) (?:know|tell|say)(?: (?:if|whether))?|"
        r"hard to (?:tell|say)(?: (?:if|whether))?|seems?(?: to)?|appears? to|suspect(?:ed|s)?|"
        r"suspicious (?:of|for)|query|questionable|doubtful(?: (?:if|whether))?|question of|"
        r"(?:can'?t|cannot) rule out|rule out|r/o",
    ),
    ("possible", "forward", r"\?(?=[a-z])"),  # clinical shorthand: "?ulceration"
    ("possible", "backward", r"hard to (?:tell|say)|not sure|unsure|or not|maybe|possibly|perhaps|i think"),
    # hypothetical
    (
        "hypothetical",
        "forward",
        r"if|in case(?: of)?|should it|should there|in the event (?:of|that)|"
        r"unless|watch(?:ing)? (?:out )?for|look(?:ing)? out for|keep an eye (?:out )?(?:for|on)|"
        r"monitor(?:ing)? (?:it )?for|check(?:ing)? for|worried (?:it|that) (?:will|might|could)|"
        r"what if|whenever it",
    ),
    # historical
    ("historical", "both", r"in the past|previously"),
    (
        "historical",
        "forward",
        r"used to|formerly|history of|back in|"
        r"(?:had|was|were) (?:once|previously)",
    ),
    (
        "historical",
        "backward",
        r"in (?:" + _MONTH + r"|(?:19|20)\d\d)|(?:\w{1,12}+ )?ago|last " + _PERIOD + r"|years back|"
        r"as a (?:child|kid|teenager|teen|baby)|when i was (?:\w{1,12}+ ){0,2}+\w{1,12}+|"
        r"in (?:my )?(?:childhood|youth|teens)|(?:has |have |had )?(?:healed|resolved|cleared(?: up)?|"
        r"settled(?: down)?|stopped|gone away|went away|disappeared)",
    ),
    # another person
    (
        "family",
        "forward",
        r"(?:my |his |her |our |the )?(?:(?:late|older|younger|elder|big|little|twin) )?" + _RELATIVE + r"(?:'s|s')?",
    ),
    ("family", "backward", r"in (?:my|the|our) family|runs in (?:my|the|our) family|in the family"),
)

_END = r"[.;!\n]|\?(?![a-z])"
_TERMINATORS: dict[Category | None, str] = {  # None: every category
    None: _END + "|" + _W + r"(?:but|however|although|though|yet|except|apart from|aside from|and it|and has|"
    r"and is|and was|and now|and i|which|that|so|whereas|while)" + _E,
    "historical": _W + r"(?:now|currently|still|again|at the moment|these days|today|recently|anymore)" + _E,
    "family": _W + r"(?:i|i'?m|i'?ve|me|my|mine|myself)" + _E,
    "hypothetical": _W + r"(?:then|otherwise)" + _E,
}
_ONSET = re.compile(_W + r"(?:start\w{0,3}+|began|begun|first noticed|noticed|appeared|came up|since)" + _E)
_LIST_WORD = re.compile(_W + r"(?:or|nor)" + _E)
_POST_NEGATION = re.compile(r"\s*+(?:[:=\-–]\s*+)?(?:no|none|denied|absent|negative|not present|nil)" + _E)


def _compile() -> list[tuple[Category | None, Direction, re.Pattern[str]]]:
    return [(c, d, re.compile(_W + f"(?:{p})" + _E if not p.startswith("\\?") else p)) for c, d, p in _TRIGGERS]


_COMPILED = _compile()
_TERMINATOR_PATTERNS = {k: re.compile(v) for k, v in _TERMINATORS.items()}


@dataclass(frozen=True)
class _Trigger:
    category: Category | None
    direction: Direction
    start: int
    end: int


class ContextReader:
    """The triggers and terminators of one (lower-cased) text, found once; `categories` per mention."""

    def __init__(self, text: str, mentions: Sequence[tuple[int, int]]) -> None:
        self.text = text
        in_mention = bytearray(len(text) + 1)
        for start, end in mentions:
            in_mention[start:end] = b"\x01" * (end - start)
        found = [
            _Trigger(c, d, m.start(), m.end())
            for c, d, p in _COMPILED
            for m in p.finditer(text)
            if in_mention.find(1, m.start(), m.end()) < 0
        ]
        found.sort(key=lambda t: (-(t.end - t.start), t.start))
        occupied = bytearray(len(text) + 1)
        kept: list[_Trigger] = []
        for t in found:  # longest first: a pseudo-trigger hides the trigger words inside it
            if occupied.find(1, t.start, t.end) < 0:
                occupied[t.start : t.end] = b"\x01" * (t.end - t.start)
                kept.append(t)
        kept.sort(key=lambda t: t.start)
        self.forward: dict[Category, list[_Trigger]] = {c: [] for c in CATEGORIES}
        self.backward: dict[Category, list[_Trigger]] = {c: [] for c in CATEGORIES}
        for t in kept:
            if t.category is not None:
                if t.direction in ("forward", "both"):
                    self.forward[t.category].append(t)
                if t.direction in ("backward", "both"):
                    self.backward[t.category].append(t)
        self.fwd_ends = {c: [t.end for t in ts] for c, ts in self.forward.items()}
        self.bwd_starts = {c: [t.start for t in ts] for c, ts in self.backward.items()}
        # terminators: a word inside a trigger ("my" in "my sister") does not terminate
        self.stops: dict[Category | None, list[int]] = {}
        for key, pattern in _TERMINATOR_PATTERNS.items():
            self.stops[key] = [m.start() for m in pattern.finditer(text) if not occupied[m.start()]]
        onsets = [m.start() for m in _ONSET.finditer(text)]
        self.backward["historical"] = [  # "started bleeding two weeks ago" dates the onset: still current
            t for t in self.backward["historical"] if not self._has(onsets, self._clause_start(t.start), t.start)
        ]
        self.bwd_starts["historical"] = [t.start for t in self.backward["historical"]]
        self.commas = [i for i, ch in enumerate(text) if ch == ","]
        self.list_words = [m.start() for m in _LIST_WORD.finditer(text)]

    def _stopped(self, category: Category, lo: int, hi: int) -> bool:
        """Whether a terminator for `category` starts inside [lo, hi)."""
        for key in (None, category):
            stops = self.stops.get(key, [])
            i = bisect_left(stops, lo)
            if i < len(stops) and stops[i] < hi:
                return True
        return False

    def _clause_start(self, pos: int) -> int:
        stops = self.stops[None]
        i = bisect_left(stops, pos)
        return stops[i - 1] if i else 0

    def _next_stop(self, pos: int) -> int:
        stops = self.stops[None]
        i = bisect_left(stops, pos)
        return stops[i] if i < len(stops) else len(self.text)

    def _has(self, positions: list[int], lo: int, hi: int) -> bool:
        i = bisect_left(positions, lo)
        return i < len(positions) and positions[i] < hi

    def _in_scope(self, category: Category, lo: int, hi: int, list_from: int) -> bool:
        """Nothing ends the scope between `lo` and `hi`: no terminator, and a comma only inside a list."""
        if self._stopped(category, lo, hi):
            return False
        if self._has(self.commas, lo, hi):
            return self._has(self.list_words, lo, self._next_stop(list_from))
        return True

    def categories(self, start: int, end: int) -> set[Category]:
        """The categories whose scope holds the mention [start, end)."""
        out: set[Category] = set()
        for c in CATEGORIES:
            i = bisect_right(self.fwd_ends[c], start) - 1
            if i >= 0 and self._in_scope(c, self.forward[c][i].end, start, start):
                out.add(c)
                continue
            j = bisect_left(self.bwd_starts[c], end)
            if j < len(self.backward[c]) and self._in_scope(c, end, self.backward[c][j].start, end):
                out.add(c)
        if "negated" not in out and _POST_NEGATION.match(self.text, end):
            out.add("negated")  # "bleeding: no", "itch denied"
        return out
