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

import json
import logging
import re
import urllib.parse
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError

from service.auth.cds_config import normalize_base
from service.cds_hooks.services import PHOTO_KEYS, PREFETCH, REQUIRED_PREFETCH, CdsRequest
from service.fhir.intake import ClinicalReader, photo_bytes, photo_time
from service.fhir.outcome import FhirError
from service.problems import Problem
from service.safe_http import Budget, FetchRefused, OutboundPolicy, get
from service.schemas import TriageInput, TriageOptions
from service.settings import Settings

FHIR_ID = re.compile(r"[A-Za-z0-9.-]{1,64}")
log = logging.getLogger("dermtriage.cds")


class FhirSession:
    """The reads of one hook call: one FHIR base, the token granted for the call, one shared budget."""

    def __init__(self, base: str, token: str | None, policy: OutboundPolicy, budget: Budget) -> None:
        self.base, self.token, self.policy, self.budget = base, token, policy, budget
        self.failures: list[str] = []

    def get(self, path: str) -> dict[str, Any] | None:
        """The JSON resource at ``base/path``, or None (the reason is kept in ``failures`` and logged)."""
        headers = {"Accept": "application/fhir+json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            value = json.loads(get(f"{self.base}/{path}", self.policy, self.budget, headers))
            if not isinstance(value, dict):
                raise FetchRefused("the response is not a JSON object")
            return value
        except FetchRefused as exc:
            reason = str(exc)
        except (ValueError, RecursionError):
            reason = "the response is not JSON"
        log.info("fhir fetch failed", extra={"reason": reason})
        self.failures.append(reason)
        return None


class FhirFetcher:
    """Opens a :class:`FhirSession` for a hook call, if its ``fhirServer`` is configured for its issuer."""

    def __init__(
        self,
        bases: Mapping[str, Iterable[str]],
        policy: OutboundPolicy | None = None,
        *,
        timeout_s: float = 10.0,
        max_bytes: int = 32 * 1024 * 1024,
    ) -> None:
        self.bases = {issuer: frozenset(normalize_base(b) for b in urls) for issuer, urls in bases.items()}
        self.policy = policy or OutboundPolicy()
        self.timeout_s, self.max_bytes = timeout_s, max_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> FhirFetcher:
        return cls(
            {issuer: config.fhir for issuer, config in settings.cds_issuer_configs().items()},
            OutboundPolicy.allowing(settings.cds_fetch_allow_hosts),
            timeout_s=settings.cds_fetch_timeout_s,
            max_bytes=settings.cds_fetch_max_bytes,
        )

    def session(self, fhir_server: str, token: str | None, issuer: str | None) -> FhirSession:
        """FetchRefused unless ``fhir_server`` is a base configured for ``issuer`` (no issuer, i.e.
        authentication off: any configured base). Nothing is fetched or resolved here."""
        try:
            base = normalize_base(fhir_server)
        except ValueError:
            raise FetchRefused("fhirServer is not an absolute https URL") from None
        allowed = self.bases.get(issuer, frozenset()) if issuer is not None else frozenset().union(*self.bases.values())
        if base not in allowed:
            raise FetchRefused("fhirServer is not a FHIR server configured for this issuer")
        self.policy.target(base)  # the scheme rules, before any request
        return FhirSession(base, token, self.policy, Budget(self.timeout_s, self.max_bytes))


def precondition_failed(missing: list[str], reason: str | None = None) -> Problem:
    why = f" (fetching from fhirServer: {reason})" if reason else ""
    return Problem(
        "prefetch-missing",
        412,
        f"Required prefetch data is missing and could not be fetched: {', '.join(missing)}{why}. Send the "
        "prefetch the discovery document asks for, or fhirServer (configured for your issuer) with fhirAuthorization.",
        title="Required data missing",
    )


def _template_path(request: CdsRequest, key: str) -> str:
    return PREFETCH[key].replace("{{context.patientId}}", urllib.parse.quote(request.context.patientId, safe=""))


def _open_session(request: CdsRequest, fetcher: FhirFetcher | None, issuer: str | None) -> FhirSession:
    if request.fhirServer is None or request.fhirAuthorization is None or fetcher is None:
        raise FetchRefused("the call grants no fhirServer with fhirAuthorization")
    if not FHIR_ID.fullmatch(request.context.patientId) or not request.context.patientId.strip("."):
        raise FetchRefused("context.patientId is not a FHIR id")
    return fetcher.session(request.fhirServer, request.fhirAuthorization.access_token, issuer)


def gather(request: CdsRequest, fetcher: FhirFetcher | None, issuer: str | None = None) -> dict[str, Any]:
    """Prefetch plus whatever missing keys could be fetched; 412 if required ones stay missing.

    ``issuer`` is the verified ``iss`` of the call (None with authentication off). Blocking when it
    fetches: run in a worker thread.
    """
    data = {k: v for k, v in (request.prefetch or {}).items() if v is not None}
    wanted = [*REQUIRED_PREFETCH, "observations"]
    if not any(k in data for k in PHOTO_KEYS):
        wanted += list(PHOTO_KEYS)
    wanted = [k for k in wanted if k not in data]
    failures: list[str] = []
    if wanted:
        try:
            session: FhirSession | None = _open_session(request, fetcher, issuer)
        except FetchRefused as exc:
            session, failures = None, [str(exc)]
        for key in wanted if session is not None else []:
            resource = session.get(_template_path(request, key))
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
