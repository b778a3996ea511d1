"""CDS Hooks prefetch -> the photo to triage and the patient's clinical input.

Required: ``patient`` and at least one of ``photos`` (Media) / ``photoDocuments`` (DocumentReference).
A required key that is missing (or null) is fetched from ``fhirServer`` when the call grants
``fhirAuthorization``; if it still cannot be had the call is answered 412 (CDS Hooks: "the CDS
Service is unable to retrieve the necessary FHIR data"). ``observations`` is optional and fetched
the same way when possible. Present keys that hold no usable photo simply give no card.

Fetching is not a proxy for whatever the body names: ``fhirServer`` must be one of the FHIR base URLs
configured for the calling issuer (``DERMTRIAGE_CDS_ISSUERS``), and every read goes through
:mod:`service.safe_http` (https only, public addresses only unless allowlisted, no redirects) under one
deadline and one byte cap for the whole hook call.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from service.cds_hooks.services import PHOTO_KEYS, REQUIRED_PREFETCH, CdsRequest, prefetch_path
from service.fhir.client import FhirFetcher, FhirSession
from service.fhir.intake import ClinicalReader, attachment_url, photo_bytes, photo_time
from service.fhir.outcome import FhirError
from service.problems import Problem
from service.safe_http import FetchRefused
from service.schemas import TriageInput, TriageOptions

FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")
__all__ = ["FhirFetcher", "FhirSession", "gather", "read_patient_data"]


def precondition_failed(missing: list[str], reason: str | None = None) -> Problem:
    why = f" (fetching from fhirServer: {reason})" if reason else ""
    return Problem(
        "prefetch-missing",
        412,
        f"Required prefetch data is missing and could not be fetched: {', '.join(missing)}{why}. Send the "
        "prefetch the discovery document asks for, or fhirServer (configured for your issuer) with fhirAuthorization.",
        title="Required data missing",
    )


def _open_session(
    request: CdsRequest, fetcher: FhirFetcher | None, issuer: str | None, backend_token: str | None = None
) -> FhirSession:
    """The call's ``fhirAuthorization`` token, else a SMART Backend Services token for its ``fhirServer``."""
    token = request.fhirAuthorization.access_token if request.fhirAuthorization is not None else backend_token
    if request.fhirServer is None or token is None or fetcher is None:
        raise FetchRefused("the call grants no fhirServer with fhirAuthorization")
    if not FHIR_ID.fullmatch(request.context.patientId) or not request.context.patientId.strip("."):
        raise FetchRefused("context.patientId is not a FHIR id")
    return fetcher.session(request.fhirServer, token, issuer)


def gather(
    request: CdsRequest, fetcher: FhirFetcher | None, issuer: str | None = None, backend_token: str | None = None
) -> dict[str, Any]:
    """Prefetch plus whatever missing keys could be fetched; 412 if required ones stay missing.

    ``issuer`` is the verified ``iss`` of the call (None with authentication off); ``backend_token``
    is used when the call grants no ``fhirAuthorization``. Blocking when it fetches: run in a worker thread.
    """
    data = {k: v for k, v in (request.prefetch or {}).items() if v is not None}
    wanted = [*REQUIRED_PREFETCH, "observations"]
    if not any(k in data for k in PHOTO_KEYS):
        wanted += list(PHOTO_KEYS)
    wanted = [k for k in wanted if k not in data]
    failures: list[str] = []
    if wanted:
        try:
            session: FhirSession | None = _open_session(request, fetcher, issuer, backend_token)
        except FetchRefused as exc:
            session, failures = None, [str(exc)]
        for key in wanted if session is not None else []:
            resource = session.get(prefetch_path(key, request.context.patientId))
            if resource is not None:
                data[key] = resource
        failures += session.failures if session is not None else []
    missing = [k for k in REQUIRED_PREFETCH if k not in data]
    if not any(k in data for k in PHOTO_KEYS):
        missing.append(" or ".join(PHOTO_KEYS))
    if missing:
        raise precondition_failed(missing, "; ".join(dict.fromkeys(failures)) or None)
    return data


def _resources(value: Any) -> list[Any]:
    """A prefetch value (one resource or a Bundle of them) as validated R4B resources."""
    from service.fhir.intake import parse_resource

    if not isinstance(value, dict):
        raise FhirError(400, "A prefetch value must be a FHIR resource or Bundle.")
    if value.get("resourceType") == "Bundle":
        bundle = parse_resource(value, ("Bundle",))
        return [e.resource for e in bundle.entry or [] if e.resource is not None]
    return [parse_resource(value, (value.get("resourceType") or "?",))]


def photo_session(
    request: CdsRequest, fetcher: FhirFetcher | None, issuer: str | None, backend_token: str | None = None
) -> FhirSession | None:
    """A session for photos by reference, when the call grants one (no network here)."""
    try:
        return _open_session(request, fetcher, issuer, backend_token)
    except FetchRefused:
        return None


def _photo_image(resource: Any, image: bytes | None, session: FhirSession | None) -> bytes:
    """The photo's bytes: inline, or fetched by its reference (412 when it cannot be)."""
    if image:
        return image
    ref = attachment_url(resource)
    if ref is None:  # checked by the caller
        raise precondition_failed(["photo data"])
    if session is None:
        raise precondition_failed(["photo data"], "the photo is a reference and the call grants no fhirAuthorization")
    try:
        return session.photo(ref)
    except FetchRefused as exc:
        raise precondition_failed(["photo data"], str(exc)) from None


def read_patient_data(data: dict[str, Any], options: TriageOptions, session: FhirSession | None = None) -> TriageInput:
    """Validated FHIR -> the newest photo (inline, or fetched by reference through ``session``) and the
    clinical input (malformed FHIR: 400). Blocking when it fetches: run in a worker thread."""
    try:
        reader = ClinicalReader()
        for patient in _resources(data["patient"]):
            if patient.get_resource_type() == "Patient":
                reader.patient(patient)
        for obs in _resources(data["observations"]) if "observations" in data else []:
            if obs.get_resource_type() == "Observation":
                reader.observation(obs)
        photos = []
        for key in PHOTO_KEYS:
            for r in _resources(data[key]) if key in data else []:
                if r.get_resource_type() in ("Media", "DocumentReference"):
                    image = photo_bytes(r)
                    if image or attachment_url(r):
                        photos.append((photo_time(r), r, image))
        clinical = reader.clinical()
    except FhirError as exc:
        raise Problem("invalid-prefetch", 400, f"Prefetch data: {exc.diagnostics}", title="Invalid prefetch") from None
    except ValidationError:
        raise Problem("invalid-prefetch", 400, "Prefetch data is not valid FHIR.", title="Invalid prefetch") from None
    if not photos:
        return TriageInput(None, options, clinical)
    taken, resource, image = max(photos, key=lambda p: p[0])
    ref = f"{resource.get_resource_type()}/{resource.id}" if resource.id else None
    image = _photo_image(resource, image, session)
    return TriageInput(image, options, clinical, photo_ref=ref, photo_taken=taken)
