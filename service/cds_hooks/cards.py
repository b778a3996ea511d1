"""One TriageResult -> one CDS Hooks card.

``indicator`` from the urgency category: emergency/urgent -> critical, soon -> warning,
routine/self_care -> info; a case that needs human review is at least a warning. Without an
urgency (not computed), a malignant differential at 10 % or more is a warning. ``summary`` stays
under 140 characters; ``detail`` is GitHub-flavoured markdown; the link opens the viewer on this
answer as a SMART app (``appContext`` carries the result id and its share token).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

from service.fhir.bundle import CS_TRIAGE
from service.schemas import ICD10_CM, SNOMED_CT, TriageResult

SUMMARY_MAX = 139
INDICATOR = {"emergency": "critical", "urgent": "critical", "soon": "warning", "routine": "info", "self_care": "info"}
_ORDER = {"info": 0, "warning": 1, "critical": 2}
_SYSTEMS = {SNOMED_CT: "SNOMED CT", ICD10_CM: "ICD-10-CM"}


def _md(text: str) -> str:
    """Plain text safe inside markdown (table cells, emphasis)."""
    return "".join("\\" + c if c in "\\`*_{}[]<>|#" else c for c in text).replace("\n", " ")


def indicator(result: TriageResult) -> str:
    if result.urgency is not None:
        level = INDICATOR[result.urgency.category.value]
    else:
        malignant = any(d.malignant and d.probability >= 0.10 for d in result.differentials)
        level = "warning" if malignant else "info"
    if result.uncertainty is not None and result.uncertainty.needs_review and _ORDER[level] < _ORDER["warning"]:
        level = "warning"
    return level


def summary(result: TriageResult) -> str:
    top = result.differentials[0] if result.differentials else None
    head = f"Skin photo: {result.urgency.category.value.replace('_', ' ')}" if result.urgency else "Skin photo triage"
    text = f"{head} — {top.name} {top.probability:.0%}" if top else head
    if result.uncertainty is not None and result.uncertainty.needs_review:
        text += ", needs review"
    text += " (AI)"
    return text if len(text) <= SUMMARY_MAX else text[: SUMMARY_MAX - 1].rstrip() + "…"


def detail(result: TriageResult, photo_ref: str | None = None, photo_taken: str = "") -> str:
    lines: list[str] = []
    if result.urgency is not None:
        u = result.urgency
        lines.append(f"**Urgency: {u.category.value.replace('_', ' ')}** (score {u.score:.2f}). {_md(u.next_step)}")
        lines.append("")
    lines += ["| # | condition | probability | codes |", "|---|---|---|---|"]
    for d in result.differentials:
        codes = ", ".join(f"{_SYSTEMS.get(c.system, c.system)} {c.code}" for c in d.codes) or "-"
        name = _md(d.name) + ("" if d.validated_for_model else " (not validated for this model)")
        lines.append(f"| {d.rank} | {name} | {d.probability:.0%} | {_md(codes)} |")
    if result.scope_note:
        lines += ["", f"_Scope: {_md(result.scope_note)}._"]
    moved = [d for d in result.differentials if d.rank_change is not None]
    if moved:
        lines += ["", "**Against the photo alone:**"]
        lines += [f"- {_md(d.name)}: {_md(d.rank_change.text)}" for d in moved if d.rank_change is not None]
    if result.urgency is not None and result.urgency.reasons:
        lines += ["", "**Why:**"] + [
            f"- {_md(r.text)} ({r.category.value.replace('_', ' ')})" for r in result.urgency.reasons
        ]
    if result.urgency is not None and result.urgency.red_flags:
        lines += ["", "**Red flags:** " + _md(", ".join(result.urgency.red_flags))]
    unc = result.uncertainty
    if unc is not None:
        state = "**needs human review**" if unc.needs_review else "no review gate fired"
        lines += ["", f"**Uncertainty:** {state}."]
        for flag in unc.flags:
            lines.append(f"- {_md(flag.message)} ({_md(flag.measure)} {flag.value} vs threshold {flag.threshold})")
        if unc.prediction_set:
            lines.append(f"- Conformal set: {_md(', '.join(unc.prediction_set))}")
    if photo_ref or photo_taken:
        lines += ["", f"Photo: {_md(photo_ref or 'prefetched')}" + (f", {_md(photo_taken)}" if photo_taken else "")]
    lines += ["", f"_{_md(result.disclaimer)}_"]
    return "\n".join(lines)


def viewer_link(result: TriageResult, base_url: str, share: str | None) -> dict[str, Any]:
    """The SMART link to the viewer on this answer: its server-minted id and, when given, the share token
    that lets a clinician with any valid API key read this one answer (it expires with the answer)."""
    context = {"result": result.id, **({"share": share} if share else {})}
    return {
        "label": "Open in the dermtriage viewer",
        "url": f"{base_url}/viewer?{urlencode(context)}",
        "type": "smart",
        "appContext": json.dumps(context),
    }


def triage_card(
    result: TriageResult,
    base_url: str,
    *,
    share: str | None = None,
    photo_ref: str | None = None,
    photo_taken: str = "",
) -> dict[str, Any]:
    model = f"{result.model.name} {result.model.version}"
    source: dict[str, Any] = {
        "label": f"dermtriage ({model})",
        "topic": {"system": CS_TRIAGE, "code": "skin-photo-triage", "display": "Skin photo triage"},
    }
    if result.model.card_url:
        source["url"] = base_url + result.model.card_url
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary(result),
        "indicator": indicator(result),
        "detail": detail(result, photo_ref, photo_taken),
        "source": source,
        "links": [viewer_link(result, base_url, share)],
    }
