"""An hour (or more) of gateway data for a real Prometheus, without waiting for it.

Runs the demo traffic with a simulated clock, reads this process's registry every
``step`` simulated seconds, and writes the samples as OpenMetrics with timestamps, which
``promtool tsdb create-blocks-from openmetrics`` turns into TSDB blocks a Prometheus
started on that data directory serves at once. Deterministic for a given seed.

    python -m tests.support.backfill --out /tmp/gw.om --seconds 3600 --step 10

Run it in a process of its own: it installs its telemetry as the process's default.
"""

from __future__ import annotations

import argparse
import math
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from prometheus_client.utils import floatToGoString

LABEL_CAP = 50
# Label values are escaped as in the text format.
_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{name}="{value.translate(_ESCAPES)}"' for name, value in sorted(labels.items()))
    return "{" + inner + "}"


def simulate(seconds: int, step: int, rate: float, seed: int) -> Iterator[tuple[float, list]]:
    """(simulated offset, registry families) every ``step`` seconds of demo traffic."""
    from app import telemetry as telemetry_module
    from app.demo import DemoTraffic
    from app.scoring import HealthTracker
    from app.settings import Settings
    from app.telemetry import Telemetry, health_config

    clock = [0.0]
    # A small label cap, so the demo's random-model client reaches it within the hour.
    settings = Settings(demo_rate=rate, label_cap=LABEL_CAP)
    telemetry = Telemetry(settings, tracker=HealthTracker(health_config(settings), clock=lambda: clock[0]))
    # The process's default too, so anything recording through app.metrics lands here.
    telemetry_module.set_default(telemetry)
    traffic = DemoTraffic(settings, telemetry, clock=lambda: clock[0], rng=random.Random(seed))
    registry = telemetry.metrics.all_registry
    for offset in range(0, seconds + 1, step):
        clock[0] = float(offset)
        if offset:
            for _ in range(step):
                traffic.tick(1.0)
        yield float(offset), list(registry.collect())


def write_openmetrics(out: TextIO, seconds: int, step: int, rate: float, seed: int, end: float) -> int:
    """Write the simulated hour ending at ``end`` (unix seconds); returns samples written."""
    start = end - seconds
    series: dict[str, tuple[str, str, dict[tuple, list[tuple[float, float]]]]] = {}
    for offset, families in simulate(seconds, step, rate, seed):
        for family in families:
            kind = family.type if family.type in ("counter", "gauge", "histogram") else "unknown"
            _, _, points = series.setdefault(family.name, (kind, family.documentation, {}))
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                key = (sample.name, tuple(sorted(sample.labels.items())))
                points.setdefault(key, []).append((start + offset, sample.value))
    written = 0
    for name, (kind, help_text, points) in series.items():
        out.write(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
        for (sample_name, labels), values in points.items():
            rendered = _labels(dict(labels))
            for at, value in values:
                if math.isnan(value):
                    continue
                out.write(f"{sample_name}{rendered} {floatToGoString(value)} {at:.3f}\n")
                written += 1
    out.write("# EOF\n")
    return written


def create_blocks(openmetrics: Path, data_dir: Path) -> None:
    """Turn an OpenMetrics file into TSDB blocks under ``data_dir`` (promtool)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(openmetrics), str(data_dir)],
        check=True,
        capture_output=True,
        timeout=600,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=3600)
    parser.add_argument("--step", type=int, default=10)
    parser.add_argument("--rate", type=float, default=20.0, help="upstream calls per second")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--end", type=float, default=None, help="unix time of the last sample (now)")
    parser.add_argument("--blocks", type=Path, default=None, help="also create TSDB blocks here")
    args = parser.parse_args()
    end = args.end if args.end is not None else float(int(time.time()))
    with args.out.open("w") as out:
        written = write_openmetrics(out, args.seconds, args.step, args.rate, args.seed, end)
    if args.blocks is not None:
        create_blocks(args.out, args.blocks)
    print(f"{written} samples, {args.seconds} s ending at {end:.0f}, in {args.out}")


if __name__ == "__main__":
    main()
