"""The kept cases as the offline commands read them (`export`, `calibrate --from-store`,
`evaluate --from-store`): each case with its reviews, outcomes and annotations, and its ground truth.

Ground truth: the latest outcome's diagnosis, else the latest review that names one (a review that
agrees and names none takes the top differential's condition), else none."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from service.store.models import Annotation, Case, Outcome, Review


@dataclass
class StoredCase:
    case: Case
    reviews: list[Review] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    annotations: list[Annotation] = field(default_factory=list)

    @property
    def top(self) -> dict[str, Any] | None:
        differentials = self.case.answer.get("differentials") or []
        return differentials[0] if differentials else None

    def review_diagnosis(self) -> str | None:
        for review in reversed(self.reviews):
            if review.diagnosis:
                return review.diagnosis
            if review.agrees and self.top is not None and self.top.get("condition_id"):
                return str(self.top["condition_id"])
        return None

    def ground_truth(self) -> tuple[str | None, str | None]:
        """(condition id, ``outcome`` | ``review``), or (None, None)."""
        if self.outcomes:
            return self.outcomes[-1].diagnosis, "outcome"
        reviewed = self.review_diagnosis()
        return (reviewed, "review") if reviewed else (None, None)

    def tags(self) -> dict[str, Any]:
        """The clinicians' lesion tags, later ones over earlier ones."""
        merged: dict[str, Any] = {}
        for a in self.annotations:
            merged |= {k: v for k, v in (a.geometry.get("tags") or {}).items() if v is not None}
        return merged

    def fitzpatrick(self) -> str | None:
        """The clinician's tag (I-VI), else the risk factor sent with the request (1-6, as a numeral)."""
        tagged = self.tags().get("fitzpatrick")
        if tagged:
            return str(tagged)
        sent = (self.case.answer.get("risk_factors") or {}).get("fitzpatrick")
        return ("I", "II", "III", "IV", "V", "VI")[int(sent) - 1] if sent else None

    def body_site(self) -> str | None:
        return self.tags().get("body_site") or (self.case.answer.get("risk_factors") or {}).get("body_site")


async def load_cases(
    session: AsyncSession, since: datetime | None = None, reviewed_only: bool = False
) -> list[StoredCase]:
    """Every case (oldest first) with its rows: four queries, whatever the count."""
    chosen = select(Case.id)
    if since is not None:
        chosen = chosen.where(Case.created_at >= since)
    if reviewed_only:
        chosen = chosen.where(Case.id.in_(select(Review.case_id)))
    cases = await session.execute(select(Case).where(Case.id.in_(chosen)).order_by(Case.created_at, Case.id))
    by_id = {c.id: StoredCase(c) for c in cases.scalars()}
    for model, attr in ((Review, "reviews"), (Outcome, "outcomes"), (Annotation, "annotations")):
        rows = await session.execute(select(model).where(model.case_id.in_(chosen)).order_by(model.id))
        for row in rows.scalars():
            if row.case_id in by_id:
                getattr(by_id[row.case_id], attr).append(row)
    return list(by_id.values())
