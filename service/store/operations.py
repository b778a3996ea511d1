"""What the `/v1/cases` routes do: read, list and add, each in one transaction with its audit event;
the checks that need the case (coordinates inside its photo) or the taxonomy (known labels) give a
422 naming the field."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from advanced_alchemy.filters import LimitOffset, OrderBy
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from models.knowledge.taxonomy import load_taxonomy
from service.problems import Problem, invalid_fields_problem
from service.store.cases import CaseStore, audit_row, now
from service.store.models import Annotation, AuditEvent, Case, Outcome, Review
from service.store.removal import drop_photos, remove_cases
from service.store.repository import (
    AnnotationRepository,
    AuditRepository,
    CaseRepository,
    OutcomeRepository,
    ReviewRepository,
)
from service.store.schemas import (
    AnnotationIn,
    AnnotationOut,
    AuditOut,
    CaseOut,
    CasePage,
    CaseSummary,
    ModelOfCase,
    OutcomeIn,
    OutcomeOut,
    ReviewIn,
    ReviewOut,
)


@dataclass(frozen=True)
class Caller:
    principal: str
    client: str | None


@dataclass(frozen=True)
class Child:
    model: type
    repository: type
    out: type[BaseModel]
    author: str  # the column naming the caller
    resource: str  # audit resource type


CHILDREN = {
    "reviews": Child(Review, ReviewRepository, ReviewOut, "reviewer", "review"),
    "outcomes": Child(Outcome, OutcomeRepository, OutcomeOut, "recorded_by", "outcome"),
    "annotations": Child(Annotation, AnnotationRepository, AnnotationOut, "annotator", "annotation"),
}


def summary(case: Case, reviewed: bool, out: type[CaseSummary] = CaseSummary, **extra: Any) -> Any:
    model = ModelOfCase(name=case.model_name, version=case.model_version, weights_sha256=case.weights_sha256)
    own = ("model", "reviewed", "photo_stored")
    fields = {k: getattr(case, k) for k in CaseSummary.model_fields if k not in own}
    stored = case.stored_photo_sha256 is not None
    return out(**fields, model=model, reviewed=reviewed, photo_stored=stored, **extra)


async def list_cases(
    store: CaseStore,
    caller: Caller,
    *,
    since: datetime | None,
    model: str | None,
    reviewed: bool | None,
    patient_ref: str | None,
    limit: int,
    offset: int,
) -> CasePage:
    clauses: list[Any] = []
    if caller.principal not in store.reviewers:
        clauses.append(Case.owner == caller.principal)
    if since is not None:
        clauses.append(Case.created_at >= since)
    if model:
        clauses.append(Case.model_name == model)
    if patient_ref:
        clauses.append(Case.patient_ref == patient_ref)
    if reviewed is not None:
        clauses.append(store.reviewed_clause(reviewed))
    cases, total, done = await _read_cases(store, caller, clauses, limit, offset)
    return CasePage(items=[summary(c, c.id in done) for c in cases], total=total, limit=limit, offset=offset)


async def _read_cases(
    store: CaseStore, caller: Caller, clauses: list[Any], limit: int, offset: int
) -> tuple[list[Case], int, set[str]]:
    """The newest cases matching ``clauses``, how many match, which are reviewed; each read audited."""

    async def work(session: AsyncSession) -> tuple[list[Case], int, set[str]]:
        cases, total = await CaseRepository(session=session).get_many_and_count(
            *clauses, OrderBy("created_at", "desc"), LimitOffset(limit, offset)
        )
        done = await store.reviewed(session, [c.id for c in cases])
        await store.audit_now(
            session, [audit_row(caller.principal, "read", "case", c.id, c.id, caller.client) for c in cases]
        )
        return list(cases), total, done

    return await store.run(work)


async def get_case(store: CaseStore, caller: Caller, case_id: str) -> CaseOut:
    async def work(session: AsyncSession) -> tuple[Case, set[str]]:
        case = await store.case_for(session, case_id, caller.principal, caller.client)
        done = await store.reviewed(session, [case.id])
        await store.audit_now(session, [audit_row(caller.principal, "read", "case", case.id, case.id, caller.client)])
        return case, done

    case, done = await store.run(work)
    return summary(case, case.id in done, CaseOut, answer=case.answer)


def _check_label(loc: str, value: str | None, errors: list[dict[str, str]]) -> None:
    if value is not None and value not in load_taxonomy():
        errors.append(
            {"loc": loc, "message": "not a condition id of the taxonomy (GET /v1/conditions)", "type": "unknown_label"}
        )


def _check_inside(data: AnnotationIn, case: Case, errors: list[dict[str, str]]) -> None:
    w, h = case.photo_width, case.photo_height
    if data.box is not None:
        x, y, bw, bh = data.box
        if bw <= 0 or bh <= 0 or x < 0 or y < 0 or x + bw > w or y + bh > h:
            errors.append(
                {"loc": "box", "message": f"the box must lie inside the {w}x{h} photo", "type": "outside_photo"}
            )
    for i, (x, y) in enumerate(data.points or ()):
        if not (0 <= x <= w and 0 <= y <= h):
            errors.append({"loc": f"points.{i}", "message": f"outside the {w}x{h} photo", "type": "outside_photo"})
            break


def _columns(kind: str, data: BaseModel, case: Case) -> dict[str, Any]:
    """The child's column values, after the checks that need the case or the taxonomy."""
    errors: list[dict[str, str]] = []
    if isinstance(data, ReviewIn):
        _check_label("diagnosis", data.diagnosis, errors)
        values = data.model_dump(mode="json")
    elif isinstance(data, OutcomeIn):
        _check_label("diagnosis", data.diagnosis, errors)
        values = {"diagnosis": data.diagnosis, "outcome_date": data.date, "source": data.source}
    else:
        assert isinstance(data, AnnotationIn)
        _check_label("label", data.label, errors)
        _check_inside(data, case, errors)
        values = {
            "kind": data.kind,
            "label": data.label,
            "geometry": data.model_dump(mode="json", include={"box", "points", "tags"}),
        }
    if errors:
        raise invalid_fields_problem(errors)
    return values


def _out(kind: str, row: Any) -> BaseModel:
    child = CHILDREN[kind]
    base = {
        "id": row.id,
        "case_id": row.case_id,
        child.author: getattr(row, child.author),
        "created_at": row.created_at,
    }
    if kind == "reviews":
        fields = {k: getattr(row, k) for k in ReviewIn.model_fields}
    elif kind == "outcomes":
        fields = {"diagnosis": row.diagnosis, "date": row.outcome_date, "source": row.source}
    else:
        fields = {"kind": row.kind, "label": row.label, **row.geometry}
    return child.out.model_validate({**base, **fields})


async def add_child(store: CaseStore, caller: Caller, case_id: str, kind: str, data: BaseModel) -> BaseModel:
    """Insert a review, outcome or annotation (each its own row: concurrent ones are all kept) and its audit event."""
    child = CHILDREN[kind]

    async def work(session: AsyncSession) -> Any:
        case = await store.case_for(session, case_id, caller.principal, caller.client)
        values = {
            "case_id": case.id,
            child.author: caller.principal[:200],
            "created_at": now(),
            **_columns(kind, data, case),
        }
        row = await child.repository(session=session).add(child.model(**values), auto_commit=False)
        await session.flush()
        await store.audit_now(
            session, [audit_row(caller.principal, "create", child.resource, str(row.id), case.id, caller.client)]
        )
        return row

    return _out(kind, await store.run(work))


async def list_children(store: CaseStore, caller: Caller, case_id: str, kind: str) -> list[BaseModel]:
    child = CHILDREN[kind]

    async def work(session: AsyncSession) -> list[Any]:
        case = await store.case_for(session, case_id, caller.principal, caller.client)
        rows = await child.repository(session=session).get_many(child.model.case_id == case.id, OrderBy("id", "asc"))
        audit = [audit_row(caller.principal, "read", child.resource, str(r.id), case.id, caller.client) for r in rows]
        await store.audit_now(session, audit)
        return list(rows)

    return [_out(kind, r) for r in await store.run(work)]


async def audit_rows(store: CaseStore, caller: Caller, case_id: str) -> list[AuditEvent]:
    """The case's audit rows, oldest first (this read is itself audited, after the list is taken)."""

    async def work(session: AsyncSession) -> list[AuditEvent]:
        case = await store.case_for(session, case_id, caller.principal, caller.client)
        rows = await AuditRepository(session=session).get_many(AuditEvent.case_id == case.id, OrderBy("id", "asc"))
        await _audit_read(session, store, caller, case)
        return list(rows)

    return await store.run(work)


async def audit_of(store: CaseStore, caller: Caller, case_id: str) -> list[AuditOut]:
    return [AuditOut.model_validate(r, from_attributes=True) for r in await audit_rows(store, caller, case_id)]


async def _audit_read(session: AsyncSession, store: CaseStore, caller: Caller, case: Case) -> None:
    await store.audit_now(session, [audit_row(caller.principal, "read", "audit", case.id, case.id, caller.client)])


async def photo_of(store: CaseStore, caller: Caller, case_id: str) -> bytes:
    """The case's kept photo (audited as a read of resource ``photo``); 404 when none was kept."""

    async def work(session: AsyncSession) -> bytes | None:
        case = await store.case_for(session, case_id, caller.principal, caller.client)
        data = await store.photos.get(case.stored_photo_sha256) if case.stored_photo_sha256 else None
        if case.stored_photo_sha256 is not None:  # a kept photo whose file is gone: a failed read
            outcome = "success" if data is not None else "failed"
            audit = audit_row(caller.principal, "read", "photo", case.id, case.id, caller.client, outcome)
            await store.audit_now(session, [audit])
        return data

    data = await store.run(work)
    if data is None:
        raise Problem(
            "photo-not-found", 404, "No photo is kept for this case (kept only with consent).", title="Photo not found"
        )
    return data


async def delete_case(store: CaseStore, caller: Caller, case_id: str) -> None:
    """Remove the case, its reviews, outcomes, annotations and (unless another case shares it) its photo;
    its audit events stay, with one more for this delete."""

    async def work(session: AsyncSession) -> list[str]:
        case = await store.case_for(session, case_id, caller.principal, caller.client, "delete")
        photos = await remove_cases(session, [case])
        await store.audit_now(session, [audit_row(caller.principal, "delete", "case", case.id, case.id, caller.client)])
        return photos

    await drop_photos(store, await store.run(work))


async def lesion_cases(store: CaseStore, caller: Caller, lesion_ref: str, limit: int) -> tuple[list[CaseOut], int]:
    """The caller's cases of one lesion (a reviewer: everyone's), oldest first: the last `limit` of them and
    how many there are in all; each read audited."""
    clauses: list[Any] = [Case.lesion_ref == lesion_ref]
    if caller.principal not in store.reviewers:
        clauses.append(Case.owner == caller.principal)
    cases, total, done = await _read_cases(store, caller, clauses, limit, 0)
    return [summary(c, c.id in done, CaseOut, answer=c.answer) for c in reversed(cases)], total
