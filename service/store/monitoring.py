"""``GET /v1/monitoring``: per ISO week (UTC), how the model fares against its clinicians, so a clinic
can see drift: cases, reviewed cases, agreement of reviews with the top differential, top-1 against
the outcome where one exists, the needs-review flag rate and the urgency category rates.

Owner-scoped like the case routes (a reviewer sees every case). Bounded: at most ``MAX_WEEKS`` weeks;
the database returns three narrow columns per case of the window (no answer JSON) and one grouped
row per reviewed case or case with an outcome, and the weeks are summed here."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import case as when
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from models.knowledge.taxonomy import UrgencyTier
from service.store.cases import CaseStore, audit_row
from service.store.models import Case, Outcome, Review

DEFAULT_WEEKS = 12
MAX_WEEKS = 104
CATEGORIES = [t.value for t in UrgencyTier]


class Week(BaseModel):
    week: str = Field(description="ISO week, e.g. `2026-W48` (UTC)")
    start: date = Field(description="its Monday")
    cases: int
    reviewed_cases: int = Field(description="cases with at least one review")
    reviews: int
    agreeing_reviews: int = Field(description="reviews that agree with the top differential")
    review_agreement: float | None = Field(description="agreeing_reviews / reviews; null without reviews")
    cases_with_outcome: int
    top1_outcome_agreement: float | None = Field(
        description="share of cases with an outcome whose top differential is the outcome's diagnosis (the latest "
        "outcome); null without outcomes"
    )
    needs_review: int = Field(description="cases flagged `needs_review` by the uncertainty checks")
    needs_review_rate: float | None = Field(description="needs_review / cases; null without cases")
    urgency: dict[str, int] = Field(description="cases per urgency category (`none`: the answer had no urgency)")
    urgency_rates: dict[str, float | None] = Field(description="urgency counts / cases; null without cases")


class Monitoring(BaseModel):
    scope: str = Field(description="`own` (the caller's cases) or `all` (a reviewer)")
    weeks: list[Week] = Field(description="every week of the window, oldest first, empty weeks included")
    since: datetime = Field(description="the window's start (Monday 00:00 UTC)")


def _monday(d: date) -> date:
    return d - timedelta(days=d.weekday())


def _rate(n: int, d: int) -> float | None:
    return round(n / d, 4) if d else None


def _week_of(at: datetime) -> date:
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return _monday(at.astimezone(UTC).date())


async def _rows(store: CaseStore, scope: list[Any], audit: Any) -> tuple[list[Any], dict[str, Any], dict[str, str]]:
    """Per case of the window: (id, created_at, top differential id, needs_review, urgency category);
    per reviewed case: (reviews, agreeing); per case with an outcome: the latest outcome's diagnosis."""
    top = Case.answer[("differentials", 0, "condition_id")].as_string()
    flagged = Case.answer[("uncertainty", "needs_review")].as_boolean()
    category = Case.answer[("urgency", "category")].as_string()
    agrees = func.sum(when((Review.agrees.is_(True), 1), else_=0))
    latest = (
        select(Outcome.case_id, func.max(Outcome.id).label("last"))
        .join(Case, Case.id == Outcome.case_id)
        .where(*scope)
        .group_by(Outcome.case_id)
        .subquery()
    )

    async def work(session: AsyncSession) -> tuple[list[Any], list[Any], dict[str, str]]:
        cases = (await session.execute(select(Case.id, Case.created_at, top, flagged, category).where(*scope))).all()
        q = select(Review.case_id, func.count(), agrees).join(Case, Case.id == Review.case_id).where(*scope)
        reviews = (await session.execute(q.group_by(Review.case_id))).all()
        q = select(Outcome.case_id, Outcome.diagnosis).join(latest, Outcome.id == latest.c.last)
        outcomes = dict((await session.execute(q)).all())  # type: ignore[arg-type]
        await store.audit_now(session, [audit])
        return list(cases), list(reviews), outcomes

    cases, reviews, outcomes = await store.run(work)
    return list(cases), {cid: (int(n), int(a or 0)) for cid, n, a in reviews}, outcomes


def _empty() -> dict[str, Any]:
    keys = ("cases", "reviewed_cases", "reviews", "agreeing_reviews", "cases_with_outcome", "top1_hits", "needs_review")
    return {**dict.fromkeys(keys, 0), "urgency": dict.fromkeys([*CATEGORIES, "none"], 0)}


def _week(start: date, w: dict[str, Any]) -> Week:
    iso = start.isocalendar()
    n = w["cases"]
    return Week(
        week=f"{iso.year}-W{iso.week:02d}",
        start=start,
        cases=n,
        reviewed_cases=w["reviewed_cases"],
        reviews=w["reviews"],
        agreeing_reviews=w["agreeing_reviews"],
        review_agreement=_rate(w["agreeing_reviews"], w["reviews"]),
        cases_with_outcome=w["cases_with_outcome"],
        top1_outcome_agreement=_rate(w["top1_hits"], w["cases_with_outcome"]),
        needs_review=w["needs_review"],
        needs_review_rate=_rate(w["needs_review"], n),
        urgency=w["urgency"],
        urgency_rates={k: _rate(v, n) for k, v in w["urgency"].items()},
    )


async def weekly(
    store: CaseStore, principal: str, client: str | None, weeks: int, today: date | None = None
) -> Monitoring:
    first = _monday(today or datetime.now(UTC).date()) - timedelta(weeks=weeks - 1)
    since = datetime(first.year, first.month, first.day, tzinfo=UTC)
    everyone = principal in store.reviewers
    scope = [Case.created_at >= since] + ([] if everyone else [Case.owner == principal])
    audit = audit_row(principal, "read", "monitoring", f"weeks={weeks}", None, client)
    cases, per_case, outcomes = await _rows(store, scope, audit)
    acc = {first + timedelta(weeks=i): _empty() for i in range(weeks)}
    for cid, created, top_id, needs, cat in cases:
        w = acc.get(_week_of(created))
        if w is None:  # a clock skew at the window's edge
            continue
        w["cases"] += 1
        w["needs_review"] += bool(needs)
        w["urgency"][cat if cat in CATEGORIES else "none"] += 1
        if cid in per_case:
            w["reviewed_cases"] += 1
            w["reviews"] += per_case[cid][0]
            w["agreeing_reviews"] += per_case[cid][1]
        if cid in outcomes:
            w["cases_with_outcome"] += 1
            w["top1_hits"] += top_id is not None and top_id == outcomes[cid]
    return Monitoring(scope="all" if everyone else "own", weeks=[_week(s, w) for s, w in acc.items()], since=since)


EXAMPLE: dict[str, Any] = {
    "scope": "own",
    "since": "2026-11-23T00:00:00Z",
    "weeks": [
        {
            "week": "2026-W48",
            "start": "2026-11-23",
            "cases": 40,
            "reviewed_cases": 12,
            "reviews": 13,
            "agreeing_reviews": 10,
            "review_agreement": 0.7692,
            "cases_with_outcome": 3,
            "top1_outcome_agreement": 0.6667,
            "needs_review": 9,
            "needs_review_rate": 0.225,
            "urgency": {"emergency": 0, "urgent": 6, "soon": 10, "routine": 20, "self_care": 4, "none": 0},
            "urgency_rates": {
                "emergency": 0.0,
                "urgent": 0.15,
                "soon": 0.25,
                "routine": 0.5,
                "self_care": 0.1,
                "none": 0.0,
            },
        }
    ],
}
