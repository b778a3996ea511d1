"""FHIR input -> the engine's input: a photo, options and the clinical input (risk factors, symptoms).

Accepted: a ``Parameters`` resource (parameters ``patient``, ``observation`` (repeatable), ``image``
(a Media, Binary or DocumentReference), ``symptoms`` (string), ``topK`` (integer), ``explain``
(boolean), ``modality`` (code)), or a ``Bundle`` of any type whose entries hold the Patient,
Observations and one photo. CDS Hooks prefetch uses the same readers. A photo without inline data
but with a reference (``Attachment.url``, or an ``image`` parameter as ``valueReference``) is fetched
by the caller's resolver (``read_fhir_body``'s ``resolve``: SMART Backend Services, ``service.smart.photos``).

Observations are read by code: the dermtriage risk-factor code system
(``https://dermtriage.dev/fhir/CodeSystem/risk-factor``, one code per ``RiskFactors`` field), LOINC
30525-0 (age), and ``https://dermtriage.dev/fhir/CodeSystem/triage#symptoms`` (the patient's words,
``valueString``). Other Observations are ignored (an EHR sends many), as are ones marked
``entered-in-error``. Patient gives age (from ``birthDate``) and sex (``gender``) unless an
Observation says otherwise.

Structural errors (not JSON, not FHIR, wrong resource type) are 400; valid FHIR that cannot be used
(no photo, two photos, a risk factor out of range) is 422; both as an OperationOutcome.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from models.knowledge.risk_factors import BODY_SITE_SNOMED, RiskFactors
from service.fhir.bundle import CS_RISK_FACTOR, CS_TRIAGE, LOINC
from service.fhir.outcome import FhirError
from service.intake import load_json
from service.problems import Problem
from service.schemas import MAX_SYMPTOMS_CHARS, ClinicalInput, TriageInput, TriageOptions

PHOTO_TYPES = ("Media", "Binary", "DocumentReference")
_SNOMED_BODY_SITE = {code.code: site for site, code in BODY_SITE_SNOMED.items() if code is not None}
_GENDER_TO_SEX = {"male": "male", "female": "female", "other": "other"}


def _errors_to_outcome(exc: ValidationError, where: str) -> FhirError:
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    expression = [".".join(str(p) for p in (where, *e["loc"]) if p != "") for e in errors[:10]]
    detail = "; ".join(f"{x}: {e['msg']}" for x, e in zip(expression, errors, strict=False))
    return FhirError(400, f"Invalid FHIR {where}: {detail}", code="structure", expression=expression)


def parse_resource(payload: Any, allowed: Iterable[str]) -> Any:
    """Validate a JSON object as one of the allowed FHIR R4B resource types."""
    allowed = tuple(allowed)
    if not isinstance(payload, dict) or not isinstance(payload.get("resourceType"), str):
        raise FhirError(400, "The body is not a FHIR resource (a JSON object with resourceType).", code="structure")
    kind = payload["resourceType"]
    if kind not in allowed:
        raise FhirError(
            400, f"resourceType {kind!r} is not accepted here; send one of: {', '.join(allowed)}.", code="structure"
        )
    try:
        return get_fhir_model_class(kind).model_validate(payload)
    except ValidationError as exc:
        raise _errors_to_outcome(exc, kind) from None


def parse_json_body(body: bytes, max_resources: int | None = None) -> Any:
    """The body as JSON within :func:`service.intake.load_json`'s limits; refusals as OperationOutcome."""
    if not body.strip():
        raise FhirError(400, "The request body is empty; send a FHIR Parameters or Bundle resource.", code="required")
    try:
        return load_json(body, max_resources=max_resources)
    except Problem as exc:
        code = "too-costly" if exc.status == 413 else None
        raise FhirError(exc.status, f"{exc.detail} Send FHIR JSON (application/fhir+json).", code=code) from None


PhotoResolver = Callable[[str], bytes]


def read_fhir_body(body: bytes, max_resources: int | None = None, resolve: PhotoResolver | None = None) -> TriageInput:
    """Blocking (run it in a worker thread): parse, validate and read a ``$triage`` body; ``resolve``
    fetches a photo given by reference (raising FhirError when it cannot)."""
    return read_fhir_triage(parse_json_body(body, max_resources), resolve)


def _ref(resource: Any) -> str | None:
    return f"{resource.get_resource_type()}/{resource.id}" if getattr(resource, "id", None) else None


def _age_years(birth: date, today: date | None = None) -> float:
    today = today or datetime.now(UTC).date()
    years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    return float(max(0, years))


def _codes(concept: Any) -> list[tuple[str | None, str | None]]:
    return [(c.system, c.code) for c in (concept.coding or [])] if concept is not None else []


def _concept_value(concept: Any, fld: str) -> Any:
    for system, code in _codes(concept):
        if fld == "body_site" and system == "http://snomed.info/sct" and code in _SNOMED_BODY_SITE:
            return _SNOMED_BODY_SITE[code]
        if system and system.startswith(CS_RISK_FACTOR) and code:
            return code
    return concept.text


def _observation_value(obs: Any, fld: str) -> Any:
    if obs.valueBoolean is not None:
        return obs.valueBoolean
    if obs.valueQuantity is not None:
        q = obs.valueQuantity
        value = float(q.value) if q.value is not None else None
        if fld == "age" and value is not None and (q.code or q.unit) in ("mo", "months"):
            value /= 12
        return value
    if obs.valueInteger is not None:
        return obs.valueInteger
    if obs.valueCodeableConcept is not None:
        return _concept_value(obs.valueCodeableConcept, fld)
    if obs.valueString is not None:
        return obs.valueString
    return None


def _observation_field(obs: Any) -> str | None:
    for system, code in _codes(obs.code):
        if system == CS_RISK_FACTOR and code in RiskFactors.model_fields:
            return code
        if system == LOINC and code == "30525-0":
            return "age"
        if system == CS_TRIAGE and code == "symptoms":
            return "symptoms"
    return None


@dataclass
class ClinicalReader:
    """Collects risk factors and symptoms from a Patient and Observations."""

    risk: dict[str, Any] = field(default_factory=dict)
    from_patient: dict[str, Any] = field(default_factory=dict)
    used: list[str] = field(default_factory=list)
    _symptoms: list[str] = field(default_factory=list)  # joined once: linear in the number of Observations
    _symptom_chars: int = 0

    def add_symptoms(self, text: Any) -> None:
        """Append one symptom text; past ``MAX_SYMPTOMS_CHARS`` the rest is dropped (never stored)."""
        if text is None or text == "" or self._symptom_chars >= MAX_SYMPTOMS_CHARS:
            return
        piece = str(text)[:MAX_SYMPTOMS_CHARS]
        self._symptoms.append(piece)
        self._symptom_chars += len(piece) + 2

    @property
    def symptoms(self) -> str | None:
        return ". ".join(self._symptoms)[:MAX_SYMPTOMS_CHARS] if self._symptoms else None

    def patient(self, patient: Any) -> None:
        if patient.birthDate is not None:
            self.from_patient["age"] = _age_years(patient.birthDate)
        if patient.gender in _GENDER_TO_SEX:
            self.from_patient["sex"] = _GENDER_TO_SEX[patient.gender]

    def observation(self, obs: Any) -> None:
        if obs.status in ("entered-in-error", "cancelled"):
            return
        fld = _observation_field(obs)
        if fld is None:
            return
        value = _observation_value(obs, fld)
        if value is None:
            return
        if fld == "symptoms":
            self.add_symptoms(value)
        else:
            self.risk.setdefault(fld, value)  # the first (most recent in a sorted search set) wins
        if ref := _ref(obs):
            self.used.append(ref)

    def clinical(self) -> ClinicalInput:
        values = {**self.from_patient, **self.risk}
        try:
            risk = RiskFactors.model_validate(values) if values else None
            return ClinicalInput(symptoms=self.symptoms, risk_factors=risk)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=False, include_context=False)
            expression = [f"Observation[{'.'.join(str(p) for p in e['loc'])}]" for e in errors[:10]]
            detail = "; ".join(f"{x}: {e['msg']}" for x, e in zip(expression, errors, strict=False))
            raise FhirError(422, f"Unusable risk factors: {detail}", code="value", expression=expression) from None


def _attachment_bytes(attachment: Any) -> bytes | None:
    if attachment is None or attachment.data is None:
        return None
    if attachment.contentType and not attachment.contentType.startswith("image/"):
        return None
    return bytes(attachment.data)


def photo_bytes(resource: Any) -> bytes | None:
    """The image bytes a Media, Binary or DocumentReference carries inline (``data``), or None."""
    kind = resource.get_resource_type()
    if kind == "Media":
        return _attachment_bytes(resource.content)
    if kind == "Binary":
        if resource.contentType and not resource.contentType.startswith("image/"):
            return None
        return bytes(resource.data) if resource.data is not None else None
    if kind == "DocumentReference":
        for content in resource.content or []:
            data = _attachment_bytes(content.attachment)
            if data:
                return data
    return None


def attachment_url(resource: Any) -> str | None:
    """The photo's reference when it is not inline: ``Attachment.url`` of a Media or DocumentReference
    (an image or untyped attachment), or None."""
    kind = resource.get_resource_type()
    attachments = [resource.content] if kind == "Media" else []
    if kind == "DocumentReference":
        attachments = [c.attachment for c in resource.content or []]
    for att in attachments:
        if att is not None and att.url and (not att.contentType or att.contentType.startswith("image/")):
            return str(att.url)
    return None


def photo_time(resource: Any) -> str:
    """Sort key: when the photo was taken or filed (ISO text; empty when unknown)."""
    kind = resource.get_resource_type()
    value = None
    if kind == "Media":
        value = resource.createdDateTime or resource.issued
    elif kind == "DocumentReference":
        value = resource.date
    return value.isoformat() if hasattr(value, "isoformat") else str(value or "")


def _options(values: dict[str, Any]) -> TriageOptions:
    try:
        return TriageOptions.model_validate(values)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        expression = [f"Parameters.parameter[{e['loc'][0]}]" for e in errors]
        raise FhirError(
            422, f"Invalid option(s): {', '.join(expression)}.", code="value", expression=expression
        ) from None


_OPTION_PARAMETERS = {"topK": "top_k", "explain": "explain", "modality": "modality"}


def _parameter_value(p: Any) -> Any:
    for name in ("valueInteger", "valuePositiveInt", "valueBoolean", "valueCode", "valueString"):
        value = getattr(p, name, None)
        if value is not None:
            return value
    return None


def read_fhir_triage(payload: Any, resolve: PhotoResolver | None = None) -> TriageInput:
    """A Parameters or Bundle payload (parsed JSON) -> the engine's input; raises FhirError."""
    resource = parse_resource(payload, ("Parameters", "Bundle"))
    reader = ClinicalReader()
    photos: list[Any] = []
    subject: str | None = None
    option_values: dict[str, Any] = {}
    resources: list[Any] = []
    photo_refs: list[str] = []  # an ``image`` parameter given as a Reference
    if resource.get_resource_type() == "Parameters":
        for p in resource.parameter or []:
            if p.resource is not None:
                resources.append(p.resource)
            elif p.name == "image" and p.valueReference is not None and p.valueReference.reference:
                photo_refs.append(str(p.valueReference.reference))
            elif p.name == "symptoms":
                reader.add_symptoms(_parameter_value(p))
            elif p.name in _OPTION_PARAMETERS:
                option_values[_OPTION_PARAMETERS[p.name]] = _parameter_value(p)
            else:
                raise FhirError(
                    422,
                    f"Unknown parameter {p.name!r}; accepted: patient, observation, image, symptoms, "
                    + ", ".join(_OPTION_PARAMETERS)
                    + ".",
                    code="not-supported",
                    expression=["Parameters.parameter.name"],
                )
    else:
        resources = [e.resource for e in resource.entry or [] if e.resource is not None]
    for r in resources:
        kind = r.get_resource_type()
        if kind == "Patient":
            reader.patient(r)
            subject = _ref(r) or subject
        elif kind == "Observation":
            reader.observation(r)
        elif kind in PHOTO_TYPES:
            photos.append(r)
    if not photos and not photo_refs:
        raise FhirError(
            422,
            "No photo: add the skin photo as a Media, Binary or DocumentReference (inline data or a reference).",
            code="required",
        )
    if len(photos) + len(photo_refs) > 1:
        raise FhirError(422, "Send exactly one photo per request.", code="too-costly")
    data = photo_bytes(photos[0]) if photos else None
    if not data:
        ref = photo_refs[0] if photo_refs else attachment_url(photos[0])
        if ref is None or resolve is None:
            kind = photos[0].get_resource_type() if photos else "image"
            raise FhirError(
                422,
                f"The {kind} has no inline image data (attachment.data with an image/* contentType)"
                + (
                    " and no reference."
                    if ref is None
                    else "; photos by reference need a FHIR server configured "
                    "for SMART Backend Services (DERMTRIAGE_SMART_CLIENTS)."
                ),
                code="required",
            )
        data = resolve(ref)
    return TriageInput(
        image=data,
        options=_options(option_values),
        clinical=reader.clinical(),
        subject=subject,
        photo_ref=_ref(photos[0]) if photos else photo_refs[0][:200],
        inputs=reader.used,
    )
