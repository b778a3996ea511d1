"""advanced-alchemy repositories, one per table (reads, filtered lists, inserts)."""

from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository

from service.store.models import Annotation, AuditEvent, Case, CdsFeedback, Outcome, Review


class CaseRepository(SQLAlchemyAsyncRepository[Case]):
    model_type = Case


class ReviewRepository(SQLAlchemyAsyncRepository[Review]):
    model_type = Review


class OutcomeRepository(SQLAlchemyAsyncRepository[Outcome]):
    model_type = Outcome


class AnnotationRepository(SQLAlchemyAsyncRepository[Annotation]):
    model_type = Annotation


class AuditRepository(SQLAlchemyAsyncRepository[AuditEvent]):
    """Inserts and reads only: the audit trail has no update or delete path (the database refuses them too)."""

    model_type = AuditEvent


class FeedbackRepository(SQLAlchemyAsyncRepository[CdsFeedback]):
    model_type = CdsFeedback


REPOSITORIES: dict[type, type[SQLAlchemyAsyncRepository]] = {  # type: ignore[type-arg]
    Case: CaseRepository,
    AuditEvent: AuditRepository,
    CdsFeedback: FeedbackRepository,
}
