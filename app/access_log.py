"""The JSON access log: one line per request, on the ``gateway_metrics.access`` logger.

Fields are those of the seed's access log (ts, request_id, method, route, raw_path,
status, latency_ms, user_id, ip, user_agent, bytes). Nothing is built for a request
unless the logger is enabled for INFO.

Cost. A ``logging`` record per request, inside the gateway's event loop, pays a caller
lookup, a LogRecord, the handler's lock and the formatter: several times what the rest of
the middleware costs (``benchmarks/hot_path.py``). So, like nginx's ``access_log ...
buffer= flush=``, the middleware only keeps the raw fields of a request (a tuple append);
lines are formatted and handed to the logger together, as one record of up to
``max_lines`` lines, when that many have gathered or ``max_delay_s`` after the oldest one
(a timer on the event loop), and when the log is garbage collected or the process exits.
Each line is a complete JSON object, so a handler writing ``%(message)s`` to a file or stdout, and
any line-oriented shipper reading it, see exactly one line per request.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import weakref
from json.encoder import encode_basestring_ascii as _json_string
from typing import Any

ACCESS_LOGGER = "gateway_metrics.access"

#: At 1,000 requests/s a batch of 64 lines leaves the process within 64 ms; idle, within 1 s.
MAX_LINES = 64
MAX_DELAY_S = 1.0

_LINE = (
    '{"ts":%.3f,"request_id":"%s","method":%s,"route":%s,"raw_path":%s,"status":%d,'
    '"latency_ms":%.3f,"user_id":%s,"ip":%s,"user_agent":%s,"bytes":%d}'
)

#: The fields of one request, in line order: ts, request_id, method, route, raw_path,
#: status, latency_s, user_id, ip, user_agent, bytes.
AccessFields = tuple[float, str, str, str, str, int, float, Any, Any, Any, int]


def _json_or_null(value: Any) -> str:
    if value is None:
        return "null"
    return _json_string(value if isinstance(value, str) else str(value))


def access_line(fields: AccessFields) -> str:
    """One access-log line (``request_id`` must already be a safe token)."""
    ts, request_id, method, route, raw_path, status, latency_s, user_id, ip, user_agent, size = fields
    return _LINE % (
        ts,
        request_id,
        _json_string(method),
        _json_string(route),
        _json_string(raw_path),
        status,
        latency_s * 1000.0,
        _json_or_null(user_id),
        _json_or_null(ip),
        _json_or_null(user_agent),
        size,
    )


def access_logger() -> logging.Logger:
    """The access logger: INFO and a plain stdout handler unless the host app chose."""
    logger = logging.getLogger(ACCESS_LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        # The lines are already JSON: propagating would print them again in the root
        # logger's format.
        logger.propagate = False
    return logger


class AccessLog:
    """Gathers the requests' fields and writes their lines to the logger in batches."""

    def __init__(
        self,
        logger: logging.Logger | None = None,
        max_lines: int = MAX_LINES,
        max_delay_s: float = MAX_DELAY_S,
    ) -> None:
        self.logger = logger or access_logger()
        self.max_lines = max_lines
        self.max_delay_s = max_delay_s
        self._pending: list[AccessFields] = []
        self._timer: asyncio.TimerHandle | None = None
        self._lock = threading.Lock()
        _LOGS.add(self)
        # The app (and this log) is usually dropped before exit, when the server returns:
        # its pending lines are written then, or at exit if it lives until then. The
        # finalizer holds the list, not the log, so the log can still be collected.
        weakref.finalize(self, _write_pending, self.logger, self._pending, self._lock)

    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)

    def add(self, fields: AccessFields) -> None:
        with self._lock:
            pending = self._pending
            pending.append(fields)
            count = len(pending)
        if count >= self.max_lines:
            self.flush()
        elif self._timer is None:
            self._flush_later()

    def _flush_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (a thread): the next batch or exit flushes it
            return
        self._timer = loop.call_later(self.max_delay_s, self.flush)

    def flush(self) -> None:
        with self._lock:
            timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
        _write_pending(self.logger, self._pending, self._lock)


def _write_pending(logger: logging.Logger, pending: list[AccessFields], lock: threading.Lock) -> None:
    with lock:
        batch = pending[:]
        pending.clear()  # the same list: the finalizer of its log holds it
    if batch:
        logger.info("\n".join([access_line(fields) for fields in batch]))


_LOGS: weakref.WeakSet[AccessLog] = weakref.WeakSet()


def flush_access_logs() -> None:
    """Write every pending line now (tests; exit and collection write them by themselves)."""
    for log in list(_LOGS):
        log.flush()
