"""``GET /prometheus/metrics/status``: the live status page, one self-contained HTML document.

The page is a shell: the markup, style and script of ``app/static``, inlined into one
response, with no figure in it. Its script reads ``health`` and ``summary`` beside it with
the bearer token, so the shell itself is public even when ``GATEWAY_METRICS_API_KEY`` is
set: a browser cannot send a bearer header when it navigates to a page, and the shell holds
nothing the token guards. The token stays in the tab's ``sessionStorage``, never in a URL.

A Content-Security-Policy admits only this page's own script and style (by hash) and
connections to this origin: model names come from callers, and although the script only
ever writes them as text, a stray injection could not run or send the token anywhere.
"""

from __future__ import annotations

import base64
import hashlib
from functools import lru_cache
from importlib import resources

from fastapi import APIRouter, Request, Response
from fastapi.responses import RedirectResponse

router = APIRouter(prefix="/prometheus/metrics", tags=["status"])

#: Mounted by ``create_app`` only: a gateway embedding the routers keeps its own ``/``.
standalone_router = APIRouter(include_in_schema=False)

STATIC = "static"


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


@lru_cache(maxsize=1)
def status_page() -> tuple[bytes, dict[str, str]]:
    """The page with its style and script inlined, and its response headers (built once)."""
    static = resources.files("app") / STATIC
    html = (static / "status.html").read_text(encoding="utf-8")
    css = (static / "status.css").read_text(encoding="utf-8")
    js = (static / "status.js").read_text(encoding="utf-8")
    body = html.replace("/*STYLE*/", css, 1).replace("/*SCRIPT*/", js, 1)
    policy = "; ".join((
        "default-src 'none'",
        f"script-src {_csp_hash(js)}",
        f"style-src {_csp_hash(css)}",
        "img-src data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",  # the token form never submits: no token in a URL, even without JS
        "frame-ancestors 'none'",
    ))
    headers = {
        "Content-Security-Policy": policy,
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return body.encode("utf-8"), headers


@router.get(
    "/status",
    response_class=Response,
    responses={200: {"content": {"text/html": {}},
                     "description": "The live status page (a shell: its figures come from "
                                    "/health and /summary, behind the bearer token if set)."}},
    summary="Live status page",
    name="status_page",
)
async def status() -> Response:
    body, headers = status_page()
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


@standalone_router.get("/")
async def root(request: Request) -> RedirectResponse:
    """``/`` opens the status page (the path keeps any ``root_path`` the app is mounted at)."""
    return RedirectResponse(request.url_for("status_page").path, status_code=307)
