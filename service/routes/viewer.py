"""``GET /viewer``: the clinician viewer, a static page (HTML, CSS, JS) served by the service itself.

No CDN and no build step: the files live in ``service/static/viewer/`` (package data) and the page
calls the same origin's ``/v1`` routes. ``/viewer?result=<request_id>`` opens a stored answer (the
CDS Hooks cards link here). The page and its files are public and left out of the OpenAPI document;
the ``/v1`` calls the page makes carry the API key the clinician enters, if any.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from litestar import Controller, MediaType, Response, get
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

STATIC_DIR = Path(__file__).resolve().parents[1] / "static" / "viewer"
STATIC_PATH = "/viewer/static"

# Everything from this origin only; heatmaps arrive as data: URLs, the photo preview as a blob: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@cache
def _index_html() -> bytes:
    return (STATIC_DIR / "index.html").read_bytes()


class ViewerController(Controller):
    path = "/viewer"
    include_in_schema = False
    opt = {"auth": "open"}  # noqa: RUF012 (Litestar's own attribute)

    @get(["/", "/index.html"], sync_to_thread=False, cache_control=CacheControlHeader(no_cache=True))
    def page(self) -> Response[bytes]:
        return Response(_index_html(), media_type=MediaType.HTML, headers=SECURITY_HEADERS)


viewer_static = create_static_files_router(
    path=STATIC_PATH,
    directories=[STATIC_DIR],
    name="viewer-static",
    include_in_schema=False,
    cache_control=CacheControlHeader(no_cache=True),
    opt={"auth": "open"},
)

VIEWER_HANDLERS = [ViewerController, viewer_static]
