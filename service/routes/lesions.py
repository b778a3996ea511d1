"""``/v1/lesions``: a lesion's outline and how it changed between visits.

`POST /v1/lesions/compare` takes two photos of one lesion (each a kept case or an upload); the
photos are decoded by the one service decoder, triaged (for the differentials and the non-skin
gate) without being kept, outlined and compared in worker threads, never on the event loop.
`GET /v1/lesions/{lesion_ref}/timeline` lists the caller's kept cases of one lesion with the
change between consecutive photos.
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from litestar import Controller, Request, get, post
from litestar.di import NamedDependency
from PIL import Image, ImageDraw

from models.lesions import Comparison, PhotoSide, compare
from models.scoring.urgency import UrgencyResult, mark_measured, with_measured_change
from models.segmentation import LesionSegmentation, segment_masks
from service.auth.guard import API_KEY_SECURITY
from service.images import DecodedImage
from service.intake import decode_base64, load_json
from service.lesion_examples import COMPARE_EXAMPLE, TIMELINE_EXAMPLE
from service.lesion_schemas import (
    CompareRequest,
    LesionComparison,
    LesionPhotoIn,
    LesionTimeline,
    Ng12Change,
    TimelineStep,
    TimelineVisit,
)
from service.openapi import MALFORMED_JSON, example_response, problem_example, problem_responses
from service.outline import outline_photo
from service.problems import Problem, request_id_of, validated
from service.results import client_of, principal_of
from service.runtime import ServiceState
from service.schemas import REF_PATTERN, ClinicalInput, LesionOutline, TriageOptions, TriageResult
from service.store import operations as ops

MAX_TIMELINE_VISITS = 12  # each consecutive pair is compared (about a second each on a CPU)
NOT_SKIN_MEASURES = ("skin_prompt_probability", "imagenet_skin_class_log_mass")
OVERLAY_HEIGHT = 320

PROBLEMS = problem_responses(
    (
        400,
        MALFORMED_JSON,
    ),
    (
        422,
        problem_example(
            "validation-error",
            422,
            "Invalid request fields",
            "The request is well-formed but 1 field(s) are invalid: earlier. See `errors`.",
            errors=[{"loc": "earlier", "message": "give exactly one of case_id or image", "type": "value_error"}],
        ),
    ),
    (404, problem_example("case-not-found", 404, "Case not found", "No case with this id is held for this caller.")),
    (
        503,
        problem_example(
            "database-unavailable", 503, "Database unavailable", "This service runs without a case database."
        ),
    ),
)


@dataclass
class Visit:
    """One side of a comparison once read: the photo's bytes and pixels, outline and triage answer."""

    data: bytes
    decoded: DecodedImage
    seg: LesionSegmentation
    outline: LesionOutline
    answer: TriageResult
    body_site: str | None
    taken: str | None

    def side(self) -> PhotoSide:
        return PhotoSide(
            rgb=np.asarray(self.decoded.image),
            mask=self.seg.mask if self.seg.found else None,
            body_site=self.body_site,
            modality=self.answer.modality,
            probabilities={d.condition_id: d.probability for d in self.answer.differentials if d.condition_id},
            not_skin=not_skin(self.answer),
        )


def not_skin(answer: TriageResult) -> str | None:
    """The non-skin gate's message when it fired on this answer."""
    flags = answer.uncertainty.flags if answer.uncertainty else []
    hit = [f.message for f in flags if f.name == "out_of_distribution" and f.measure in NOT_SKIN_MEASURES]
    return hit[0] if hit else None


async def read_visit_stored(
    photo: LesionPhotoIn, case_id: str, answer: TriageResult, service: ServiceState, request: Request[Any, Any, Any]
) -> Visit:
    """A kept case's photo, outlined, with its stored answer (already read and access-checked)."""
    assert service.cases is not None
    caller = ops.Caller(principal_of(request), client_of(request))
    data = await ops.photo_of(service.cases, caller, case_id)
    body_site = photo.body_site.value if photo.body_site else None
    if answer.risk_factors and answer.risk_factors.body_site:
        body_site = answer.risk_factors.body_site.value
    decoded, seg, outline = await asyncio.to_thread(outline_photo, data, service.runner.limits, None)
    return Visit(data, decoded, seg, outline, answer, body_site, photo.taken)


async def read_visit(
    photo: LesionPhotoIn, modality: str, service: ServiceState, request: Request[Any, Any, Any]
) -> Visit:
    """A kept case (its photo and stored answer; owner or reviewer only) or an upload (triaged, not kept)."""
    runner = service.runner
    body_site = photo.body_site.value if photo.body_site else None
    if photo.case_id is not None:
        if service.cases is None:
            raise Problem("database-unavailable", 503, "This service runs without a case database.")
        caller = ops.Caller(principal_of(request), client_of(request))
        case = await ops.get_case(service.cases, caller, photo.case_id)
        return await read_visit_stored(photo, case.id, TriageResult.model_validate(case.answer), service, request)
    assert photo.image is not None
    data = decode_base64(photo.image)
    engine = service.engine_for(modality)
    options = TriageOptions(modality=modality, top_k=20)  # type: ignore[arg-type]
    answer = await runner.triage(engine, data, options, request_id_of(request))
    decoded, seg, outline = await asyncio.to_thread(outline_photo, data, runner.limits, None)
    return Visit(data, decoded, seg, outline, answer, body_site, photo.taken)


def overlay_png(a: Visit, b: Visit, comparison: Comparison) -> str:
    """Before | after at one height, each outline drawn (the later one also registered onto the earlier)."""
    tiles = []
    for visit, extra in ((a, comparison.later_outline_on_earlier), (b, [])):
        im = visit.decoded.image.convert("RGB")
        s = OVERLAY_HEIGHT / im.height
        im = im.resize((max(1, round(im.width * s)), OVERLAY_HEIGHT))
        draw = ImageDraw.Draw(im)
        for poly, colour in ((visit.seg.polygon, (0, 255, 255)), (extra, (255, 200, 0))):
            if len(poly) > 2:
                draw.polygon([(x * s, y * s) for x, y in poly], outline=colour, width=2)
        tiles.append(im)
    out = Image.new("RGB", (tiles[0].width + tiles[1].width + 8, OVERLAY_HEIGHT), (255, 255, 255))
    out.paste(tiles[0], (0, 0))
    out.paste(tiles[1], (tiles[0].width + 8, 0))
    buf = io.BytesIO()
    out.save(buf, format="PNG", optimize=True)
    return base64.b64encode(buf.getvalue()).decode()


def comparison_out(a: Visit, b: Visit, c: Comparison, overlays: bool) -> LesionComparison:
    changed = c.verdict == "changed"
    reasons = " ".join(c.reasons)
    return LesionComparison(
        verdict=c.verdict,
        reasons=c.reasons,
        comparable=c.comparable,
        registration=c.registration,
        area_change_pct=c.area_change_pct,
        diameter_change_pct=c.diameter_change_pct,
        delta_e=c.delta_e,
        shape_change=c.shape_change,
        border_irregularity_change=c.border_irregularity_change,
        appearance_change=c.appearance_change,
        outline_stability=c.outline_stability,
        change_score=c.change_score,
        differential_change=c.differential_change,
        measured_ng12=Ng12Change(
            change_in_size=changed and "change in size" in reasons,
            change_in_shape=changed and "change in shape" in reasons,
            change_in_colour=changed and "change in colour" in reasons,
        ),
        earlier=a.outline,
        later=b.outline,
        later_outline_on_earlier=c.later_outline_on_earlier,
        overlay_png=overlay_png(a, b, c) if overlays and c.comparable else None,
        taken=(a.taken, b.taken),
    )


def measured_items(out: LesionComparison) -> tuple[list[str], dict[str, str]]:
    """The NG12 change items the comparison measured, with the figure behind each."""
    m = out.measured_ng12
    items = [
        name
        for name, on in (
            ("change in size", m.change_in_size),
            ("change in shape", m.change_in_shape),
            ("change in colour", m.change_in_colour),
        )
        if on
    ]
    details = {
        "change in size": f"area {out.area_change_pct:+.0f} %" if out.area_change_pct is not None else "",
        "change in shape": f"outlines differ by {out.shape_change:.0%}" if out.shape_change is not None else "",
        "change in colour": f"Delta E {out.delta_e:.1f}" if out.delta_e is not None else "",
    }
    return items, details


async def later_urgency(
    later: Visit, out: LesionComparison, service: ServiceState, request: Request[Any, Any, Any]
) -> UrgencyResult | None:
    """The later photo's urgency; with a measured change, the later photo triaged again with the measured
    NG12 change items set exactly as reported ones, and a reason saying they were measured."""
    items, details = measured_items(out)
    if not items:
        return later.answer.urgency
    clinical = ClinicalInput(risk_factors=with_measured_change(later.answer.risk_factors, items))
    engine = service.engine_for(later.answer.modality)
    options = TriageOptions(modality=later.answer.modality, top_k=20)
    answer = await service.runner.triage(engine, later.data, options, request_id_of(request), clinical)
    return mark_measured(answer.urgency, items, details) if answer.urgency else None


class LesionsController(Controller):
    path = "/v1/lesions"
    tags = ("lesions",)
    security = API_KEY_SECURITY

    @post(
        "/compare",
        status_code=200,
        summary="Has the lesion changed? Two photos of one lesion, earlier first",
        description=(
            "JSON: `earlier` and `later`, each `{case_id}` (a kept case with its photo) or `{image}` (base64), "
            "with an optional `body_site`. The later photo is registered onto the earlier one on the skin (SIFT "
            "+ RANSAC similarity), both lesions are outlined again in register, and the answer gives the area, "
            "diameter, colour (Delta E relative to the skin), shape and appearance change, each differential's "
            "probability change and a verdict "
            "`changed` / `stable` / `cannot tell` with reasons. Photos that are not comparable (different body "
            "sites or kinds of photo, a non-skin photo, no common landmarks, a lesion that is not found) get "
            "`cannot tell` and no measures. Decision support, not a diagnosis."
        ),
        responses={200: example_response(dict, "the comparison", "changed", COMPARE_EXAMPLE), **PROBLEMS},
    )
    async def compare_photos(
        self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState]
    ) -> LesionComparison:
        service.runner.check_capacity()
        body = await request.body()
        payload = await asyncio.to_thread(load_json, body)
        req = validated(CompareRequest, payload)
        earlier, later = await asyncio.gather(
            read_visit(req.earlier, req.modality, service, request),
            read_visit(req.later, req.modality, service, request),
        )
        result = await asyncio.to_thread(compare, earlier.side(), later.side(), None, segment_masks)
        out = await asyncio.to_thread(comparison_out, earlier, later, result, req.overlays)
        return out.model_copy(update={"later_urgency": await later_urgency(later, out, service, request)})

    @get(
        "/{lesion_ref:str}/timeline",
        summary="A lesion's visits (kept cases with this lesion_ref) and the change between consecutive photos",
        description=(
            "The caller's kept cases whose `options.lesion_ref` was this reference (a reviewer: everyone's), "
            "oldest first, the last `limit` of them; between consecutive visits whose photos were kept (consent), "
            "the same comparison as `POST /v1/lesions/compare`."
        ),
        responses={200: example_response(dict, "the lesion's visits", "two visits", TIMELINE_EXAMPLE), **PROBLEMS},
    )
    async def timeline(
        self,
        request: Request[Any, Any, Any],
        service: NamedDependency[ServiceState],
        lesion_ref: str,
        limit: int = 6,
    ) -> LesionTimeline:
        if not re.match(REF_PATTERN, lesion_ref):
            raise Problem("invalid-lesion-ref", 422, "lesion_ref must be 1-128 of A-Z a-z 0-9 . _ : / -")
        if not 1 <= limit <= MAX_TIMELINE_VISITS:
            raise Problem("invalid-limit", 422, f"limit must be 1-{MAX_TIMELINE_VISITS}")
        if service.cases is None:
            raise Problem("database-unavailable", 503, "This service runs without a case database.")
        service.runner.check_capacity()
        caller = ops.Caller(principal_of(request), client_of(request))
        cases, total = await ops.lesion_cases(service.cases, caller, lesion_ref, limit)
        visits, read = [], []
        for case in cases:
            answer = TriageResult.model_validate(case.answer)
            top = answer.differentials[0] if answer.differentials else None
            visit = None
            if case.photo_stored:
                photo = LesionPhotoIn(case_id=case.id)
                visit = await read_visit_stored(photo, case.id, answer, service, request)
            visits.append(
                TimelineVisit(
                    case_id=case.id,
                    created_at=case.created_at.isoformat(),
                    photo_stored=case.photo_stored,
                    top_condition=top.condition_id if top else None,
                    top_probability=top.probability if top else None,
                    urgency=answer.urgency.category.value if answer.urgency else None,
                    outline=visit.outline.model_copy(update={"mask_png": None}) if visit else None,
                )
            )
            if visit:
                read.append((case.id, visit))
        changes = []
        for (id_a, a), (id_b, b) in itertools.pairwise(read):
            c = await asyncio.to_thread(compare, a.side(), b.side(), None, segment_masks)
            changes.append(
                TimelineStep(
                    earlier_case_id=id_a,
                    later_case_id=id_b,
                    verdict=c.verdict,
                    reasons=c.reasons,
                    area_change_pct=c.area_change_pct,
                    diameter_change_pct=c.diameter_change_pct,
                    delta_e=c.delta_e,
                    shape_change=c.shape_change,
                    later_outline_on_earlier=c.later_outline_on_earlier,
                )
            )
        return LesionTimeline(lesion_ref=lesion_ref, total=total, visits=visits, changes=changes)
