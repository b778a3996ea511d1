"""``$triage`` photos by reference: an absolute URL on a FHIR server configured with SMART Backend Services,
fetched with the backend token under the same rules and limits as CDS Hooks fetches."""

from __future__ import annotations

from service.auth.cds_config import normalize_base
from service.fhir.intake import PhotoResolver
from service.fhir.outcome import FhirError
from service.safe_http import FetchRefused
from service.smart.launch import LaunchError
from service.smart.state import SmartState


def backend_photo_resolver(smart: SmartState) -> PhotoResolver:
    """Blocking resolver (``read_fhir_body`` runs in a worker thread); every refusal is a 4xx FhirError."""

    def resolve(ref: str) -> bytes:
        try:
            url = normalize_base(ref)
        except ValueError:
            url = ""
        client = next((c for base, c in smart.clients.items() if url.startswith(base + "/")), None)
        if client is None or client.backend is None:
            raise FhirError(
                422,
                "A photo reference must be an absolute URL on a FHIR server configured for SMART Backend Services.",
                code="not-supported",
            )
        try:
            token = smart.backend.token(client)
            return smart.fetcher.open(client.fhir_base, token).photo(url)
        except LaunchError as exc:
            raise FhirError(422, exc.detail, code="security") from None
        except FetchRefused as exc:
            raise FhirError(422, f"The photo could not be fetched: {exc}.", code="processing") from None

    return resolve
