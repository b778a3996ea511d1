"""The tables. Ids of cases are the triage answer's server-minted ``id``; every other row gets an
integer key from advanced-alchemy's ``BigIntBase``. ``audit_events`` is append-only: the migration
adds triggers that make the database refuse UPDATE and DELETE on it."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from advanced_alchemy.base import BigIntBase, CommonTableAttributes, orm_registry
from advanced_alchemy.types import DateTimeUTC, JsonB
from sqlalchemy import Date, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

metadata = orm_registry.metadata


class _Base(CommonTableAttributes, DeclarativeBase):
    """advanced-alchemy's shared registry, for tables keyed by a string id of ours."""

    __abstract__ = True
    registry = orm_registry
    metadata = orm_registry.metadata


class Case(_Base):
    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True), index=True)
    model_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str | None] = mapped_column(String(64))
    calibration_id: Mapped[str | None] = mapped_column(String(200))
    taxonomy_version: Mapped[str] = mapped_column(String(64))
    photo_sha256: Mapped[str] = mapped_column(String(64))
    photo_width: Mapped[int] = mapped_column(Integer)
    photo_height: Mapped[int] = mapped_column(Integer)
    patient_ref: Mapped[str | None] = mapped_column(String(128), index=True)
    lesion_ref: Mapped[str | None] = mapped_column(String(128))
    share_token_sha256: Mapped[str | None] = mapped_column(String(64))
    # SHA-256 of the kept photo (re-encoded, metadata-free; see service/store/photos.py); None: not kept
    stored_photo_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    answer: Mapped[dict[str, Any]] = mapped_column(JsonB)


class Review(BigIntBase):
    __tablename__ = "reviews"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    agrees: Mapped[bool]
    diagnosis: Mapped[str | None] = mapped_column(String(100))
    confidence: Mapped[str] = mapped_column(String(16))
    urgency_override: Mapped[str | None] = mapped_column(String(32))
    urgency_reason: Mapped[str | None] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)


class Outcome(BigIntBase):
    __tablename__ = "outcomes"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    recorded_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    diagnosis: Mapped[str] = mapped_column(String(100))
    outcome_date: Mapped[date] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(32))


class Annotation(BigIntBase):
    __tablename__ = "annotations"

    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    annotator: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))  # box | polygon | keypoints | tags
    label: Mapped[str | None] = mapped_column(String(100))
    geometry: Mapped[dict[str, Any]] = mapped_column(JsonB)  # shape points and lesion tags, as validated


class AuditEvent(BigIntBase):
    """Append-only (database triggers refuse UPDATE and DELETE)."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_resource", "resource_type", "resource_id"),)

    at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(16))  # create | read | update | export | delete
    resource_type: Mapped[str] = mapped_column(String(32))  # case | review | annotation | outcome | feedback
    resource_id: Mapped[str] = mapped_column(String(64))
    case_id: Mapped[str | None] = mapped_column(String(64), index=True)
    client: Mapped[str | None] = mapped_column(String(64))
    outcome: Mapped[str] = mapped_column(String(16))  # success | denied | failed


class CdsFeedback(BigIntBase):
    __tablename__ = "cds_feedback"

    service_id: Mapped[str] = mapped_column(String(100), index=True)
    card: Mapped[str] = mapped_column(String(100))
    outcome: Mapped[str] = mapped_column(String(16))
    outcome_timestamp: Mapped[str] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    override_reason: Mapped[dict[str, Any] | None] = mapped_column(JsonB)
    accepted_suggestions: Mapped[list[str]] = mapped_column(JsonB)
    received_at: Mapped[float]
