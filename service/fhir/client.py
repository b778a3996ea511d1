"""Reads from an EHR's FHIR server: one :class:`FhirSession` per job (a CDS Hooks call, a ``$triage`` with
photos by reference, a SMART launch) on one configured base URL, with one bearer token and one
:class:`~service.safe_http.Budget`; every read goes through :mod:`service.safe_http`.

Photos by reference (``photo``): a URL relative to the base (``Binary/7``) or an absolute URL under the
same base, nothing else; the answer is an image (``image/*``) or a FHIR Binary / Media /
DocumentReference (inline data, or one more reference), at most ``max_image_bytes`` of image.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from service.auth.cds_config import normalize_base
from service.safe_http import Budget, Fetched, FetchRefused, OutboundPolicy, fetch
from service.settings import Settings

log = logging.getLogger("dermtriage.fhir.client")
RELATIVE_REF = re.compile(r"(Binary|Media|DocumentReference)/[A-Za-z0-9.-]{1,64}")
FHIR_JSON_TYPES = ("application/fhir+json", "application/json")
PHOTO_ACCEPT = "image/*, application/fhir+json;q=0.5"
MAX_HOPS = 2  # a DocumentReference -> its Binary, and no further


class FhirSession:
    """The reads of one job: one FHIR base, the token granted for it, one shared budget."""

    def __init__(
        self, base: str, token: str | None, policy: OutboundPolicy, budget: Budget, max_image_bytes: int = 10 << 20
    ) -> None:
        self.base, self.token, self.policy, self.budget = base, token, policy, budget
        self.max_image_bytes = max_image_bytes
        self.failures: list[str] = []

    def _headers(self, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def get(self, path: str) -> dict[str, Any] | None:
        """The JSON resource at ``base/path``, or None (the reason is kept in ``failures`` and logged)."""
        try:
            got = fetch(f"{self.base}/{path}", self.policy, self.budget, self._headers("application/fhir+json"))
            value = json.loads(got.body)
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

    def url_for(self, ref: str) -> str:
        """The absolute URL of a photo reference: relative to the base, or absolute under the base."""
        if RELATIVE_REF.fullmatch(ref):
            return f"{self.base}/{ref}"
        try:
            normal = normalize_base(ref)
        except ValueError:
            raise FetchRefused("the photo reference is neither Binary|Media|DocumentReference/{id} nor a URL") from None
        if not normal.startswith(self.base + "/"):
            raise FetchRefused("the photo reference is not on the FHIR server configured for this caller")
        return normal

    def photo(self, ref: str) -> bytes:
        """The image bytes a reference points to (FetchRefused with the reason otherwise)."""
        for _ in range(MAX_HOPS):
            got = self._fetch_photo(self.url_for(ref))
            if got.content_type.startswith("image/"):
                return got.body
            if got.content_type not in FHIR_JSON_TYPES:
                raise FetchRefused(f"the photo reference answered {got.content_type or 'no type'}, not an image")
            data, next_ref = inline_or_ref(_json_object(got.body))
            if data is not None:
                if len(data) > self.max_image_bytes:
                    raise FetchRefused("the photo is larger than the image limit")
                return data
            if next_ref is None:
                raise FetchRefused("the referenced resource holds no image")
            ref = next_ref
        raise FetchRefused("the photo reference leads to more references")

    def _fetch_photo(self, url: str) -> Fetched:
        cap = self.max_image_bytes * 4 // 3 + 65536  # a Binary's base64 in JSON is 4/3 of the image
        budget = self.budget.sub(cap)
        start = budget.bytes_left
        try:
            got = fetch(url, self.policy, budget, self._headers(PHOTO_ACCEPT))
        except FetchRefused as exc:
            if "byte cap" in str(exc) and start == cap:  # the photo's own cap, not the job's
                raise FetchRefused("the photo is larger than the image limit") from None
            raise
        finally:
            self.budget.take(start - max(budget.bytes_left, 0))
        if got.content_type.startswith("image/") and len(got.body) > self.max_image_bytes:
            raise FetchRefused("the photo is larger than the image limit")
        return got


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        raise FetchRefused("the response is not JSON") from None
    if not isinstance(value, dict):
        raise FetchRefused("the response is not a JSON object")
    return value


def _attachment(att: Any) -> tuple[bytes | None, str | None]:
    if not isinstance(att, dict):
        return None, None
    kind = att.get("contentType")
    if isinstance(kind, str) and not kind.startswith("image/"):
        return None, None
    return _b64(att.get("data")), att.get("url") if isinstance(att.get("url"), str) else None


def _b64(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise FetchRefused("the referenced resource's data is not base64") from None


def inline_or_ref(resource: dict[str, Any]) -> tuple[bytes | None, str | None]:
    """A fetched Binary / Media / DocumentReference: (its inline image, or None; else the reference it holds)."""
    kind = resource.get("resourceType")
    if kind == "Binary":
        ctype = resource.get("contentType")
        if not isinstance(ctype, str) or not ctype.startswith("image/"):
            raise FetchRefused("the referenced Binary is not an image")
        return _b64(resource.get("data")), None
    if kind == "Media":
        return _attachment(resource.get("content"))
    if kind == "DocumentReference":
        for content in resource.get("content") or []:
            data, url = _attachment(content.get("attachment") if isinstance(content, dict) else None)
            if data is not None or url is not None:
                return data, url
        return None, None
    raise FetchRefused(f"the photo reference answered a {str(kind)[:40]}, not a Binary, Media or DocumentReference")


class FhirFetcher:
    """Opens a :class:`FhirSession` on a FHIR base, if that base is configured for the caller's issuer."""

    def __init__(
        self,
        bases: Mapping[str, Iterable[str]],
        policy: OutboundPolicy | None = None,
        *,
        timeout_s: float = 10.0,
        max_bytes: int = 32 * 1024 * 1024,
        max_image_bytes: int = 10 * 1024 * 1024,
    ) -> None:
        self.bases = {issuer: frozenset(normalize_base(b) for b in urls) for issuer, urls in bases.items()}
        self.policy = policy or OutboundPolicy()
        self.timeout_s, self.max_bytes, self.max_image_bytes = timeout_s, max_bytes, max_image_bytes

    @classmethod
    def from_settings(cls, settings: Settings) -> FhirFetcher:
        return cls(
            {issuer: config.fhir for issuer, config in settings.cds_issuer_configs().items()},
            OutboundPolicy.allowing(settings.cds_fetch_allow_hosts),
            timeout_s=settings.cds_fetch_timeout_s,
            max_bytes=settings.cds_fetch_max_bytes,
            max_image_bytes=settings.max_image_bytes,
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
        return self.open(base, token)

    def open(self, base: str, token: str | None) -> FhirSession:
        """A session on ``base`` (already checked against the configuration by the caller)."""
        self.policy.target(base)  # the scheme rules, before any request
        budget = Budget(self.timeout_s, self.max_bytes)
        return FhirSession(base, token, self.policy, budget, self.max_image_bytes)
