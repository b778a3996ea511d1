"""``POST /v1/triage``: one photo plus options in, one TriageResult out."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, post
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import Example

from service.engine import TriageEngine
from service.intake import read_triage_input
from service.openapi import TRIAGE_PROBLEMS, TRIAGE_RESULT_EXAMPLE, TriageOperation
from service.problems import request_id_of
from service.runtime import InferenceRunner
from service.schemas import TriageResult


class TriageController(Controller):
    path = "/v1/triage"
    tags = ("triage",)

    @post(
        "/",
        status_code=200,
        summary="Differentials for one skin photo",
        description=(
            "Send the photo as multipart/form-data (file part `image`, options as a JSON part `options` or as "
            "plain fields) or as application/json (`image` in base64, options under `options`). EXIF, GPS, XMP "
            "and ICC metadata are removed on decode; `image.metadata_stripped` says what was found. "
            "Decision support, not a diagnosis."
        ),
        operation_class=TriageOperation,
        responses={
            200: ResponseSpec(
                data_container=TriageResult,
                description="The differentials, the image's measured properties and timings",
                examples=[Example(summary="taxonomy ranking", value=TRIAGE_RESULT_EXAMPLE)],
                generate_examples=False,
            ),
            **TRIAGE_PROBLEMS,
        },
    )
    async def triage(
        self,
        request: Request[Any, Any, Any],
        engine: NamedDependency[TriageEngine],
        runner: NamedDependency[InferenceRunner],
    ) -> TriageResult:
        received = await read_triage_input(request)
        return await runner.triage(engine, received.image, received.options, request_id_of(request), received.clinical)
