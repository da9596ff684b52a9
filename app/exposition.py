"""Rendering a registry for a scrape: text format choice, the ``name[]`` filter and gzip.

Decided in one place for ``/metrics``, ``/prometheus/metrics/all``, the category
endpoints and the internal metrics port: Prometheus text 0.0.4 by default, OpenMetrics
1.0 when the ``Accept`` header asks for it, gzip when ``Accept-Encoding`` allows it. The
body is written by an ``app.render.Renderer``, which keeps each series' line prefix
between scrapes (the metric set's own, so the next scrape formats values only).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from app.render import Renderer

#: Scrapes are small and frequent: level 1 gets most of gzip's gain at a fraction of level
#: 9's CPU (prometheus_client uses 9).
GZIP_LEVEL = 1
OPENMETRICS_MEDIA_TYPE = "application/openmetrics-text"


@dataclass(frozen=True, slots=True)
class Exposition:
    body: bytes
    media_type: str
    headers: dict[str, str]


def accepts_gzip(accept_encoding: str | None) -> bool:
    """Whether ``Accept-Encoding`` allows gzip (``gzip;q=0`` refuses it)."""
    for item in (accept_encoding or "").split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().lower()
            return not (quality.startswith("q=") and _is_zero(quality[2:]))
    return False


def _is_zero(text: str) -> bool:
    try:
        return float(text) == 0.0
    except ValueError:
        return False


def render(
    registry: CollectorRegistry,
    accept: str | None = None,
    accept_encoding: str | None = None,
    names: Sequence[str] = (),
    renderer: Renderer | None = None,
) -> Exposition:
    """``registry`` (restricted to the families of the sample names in ``names`` when
    given) as a scrape body, by ``renderer`` (one that keeps nothing when None)."""
    encoder, media_type = choose_encoder(accept or "")
    openmetrics = media_type.startswith(OPENMETRICS_MEDIA_TYPE)
    chunks = (renderer or Renderer()).chunks(registry, openmetrics, encoder, names)
    headers = {"Vary": "Accept, Accept-Encoding"}
    if accepts_gzip(accept_encoding):
        headers["Content-Encoding"] = "gzip"
        return Exposition(gzipped(chunks), media_type, headers)
    return Exposition(b"".join(chunks), media_type, headers)


#: zlib's window bits for a gzip member (header and CRC trailer written by zlib).
_GZIP_WBITS = 16 + zlib.MAX_WBITS


def gzipped(chunks: Iterable[bytes]) -> bytes:
    """One gzip member of the chunks joined, without joining them first: zlib compresses
    each chunk without the GIL, and the scrape does not copy the whole body once more."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, _GZIP_WBITS)
    compressed = [compressor.compress(chunk) for chunk in chunks]
    compressed.append(compressor.flush())
    return b"".join(compressed)
