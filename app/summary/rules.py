"""Which recorded series of the shipped recording rules a summary may read, as learnt
from the backend and re-checked every few minutes (never once per summary).

    rules = RecordingRules(backend, job="gateway-metrics")
    rules.usable()    # frozenset of record names; starts a re-check in the background when due
    rules.refresh()   # check now and wait (tests, benchmarks)

A record is usable when the backend evaluates it (``/api/v1/rules``), its last evaluation
succeeded, and its group evaluated within the last STALE_EVALUATIONS intervals (on the
backend's own clock, its ``Date`` header): a group that stops evaluating leaves series
that still answer for five minutes, with old numbers, so its records fall back to raw
expressions at the next re-check. Without a ``job`` to narrow them to, a record is read
only when no instance is scraped by two of the jobs holding it (``up``), since a recorded
series sums one job's instances and the summary sums the jobs (app.summary.promql's
``Query.recorded_promql``); a recorded quantile only while one job holds it, since
quantiles do not add up.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from app.summary.backend import BackendError, PrometheusBackend, RuleGroups
from app.summary.promql import Recorded

#: How often the backend's rules are asked for: a rules file is loaded or dropped by a
#: config reload, a few times a day at most, and a re-check costs one request.
RULES_RECHECK_S = 120.0
#: After a failed check (the backend down or without the rules API), sooner.
RULES_RETRY_S = 30.0
#: A group whose last evaluation is older than this many of its intervals has stopped
#: (Prometheus evaluates on a fixed schedule; one late evaluation is load, three are not).
STALE_EVALUATIONS = 3
#: The Date header has a resolution of one second.
CLOCK_SLACK_S = 1.0


def live_records(answer: RuleGroups, wall_clock: float) -> frozenset[str]:
    """The records of ``answer`` whose group still evaluates and whose last evaluation
    succeeded."""
    now = answer.backend_now if answer.backend_now is not None else wall_clock
    live: set[str] = set()
    for group in answer.groups:
        if group.last_evaluation is None:
            continue
        if now - group.last_evaluation <= STALE_EVALUATIONS * group.interval_s + CLOCK_SLACK_S:
            live.update(group.healthy)
    return frozenset(live)


def shared_instances(jobs_of_record: dict[str, set[str]], instances_of_job: dict[str, set[str]]) -> frozenset[str]:
    """The records held by several jobs that scrape one instance between them."""
    shared: set[str] = set()
    for record, jobs in jobs_of_record.items():
        seen: set[str] = set()
        for job in jobs:
            instances = instances_of_job.get(job, set())
            if seen & instances:
                shared.add(record)
                break
            seen |= instances
    return frozenset(shared)


def held_by_several_jobs(jobs_of_record: dict[str, set[str]], records: Iterable[str]) -> frozenset[str]:
    """The ``records`` whose series more than one job holds."""
    return frozenset(record for record in records if len(jobs_of_record.get(record, ())) > 1)


class RecordingRules:
    """The records of ``wanted`` a summary may read from ``backend`` now."""

    def __init__(
        self,
        backend: PrometheusBackend,
        wanted: Iterable[Recorded],
        *,
        job: str | None = None,
        recheck_s: float = RULES_RECHECK_S,
        retry_s: float = RULES_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.backend = backend
        wanted = list(wanted)
        self.wanted = frozenset(record for recorded in wanted for record in recorded.records)
        #: Quantiles, which do not add up across jobs: read only while one job holds them.
        self.one_job_only = frozenset(record for recorded in wanted for _, record in recorded.quantiles)
        self.job = job
        self.recheck_s = recheck_s
        self.retry_s = retry_s
        self._clock = clock
        self._lock = threading.Lock()
        self._usable: frozenset[str] = frozenset()
        self._due = clock()  # check at the first summary
        self._checking = False

    def usable(self) -> frozenset[str]:
        """The records to read now; when a re-check is due, it starts in the background
        and this answer is the last one learnt (none before the first check)."""
        with self._lock:
            start = not self._checking and self._clock() >= self._due
            if start:
                self._checking = True
            usable = self._usable
        if start:
            threading.Thread(target=self._check, name="recording-rules", daemon=True).start()
        return usable

    def refresh(self) -> frozenset[str]:
        """Check now, wait for the answer, and return it."""
        with self._lock:
            self._checking = True
        self._check()
        with self._lock:
            return self._usable

    def _check(self) -> None:
        try:
            usable, ok = self._ask()
        except Exception:  # noqa: BLE001 - a failed check must not stop later ones: raw until then
            usable, ok = frozenset(), False
        with self._lock:
            self._usable = usable
            self._due = self._clock() + (self.recheck_s if ok else self.retry_s)
            self._checking = False

    def _ask(self) -> tuple[frozenset[str], bool]:
        answer = self.backend.recording_rules()
        if isinstance(answer, BackendError):
            return frozenset(), False
        live = live_records(answer, time.time()) & self.wanted
        if not live or self.job is not None:
            return live, True
        names = "|".join(sorted(live))
        batch = self.backend.query_many({
            "jobs": f'count by (__name__, job) ({{__name__=~"{names}"}})',
            "targets": "count by (job, instance) (up)",
        })
        if batch.errors or set(batch.results) != {"jobs", "targets"}:
            return frozenset(), False
        jobs_of_record: dict[str, set[str]] = {}
        for labels, _ in batch.results["jobs"].samples:
            jobs_of_record.setdefault(labels.get("__name__", ""), set()).add(labels.get("job", ""))
        instances_of_job: dict[str, set[str]] = {}
        for labels, _ in batch.results["targets"].samples:
            instances_of_job.setdefault(labels.get("job", ""), set()).add(labels.get("instance", ""))
        return (live - shared_instances(jobs_of_record, instances_of_job)
                - held_by_several_jobs(jobs_of_record, self.one_job_only)), True
