"""SMART App Launch (EHR launch) of the viewer: ``GET /viewer/launch?iss=&launch=`` -> the EHR's consent ->
``GET /viewer/launch/callback`` -> the patient's photo and observations read with the access token ->
the triage -> ``/viewer/static/launch.html``, which reads ``GET /viewer/launch/context``.

The browser only ever holds an opaque launch id (an HttpOnly, SameSite=Lax cookie scoped to
``/viewer/launch``); the access token stays in the server-side session (bounded, with a time limit)
and is never put in a URL, a log record or a response. Sessions live in the app's shared stores, so with
several workers (and Redis) the callback and the viewer's reads may land on any of them. An ``iss`` not configured in
``DERMTRIAGE_SMART_CLIENTS`` is refused before anything is fetched.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Annotated, Any

import anyio
from litestar import Controller, Request, get
from litestar.datastructures import CacheControlHeader, Cookie
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Redirect

from service.auth.guard import auth_of
from service.cds_hooks.prefetch import FHIR_ID, read_patient_data
from service.cds_hooks.services import PHOTO_KEYS, prefetch_path
from service.openapi import example_response, problem_example, problem_responses
from service.problems import Problem, request_id_of
from service.results import client_of
from service.runtime import ServiceState
from service.schemas import TriageInput, TriageOptions
from service.smart.launch import LaunchError, authorize_url, discover, exchange_code
from service.smart.sessions import COOKIE, LaunchSession
from service.smart.state import SmartState, smart_state

LAUNCH_PATH = "/viewer/launch"
LANDING = "/viewer/static/launch.html"
OPTIONS = TriageOptions(top_k=5)
ERROR_CODE = re.compile(r"[a-z_]{1,40}")
Iss = Annotated[str, QueryParameter(name="iss", description="the EHR's FHIR base URL", max_length=2048)]
Launch = Annotated[str, QueryParameter(name="launch", description="the EHR's opaque launch id", max_length=2048)]
T = "SMART launch failed"
BAD_ISS = (400, problem_example("smart-unknown-iss", 400, T, "iss is not an EHR configured for SMART launch here."))
EHR_FAILED = (502, problem_example("smart-launch-failed", 502, T, "The EHR's SMART configuration could not be read."))
NO_LAUNCH = (401, problem_example("smart-no-launch", 401, T, "No SMART launch in progress here (or it expired)."))
EXPIRED = (401, problem_example("smart-token-expired", 401, T, "The access token has expired; launch again."))
REFUSED = (403, problem_example("smart-consent-refused", 403, T, "The EHR answered access_denied."))
BAD_STATE = (400, problem_example("smart-bad-state", 400, T, "state does not match this launch."))
NO_PHOTO = (404, problem_example("smart-no-photo", 404, T, "The EHR holds no skin photo for this patient."))
CONTEXT_EXAMPLE = {
    "patient": "p1",
    "fhir_server": "https://ehr.example.org/fhir",
    "result": {"id": "9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b", "differentials": ["..."]},
    "share": "Hk3xq0Vb2mN9pL4sT7wY1A",
    "viewer_url": "/viewer?result=9c1f0e7a2b4d4e6f8a0b1c2d3e4f5a6b&share=Hk3xq0Vb2mN9pL4sT7wY1A",
}
Code = Annotated[str | None, QueryParameter(name="code", description="the authorization code", max_length=4096)]


def _problem(exc: LaunchError) -> Problem:
    return Problem(exc.kind, exc.status, exc.detail, title="SMART launch failed")


async def _session(request: Request[Any, Any, Any], state: SmartState) -> LaunchSession:
    sid = request.cookies.get(COOKIE)
    session = await state.sessions.get(sid) if sid else None
    if session is None:
        raise Problem(
            "smart-no-launch", 401, "No SMART launch in progress here (or it expired); launch again from the EHR."
        )
    return session


def _read_patient(state: SmartState, session: LaunchSession, token: str) -> TriageInput:
    """Blocking: the patient's record, observations and newest photo, read with the launch's token."""
    if session.patient is None or not FHIR_ID.fullmatch(session.patient):
        raise LaunchError(502, "The EHR's token response has no usable patient context.")
    fhir = state.fetcher.open(session.client.fhir_base, token)
    data: dict[str, Any] = {}
    for key in ("patient", "observations", *PHOTO_KEYS):
        value = fhir.get(prefetch_path(key, session.patient))
        if value is not None:
            data[key] = value
    if "patient" not in data:
        reason = "; ".join(dict.fromkeys(fhir.failures)) or "no answer"
        status = 401 if "HTTP 401" in reason or "HTTP 403" in reason else 502
        raise LaunchError(status, f"The EHR's FHIR server refused the patient read ({reason}).", "smart-fhir-refused")
    return read_patient_data(data, OPTIONS, fhir)


async def _open_triage(request: Request[Any, Any, Any], state: SmartState, session: LaunchSession) -> None:
    """The answer this launch shows: the one a CDS card named (appContext), else a triage of the patient's
    newest photo."""
    service: ServiceState = request.app.state.service
    token = session.access_token()
    if token is None:
        raise Problem("smart-token-expired", 401, "The access token has expired; launch again from the EHR.")
    context = session.token.get("appContext") if session.token else None
    patient = await anyio.to_thread.run_sync(_read_patient, state, session, token)  # proves the token too
    if isinstance(context, str) and '"result"' in context:
        session.result_id, session.share = _card_context(context)
        if await service.results.get(session.result_id, session.owner, session.share) is not None:
            return
    if patient.image is None:
        raise Problem("smart-no-photo", 404, "The EHR holds no skin photo for this patient.")
    result = await service.triage(patient, request_id_of(request), session.owner, client_of(request))
    session.result_id, session.share = result.id, await service.results.share_token(result.id, session.owner)


def _card_context(text: str) -> tuple[str | None, str | None]:
    """The result id and share token a CDS card's ``appContext`` carries."""
    try:
        value = json.loads(text)
    except ValueError:
        return None, None
    if not isinstance(value, dict):
        return None, None
    result, share = value.get("result"), value.get("share")
    return (result if isinstance(result, str) else None), (share if isinstance(share, str) else None)


class SmartLaunchController(Controller):
    path = LAUNCH_PATH
    tags = ("smart",)
    opt = {"auth": "open"}  # noqa: RUF012 (Litestar's own attribute): the EHR's OAuth server authenticates

    @get(
        "/",
        status_code=302,
        include_in_schema=False,  # browser redirects, like the viewer's pages
        summary="SMART EHR launch of the viewer: discovery, then the EHR's authorization (PKCE)",
        responses=problem_responses(BAD_ISS, EHR_FAILED),
    )
    async def launch(self, request: Request[Any, Any, Any], iss: Iss, launch: Launch) -> Redirect:
        state = smart_state(request.app.state)
        client = state.client_for(iss)
        if client is None:
            raise Problem("smart-unknown-iss", 400, "iss is not an EHR configured for SMART launch here.")
        if not 0 < len(launch) <= 2048:
            raise Problem("smart-bad-launch", 400, "launch must be 1 to 2048 characters.")
        timeout = state.settings.cds_fetch_timeout_s
        try:
            config = await anyio.to_thread.run_sync(discover, client, state.policy, timeout)
        except LaunchError as exc:
            raise _problem(exc) from None
        base = auth_of(request).base_url(request)
        session = await state.sessions.start(client, f"{base}{LAUNCH_PATH}/callback", config.token_endpoint)
        cookie = Cookie(
            key=COOKIE,
            value=session.id,
            path=LAUNCH_PATH,
            httponly=True,
            secure=base.startswith("https://"),
            samesite="lax",
            max_age=int(state.settings.smart_session_ttl_s),
        )
        return Redirect(authorize_url(session, config, launch), status_code=302, cookies=[cookie])

    @get(
        "/callback",
        status_code=303,
        include_in_schema=False,
        summary="SMART launch: the EHR's authorization answer (code or error)",
        responses=problem_responses(BAD_STATE, NO_LAUNCH, EXPIRED, REFUSED, NO_PHOTO, EHR_FAILED),
        cache_control=CacheControlHeader(no_store=True),
    )
    async def callback(self, request: Request[Any, Any, Any], code: Code = None) -> Redirect:
        """``state`` is read from the query by hand: Litestar reserves the parameter name for the app state."""
        state = smart_state(request.app.state)
        session = await _session(request, state)
        sent = request.query_params.get("state") or ""
        if not secrets.compare_digest(sent.encode(), session.state.encode()) or session.token is not None:
            raise Problem("smart-bad-state", 400, "state does not match this launch (or it was used already).")
        error = request.query_params.get("error")
        if error is not None:
            shown = error if ERROR_CODE.fullmatch(error) else "an error"
            raise Problem("smart-consent-refused", 403, f"The EHR answered {shown}: access was not granted.")
        if not code:
            raise Problem("smart-bad-callback", 400, "The EHR's answer has neither code nor error.")
        try:
            await anyio.to_thread.run_sync(exchange_code, session, code, state.settings.cds_fetch_timeout_s)
            await _open_triage(request, state, session)
        except LaunchError as exc:
            raise _problem(exc) from None
        finally:
            await state.sessions.save(session)  # the token (the state is used), the answer: for every worker
        return Redirect(LANDING, status_code=303)

    @get(
        "/context",
        summary="SMART launch: the launched patient's answer, for the viewer",
        responses={
            200: example_response(dict, "the launch's answer", "context", CONTEXT_EXAMPLE),
            **problem_responses(NO_LAUNCH, NO_PHOTO),
        },
        cache_control=CacheControlHeader(no_store=True),
    )
    async def context(self, request: Request[Any, Any, Any], service: NamedDependency[ServiceState]) -> dict[str, Any]:
        state = smart_state(request.app.state)
        session = await _session(request, state)
        if session.access_token() is None or session.result_id is None:
            raise Problem("smart-token-expired", 401, "This launch has no valid token or answer; launch again.")
        result = await service.results.get(session.result_id, session.owner, session.share)
        if result is None:
            raise Problem("smart-no-result", 404, "The launch's answer has expired; launch again from the EHR.")
        return {
            "patient": session.patient,
            "fhir_server": session.client.fhir_base,
            "result": result.model_dump(mode="json"),
            "share": session.share,
            "viewer_url": f"/viewer?result={result.id}&share={session.share}",
        }
