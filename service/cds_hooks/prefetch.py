"""CDS Hooks prefetch -> the photo to triage and the patient's clinical input.

Required: ``patient`` and at least one of ``photos`` (Media) / ``photoDocuments`` (DocumentReference).
A required key that is missing (or null) is fetched from ``fhirServer`` when the call grants
``fhirAuthorization``; if it still cannot be had the call is answered 412 (CDS Hooks: "the CDS
Service is unable to retrieve the necessary FHIR data"). ``observations`` is optional and fetched
the same way when possible. Present keys that hold no usable photo simply give no card.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from service.cds_hooks.services import PHOTO_KEYS, PREFETCH, REQUIRED_PREFETCH, CdsRequest
from service.fhir.intake import ClinicalReader, photo_bytes, photo_time
from service.fhir.outcome import FhirError
from service.problems import Problem
from service.schemas import TriageInput, TriageOptions

FhirFetcher = Callable[[str, str | None], dict[str, Any] | None]
"""(absolute URL, bearer token or None) -> the FHIR JSON resource, or None if it cannot be had."""


def fetch_fhir(url: str, token: str | None, timeout_s: float = 3.0) -> dict[str, Any] | None:
    """Default fetcher: GET from the EHR's FHIR server with the token it granted for this call."""
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        request = urllib.request.Request(url, headers=headers)
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return json.loads(response.read(50_000_000))  # type: ignore[no-any-return]
    except Exception:
        return None


def precondition_failed(missing: list[str]) -> Problem:
    return Problem(
        "prefetch-missing",
        412,
        f"Required prefetch data is missing and could not be fetched: {', '.join(missing)}. Send the prefetch "
        "the discovery document asks for, or fhirServer with fhirAuthorization.",
        title="Required data missing",
    )


def _template_url(request: CdsRequest, key: str) -> str:
    assert request.fhirServer is not None
    path = PREFETCH[key].replace("{{context.patientId}}", urllib.parse.quote(request.context.patientId, safe=""))
    return f"{request.fhirServer.rstrip('/')}/{path}"


def gather(request: CdsRequest, fetcher: FhirFetcher) -> dict[str, Any]:
    """Prefetch plus whatever missing keys could be fetched; 412 if required ones stay missing.

    Blocking when it fetches: run in a worker thread.
    """
    data = {k: v for k, v in (request.prefetch or {}).items() if v is not None}
    can_fetch = request.fhirServer is not None and request.fhirAuthorization is not None
    token = request.fhirAuthorization.access_token if request.fhirAuthorization else None
    wanted = [*REQUIRED_PREFETCH, "observations"]
    if not any(k in data for k in PHOTO_KEYS):
        wanted += list(PHOTO_KEYS)
    for key in wanted:
        if key not in data and can_fetch:
            resource = fetcher(_template_url(request, key), token)
            if resource is not None:
                data[key] = resource
    missing = [k for k in REQUIRED_PREFETCH if k not in data]
    if not any(k in data for k in PHOTO_KEYS):
        missing.append(" or ".join(PHOTO_KEYS))
    if missing:
        raise precondition_failed(missing)
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


def read_patient_data(data: dict[str, Any], options: TriageOptions) -> TriageInput:
    """Validated FHIR -> the newest photo with inline data and the clinical input (malformed FHIR: 400)."""
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
                    if image:
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
    return TriageInput(image, options, clinical, photo_ref=ref, photo_taken=taken)
