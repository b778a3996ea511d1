"""The case audit trail as FHIR R4 ``AuditEvent`` resources (validated with fhir.resources R4B), for
``GET /v1/cases/{id}/audit?format=fhir`` and ``dermtriage export --format fhir``."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle

from service.fhir.codes import RESULT_ID_SYSTEM, resource_id

REST = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "RESTful"}
ENTITY_OBJECT = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"}
ACTIONS = {"create": "C", "read": "R", "update": "U", "delete": "D", "export": "E"}
OUTCOMES = {"success": "0", "denied": "4", "failed": "8"}  # FHIR: success, minor failure, serious failure
AUDIT_ID_SYSTEM = "https://dermtriage.dev/fhir/audit-event-id"


class AuditRow(Protocol):
    id: int
    at: datetime
    actor: str
    action: str
    resource_type: str
    resource_id: str
    case_id: str | None
    client: str | None
    outcome: str


def audit_event(row: AuditRow) -> AuditEvent:
    """One audit row as an AuditEvent: who (``agent``), what (``entity``: the case by its result id and
    the resource touched), when (``recorded``), from where (``network.address``) and how it ended."""
    agent: dict[str, Any] = {"who": {"identifier": {"value": row.actor}}, "requestor": True}
    if row.client:
        agent["network"] = {"address": row.client, "type": "2"}
    entity: list[dict[str, Any]] = [
        {"what": {"identifier": {"system": RESULT_ID_SYSTEM, "value": row.case_id}}, "type": ENTITY_OBJECT}
    ] if row.case_id else []  # fmt: skip
    entity.append({"type": ENTITY_OBJECT, "name": f"{row.resource_type}/{row.resource_id}"})
    return AuditEvent.model_validate(
        {
            "resourceType": "AuditEvent",
            "id": resource_id(str(row.id), "audit-event"),
            "type": REST,
            "action": ACTIONS[row.action],
            "recorded": row.at.isoformat(),
            "outcome": OUTCOMES[row.outcome],
            "outcomeDesc": row.outcome,
            "agent": [agent],
            "source": {"observer": {"display": "dermtriage"}},
            "entity": entity,
        }
    )


def audit_bundle(rows: list[AuditRow], bundle_key: str) -> Bundle:
    """A ``collection`` Bundle of the rows' AuditEvents, oldest first."""
    events = [audit_event(r) for r in rows]
    return Bundle.model_validate(
        {
            "resourceType": "Bundle",
            "id": resource_id(bundle_key, "audit-bundle"),
            "type": "collection",
            "entry": [{"fullUrl": f"urn:uuid:{e.id}", "resource": e} for e in events],
        }
    )
