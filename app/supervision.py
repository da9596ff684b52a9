"""Processes that end with the supervisor that started them.

A supervisor killed with SIGKILL cannot stop its children: the exporter and the workers
would keep serving the ports, and a restarted supervisor could not bind them. Each of them
therefore watches its parent: ``exit_with_parent(pid)`` starts a daemon thread that checks
``os.getppid()`` every second and, once ``pid`` is no longer the parent (the orphan has
been adopted by init or a subreaper), stops the process gracefully with SIGTERM, and exits
it hard if it is still alive ``GRACE_S`` later.

Used by the exporter (``--parent-pid``), by the workers of ``gateway-metrics --workers N``
(``GATEWAY_METRICS_SUPERVISOR_PID``, set by the console script, read in the app's lifespan)
and by the workers of ``deploy/gunicorn.conf.py`` (its ``post_fork`` hook, with the
master's pid). multiprocessing's resource tracker, which uvicorn's supervisor starts when
it spawns its workers, needs nothing of its own: it exits once every process holding its
pipe (the supervisor and the workers) is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time

#: How often a watched process checks that its supervisor is still its parent.
PARENT_CHECK_S = 1.0
#: How long a graceful stop may take (requests in flight, the lifespan's shutdown) before
#: the process exits hard.
GRACE_S = 5.0
#: The exit status of a process that did not stop within GRACE_S.
HARD_EXIT_STATUS = 1

_log = logging.getLogger("gateway_metrics")
_lock = threading.Lock()
_watched: set[int] = set()


def exit_with_parent(parent_pid: int, *, grace_s: float = GRACE_S) -> None:
    """Stop this process once ``parent_pid`` is no longer its parent (at once if it is
    not its parent now: the supervisor died before the watch began). One watch per
    supervisor and process: calling again for the same pid does nothing."""
    with _lock:
        if parent_pid in _watched:
            return
        _watched.add(parent_pid)

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        _log.warning("process %d: supervisor %d is gone, stopping", os.getpid(), parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        _log.warning("process %d: still running %g s after SIGTERM, exiting", os.getpid(), grace_s)
        os._exit(HARD_EXIT_STATUS)

    threading.Thread(target=watch, name=f"supervisor-watch-{parent_pid}", daemon=True).start()
