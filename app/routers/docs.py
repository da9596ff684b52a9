"""``GET /prometheus/metrics/docs``: the PromQL guide, ``docs/PROMQL.md``."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from fastapi import APIRouter, HTTPException, Response

from app.dependencies import ApiKeyDep

router = APIRouter(prefix="/prometheus/metrics", tags=["docs"], dependencies=[ApiKeyDep])

#: The guide lives beside the package in the source tree (and in the Docker image).
GUIDE = Path(__file__).resolve().parents[2] / "docs" / "PROMQL.md"


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
