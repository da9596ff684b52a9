"""Several worker processes, one set of totals: prometheus_client's multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set before the process imports prometheus_client, every
metric value lives in a memory-mapped file of that directory, one file per process and
metric type (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``, ...). Any process may read
the whole directory and sum it: that is how a scrape reports every worker exactly, and
how a worker killed with SIGKILL loses nothing it recorded (its files stay; a counter's
file is written before ``inc`` returns).

This module holds what the rest of the package needs of that mode:

* :data:`DIRECTORY`: the directory, or ``None`` in single-process mode;
* :class:`FilesCollector`: the directory's families (all of them, or one category's),
  summed as client_python documents, reading only the entries of the families asked for;
* :func:`prepare_directory` for the process that owns the directory (the console script,
  the gunicorn config), and :func:`mark_dead_processes` for the files of dead workers.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable, Iterator

from prometheus_client import values
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

#: prometheus_client's own variable, read the way prometheus_client reads it (once, at
#: import): the package cannot choose a mode prometheus_client did not choose.
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"

#: Whether this process records into files (prometheus_client decided at its import).
ENABLED: bool = bool(getattr(values.ValueClass, "_multiprocess", False))
DIRECTORY: str | None = os.environ.get(ENV_VAR) if ENABLED else None


def file_metric_name(name: str, kind: str) -> str:
    """The name prometheus_client keys a family's file entries by (counters lose ``_total``)."""
    if kind == "counter" and name.endswith("_total"):
        return name[: -len("_total")]
    return name


class FilesCollector(Collector):
    """The families named in ``names`` (or every family), summed over every process's files.

    prometheus_client's ``MultiProcessCollector`` parses every entry of every file; a
    category endpoint asks for a few families, so entries are filtered on the raw key
    (a JSON list that starts with the metric name) before any parsing, and the cost of a
    scrape follows the size of what it returns.
    """

    def __init__(self, path: str, names: Iterable[str] | None = None) -> None:
        self.path = path
        self._prefixes = (
            None if names is None else tuple(json.dumps([name])[:-1] + "," for name in names)
        )

    def describe(self) -> Iterator[Metric]:
        return iter(())  # names are the files' business; collecting at registration would read them

    def collect(self) -> Iterator[Metric]:
        mark_dead_processes(self.path)
        metrics: dict[str, Metric] = {}
        parsed: dict[str, tuple[str, str, tuple[tuple[str, str], ...], str]] = {}
        prefixes = self._prefixes
        for path in glob.glob(os.path.join(self.path, "*.db")):
            parts = os.path.basename(path)[:-3].split("_")
            kind = parts[0]
            try:
                entries = MmapedDict.read_all_values_from_file(path)
            except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
                continue
            for key, value, timestamp, _ in entries:
                if prefixes is not None and not key.startswith(prefixes):
                    continue
                entry = parsed.get(key)
                if entry is None:
                    metric_name, name, labels, help_text = json.loads(key)
                    entry = parsed[key] = (metric_name, name, tuple(sorted(labels.items())), help_text)
                metric_name, name, labels_key, help_text = entry
                metric = metrics.get(metric_name)
                if metric is None:
                    metric = metrics[metric_name] = Metric(metric_name, help_text, kind)
                if kind == "gauge":
                    metric._multiprocess_mode = parts[1]  # type: ignore[attr-defined]
                    metric.add_sample(name, labels_key + (("pid", parts[2]),), value, timestamp)  # type: ignore[arg-type]
                else:
                    metric.add_sample(name, labels_key, value)  # type: ignore[arg-type]
        # Summing by mode (sum, livesum, max, mostrecent, histogram buckets...) is the
        # library's own code, so the figures mean what client_python documents.
        yield from MultiProcessCollector._accumulate_metrics(metrics, True)


def prepare_directory(path: str) -> str:
    """Create ``path`` or empty it of a previous run's files; for the owning process only,
    before any worker starts (client_python: "wiped between runs")."""
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    return path


def mark_dead_processes(path: str) -> list[int]:
    """``mark_process_dead`` for every process whose live-gauge files remain but which has
    ended: its in-flight requests and health views stop counting. Counters, histograms
    and non-live gauges of dead processes stay in the totals, as client_python intends."""
    dead: list[int] = []
    for file in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        pid_text = os.path.basename(file)[:-3].rsplit("_", 1)[-1]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            try:
                mark_process_dead(int(pid_text), path)
            except FileNotFoundError:  # another reader removed it first
                pass
            dead.append(int(pid_text))
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
