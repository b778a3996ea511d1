"""One TriageResult -> one CDS Hooks card.

``indicator`` from the urgency category: emergency/urgent -> critical, soon -> warning,
routine/self_care -> info; a case that needs human review is at least a warning. Without an
urgency (not computed), a malignant differential at 10 % or more is a warning. ``summary`` stays
under 140 characters; ``detail`` is GitHub-flavoured markdown. The link opens the viewer on this answer:
type ``smart`` (the EHR launches ``/viewer/launch`` and hands ``appContext`` back in the token response)
only when the calling EHR's FHIR server is configured for SMART, else ``absolute`` (the viewer URL with
the result id and its share token). CDS Hooks 2.0 fields: ``overrideReasons`` (codings the EHR offers
when the card is dismissed; the feedback endpoint records the one chosen), for an ``urgent`` or ``soon``
answer one ``suggestion`` creating a draft dermatology referral ``ServiceRequest`` with
``selectionBehavior`` ``at-most-one``, and a ``uuid`` derived from the answer's id (same answer, same uuid).
"""

from __future__ import annotations

import json
import uuid
from typing import Any
from urllib.parse import urlencode

from service.fhir.bundle import CS_TRIAGE
from service.fhir.codes import DT
from service.fhir.referral import referral_request
from service.schemas import ICD10_CM, SNOMED_CT, TriageResult

SUMMARY_MAX = 139
CS_OVERRIDE = DT + "card-override-reason"
OVERRIDE_REASONS = (
    ("already-referred", "Already referred or under dermatology care"),
    ("clinically-benign", "Examined in person: looks benign"),
    ("photo-not-usable", "Photo quality or framing not usable"),
    ("wrong-lesion", "Photo is not of the lesion of concern"),
    ("patient-declined", "Patient declined referral"),
)
OVERRIDE_CODES = frozenset(code for code, _ in OVERRIDE_REASONS)
_CARD_NAMESPACE = uuid.UUID("0d7c3b4e-8a51-5e0f-9b6a-2f4d1c7e9a30")
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


def card_uuid(result: TriageResult, name: str) -> str:
    """Deterministic per answer and card part: re-rendering one answer never mints new uuids."""
    return str(uuid.uuid5(_CARD_NAMESPACE, f"{result.id}/{name}"))


def viewer_link(result: TriageResult, base_url: str, share: str | None, *, smart: bool = False) -> dict[str, Any]:
    """The link to the viewer on this answer. ``smart``: the SMART launch URL, the EHR adds ``iss`` and
    ``launch`` and returns ``appContext`` (result id, share token) in its token response. Otherwise the
    viewer URL itself with the result id and, when given, the share token that lets a clinician with any
    valid API key read this one answer (it expires with the answer)."""
    context = {"result": result.id, **({"share": share} if share else {})}
    if smart:
        return {
            "label": "Open in the dermtriage viewer",
            "url": f"{base_url}/viewer/launch",
            "type": "smart",
            "appContext": json.dumps(context),
        }
    return {
        "label": "Open in the dermtriage viewer",
        "url": f"{base_url}/viewer?{urlencode(context)}",
        "type": "absolute",
    }


def override_reasons() -> list[dict[str, str]]:
    return [{"system": CS_OVERRIDE, "code": code, "display": display} for code, display in OVERRIDE_REASONS]


def referral_suggestion(result: TriageResult, patient_id: str | None) -> dict[str, Any] | None:
    """One suggestion creating a draft dermatology referral, for an urgent or soon answer."""
    request = referral_request(result, patient_id)
    if request is None:
        return None
    urgency = result.urgency.category.value if result.urgency else ""
    return {
        "label": f"Refer to dermatology ({urgency})",
        "uuid": card_uuid(result, "suggestion/referral"),
        "isRecommended": True,
        "actions": [{"type": "create", "description": "Draft a dermatology referral", "resource": request}],
    }


def triage_card(
    result: TriageResult,
    base_url: str,
    *,
    share: str | None = None,
    photo_ref: str | None = None,
    photo_taken: str = "",
    smart: bool = False,
    patient_id: str | None = None,
) -> dict[str, Any]:
    model = f"{result.model.name} {result.model.version}"
    source: dict[str, Any] = {
        "label": f"dermtriage ({model})",
        "topic": {"system": CS_TRIAGE, "code": "skin-photo-triage", "display": "Skin photo triage"},
    }
    if result.model.card_url:
        source["url"] = base_url + result.model.card_url
    card: dict[str, Any] = {
        "uuid": card_uuid(result, "card"),
        "summary": summary(result),
        "indicator": indicator(result),
        "detail": detail(result, photo_ref, photo_taken),
        "source": source,
        "overrideReasons": override_reasons(),
        "links": [viewer_link(result, base_url, share, smart=smart)],
    }
    suggestion = referral_suggestion(result, patient_id)
    if suggestion is not None:
        card |= {"suggestions": [suggestion], "selectionBehavior": "at-most-one"}
    return card
