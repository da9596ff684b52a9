"""``GET /prometheus/metrics/docs``: the PromQL guide, ``docs/PROMQL.md``."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException, Response

from app.dependencies import ApiKeyDep

router = APIRouter(prefix="/prometheus/metrics", tags=["docs"], dependencies=[ApiKeyDep])

#: Package data: in the source tree a symlink to docs/PROMQL.md (the file to edit); the
#: wheel and the sdist carry the file itself, so an installed copy serves it from anywhere.
GUIDE = files("app").joinpath("guide", "PROMQL.md")


@lru_cache(maxsize=1)
def _guide() -> bytes | None:
    try:
        return GUIDE.read_bytes()
    except OSError:
        return None


@router.get(
    "/docs",
    response_class=Response,
    responses={200: {"content": {"text/markdown": {}}, "description": "The PromQL guide."},
               503: {"description": "The guide is not installed with this copy."}},
    summary="PromQL guide",
)
def promql_guide() -> Response:
    guide = _guide()
    if guide is None:
        raise HTTPException(503, f"PromQL guide not found at {GUIDE}")
    return Response(guide, media_type="text/markdown; charset=utf-8")
