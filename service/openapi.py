# size: declarative OpenAPI pieces (schemas and examples) Litestar cannot infer; no logic
"""OpenAPI pieces Litestar cannot infer: the two-form triage request body, the problem+json
schema, and request/response examples for every route."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example, OpenAPI, OpenAPIMediaType, Operation, Reference, RequestBody, Schema
from pydantic import BaseModel, Field

from service.problems import PROBLEM_BASE, PROBLEM_MEDIA_TYPE


@dataclass
class RawSchema(Schema):
    """A JSON Schema given as a plain dict (here: pydantic's), emitted verbatim."""

    raw: dict[str, Any] = field(default_factory=dict)

    def to_schema(self) -> dict[str, Any]:
        return self.raw


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """Pydantic's schema with ``$defs`` references inlined (OpenAPI has no ``$defs`` here)."""
    defs = schema.get("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(copy.deepcopy(defs[ref.split("/")[-1]]))
            return {k: walk(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)


class ProblemDetail(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    type: str = Field(description=f"stable URI, {PROBLEM_BASE}<slug>")
    title: str
    status: int
    detail: str = Field(description="what went wrong and how to fix it")
    instance: str = Field(description="urn:dermtriage:request:<request id>")
    request_id: str
    errors: list[dict[str, str]] | None = Field(
        default=None, description="422 only: one entry per invalid field (loc, message, type)"
    )


def problem_example(slug: str, status: int, title: str, detail: str, **extra: Any) -> Example:
    rid = "3f2b9c1e-8a4d-4c7e-9b21-5d0c6e7f8a90"
    value = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": f"urn:dermtriage:request:{rid}",
        "request_id": rid,
        **extra,
    }
    return Example(summary=title, value=value)


def example_response(
    container: Any, description: str, summary: str, value: Any, media_type: str = "application/json"
) -> ResponseSpec:
    """A documented response with one hand-written example (Litestar's generated ones are off)."""
    return ResponseSpec(
        data_container=container,
        media_type=media_type,
        description=description,
        examples=[Example(summary=summary, value=value)],
        generate_examples=False,
    )


def problem_responses(*examples: tuple[int, Example]) -> dict[int, ResponseSpec]:
    """Group problem examples by status into ResponseSpecs."""
    by_status: dict[int, list[Example]] = {}
    for status, example in examples:
        by_status.setdefault(status, []).append(example)
    return {
        status: ResponseSpec(
            data_container=ProblemDetail,
            media_type=PROBLEM_MEDIA_TYPE,
            description="Problem details (RFC 9457)",
            examples=exs,
            generate_examples=False,
        )
        for status, exs in by_status.items()
    }


NOT_READY = (
    503,
    problem_example(
        "not-ready", 503, "Service not ready", "The model is still loading and warming up; retry in a few seconds."
    ),
)

TRIAGE_RESULT_EXAMPLE: dict[str, Any] = {
    "id": "9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b",
    "request_id": "3f2b9c1e-8a4d-4c7e-9b21-5d0c6e7f8a90",
    "model": {"name": "embedded-pad-lite0", "version": "1.1.0", "card_url": "/v1/models/embedded-pad-lite0"},
    "taxonomy_version": "2025.1",
    "modality": "clinical",
    "label_source": "taxonomy",
    "differentials": [
        {
            "rank": 1,
            "label": "seborrheic_keratosis",
            "condition_id": "seborrheic_keratosis",
            "name": "seborrheic keratosis",
            "probability": 0.412,
            "codes": [
                {
                    "system": "http://hl7.org/fhir/sid/icd-10-cm",
                    "code": "L82.1",
                    "display": "Other seborrheic keratosis",
                }
            ],
            "malignant": False,
            "look_alikes": [{"condition_id": "melanoma", "name": "melanoma"}],
            "validated_for_model": True,
            "image_probability": 0.386,
            "image_probability_raw": 0.642,
            "contributions": {"baseline": -0.41, "image": 2.87, "symptoms": -0.22, "risk_factors": 0.05},
            "rank_change": None,
        },
        {
            "rank": 2,
            "label": "melanoma",
            "condition_id": "melanoma",
            "name": "melanoma",
            "probability": 0.187,
            "codes": [
                {"system": "http://snomed.info/sct", "code": "372244006", "display": "Malignant melanoma"},
                {
                    "system": "http://hl7.org/fhir/sid/icd-10-cm",
                    "code": "C43.9",
                    "display": "Malignant melanoma of skin, unspecified",
                },
            ],
            "malignant": True,
            "look_alikes": [{"condition_id": "seborrheic_keratosis", "name": "seborrheic keratosis"}],
            "validated_for_model": True,
            "image_probability": 0.094,
            "image_probability_raw": 0.021,
            "contributions": {"baseline": -0.56, "image": 1.93, "symptoms": 0.88, "risk_factors": 0.41},
            "rank_change": {
                "image_rank": 3,
                "direction": "up",
                "versus": "melanocytic nevus",
                "by": ["growth", "age 67"],
                "text": "moved up from #3 on the photo alone, past melanocytic nevus, by: growth, age 67",
            },
        },
    ],
    "image": {
        "format": "jpeg",
        "width": 1024,
        "height": 768,
        "original_width": 768,
        "original_height": 1024,
        "bytes": 284113,
        "orientation_applied": 6,
        "metadata_stripped": ["exif", "gps", "icc_profile"],
        "quality": {
            "blur_laplacian_var": 182.4,
            "mean_brightness": 0.56,
            "dark_fraction": 0.01,
            "bright_fraction": 0.02,
            "min_side": 768,
        },
    },
    "timings": {"decode_ms": 21.4, "queue_ms": 0.3, "inference_ms": 48.9, "total_ms": 70.6},
    "disclaimer": "Decision support for clinicians, not a diagnosis. Confirm with a clinical assessment.",
}

_B64_EXAMPLE = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAgGBgcGBQgHBwcJCQgKDBQNDAsLDBkSEw8UHSEaHR8e..."

MALFORMED_JSON = problem_example(
    "malformed-json",
    400,
    "Malformed JSON",
    "The request body is not valid JSON at line 1 column 12: Expecting ',' delimiter.",
)

TRIAGE_PROBLEMS = problem_responses(
    (
        400,
        problem_example(
            "empty-body",
            400,
            "Empty request body",
            "The request body is empty; send a photo as multipart/form-data (file part `image`) or as base64 JSON.",
        ),
    ),
    (
        400,
        problem_example(
            "corrupt-image",
            400,
            "Corrupt image",
            "The JPEG image could not be decoded (truncated or corrupt): OSError: image file is truncated.",
        ),
    ),
    (
        400,
        MALFORMED_JSON,
    ),
    (
        400,
        problem_example(
            "invalid-base64",
            400,
            "Invalid base64",
            "`image` is not valid base64; encode the file's bytes with standard base64 (RFC 4648).",
        ),
    ),
    (
        413,
        problem_example(
            "image-too-large",
            413,
            "Image too large",
            "The upload is 11,534,336 bytes; the limit is 10,485,760 bytes (10.0 MiB).",
        ),
    ),
    (
        413,
        problem_example(
            "request-too-large",
            413,
            "Request too large",
            "The request body is over the limit of 12,582,912 bytes; send a smaller photo.",
        ),
    ),
    (
        415,
        problem_example(
            "unsupported-media-type",
            415,
            "Unsupported media type",
            "Content-Type 'text/plain' is not "
            "accepted; send multipart/form-data (file part `image`) or application/json.",
        ),
    ),
    (
        415,
        problem_example(
            "unsupported-image-format",
            415,
            "Unsupported image format",
            "GIF is not accepted; send JPEG, PNG, WebP or HEIC.",
        ),
    ),
    (
        422,
        problem_example(
            "validation-error",
            422,
            "Invalid request fields",
            "The request is well-formed but 1 field(s) are invalid: options.top_k. See `errors`.",
            errors=[
                {
                    "loc": "options.top_k",
                    "message": "Input should be less than or equal to 20",
                    "type": "less_than_equal",
                }
            ],
        ),
    ),
    (
        422,
        problem_example(
            "missing-image",
            422,
            "Missing image",
            "No file part named `image`; e.g. curl -F image=@photo.jpg.",
            errors=[{"loc": "image", "message": "Field required", "type": "missing"}],
        ),
    ),
    NOT_READY,
    (
        503,
        problem_example(
            "overloaded",
            503,
            "Service overloaded",
            "The service is at capacity (64 photos in progress); retry shortly.",
        ),
    ),
    (
        503,
        problem_example(
            "inference-timeout",
            503,
            "Inference timed out",
            "The photo was not scored within 30 s (the service is busy); retry shortly.",
        ),
    ),
)


def _triage_request_body() -> RequestBody:
    from service.intake import TriageJSONRequest
    from service.schemas import ClinicalInput, TriageOptions

    options_schema = inline_refs(TriageOptions.model_json_schema())
    multipart = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {"type": "string", "format": "binary", "description": "JPEG, PNG, WebP or HEIC file part"},
            "options": {**options_schema, "description": "options as one JSON part (instead of the fields below)"},
            **{
                k: {**v, "description": v.get("description", "") + " (plain form field)"}
                for k, v in options_schema["properties"].items()
            },
        },
    }
    multipart["properties"]["candidate_labels"] = {
        "type": "array",
        "items": {"type": "string"},
        "description": "repeat the field, or give it once comma-separated",
    }
    clinical = inline_refs(ClinicalInput.model_json_schema())["properties"]
    multipart["properties"]["symptoms"] = {**clinical["symptoms"], "description": "the patient's own words (text)"}
    multipart["properties"]["risk_factors"] = {
        **clinical["risk_factors"],
        "description": "risk factors as one JSON field or part; all optional, units in each field",
    }
    return RequestBody(
        required=True,
        description="The photo plus options, as multipart/form-data or as JSON with the photo in base64.",
        content={
            "multipart/form-data": OpenAPIMediaType(
                schema=RawSchema(raw=multipart),
                examples={
                    "fields": Example(
                        summary="file part + plain option fields",
                        value={"image": "(binary JPEG)", "top_k": 3, "modality": "clinical"},
                    ),
                    "json-part": Example(
                        summary="file part + options as one JSON part",
                        value={"image": "(binary JPEG)", "options": '{"top_k": 3}'},
                    ),
                    "clinical": Example(
                        summary="file part + symptoms, risk factors and heatmaps",
                        value={
                            "image": "(binary JPEG)",
                            "symptoms": "mole bleeding and getting bigger, no pain",
                            "risk_factors": '{"age": 67, "fitzpatrick": 2, "diameter_mm": 8}',
                            "explain": "true",
                        },
                    ),
                },
            ),
            "application/json": OpenAPIMediaType(
                schema=RawSchema(raw=inline_refs(TriageJSONRequest.model_json_schema())),
                examples={
                    "taxonomy": Example(
                        summary="rank the taxonomy", value={"image": _B64_EXAMPLE, "options": {"top_k": 3}}
                    ),
                    "clinical": Example(
                        summary="symptoms and risk factors",
                        value={
                            "image": _B64_EXAMPLE,
                            "symptoms": "itchy red rash for 3 days",
                            "risk_factors": {"age": 34, "fitzpatrick": 4},
                        },
                    ),
                    "own-labels": Example(
                        summary="rank the caller's own labels",
                        value={
                            "image": _B64_EXAMPLE,
                            "options": {"candidate_labels": ["melanoma", "benign mole", "seborrheic keratosis"]},
                        },
                    ),
                },
            ),
        },
    )


@dataclass
class TriageOperation(Operation):
    """The triage operation with its hand-written two-form request body."""

    def __post_init__(self) -> None:
        self.request_body = _triage_request_body()


def _types(schema: Any) -> set[str]:
    kind = getattr(schema, "type", None)
    kinds = kind if isinstance(kind, list | tuple) else [kind]
    return {getattr(k, "value", k) for k in kinds if k is not None}


def relax_overlapping_one_of(node: Any, seen: set[int] | None = None) -> None:
    """Turn ``oneOf`` into ``anyOf`` where the branches overlap (an integer is also a number).

    Litestar writes ``int | float`` as ``oneOf: [integer, number]``, which no integer satisfies
    (it matches both); schemathesis found it on ``/v1/models``. Works in place on the spec objects.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, Schema) and node.one_of:
        kinds = [_types(branch) for branch in node.one_of]
        if any("integer" in k for k in kinds) and any("number" in k for k in kinds):
            node.any_of, node.one_of = [*(node.any_of or []), *node.one_of], None
    if isinstance(node, dict):
        children: Any = node.values()
    elif isinstance(node, list | tuple):
        children = node
    elif hasattr(node, "__dataclass_fields__"):
        children = [getattr(node, name) for name in node.__dataclass_fields__]
    else:
        return
    for child in children:
        relax_overlapping_one_of(child, seen)


def document_problem_errors(openapi: OpenAPI) -> None:
    """Litestar documents a default 400 as ``application/json`` on routes with parameters; this
    service answers every error as ``application/problem+json`` (schemathesis found the mismatch).
    Re-document such responses with the problem media type and schema, in place."""
    problem = (
        Reference(ref="#/components/schemas/ProblemDetail")
        if openapi.components and openapi.components.schemas and "ProblemDetail" in openapi.components.schemas
        else None
    )
    methods = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
    for item in (openapi.paths or {}).values():
        for method in methods:
            operation = getattr(item, method, None)
            for status, response in ((operation.responses or {}) if operation else {}).items():
                content = getattr(response, "content", None)
                if not str(status).startswith(("4", "5")) or not content or "application/json" not in content:
                    continue
                media = content.pop("application/json")
                if problem is not None:
                    media.schema = problem
                content[PROBLEM_MEDIA_TYPE] = media


def finish_openapi(openapi: OpenAPI) -> None:
    """Corrections to the generated document, found by fuzzing it against the service."""
    relax_overlapping_one_of(openapi)
    document_problem_errors(openapi)
