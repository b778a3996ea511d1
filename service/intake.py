"""Read a ``POST /v1/triage`` request into image bytes plus validated options.

Two forms:
- ``multipart/form-data``: a file part ``image``; options as one JSON part ``options`` or as plain
  fields ``top_k``, ``modality``, ``label_scope``, ``candidate_labels`` (repeated, or once comma-separated),
  ``patient_ref``, ``lesion_ref``, ``consent_to_store``.
- ``application/json``: ``{"image": "<base64>", "options": {...}}``; options nest under ``options``.

Unknown fields are refused in both forms. Syntax errors (JSON, multipart, base64) are 400; well-formed
requests with invalid fields are 422 with every field error listed. Nothing here logs.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import anyio
from litestar import Request
from litestar.datastructures import FormMultiDict, UploadFile
from litestar.exceptions import ClientException, ValidationException
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from pydantic import ConfigDict, Field, ValidationError

from service.problems import ACCEPTED_MEDIA_TYPES, Problem, field_errors, validated, validation_problem
from service.schemas import ClinicalInput, TriageInput, TriageOptions

FORM_OPTION_FIELDS = (
    "top_k",
    "modality",
    "candidate_labels",
    "explain",
    "heatmap_grid",
    "label_scope",
    "patient_ref",
    "lesion_ref",
    "consent_to_store",
)
FORM_CLINICAL_FIELDS = ("symptoms", "risk_factors")
FORM_FIELDS = frozenset({"image", "options", *FORM_OPTION_FIELDS, *FORM_CLINICAL_FIELDS})


class TriageJSONRequest(ClinicalInput):
    """The ``application/json`` request form: the photo and options beside the clinical input's fields."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(
        description="the photo, base64 (standard or URL-safe alphabet, padding optional; a `data:` URL is accepted)"
    )
    options: TriageOptions = Field(default_factory=TriageOptions)


def _unsupported(media_type: str) -> Problem:
    shown = media_type or "none"
    return Problem(
        "unsupported-media-type",
        415,
        f"Content-Type {shown!r} is not accepted; send multipart/form-data (file part `image`) "
        'or application/json ({"image": "<base64>", "options": {...}}).',
        title="Unsupported media type",
        headers={"Accept-Post": ", ".join(ACCEPTED_MEDIA_TYPES)},
    )


def _empty_body() -> Problem:
    return Problem(
        "empty-body",
        400,
        "The request body is empty; send a photo as multipart/form-data (file part `image`) or as base64 JSON.",
        title="Empty request body",
    )


def _missing_image(detail: str) -> Problem:
    return Problem(
        "missing-image",
        422,
        detail,
        title="Missing image",
        errors=[{"loc": "image", "message": "Field required", "type": "missing"}],
    )


def _field_problem(loc: str, message: str, kind: str) -> Problem:
    return Problem(
        "validation-error",
        422,
        f"The request is well-formed but field(s) are invalid: {loc}. See `errors`.",
        title="Invalid request fields",
        errors=[{"loc": loc, "message": message, "type": kind}],
    )


def decode_base64(text: str) -> bytes:
    """Standard or URL-safe base64, whitespace and missing padding tolerated, optional ``data:`` prefix."""
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or not header.endswith(";base64"):
            raise Problem(
                "invalid-base64",
                400,
                "A data: URL must look like data:image/jpeg;base64,<data>.",
                title="Invalid base64",
            )
    compact = "".join(text.split()).replace("-", "+").replace("_", "/")
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise Problem(
            "invalid-base64",
            400,
            "`image` is not valid base64; encode the file's bytes with standard base64 (RFC 4648).",
            title="Invalid base64",
        ) from None


MAX_JSON_DEPTH = 64  # FHIR nests about 10 deep; deeper only serves to exhaust a recursive validator
MAX_JSON_ITEMS = 100_000  # objects, arrays and comma-separated values in one body (see load_json)
_RESOURCE_KEY = b'"resourceType"'


def _json_problem(slug: str, status: int, detail: str) -> Problem:
    titles = {"malformed-json": "Malformed JSON", "json-too-complex": "JSON too complex"}
    return Problem(slug, status, detail, title=titles.get(slug, "Too many FHIR resources"))


def _too_many_resources(where: str, limit: int) -> Problem:
    return _json_problem(
        "too-many-resources",
        413,
        f"{where} holds more than {limit:,} FHIR resources; send fewer (e.g. only the "
        "Patient, the photo and the Observations that matter).",
    )


def _count_items(data: bytes | str) -> int:
    if isinstance(data, str):
        return data.count("{") + data.count("[") + data.count(",")
    return data.count(b"{") + data.count(b"[") + data.count(b",")


def _check_shape(payload: Any, where: str, max_resources: int | None) -> None:
    """Depth and FHIR resource count of a parsed body, walked without recursion."""
    stack: list[tuple[Any, int]] = [(payload, 1)]
    resources = 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _json_problem("json-too-complex", 400, f"{where} nests deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(node, dict):
            if isinstance(node.get("resourceType"), str):
                resources += 1
                if max_resources is not None and resources > max_resources:
                    raise _too_many_resources(where, max_resources)
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def load_json(data: bytes | str, where: str = "The request body", *, max_resources: int | None = None) -> Any:
    """Parse a request's JSON within limits; every refusal is a 4xx :class:`Problem`, never a 500.

    ``json.loads`` holds the GIL for the whole parse (no thread switch inside C code), so what it may
    be given is bounded first with a byte count: at most :data:`MAX_JSON_ITEMS` objects, arrays and
    comma-separated values and, with ``max_resources``, at most that many ``"resourceType"`` keys.
    Integers over Python's 4,300-digit limit, nesting past the parser's recursion limit or past
    :data:`MAX_JSON_DEPTH` are refused too. Run it in a worker thread for large bodies.
    """
    key = _RESOURCE_KEY if isinstance(data, bytes) else _RESOURCE_KEY.decode()
    if max_resources is not None and data.count(key) > max_resources:  # type: ignore[arg-type]
        raise _too_many_resources(where, max_resources)
    if _count_items(data) > MAX_JSON_ITEMS:
        raise _json_problem(
            "json-too-complex", 400, f"{where} holds more than {MAX_JSON_ITEMS:,} JSON objects, arrays and values."
        )
    try:
        payload = json.loads(data)
    except json.JSONDecodeError as exc:
        detail = f"{where} is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}."
        raise _json_problem("malformed-json", 400, detail) from None
    except UnicodeDecodeError:
        raise _json_problem("malformed-json", 400, f"{where} is not valid JSON: not UTF-8.") from None
    except RecursionError:
        raise _json_problem("json-too-complex", 400, f"{where} nests deeper than {MAX_JSON_DEPTH} levels.") from None
    except ValueError:  # an integer over sys.get_int_max_str_digits() digits
        raise _json_problem("json-too-complex", 400, f"{where} holds a number over 4,300 digits long.") from None
    _check_shape(payload, where, max_resources)
    return payload


def _parse_json(data: bytes | str, where: str) -> Any:
    return load_json(data, where)


def _json_input(body: bytes) -> TriageInput:
    """Blocking (a worker thread): the JSON form's body -> the engine's input."""
    payload = _parse_json(body, "The request body")
    try:
        parsed = TriageJSONRequest.model_validate(payload)
    except ValidationError as exc:
        if isinstance(payload, dict) and "image" not in payload:
            problem = _missing_image(
                'The JSON body has no "image" field; send {"image": "<base64>", "options": {...}}.'
            )
            problem.errors = field_errors(exc)
            raise problem from None
        raise validation_problem(exc) from None
    clinical = ClinicalInput(symptoms=parsed.symptoms, risk_factors=parsed.risk_factors)
    return TriageInput(decode_base64(parsed.image), parsed.options, clinical)


async def _read_json(request: Request[Any, Any, Any]) -> TriageInput:
    body = await request.body()
    if not body.strip():
        raise _empty_body()
    return await anyio.to_thread.run_sync(_json_input, body)


async def _form(request: Request[Any, Any, Any]) -> FormMultiDict:
    try:
        return await request.form()
    except RequestEntityTooLarge:
        raise
    except ValidationException:
        raise Problem(
            "malformed-multipart",
            400,
            "multipart/form-data needs a boundary parameter in Content-Type.",
            title="Malformed multipart body",
        ) from None
    except ClientException as exc:
        if "Too Large" in str(exc.detail):
            raise Problem(
                "too-many-parts",
                413,
                "The multipart body has too many parts; send `image` plus options only.",
                title="Too many parts",
            ) from None
        raise Problem(
            "malformed-multipart",
            400,
            "The multipart/form-data body could not be parsed (check the boundary).",
            title="Malformed multipart body",
        ) from None
    except UnicodeDecodeError:
        raise Problem(
            "malformed-multipart",
            400,
            "A non-file part is not UTF-8 text; send the photo as a file part (`image` with a filename).",
            title="Malformed multipart body",
        ) from None


def _form_options(form: FormMultiDict) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for name in FORM_OPTION_FIELDS:
        if name == "candidate_labels":
            continue
        values = form.getall(name, [])
        if len(values) > 1:
            raise _field_problem(name, "Give this field once", "repeated")
        if values:
            raw[name] = values[0]
    labels = form.getall("candidate_labels", [])
    if not all(isinstance(v, str) for v in labels):
        raise _field_problem("candidate_labels", "Send labels as text fields, not files", "string_type")
    if len(labels) == 1:
        labels = [x.strip() for x in labels[0].split(",")]
    if labels:
        raw["candidate_labels"] = labels
    return raw


async def _read_options_part(form: FormMultiDict) -> TriageOptions:
    parts = form.getall("options", [])
    if len(parts) > 1:
        raise _field_problem("options", "Give one options part", "repeated")
    if not parts:
        return validated(TriageOptions, _form_options(form))
    if any(name in form for name in FORM_OPTION_FIELDS):
        raise _field_problem("options", "Give options either as one JSON part or as plain fields, not both", "conflict")
    part = parts[0]
    text = await part.read() if isinstance(part, UploadFile) else part
    return validated(TriageOptions, _parse_json(text, "The `options` part"), ("options",))


async def _read_clinical(form: FormMultiDict) -> ClinicalInput:
    """`symptoms` as a text field, `risk_factors` as one JSON field or part."""
    raw: dict[str, Any] = {}
    for name in FORM_CLINICAL_FIELDS:
        values = form.getall(name, [])
        if len(values) > 1:
            raise _field_problem(name, "Give this field once", "repeated")
        if values:
            value = values[0]
            text = await value.read() if isinstance(value, UploadFile) else value
            raw[name] = _parse_json(text, "The `risk_factors` part") if name == "risk_factors" else text
    return validated(ClinicalInput, raw)


async def _read_multipart(request: Request[Any, Any, Any]) -> TriageInput:
    if not await request.body():  # read (and size-checked) once; the form parser reuses it
        raise _empty_body()
    form = await _form(request)
    try:
        if not form:
            raise _missing_image("The multipart body has no parts; add a file part named `image`.")
        unknown = sorted(set(form.keys()) - FORM_FIELDS)
        if unknown:
            raise Problem(
                "validation-error",
                422,
                f"Unknown form field(s): {', '.join(unknown)}; accepted: {', '.join(sorted(FORM_FIELDS))}.",
                title="Invalid request fields",
                errors=[
                    {"loc": k, "message": "Extra inputs are not permitted", "type": "extra_forbidden"} for k in unknown
                ],
            )
        options = await _read_options_part(form)
        clinical = await _read_clinical(form)
        images = form.getall("image", [])
        if not images:
            raise _missing_image("No file part named `image`; e.g. curl -F image=@photo.jpg.")
        if len(images) > 1:
            raise _field_problem("image", "Send exactly one image per request", "repeated")
        if not isinstance(images[0], UploadFile):
            raise _field_problem("image", "`image` must be a file part (Content-Disposition with a filename)", "file")
        return TriageInput(await images[0].read(), options, clinical)
    finally:
        await form.close()


async def read_triage_input(request: Request[Any, Any, Any]) -> TriageInput:
    """Dispatch on Content-Type; raises :class:`Problem` (or Litestar's 413) for every bad request."""
    media_type, _ = request.content_type
    if media_type == "multipart/form-data":
        return await _read_multipart(request)
    if media_type == "application/json" or media_type.endswith("+json"):
        return await _read_json(request)
    if not media_type and not await request.body():
        raise _empty_body()
    raise _unsupported(media_type)
