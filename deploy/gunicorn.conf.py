"""gunicorn with uvicorn workers, in prometheus_client's multiprocess mode.

    pip install gunicorn uvicorn-worker
    gunicorn -c deploy/gunicorn.conf.py app.main:app

Settings from the environment: GUNICORN_BIND, WEB_CONCURRENCY (workers),
GATEWAY_METRICS_METRICS_PORT, PROMETHEUS_MULTIPROC_DIR.

The master owns PROMETHEUS_MULTIPROC_DIR: it empties it before any worker starts, starts
the exporter (``app.exporter``: scrapes of every worker, on GATEWAY_METRICS_METRICS_PORT,
default 8001) and marks each worker that exits dead, as client_python documents. Workers
never touch the directory's other files. Point Prometheus at the exporter's port. The
exporter and the workers stop with the master, even one killed with SIGKILL: each checks
every second that the master is still its parent (``app.supervision``).

Upgrading in place (USR2, then QUIT to the old master once the new one serves): the new
master keeps the directory, whose files still belong to the old master's workers and hold
counts the totals must keep, and its exporter takes the port over when the old master's
exporter leaves with it.
"""

import math
import os

# Set before any worker imports prometheus_client (workers are forked after this file is
# read; do not use preload_app, or the app would be imported in the master first).
multiproc_dir = os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", "/tmp/gateway-metrics-multiproc")
bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:8000")
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
worker_class = "uvicorn_worker.UvicornWorker"
preload_app = False

_exporter = None


def on_starting(server):
    global _exporter
    # These imports load prometheus_client in the master, but it creates no metric, so it
    # writes no file and the forked workers start with nothing of it.
    from app import exporter
    from app.multiprocess import prepare_directory

    # gunicorn sets GUNICORN_PID in a master started by USR2: the old one still runs.
    replacing = "GUNICORN_PID" in os.environ
    if not replacing:
        prepare_directory(multiproc_dir)
    host = bind.rsplit(":", 1)[0] or "0.0.0.0"
    _exporter = exporter.start(host, int(os.environ.get("GATEWAY_METRICS_METRICS_PORT", "8001")),
                               wait_for_port_s=math.inf if replacing else 0.0)


def post_fork(server, worker):
    # In the worker, just forked: stop when the master is gone, even killed with SIGKILL
    # (uvicorn-worker never checks its parent), rather than keep serving the port.
    from app.supervision import exit_with_parent

    exit_with_parent(worker.ppid)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, multiproc_dir)


def on_exit(server):
    if _exporter is not None:
        _exporter.terminate()
        _exporter.wait()
